"""The kiosk's VP8 RTP payloader: RFC 7741 payload descriptors that carry temporal layers.

aiortc's packetizer writes only a PictureID. An SFU choosing a temporal layer per subscriber
needs more in every packet (RFC 7741 §4.2): the layer of the frame (TID), whether switching
up to it is safe here (Y, layer sync), a running index of base-layer frames (TL0PICIDX) so a
receiver can tell a base frame went missing, and a running index of keyframes (KEYIDX). The
N bit marks frames nothing references, which any hop may drop.

    0 1 2 3 4 5 6 7
   +-+-+-+-+-+-+-+-+
   |X|R|N|S|R| PID |   X=1; S on a frame's first packet; PID (partition index) 0
   |I|L|T|K| RSV   |   all four present
   |M| PictureID   |   M=1: 15-bit PictureID
   |   PictureID   |
   |   TL0PICIDX   |
   |TID|Y| KEYIDX  |
   +-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

from dataclasses import dataclass

# aiortc's limit for a VP8 payload, descriptor included (aiortc.codecs.vpx.PACKET_MAX), so
# our packets fit every path aiortc's would.
MAX_PAYLOAD_BYTES = 1300
DESCRIPTOR_BYTES = 6

_X, _N, _S = 0x80, 0x20, 0x10
_I, _L, _T, _K = 0x80, 0x40, 0x20, 0x10
_M = 0x80


@dataclass(frozen=True)
class FrameLayer:
    """Where one encoded frame sits in the temporal layer structure."""

    temporal_id: int
    layer_sync: bool
    """The frame references only base-layer (TL0) frames: a receiver may start this layer here."""
    keyframe: bool
    non_reference: bool
    """No later frame references this one: dropping it costs nothing but the frame itself."""


BASE_LAYER_KEYFRAME = FrameLayer(temporal_id=0, layer_sync=True, keyframe=True, non_reference=False)
BASE_LAYER_DELTA = FrameLayer(temporal_id=0, layer_sync=True, keyframe=False, non_reference=False)


@dataclass(frozen=True)
class WrittenDescriptor:
    """The fields this payloader writes, as read back from a payload (for tests and the bench).
    The SFU reads any sender's descriptor with `server.sfu.vp8rewriter.parse_descriptor`."""

    start: bool
    non_reference: bool
    picture_id: int
    tl0_pic_idx: int
    temporal_id: int
    layer_sync: bool
    key_idx: int


def read_written_descriptor(payload: bytes) -> tuple[WrittenDescriptor, bytes]:
    """Reads a descriptor in the layout this payloader writes; ValueError for any other."""
    if len(payload) < DESCRIPTOR_BYTES:
        raise ValueError(f"VP8 payload of {len(payload)} bytes has no room for a {DESCRIPTOR_BYTES}-byte descriptor")
    first, extension, pid_high, pid_low, tl0, tk = payload[:DESCRIPTOR_BYTES]
    if not first & _X or extension & 0xF0 != _I | _L | _T | _K or not pid_high & _M:
        raise ValueError(f"VP8 descriptor {payload[:DESCRIPTOR_BYTES].hex()} is not X+I(M)+L+T+K")
    return (
        WrittenDescriptor(
            start=bool(first & _S),
            non_reference=bool(first & _N),
            picture_id=(pid_high & 0x7F) << 8 | pid_low,
            tl0_pic_idx=tl0,
            temporal_id=tk >> 6,
            layer_sync=bool(tk & 0x20),
            key_idx=tk & 0x1F,
        ),
        payload[DESCRIPTOR_BYTES:],
    )


class Vp8Payloader:
    """Splits encoded VP8 frames into RTP payloads with full RFC 7741 descriptors.

    Keeps the three running indices: PictureID (15 bits) advances with every frame,
    TL0PICIDX (8 bits) with every base-layer frame (a higher-layer frame carries the index of
    the base frame it follows), KEYIDX (5 bits) with every keyframe.
    """

    def __init__(self, picture_id: int = 0, tl0_pic_idx: int = 0, key_idx: int = 0,
                 max_payload: int = MAX_PAYLOAD_BYTES) -> None:
        if max_payload <= DESCRIPTOR_BYTES:
            raise ValueError(f"max_payload {max_payload} leaves no room after the {DESCRIPTOR_BYTES}-byte descriptor")
        self.picture_id = picture_id & 0x7FFF
        # The indices of the *last* base frame and keyframe: the first of each advances them.
        self.tl0_pic_idx = (tl0_pic_idx - 1) & 0xFF
        self.key_idx = (key_idx - 1) & 0x1F
        self.max_payload = max_payload

    def packetize(self, frame: bytes, layer: FrameLayer) -> list[bytes]:
        """The payloads of one frame, in order; nothing for an empty frame (libvpx dropped it)."""
        if not frame:
            return []
        if layer.keyframe and layer.temporal_id != 0:
            raise ValueError(f"a keyframe belongs to the base layer, not TL{layer.temporal_id}")
        if not 0 <= layer.temporal_id <= 3:
            raise ValueError(f"TID {layer.temporal_id} does not fit RFC 7741's 2 bits")
        if layer.temporal_id == 0:
            self.tl0_pic_idx = (self.tl0_pic_idx + 1) & 0xFF
        if layer.keyframe:
            self.key_idx = (self.key_idx + 1) & 0x1F
        tail = bytes((
            _I | _L | _T | _K,
            _M | self.picture_id >> 8,
            self.picture_id & 0xFF,
            self.tl0_pic_idx,
            layer.temporal_id << 6 | (0x20 if layer.layer_sync else 0) | self.key_idx,
        ))
        first = _X | (_N if layer.non_reference else 0)
        chunk = self.max_payload - DESCRIPTOR_BYTES
        payloads = [
            bytes((first | (_S if pos == 0 else 0),)) + tail + frame[pos : pos + chunk]
            for pos in range(0, len(frame), chunk)
        ]
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        return payloads
