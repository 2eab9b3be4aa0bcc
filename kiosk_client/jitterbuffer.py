"""Receive-side buffering for our aiortc clients, tuned for latency: no aiortc imports here.

aiortc 1.16 releases a video frame only when the next frame's first packet arrives, stalls
video behind one lost packet until a 512-packet buffer overflows, holds audio for a fixed
four packets and queues decoded media without bound. The pieces here replace that:

- `VideoFrameAssembler` releases a frame the moment its last packet (RTP marker bit) is in
  and its sequence numbers are contiguous; an incomplete frame gives up after a deadline and
  the assembler then asks for a keyframe, dropping the delta frames that could not decode.
- `AdaptiveAudioBuffer` plays each packet out one packet-time after its earliest plausible
  arrival, grows that delay with the measured jitter, shrinks it slowly when the network
  calms, and asks for packet-loss concealment instead of waiting for a missing packet.
- `DecoderQueue` and `put_dropping_oldest` bound the hand-offs to and from the decoder.

Times are seconds on any monotonic clock (the receiver uses the event loop's); the caller
passes `now` in, which keeps every decision here deterministic and testable.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from server.rtc.rtppayload import is_h264_keyframe_start, is_vp8_keyframe_start
from server.rtc.rtpseq import Unwrapper

T = TypeVar("T")


# --------------------------------------------------------------------------------------
# Video


@dataclass(frozen=True)
class VideoPacket:
    sequence_number: int
    timestamp: int
    marker: bool
    data: bytes
    """Depayloaded bytes, ready to be joined into an encoded frame."""
    frame_start: bool | None
    """True/False when the payload format says whether this packet opens a frame, else None."""
    keyframe: bool


def inspect_video_payload(mime_type: str, payload: bytes) -> tuple[bool | None, bool]:
    """(frame_start, keyframe) read from the payload descriptor of one RTP packet."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        if not payload:
            return False, False
        # RFC 7741: S bit with partition index 0 opens a frame.
        start = bool(payload[0] & 0x10) and payload[0] & 0x07 == 0
        return start, start and is_vp8_keyframe_start(payload)
    if mime == "video/h264":
        # An access unit may span several NAL units, so no single packet reveals its start.
        return None, is_h264_keyframe_start(payload)
    return None, False


@dataclass(frozen=True)
class EncodedFrame:
    timestamp: int
    data: bytes
    keyframe: bool
    first_sequence: int
    last_sequence: int
    """Both as the 16-bit RTP sequence numbers of the frame's first and last packets."""


@dataclass
class AssemblyResult:
    frames: list[EncodedFrame] = field(default_factory=list)
    keyframe_needed: bool = False


@dataclass(frozen=True)
class VideoAssemblerSettings:
    deadline: float = 0.100
    """How long an incomplete frame may hold up everything behind it. It must leave NACK
    time to work: at our 25 ms retry interval that is up to four requests, enough for the
    ≤ 20 ms round trips of an Almere fibre path through the SFU to fix one or two losses.
    Past it a keyframe is cheaper than waiting: the freeze then lasts about deadline + one
    round trip + one frame interval (≈ 150 ms at 30 fps), where aiortc froze for seconds.
    It is also 1.5 frame intervals at 15 fps, so at most a few frames queue behind a hole."""
    max_deadline: float = 0.5
    """The most the deadline grows to on a slow link: the receiver raises it to about two
    round trips it measured (retransmissions that answered a NACK), so a repair that waits in
    a congested home link's queue still comes in time (`NackTracker.deadline`)."""
    max_packets: int = 1024
    """Hard memory bound (≈ 1.3 MB); the deadline normally keeps the buffer far below it."""


@dataclass
class AssemblerStats:
    frames_released: int = 0
    keyframes_released: int = 0
    frames_dropped_incomplete: int = 0
    frames_dropped_waiting_for_keyframe: int = 0
    frames_superseded_by_keyframe: int = 0
    frames_dropped_overflow: int = 0
    late_packets: int = 0
    duplicate_packets: int = 0


