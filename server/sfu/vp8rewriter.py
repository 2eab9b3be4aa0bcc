"""One clean VP8 stream out of whichever layers a consumer forwards (RFC 7741).

A consumer of a layered producer switches between simulcast layers (each its own SSRC,
sequence numbers, timestamps, PictureIDs, TL0PICIDX and KEYIDX) and drops temporal-layer
frames its subscriber cannot take. The subscriber's decoder must see one stream with no
gaps and no jumps: `Vp8Rewriter` maps every forwarded packet's sequence number, timestamp
and VP8 payload descriptor onto a continuous output. No sockets here: it maps numbers.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass

from ..rtc.rtpseq import Unwrapper

# Values dropped on purpose, remembered so late duplicates of them stay dropped.
SKIPPED_MEMORY = 256
# Offset change points kept for late packets: older ones fall back to the oldest offset.
CHANGE_POINTS = 64


@dataclass(slots=True)
class Vp8Descriptor:
    """The fields of one packet's VP8 payload descriptor an SFU reads or rewrites."""

    start: bool  # S=1 and partition 0: the first packet of a frame
    picture_id: int | None
    picture_id_bits: int  # 7 or 15 (0 without a PictureID)
    tl0_pic_idx: int | None
    tid: int | None  # None: no T bit, one temporal layer
    layer_sync: bool
    key_idx: int | None
    size: int  # bytes of descriptor before the VP8 payload
    keyframe: bool  # start of a frame whose inter-frame bit is clear
    width: int = 0  # from a keyframe's header, else 0
    height: int = 0


def parse_descriptor(payload: bytes) -> Vp8Descriptor | None:
    """Parses the descriptor (and, for a keyframe's first packet, its size); None if malformed."""
    n = len(payload)
    if n < 1:
        return None
    first = payload[0]
    start = bool(first & 0x10) and (first & 0x07) == 0
    offset = 1
    picture_id = tl0 = tid = key_idx = None
    bits = 0
    sync = False
    if first & 0x80:
        if n < 2:
            return None
        ext = payload[1]
        offset = 2
        if ext & 0x80:
            if n <= offset:
                return None
            if payload[offset] & 0x80:
                if n <= offset + 1:
                    return None
                picture_id = ((payload[offset] & 0x7F) << 8) | payload[offset + 1]
                bits = 15
                offset += 2
            else:
                picture_id = payload[offset] & 0x7F
                bits = 7
                offset += 1
        if ext & 0x40:
            if n <= offset:
                return None
            tl0 = payload[offset]
            offset += 1
        if ext & 0x30:
            if n <= offset:
                return None
            b = payload[offset]
            if ext & 0x20:
                tid = b >> 6
                sync = bool(b & 0x20)
            if ext & 0x10:
                key_idx = b & 0x1F
            offset += 1
    keyframe = False
    width = height = 0
    if start and n > offset:
        keyframe = not (payload[offset] & 0x01)
        # A keyframe: 3-byte frame tag, start code 9d 01 2a, 14-bit width and height.
        if keyframe and n >= offset + 10 and payload[offset + 3 : offset + 6] == b"\x9d\x01\x2a":
            width = int.from_bytes(payload[offset + 6 : offset + 8], "little") & 0x3FFF
            height = int.from_bytes(payload[offset + 8 : offset + 10], "little") & 0x3FFF
    return Vp8Descriptor(start, picture_id, bits, tl0, tid, sync, key_idx, offset, keyframe, width, height)


