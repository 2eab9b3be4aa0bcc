"""The tuned receive path on real aiortc peers over loopback (the pin on the aiortc internals
its takeover uses is tests/test_rtphooks_pin.py)."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket, is_rtcp
from av import VideoFrame

from kiosk_client.rtpreceiver import (
    KeyframeRequests,
    NackTracker,
    TunedReceiver,
    install_tuned_receiver,
    tuned,
)

VIDEO_CLOCK = 90000
FPS = 30


# -- pure pieces -------------------------------------------------------------------------------


def test_nack_is_retried_until_the_deadline() -> None:
    nack = NackTracker(retry_interval=0.025, deadline=0.1)
    assert nack.add(100, 0.0) == []
    assert nack.add(103, 0.001) == [101, 102]
    assert nack.due(0.02) == []
    retry_at = nack.next_due()
    assert retry_at is not None and retry_at == pytest.approx(0.026)
    assert nack.due(retry_at) == [101, 102]
    nack.add(101, 0.03)  # the retransmission arrived
    assert nack.due(0.052) == [102]
    assert nack.due(0.078) == [102]
    assert nack.due(0.102) == []  # past the deadline: the frame is gone, stop asking
    assert nack.missing == []


def test_nack_wraps_and_gives_up_on_outages() -> None:
    nack = NackTracker(retry_interval=0.025, deadline=0.1, max_missing=50)
    nack.add(65534, 0.0)
    assert nack.add(1, 0.01) == [65535, 0]
    assert nack.add(500, 0.02) == []  # 498 lost: a keyframe, not NACK, will fix that
    assert nack.missing == []


def test_nack_forgets_what_a_keyframe_replaced() -> None:
    nack = NackTracker(retry_interval=0.025, deadline=0.1)
    nack.add(10, 0.0)
    nack.add(20, 0.0)
    nack.forget_before(15)
    assert nack.missing == [15, 16, 17, 18, 19]


def test_keyframe_requests_are_rate_limited_and_repeated() -> None:
    requests = KeyframeRequests(min_interval=0.25)
    assert not requests.take(0.0)
    requests.want()
    assert requests.take(0.0)
    assert not requests.take(0.1)
    assert requests.next_time() == pytest.approx(0.25)
    assert requests.take(0.25)
    requests.satisfied()
    assert not requests.take(1.0) and requests.next_time() is None


# -- real peers ------------------------------------------------------------------------------


class PatternTrack(MediaStreamTrack):
    """Paced, moving video so VP8 sends real delta frames of a few packets each."""

    kind = "video"

    def __init__(self, fps: int = FPS, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.fps = fps
        self._count = 0
        self._start: float | None = None
        self._y = np.tile(np.arange(width, dtype=np.uint8), (height, 1))
        self._uv = np.full((height // 2, width), 128, dtype=np.uint8)

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._count / self.fps - time.monotonic()))
        y = np.roll(self._y, self._count * 4, axis=1)
        frame = VideoFrame.from_ndarray(np.concatenate([y, self._uv]), format="yuv420p")
        frame.pts = self._count * VIDEO_CLOCK // self.fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return frame


class Recorder:
    """Drains a remote track like a kiosk would, noting when each frame came out."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.track = track
        self.frames: list[tuple[float, int]] = []  # (arrival, pts)
        self.ended = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await self.track.recv()
                assert frame.pts is not None
                self.frames.append((loop.time(), frame.pts))
        except MediaStreamError:
            self.ended.set()

    @property
    def advancing(self) -> bool:
        pts = [p for _, p in self.frames]
        return len(pts) >= 2 and all(b > a for a, b in zip(pts, pts[1:], strict=False))


@dataclass(eq=False)
class VideoPacketDropper:
    """Wraps a sender's transport to drop one video packet (and optionally its retransmissions)."""

    sender: RTCRtpSender
    after: float
    drop_retransmissions: bool
    first_timestamp: int | None = field(default=None, init=False)
    dropped: RtpPacket | None = field(default=None, init=False)
    dropped_at: float | None = field(default=None, init=False)
    retransmissions_dropped: int = field(default=0, init=False)
    _start: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        transport = self.sender.transport
        self._send_rtp = transport._send_rtp
        transport._send_rtp = self._filter  # type: ignore[method-assign]

    async def _filter(self, data: bytes) -> None:
        if is_rtcp(data) or not self._drop(RtpPacket.parse(data)):
            await self._send_rtp(data)

    def _drop(self, packet: RtpPacket) -> bool:
        now = asyncio.get_running_loop().time()
        if packet.ssrc == self.sender._ssrc:
            if self.first_timestamp is None:
                self.first_timestamp, self._start = packet.timestamp, now
            if self.dropped is None and self._start is not None and now - self._start >= self.after:
                self.dropped, self.dropped_at = packet, now
                return True
            retransmitted = self.dropped is not None and packet.sequence_number == self.dropped.sequence_number
        else:
            # RTX: the original sequence number leads the payload (RFC 4588).
            retransmitted = (
                packet.ssrc == self.sender._rtx_ssrc
                and self.dropped is not None
                and int.from_bytes(packet.payload[:2], "big") == self.dropped.sequence_number
            )
        if retransmitted and self.drop_retransmissions:
            self.retransmissions_dropped += 1
            return True
        return False

    @property
    def dropped_pts(self) -> int:
        """The dropped packet's frame as the receiver numbers it (relative to the first frame)."""
        assert self.dropped is not None and self.first_timestamp is not None
        return (self.dropped.timestamp - self.first_timestamp) % (1 << 32)


async def negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