@dataclass
class _PartialFrame:
    timestamp: int
    first_arrival: float
    low: int
    high: int
    packets: dict[int, VideoPacket] = field(default_factory=dict)
    start: int | None = None
    """Set only when the payload format marks the first packet explicitly (VP8)."""
    last: int | None = None
    keyframe: bool = False

    def insert(self, seq: int, packet: VideoPacket) -> None:
        self.packets[seq] = packet
        self.low = min(self.low, seq)
        self.high = max(self.high, seq)
        if packet.frame_start:
            self.start = seq
        if packet.marker:
            self.last = seq
        if packet.keyframe:
            self.keyframe = True


class VideoFrameAssembler:
    """Turns video RTP packets into complete encoded frames, in decode order, without delay.

    Frames are grouped by RTP timestamp and ordered by sequence number. A frame is released
    as soon as it is complete (first packet known, marker packet in, no hole between) and
    either is a keyframe or directly follows the previous released frame. Anything older than
    a complete keyframe is dropped in its favour.
    """

    def __init__(self, settings: VideoAssemblerSettings | None = None) -> None:
        self.settings = settings or VideoAssemblerSettings()
        # settings.deadline, raised by the receiver on a link with long round trips.
        self.deadline = self.settings.deadline
        self.stats = AssemblerStats()
        self._unwrapper = Unwrapper(16)
        self._frames: dict[int, _PartialFrame] = {}
        self._owner: dict[int, int] = {}
        self._fillers: set[int] = set()
        self._packet_count = 0
        self._next_seq: int | None = None
        # Deltas are useless until the decoder has a keyframe, including at the very start.
        self._waiting_for_keyframe = True
        self._abandoned: deque[int] = deque(maxlen=32)

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._waiting_for_keyframe

    @property
    def packet_count(self) -> int:
        return self._packet_count

    def add(self, packet: VideoPacket, now: float, expire: bool = True) -> AssemblyResult:
        """Adds a packet and returns what became releasable. `expire=False` holds deadline
        decisions (the receiver's stall guard: more packets may be queued right behind this one)."""
        result = AssemblyResult()
        seq = self._unwrapper.unwrap(packet.sequence_number)
        if self._is_behind(seq) or packet.timestamp in self._abandoned:
            # A retransmission that lost the race, or a piece of a frame we gave up on.
            self.stats.late_packets += 1
            return self._drain(now, result, expire)
        frame = self._frames.get(packet.timestamp)
        if frame is None:
            frame = self._frames[packet.timestamp] = _PartialFrame(packet.timestamp, now, seq, seq)
        elif seq in frame.packets:
            self.stats.duplicate_packets += 1
            return self._drain(now, result, expire)
        frame.insert(seq, packet)
        self._owner[seq] = packet.timestamp
        self._packet_count += 1
        while self._packet_count > self.settings.max_packets:
            self._abandon(self._oldest())
            self.stats.frames_dropped_overflow += 1
            result.keyframe_needed = True
        return self._drain(now, result, expire)

    def add_padding(self, sequence_number: int, now: float, expire: bool = True) -> AssemblyResult:
        """Padding-only packets use up sequence numbers between frames but carry no media."""
        seq = self._unwrapper.unwrap(sequence_number)
        if not self._is_behind(seq) and seq not in self._owner:
            self._fillers.add(seq)
            self._skip_fillers()
        return self._drain(now, AssemblyResult(), expire)

    def poll(self, now: float) -> AssemblyResult:
        """Applies the deadline; call it by `next_deadline()` even when no packet arrives."""
        return self._drain(now, AssemblyResult())

    def next_deadline(self) -> float | None:
        if not self._frames:
            return None
        return self._oldest().first_arrival + self.deadline

    def request_keyframe(self) -> None:
        """The decoder lost its reference (decode error, overflowing queue): skip to a keyframe."""
        self._waiting_for_keyframe = True

    # -- internals ----------------------------------------------------------------------

    def _drain(self, now: float, result: AssemblyResult, expire: bool = True) -> AssemblyResult:
        while self._frames:
            head = self._oldest()
            start = self._complete_start(head)
            if start is not None and (head.keyframe or self._follows(start)):
                self._release(head, start, result)
            elif self._waiting_for_keyframe and self._known_delta(head, start):
                self._abandon(head)
                self.stats.frames_dropped_waiting_for_keyframe += 1
                result.keyframe_needed = True
            elif expire and head.first_arrival + self.deadline <= now:
                self._abandon(head)
                self.stats.frames_dropped_incomplete += 1
                self._waiting_for_keyframe = True
                result.keyframe_needed = True
            elif not self._supersede_with_keyframe():
                break
        return result

    def _follows(self, start: int) -> bool:
        return not self._waiting_for_keyframe and start == self._next_seq

    def _known_delta(self, frame: _PartialFrame, start: int | None) -> bool:
        if start is not None:
            return not frame.keyframe
        # With an explicit start packet (VP8) the keyframe bit is known before completion.
        return frame.start is not None and not frame.keyframe

    def _supersede_with_keyframe(self) -> bool:
        """A complete keyframe behind a stuck frame makes everything before it useless."""
        for frame in sorted(self._frames.values(), key=lambda f: f.low):
            if frame.keyframe and self._complete_start(frame) is not None:
                for older in [f for f in self._frames.values() if f.low < frame.low]:
                    self._abandon(older)
                    self.stats.frames_superseded_by_keyframe += 1
                return True
        return False

    def _complete_start(self, frame: _PartialFrame) -> int | None:
        """The frame's first sequence number if the frame is complete, else None."""
        if frame.last is None:
            return None
        start = self._start_of(frame)
        if start is None or len(frame.packets) < frame.last - start + 1:
            return None
        if all(seq in frame.packets for seq in range(start, frame.last + 1)):
            return start
        return None

    def _start_of(self, frame: _PartialFrame) -> int | None:
        if frame.start is not None:
            return frame.start
        low = frame.packets[frame.low]
        if low.frame_start is False:
            return None
        if low.keyframe:
            # Without start flags (H.264) a keyframe's parameter sets or IDR slice open it.
            return frame.low
        previous = frame.low - 1
        # Otherwise the frame starts where the previous one visibly ended.
        if frame.low == self._next_seq or previous in self._fillers:
            return frame.low
        owner = self._owner.get(previous)
        if owner is not None and owner != frame.timestamp:
            return frame.low
        return None

    def _release(self, frame: _PartialFrame, start: int, result: AssemblyResult) -> None:
        assert frame.last is not None
        data = b"".join(frame.packets[seq].data for seq in range(start, frame.last + 1))
        result.frames.append(
            EncodedFrame(
                timestamp=frame.timestamp,
                data=data,
                keyframe=frame.keyframe,
                first_sequence=start & 0xFFFF,
                last_sequence=frame.last & 0xFFFF,
            )
        )
        self._forget(frame)
        self._next_seq = frame.last + 1
        self._skip_fillers()
        self.stats.frames_released += 1
        if frame.keyframe:
            self.stats.keyframes_released += 1
            self._waiting_for_keyframe = False

    def _abandon(self, frame: _PartialFrame) -> None:
        self._forget(frame)
        self._abandoned.append(frame.timestamp)
        end = frame.high if frame.last is None else frame.last
        self._next_seq = end + 1 if self._next_seq is None else max(self._next_seq, end + 1)
        self._skip_fillers()

    def _forget(self, frame: _PartialFrame) -> None:
        del self._frames[frame.timestamp]
        for seq in frame.packets:
            self._owner.pop(seq, None)
        self._packet_count -= len(frame.packets)

    def _skip_fillers(self) -> None:
        if self._next_seq is None:
            return
        while self._next_seq in self._fillers:
            self._fillers.discard(self._next_seq)
            self._next_seq += 1
        self._fillers = {seq for seq in self._fillers if seq > self._next_seq}

    def _is_behind(self, seq: int) -> bool:
        return self._next_seq is not None and seq < self._next_seq

    def _oldest(self) -> _PartialFrame:
        return min(self._frames.values(), key=lambda f: f.low)