class _Counter:
    """A wrapping counter mapped onto a continuous output: rebased at a switch, with holes
    for values dropped on purpose closed up (out = in + the offset in force for in)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.mask = (1 << bits) - 1
        self._unwrapper = Unwrapper(bits)
        self._from: list[int] = []
        self._offset: list[int] = []
        self._highest: int | None = None
        self._skipped: set[int] = set()
        self._skipped_order: deque[int] = deque()
        self.last_out: int | None = None

    def rebase(self, value: int, out: int, bits: int | None = None) -> None:
        """`value` (of a new source, or after a gap) maps to `out`; earlier values are dropped."""
        if bits is not None and bits != self.bits:
            self.bits, self.mask = bits, (1 << bits) - 1
        self._unwrapper = Unwrapper(self.bits)
        ext = self._unwrapper.unwrap(value)
        self._from, self._offset = [ext], [out - ext]
        self._highest = ext - 1
        self._skipped.clear()
        self._skipped_order.clear()

    @property
    def based(self) -> bool:
        return bool(self._from)

    def _offset_for(self, ext: int) -> int | None:
        i = bisect_right(self._from, ext) - 1
        return None if i < 0 else self._offset[i]

    def map(self, value: int) -> int | None:
        """The output value for a forwarded input, or None if it comes from before the rebase."""
        ext = self._unwrapper.unwrap(value)
        if ext in self._skipped:
            return None
        offset = self._offset_for(ext)
        if offset is None:
            return None
        if self._highest is None or ext > self._highest:
            self._highest = ext
        out = (ext + offset) & self.mask
        self.last_out = out
        return out

    def skip(self, value: int) -> None:
        """`value` is dropped on purpose: later values close up behind it."""
        ext = self._unwrapper.unwrap(value)
        if ext in self._skipped or not self._from or ext < self._from[0]:
            return
        self._skipped.add(ext)
        self._skipped_order.append(ext)
        if len(self._skipped_order) > SKIPPED_MEMORY:
            self._skipped.discard(self._skipped_order.popleft())
        if self._highest is not None and ext <= self._highest:
            # Later values already went out with the old offset: the gap stays (as a loss would).
            return
        self._highest = ext
        self._from.append(ext + 1)
        self._offset.append(self._offset[-1] - 1)
        if len(self._from) > CHANGE_POINTS:
            del self._from[0]
            del self._offset[0]


class Vp8Rewriter:
    """Sequence number, timestamp and VP8 descriptor rewriting for one consumer."""

    def __init__(self, initial_sequence: int, initial_timestamp: int) -> None:
        self._seq = _Counter(16)
        self._pid = _Counter(15)
        self._last_seq = (initial_sequence - 1) & 0xFFFF
        self._last_ts = initial_timestamp & 0xFFFFFFFF
        self._ts_offset = 0
        self._last_pid = -1
        self._tl0_offset = 0
        self._last_tl0 = -1
        self._key_offset = 0
        self._last_key = -1
        self.started = False

    def switch(self, sequence_number: int, timestamp: int, descriptor: Vp8Descriptor, elapsed_ticks: int) -> None:
        """The next packet forwarded (a keyframe's first) starts a new source: continue the output
        right after what was sent last, `elapsed_ticks` later (at least one tick)."""
        if self._seq.last_out is not None:
            self._last_seq = self._seq.last_out
        self._seq.rebase(sequence_number, self._last_seq + 1)
        out_ts = (self._last_ts + max(1, elapsed_ticks)) if self.started else self._last_ts
        self._ts_offset = (out_ts - timestamp) & 0xFFFFFFFF
        # The first source keeps its own PictureID, TL0PICIDX and KEYIDX: while nothing is
        # switched or dropped the payload goes out as it came, without a copy.
        if descriptor.picture_id is not None:
            if self._pid.last_out is not None:
                self._last_pid = self._pid.last_out
            first = self._last_pid < 0
            out_pid = descriptor.picture_id if first else self._last_pid + 1
            self._pid.rebase(descriptor.picture_id, out_pid, descriptor.picture_id_bits)
        if descriptor.tl0_pic_idx is not None:
            self._tl0_offset = 0 if self._last_tl0 < 0 else (self._last_tl0 + 1 - descriptor.tl0_pic_idx) & 0xFF
        if descriptor.key_idx is not None:
            self._key_offset = 0 if self._last_key < 0 else (self._last_key + 1 - descriptor.key_idx) & 0x1F
        self.started = True

    def drop(self, sequence_number: int) -> None:
        """A packet of the current source not forwarded: the output closes up behind it."""
        self._seq.skip(sequence_number)

    def drop_frame(self, descriptor: Vp8Descriptor) -> None:
        """A frame not forwarded (a temporal layer above the target): its PictureID is skipped."""
        if descriptor.picture_id is not None and self._pid.based:
            self._pid.skip(descriptor.picture_id)

    def rewrite(
        self, sequence_number: int, timestamp: int, payload: bytes, descriptor: Vp8Descriptor
    ) -> tuple[int, int, bytes] | None:
        """The output sequence number, timestamp and payload; None for a packet from before the switch."""
        seq = self._seq.map(sequence_number)
        if seq is None:
            return None
        ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        if ((ts - self._last_ts) & 0xFFFFFFFF) < 0x80000000:
            self._last_ts = ts
        pid = tl0 = key = None
        if descriptor.picture_id is not None and self._pid.based:
            pid = self._pid.map(descriptor.picture_id)
            if pid is None:
                return None
        if descriptor.tl0_pic_idx is not None:
            tl0 = (descriptor.tl0_pic_idx + self._tl0_offset) & 0xFF
            self._last_tl0 = tl0
        if descriptor.key_idx is not None:
            key = (descriptor.key_idx + self._key_offset) & 0x1F
            self._last_key = key
        if (pid is None or pid == descriptor.picture_id) and (tl0 is None or tl0 == descriptor.tl0_pic_idx) and (
            key is None or key == descriptor.key_idx
        ):
            return seq, ts, payload
        return seq, ts, _with_fields(payload, descriptor, pid, tl0, key)


def _with_fields(payload: bytes, d: Vp8Descriptor, pid: int | None, tl0: int | None, key: int | None) -> bytes:
    out = bytearray(payload[:2])
    if d.picture_id is not None:
        value = d.picture_id if pid is None else pid
        out += bytes((0x80 | (value >> 8), value & 0xFF)) if d.picture_id_bits == 15 else bytes((value & 0x7F,))
    if d.tl0_pic_idx is not None:
        out.append(d.tl0_pic_idx if tl0 is None else tl0)
    if payload[1] & 0x30:
        b = payload[d.size - 1]
        if d.key_idx is not None and key is not None:
            b = (b & 0xE0) | key
        out.append(b)
    out += payload[d.size:]
    return bytes(out)