CallPeers = tuple[RTCPeerConnection, RTCPeerConnection, dict[str, Recorder]]
Call = Callable[..., Awaitable[CallPeers]]


@pytest.fixture
async def call() -> AsyncIterator[Call]:
    pcs: list[RTCPeerConnection] = []

    async def _start(*, tuned_path: bool = True, fps: int = FPS) -> CallPeers:
        sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.extend([sender, receiver])
        if tuned_path:
            install_tuned_receiver(receiver)
        recorders: dict[str, Recorder] = {}
        receiver.on("track", lambda track: recorders.__setitem__(track.kind, Recorder(track)))
        sender.addTrack(PatternTrack(fps))
        sender.addTrack(AudioStreamTrack())
        await negotiate(sender, receiver)
        return sender, receiver, recorders

    yield _start
    for pc in pcs:
        await pc.close()


def video_sender(pc: RTCPeerConnection) -> RTCRtpSender:
    return next(s for s in pc.getSenders() if s.track is not None and s.track.kind == "video")


def tuned_video(pc: RTCPeerConnection) -> TunedReceiver:
    hook = next(tuned(t.receiver) for t in pc.getTransceivers() if t.kind == "video")
    assert hook is not None
    return hook


async def test_tuned_call_decodes_advancing_vp8_and_opus(call: Call) -> None:
    _, receiver, recorders = await call()
    await asyncio.sleep(2.0)
    video, audio = recorders["video"], recorders["audio"]
    assert len(video.frames) >= 30 and video.advancing
    assert len(audio.frames) >= 50 and audio.advancing
    for transceiver in receiver.getTransceivers():
        hook = tuned(transceiver.receiver)
        assert hook is not None and hook._started, "the hook must be in place before receive()"
    hook = tuned_video(receiver)
    assert hook.assembler is not None
    assert hook.assembler.stats.frames_released >= 30
    assert hook.assembler.stats.frames_dropped_incomplete == 0
    assert hook.stats.decode_errors == 0
    # aiortc's receiver reports still see the stream.
    inbound = [s for s in (await receiver.getStats()).values() if s.type == "inbound-rtp"]
    assert {s.kind for s in inbound} == {"audio", "video"}
    assert all(s.packetsReceived > 0 for s in inbound)


async def resumed_after(dropper: VideoPacketDropper, video: Recorder, *, include_dropped_frame: bool) -> float:
    assert dropper.dropped_at is not None
    for at, pts in video.frames:
        later = pts >= dropper.dropped_pts if include_dropped_frame else pts > dropper.dropped_pts
        if at >= dropper.dropped_at and later:
            return at - dropper.dropped_at
    raise AssertionError("video never resumed")


async def _one_video_packet_lost(call: Call, *, repairable: bool) -> tuple[TunedReceiver, Recorder, VideoPacketDropper]:
    """A call that loses one video packet 1 s in (and, unless `repairable`, every retransmission
    of it), with video back within 200 ms: the receiver's video hook, its frames, the dropper."""
    sender, receiver, recorders = await call()
    dropper = VideoPacketDropper(video_sender(sender), after=1.0, drop_retransmissions=not repairable)
    await asyncio.sleep(2.0)
    assert dropper.dropped is not None
    video = recorders["video"]
    # Repaired, the lost packet's own frame is shown; otherwise the first frame after it.
    assert await resumed_after(dropper, video, include_dropped_frame=repairable) < 0.2
    return tuned_video(receiver), video, dropper


async def test_lost_packet_is_repaired_by_nack_and_video_resumes_quickly(call: Call) -> None:
    hook, video, _ = await _one_video_packet_lost(call, repairable=True)
    assert hook.stats.nack_requests >= 1
    assert hook.assembler is not None and hook.assembler.stats.frames_dropped_incomplete == 0
    assert video.advancing  # the repaired frame was decoded in order, nothing skipped


async def test_unrepairable_loss_costs_a_keyframe_and_video_resumes_within_200ms(call: Call) -> None:
    hook, video, dropper = await _one_video_packet_lost(call, repairable=False)
    assert hook.assembler is not None
    assert hook.assembler.stats.frames_dropped_incomplete == 1
    assert hook.stats.keyframe_requests >= 1
    assert dropper.retransmissions_dropped >= 2, "NACK must have been retried"
    assert hook.stats.decode_errors == 0  # no broken delta reached the decoder
    assert len([1 for at, _ in video.frames if at > dropper.dropped_at + 0.3]) >= 10  # type: ignore[operator]


async def test_closing_ends_tracks_and_joins_decoder_threads(call: Call) -> None:
    _, receiver, recorders = await call()
    await asyncio.sleep(0.5)
    hooks = [tuned(t.receiver) for t in receiver.getTransceivers()]
    decoders = [hook._decoder for hook in hooks if hook is not None and hook._decoder is not None]
    assert len(decoders) == 2 and all(d.alive for d in decoders)
    await receiver.close()
    for recorder in recorders.values():
        await asyncio.wait_for(recorder.ended.wait(), timeout=2)
    assert not any(d.alive for d in decoders)


async def test_install_is_idempotent_and_refuses_started_receivers(call: Call) -> None:
    _, receiver, _ = await call()
    install_tuned_receiver(receiver)  # no-op on an already tuned connection
    _, plain_receiver, recorders = await call(tuned_path=False)
    deadline = asyncio.get_running_loop().time() + 5
    while not recorders["video"].frames:
        assert asyncio.get_running_loop().time() < deadline, "the plain call never started"
        await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match="before the receiver starts"):
        install_tuned_receiver(plain_receiver)