# --------------------------------------------------------------------------------------
# Audio


@dataclass(frozen=True)
class AudioPacket:
    timestamp: int
    data: bytes


@dataclass(frozen=True)
class Concealment:
    """Ask the decoder to conceal `samples` of audio at `timestamp` (a packet never came)."""

    timestamp: int
    samples: int
    fec: bytes | None = None
    """The next packet, when the buffer already holds it: Opus rebuilds this one from its FEC."""


AudioOutput = AudioPacket | Concealment


@dataclass(frozen=True)
class AudioBufferSettings:
    packet_time: float = 0.020
    """Assumed until two consecutive packets show the real one."""
    min_packets: int = 1
    """One packet (20 ms) is the floor on a clean network: it absorbs the few ms of send-side
    scheduling jitter every sender has; aiortc's fixed prefetch holds four (≈ 80 ms)."""
    max_packets: int = 10
    jitter_factor: float = 4.0
    """Delay = 4 × the RFC 3550 jitter estimate. For Gaussian delay noise J ≈ 1.13 σ, so this
    covers ≈ 4.5 σ; the margin is for the heavier tails of real access links."""
    shrink_interval: float = 1.0
    """At most one packet (20 ms) of delay is given back per interval: shrinking too eagerly
    turns the next jitter burst into audible concealment."""
    quiet_level: int = 40
    """RFC 6464 level (−dBov) from which a packet is quiet enough to drop when shrinking."""
    max_quiet_wait: float = 2.0
    max_concealment: int = 5
    """Consecutive concealed packets before giving up (libopus fades PLC out by then anyway)."""
    catchup_packets: int = 3
    """Being this far behind schedule (or the target delay, if larger) drops instead of bursting."""
    capacity: int = 16
    transit_window: int = 100


@dataclass
class AudioBufferStats:
    played: int = 0
    concealed: int = 0
    late: int = 0
    duplicates: int = 0
    dropped_behind: int = 0
    dropped_shrinking: int = 0
    dropped_overflow: int = 0
    skipped_missing: int = 0


@dataclass(frozen=True)
class _Held:
    timestamp: int
    data: bytes
    level: int | None


class AdaptiveAudioBuffer:
    """An audio jitter buffer whose delay follows the measured jitter.

    Each packet is due at `timestamp / clock + base transit + delay`, where the base transit
    is the smallest arrival-minus-media time seen recently (the fastest the network has
    delivered) and the delay is a whole number of packets derived from the RFC 3550 jitter
    estimate. A missing packet turns into a `Concealment` when its due time passes.
    """

    def __init__(self, clock_rate: int = 48000, settings: AudioBufferSettings | None = None) -> None:
        self.settings = settings or AudioBufferSettings()
        self.stats = AudioBufferStats()
        self._clock_rate = clock_rate
        self._seq = Unwrapper(16)
        self._ts = Unwrapper(32)
        self._held: dict[int, _Held] = {}
        self._next_seq: int | None = None
        self._next_ts = 0
        self._samples_per_packet = round(clock_rate * self.settings.packet_time)
        self._transits: deque[float] = deque(maxlen=self.settings.transit_window)
        self._base_transit = 0.0
        self._jitter = 0.0
        self._last_in_order: tuple[int, int, float] | None = None
        self._delay_packets = self.settings.min_packets
        self._last_resize = -math.inf
        self._shrink_since: float | None = None
        self._concealed_in_row = 0
        self._stalled = False

    @property
    def jitter(self) -> float:
        """RFC 3550 interarrival jitter, in seconds."""
        return self._jitter

    @property
    def packet_duration(self) -> float:
        return self._samples_per_packet / self._clock_rate

    @property
    def target_delay(self) -> float:
        return self._delay_packets * self.packet_duration

    def __len__(self) -> int:
        return len(self._held)

    def push(self, sequence_number: int, timestamp: int, data: bytes, arrival: float, level: int | None = None) -> None:
        seq = self._seq.unwrap(sequence_number)
        ts = self._ts.unwrap(timestamp)
        if self._next_seq is None or (self._stalled and seq >= self._resume_from):
            self._resync(seq, ts)
        elif seq < self._next_seq:
            self.stats.late += 1
            return
        if seq in self._held:
            self.stats.duplicates += 1
            return
        self._measure(seq, ts, arrival)
        self._transits.append(arrival - ts / self._clock_rate)
        self._base_transit = min(self._transits)
        self._held[seq] = _Held(ts, data, level)
        while len(self._held) > self.settings.capacity:
            oldest = min(self._held)
            dropped = self._held.pop(oldest)
            self._next_seq, self._next_ts = oldest + 1, dropped.timestamp + self._samples_per_packet
            self.stats.dropped_overflow += 1
        self._grow(arrival)

    def pop(self, now: float, conceal: bool = True) -> list[AudioOutput]:
        """Everything due by `now`, in order: packets to decode and concealment requests.

        With `conceal=False` a missing packet is waited for instead (see the receiver's
        stall guard).
        """
        out: list[AudioOutput] = []
        if self._next_seq is None or self._stalled:
            return out
        self._plan_shrink(now)
        while self._due(self._next_ts) <= now:
            behind = now - self._due(self._next_ts) > self._catchup_tolerance
            held = self._held.pop(self._next_seq, None)
            if held is None:
                if not conceal:
                    break
                if behind and self._held:
                    self.stats.skipped_missing += 1
                elif self._concealed_in_row < self.settings.max_concealment:
                    following = self._held.get(self._next_seq + 1)
                    out.append(Concealment(
                        self._next_ts & 0xFFFFFFFF, self._samples_per_packet, following.data if following else None
                    ))
                    self._concealed_in_row += 1
                    self.stats.concealed += 1
                elif self._held:
                    # A long hole: jump to what we have rather than concealing further.
                    self.stats.skipped_missing += 1
                    self._next_seq = min(self._held)
                    self._next_ts = self._held[self._next_seq].timestamp
                    continue
                else:
                    self._stalled = True
                    break
                self._next_ts += self._samples_per_packet
            else:
                if behind and self._held:
                    self.stats.dropped_behind += 1
                elif self._shrink_now(held, now):
                    self.stats.dropped_shrinking += 1
                else:
                    out.append(AudioPacket(held.timestamp & 0xFFFFFFFF, held.data))
                    self._concealed_in_row = 0
                    self.stats.played += 1
                self._next_ts = held.timestamp + self._samples_per_packet
            self._next_seq += 1
        return out

    def next_due(self) -> float | None:
        if self._next_seq is None or self._stalled:
            return None
        return self._due(self._next_ts)

    # -- internals ----------------------------------------------------------------------

    def _resync(self, seq: int, ts: int) -> None:
        """First packet, or the stream resumes after a pause or outage: take this packet's
        timing as the new reference instead of playing it against stale history."""
        self._next_seq, self._next_ts = seq, ts
        self._transits.clear()
        self._last_in_order = None
        self._stalled = False
        self._concealed_in_row = 0

    @property
    def _resume_from(self) -> int:
        """Packets we concealed but never received may still come after a pause: play them."""
        assert self._next_seq is not None
        return self._next_seq - self._concealed_in_row

    @property
    def _catchup_tolerance(self) -> float:
        return max(self.settings.catchup_packets * self.packet_duration, self.target_delay)

    def _due(self, timestamp: int) -> float:
        return timestamp / self._clock_rate + self._base_transit + self.target_delay

    def _measure(self, seq: int, ts: int, arrival: float) -> None:
        last = self._last_in_order
        if last is not None and seq <= last[0]:
            return
        if last is not None:
            last_seq, last_ts, last_arrival = last
            d = (arrival - last_arrival) - (ts - last_ts) / self._clock_rate
            self._jitter += (abs(d) - self._jitter) / 16
            step = ts - last_ts
            if seq == last_seq + 1 and 0 < step <= self._clock_rate * 0.12:
                self._samples_per_packet = step
        self._last_in_order = (seq, ts, arrival)

    def _desired_packets(self) -> int:
        wanted = math.ceil(self.settings.jitter_factor * self._jitter / self.packet_duration - 1e-9)
        return min(self.settings.max_packets, max(self.settings.min_packets, wanted))

    def _grow(self, now: float) -> None:
        desired = self._desired_packets()
        if desired > self._delay_packets:
            # Growing is immediate: playout pauses for the difference, once.
            self._delay_packets = desired
            self._last_resize = now
            self._shrink_since = None

    def _plan_shrink(self, now: float) -> None:
        if (
            self._shrink_since is None
            and self._desired_packets() < self._delay_packets
            and now - self._last_resize >= self.settings.shrink_interval
        ):
            self._shrink_since = now

    def _shrink_now(self, held: _Held, now: float) -> bool:
        """Gives back one packet of delay by dropping a packet, preferably a quiet one: playing
        everything earlier instead would only move the delay into the sound card's buffer."""
        if self._shrink_since is None:
            return False
        if self._desired_packets() >= self._delay_packets:
            self._shrink_since = None
            return False
        quiet = held.level is None or held.level >= self.settings.quiet_level
        if not quiet and now - self._shrink_since < self.settings.max_quiet_wait:
            return False
        self._delay_packets -= 1
        self._last_resize = now
        self._shrink_since = None
        return True


# --------------------------------------------------------------------------------------
# Hand-offs


class DecoderQueue(Generic[T]):
    """Bounded, thread-safe hand-off from the event loop to a decoder thread.

    Without `is_keyframe` (audio) the oldest item makes room for the newest. With it (video)
    an overflow empties the queue, because queued delta frames depend on each other, and
    frames are then refused until a keyframe comes (`awaiting_keyframe`).
    """

    def __init__(self, capacity: int, is_keyframe: Callable[[T], bool] | None = None) -> None:
        self.capacity = capacity
        self.dropped = 0
        self.awaiting_keyframe = False
        self._is_keyframe = is_keyframe
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T) -> None:
        """Never blocks: the event loop calls it."""
        with self._cond:
            if self._closed:
                return
            if self._is_keyframe is None:
                if len(self._items) >= self.capacity:
                    self._items.popleft()
                    self.dropped += 1
            else:
                keyframe = self._is_keyframe(item)
                if keyframe:
                    self.awaiting_keyframe = False
                elif self.awaiting_keyframe:
                    self.dropped += 1
                    return
                if len(self._items) >= self.capacity:
                    self.dropped += len(self._items)
                    self._items.clear()
                    if not keyframe:
                        self.awaiting_keyframe = True
                        self.dropped += 1
                        return
            self._items.append(item)
            self._cond.notify()

    def get(self) -> T | None:
        """Blocks until an item arrives; None once closed."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            return self._items.popleft()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()


def put_dropping_oldest(queue: asyncio.Queue[T], item: T, limit: int) -> int:
    """Bounds a consumer's queue of decoded frames; returns how many old frames were dropped.

    Decoded frames do not depend on each other, so for video too the freshest frame wins: a
    slow consumer sees a lower frame rate instead of growing latency.
    """
    dropped = 0
    while queue.qsize() >= limit:
        queue.get_nowait()
        dropped += 1
    queue.put_nowait(item)
    return dropped
