"""The tuned receive path for our aiortc clients.

`install_tuned_receiver(pc)` hooks every `RTCRtpReceiver` of a client peer connection before
it starts, replacing aiortc 1.16's jitter buffers and decoder hand-off with the pieces in
`kiosk_client.jitterbuffer`:

- video frames go to the decoder the moment they are complete (marker bit), an unrecoverable
  hole costs at most a 100 ms deadline plus a keyframe (up to 500 ms on a link whose
  measured round trips need it), and lost packets are NACKed once older than the link's
  recent reordering, then again every 25 ms until that deadline (aiortc asks at once, once);
- audio plays out one packet after arrival on a clean network, adapts to jitter, and for a
  missing packet decodes the next one's in-band FEC if it is already here, else asks
  libopus for packet-loss concealment instead of waiting (`kiosk_client.opus`);
- the decoder input and the track's output queue are bounded, dropping so latency stays flat.

What stays aiortc's: SRTP, routing, RTCP receiver reports (fed from the same statistics),
REMB, RTX unwrapping, the video decoders and `RemoteStreamTrack`. The takeover itself (the
per-instance method replacements written against aiortc 1.16.0, shared with the SFU's
`ReceiverTap`) is server/rtc/receiver.py's: this module touches no aiortc internals.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.codecs import depayload, get_decoder, is_rtx
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtcrtpreceiver import TimestampMapper
from aiortc.rtp import RtpPacket

from server.rtc.receiver import ReceiverTakeover, receiver_started, take_over_receivers
from server.rtc.rtpseq import NackTracker, LearntDelay
from server.tasks import TaskOwner

from .opus import OpusDecoder, is_opus
from .jitterbuffer import (
    AdaptiveAudioBuffer,
    AssemblyResult,
    AudioBufferSettings,
    AudioPacket,
    Concealment,
    DecoderQueue,
    EncodedFrame,
    VideoAssemblerSettings,
    VideoFrameAssembler,
    VideoPacket,
    inspect_video_payload,
    put_dropping_oldest,
)

logger = logging.getLogger(__name__)

OPUS_CLOCK_RATE = 48000


@dataclass(frozen=True)
class TunedReceiverSettings:
    video: VideoAssemblerSettings = VideoAssemblerSettings()
    audio: AudioBufferSettings = AudioBufferSettings()
    nack_retry_interval: float = 0.025
    """About one round trip to the SFU plus its processing; a retry sooner only duplicates.
    The least spacing: on a slower link the tracker waits the round trip it learnt."""
    nack_reorder_min: float = 0.005
    nack_reorder_max: float = 0.04
    """A gap is NACKed once older than the reordering seen lately (`LearntDelay`), within
    these bounds: home Wi-Fi reorders packets by tens of milliseconds, and a NACK for each
    overtaken packet was a retransmission for nothing. The maximum leaves the retries time
    within the assembler's deadline."""
    keyframe_request_interval: float = 0.25
    """A keyframe normally arrives one round trip plus one frame interval after a PLI; asking
    again sooner would only make the sender encode several."""
    video_decoder_queue: int = 8
    """Must hold the burst released when a hole is finally repaired (deadline / frame interval)."""
    audio_decoder_queue: int = 5
    video_output_queue: int = 2
    audio_output_queue: int = 5
    loop_stall: float = 0.010
    stall_grace: float = 0.005
    """When our timer fires `loop_stall` late, the event loop was blocked and packets are
    likely still queued in the socket: for `stall_grace` a missing packet is waited for rather
    than concealed or given up on. Without this, a CPU hiccup turned into concealment of
    audio that arrived a millisecond later."""


# --------------------------------------------------------------------------------------
# Loss recovery state, kept free of aiortc so it can be tested with plain numbers.


class KeyframeRequests:
    """Rate-limited picture loss indications, repeated until a keyframe reaches the decoder."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self.wanted = False
        self.sent = 0
        self._last = -math.inf

    def want(self) -> None:
        self.wanted = True

    def satisfied(self) -> None:
        self.wanted = False

    def take(self, now: float) -> bool:
        if not self.wanted or self._last + self.min_interval > now:
            return False
        self._last = now
        self.sent += 1
        return True

    def next_time(self) -> float | None:
        return self._last + self.min_interval if self.wanted else None


# --------------------------------------------------------------------------------------
# Decoding


@dataclass
class ReceiverStats:
    decoded_frames: int = 0
    decode_errors: int = 0
    output_dropped: int = 0
    decoder_dropped: int = 0
    keyframe_requests: int = 0
    nack_requests: int = 0


class _DecoderThread:
    """Decodes on its own thread (FFmpeg releases the GIL) and hands frames to the event loop."""

    def __init__(
        self,
        kind: str,
        queue: DecoderQueue[Any],
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[Any], None],
        on_error: Callable[[], None],
    ) -> None:
        self.queue = queue
        self._loop = loop
        self._deliver = deliver
        self._on_error = on_error
        # aiortc's name for the thread this one replaces, so thread accounting stays the same.
        self._thread = threading.Thread(target=self._run, name=f"{kind}-decoder", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self.queue.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        decoder = None
        codec_name = None
        while True:
            item = self.queue.get()
            if item is None:
                break
            codec, work = item[0], item[1]
            if codec.name != codec_name:
                # Opus through libopus itself: FFmpeg's wrapper cannot decode in-band FEC.
                decoder, codec_name = (OpusDecoder() if is_opus(codec) else get_decoder(codec)), codec.name
            assert decoder is not None
            try:
                frames = self._decode(decoder, codec, work)
            except av.FFmpegError as exc:
                logger.warning("tuned %s decoder failed: %s", codec.name, exc)
                self._call(self._on_error)
                continue
            except Exception:
                # A dead decoder thread would freeze the track for good; skip the frame instead.
                logger.exception("tuned %s decoder raised", codec.name)
                self._call(self._on_error)
                continue
            for frame in frames:
                self._call(self._deliver, frame)
        self._call(self._deliver, None)

    def _decode(self, decoder: Any, codec: RTCRtpCodecParameters, work: JitterFrame | Concealment) -> list[Any]:
        if isinstance(decoder, OpusDecoder):
            if isinstance(work, JitterFrame):
                return decoder.decode(work.data, work.timestamp)
            return decoder.conceal(work.timestamp, work.samples, work.fec)
        if isinstance(work, JitterFrame):
            return list(decoder.decode(work))
        # Not Opus: nothing to conceal with; leave the gap to the consumer.
        return []

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more


# --------------------------------------------------------------------------------------
# The receiver hook


class TunedReceiver(ReceiverTakeover):
    """Takes over one `RTCRtpReceiver`'s RTP handling before `receive()` starts it."""

    def __init__(self, receiver: RTCRtpReceiver, kind: str, settings: TunedReceiverSettings) -> None:
        super().__init__(receiver, kind)
        self.settings = settings
        self.stats = ReceiverStats()
        self.assembler = VideoFrameAssembler(settings.video) if kind == "video" else None
        self.audio_buffer = AdaptiveAudioBuffer(OPUS_CLOCK_RATE, settings.audio) if kind == "audio" else None
        self.nack = (
            NackTracker(
                settings.nack_retry_interval,
                settings.video.deadline,
                reorder=LearntDelay(settings.nack_reorder_min, settings.nack_reorder_max),
                max_deadline=settings.video.max_deadline,
            )
            if kind == "video"
            else None
        )
        self.keyframes = KeyframeRequests(settings.keyframe_request_interval)
        self._codec: RTCRtpCodecParameters | None = None
        self._mapper = TimestampMapper()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decoder: _DecoderThread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._losses_held_until = -math.inf
        # RTCP feedback sends (NACKs, PLIs), ended with the receiver.
        self._tasks = TaskOwner("kiosk-receiver")
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------

    def _starting(self, parameters: RTCRtpReceiveParameters) -> None:
        primary = next((c for c in parameters.codecs if not is_rtx(c)), None)
        if self.audio_buffer is not None and primary is not None and primary.clockRate != OPUS_CLOCK_RATE:
            # G.711 and G.722 count RTP time at 8 kHz.
            self.audio_buffer = AdaptiveAudioBuffer(primary.clockRate, self.settings.audio)
        self._loop = asyncio.get_running_loop()
        if self.receiver.track is not None:
            if self.kind == "video":
                queue: DecoderQueue[Any] = DecoderQueue(self.settings.video_decoder_queue, lambda item: item[2])
            else:
                queue = DecoderQueue(self.settings.audio_decoder_queue)
            self._decoder = _DecoderThread(self.kind, queue, self._loop, self._deliver, self._on_decode_error)

    def _stopping(self) -> None:
        self._shutdown()

    def _peer_ended(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        """Ends the track like aiortc does: the decoder thread delivers None last."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tasks.cancel()
        if self._decoder is not None:
            self._decoder.stop()

    # -- RTP -----------------------------------------------------------------------------

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        if not self.enabled or self._closed:
            return
        remb = self._remb(packet, arrival_time_ms)
        if remb is not None:
            await self._send_rtcp(remb)
        self._mark_active(packet.ssrc)
        codec = self.codecs.get(packet.payload_type)
        if codec is None:
            return
        retransmission = is_rtx(codec)
        unwrapped = self._count_and_unwrap(packet, codec, retransmission)
        if unwrapped is None:
            return
        if retransmission:
            packet = unwrapped
            codec = self.codecs[packet.payload_type]

        assert self._loop is not None
        now = self._loop.time()
        self.media_ssrc = packet.ssrc
        self._codec = codec
        if self.assembler is not None and self.nack is not None:
            self.nack.patient = self.assembler.waiting_for_keyframe
            lost = self.nack.add(packet.sequence_number, now, retransmission)
            self.assembler.deadline = self.nack.current_deadline
            # Completed frames go to the decoder first; the requests follow within microseconds.
            self._take_assembly(self._add_video(self.assembler, packet, codec, now))
            if lost:
                self.stats.nack_requests += 1
                await self._send_rtcp_nack(packet.ssrc, lost)
            if self.keyframes.take(now):
                await self._send_pli()
        elif self.audio_buffer is not None and packet.payload:
            level = packet.extensions.audio_level
            self.audio_buffer.push(
                packet.sequence_number, packet.timestamp, packet.payload, now, level[1] if level else None
            )
            self._pump_audio(now)
        self._schedule()

    def _add_video(
        self, assembler: VideoFrameAssembler, packet: RtpPacket, codec: RTCRtpCodecParameters, now: float
    ) -> AssemblyResult:
        expire = now >= self._losses_held_until
        if not packet.payload:
            return assembler.add_padding(packet.sequence_number, now, expire)
        try:
            data = depayload(codec, packet.payload)
        except ValueError:
            return AssemblyResult()
        frame_start, keyframe = inspect_video_payload(codec.mimeType, packet.payload)
        return assembler.add(
            VideoPacket(packet.sequence_number, packet.timestamp, bool(packet.marker), data, frame_start, keyframe),
            now,
            expire,
        )

    def _take_assembly(self, result: AssemblyResult) -> None:
        for frame in result.frames:
            self._submit_video(frame)
        if result.keyframe_needed:
            self.keyframes.want()

    def _submit_video(self, frame: EncodedFrame) -> None:
        assert self.assembler is not None and self.nack is not None
        if self._decoder is not None and self._codec is not None:
            queue = self._decoder.queue
            queue.put((self._codec, JitterFrame(frame.data, self._mapper.map(frame.timestamp)), frame.keyframe))
            self.stats.decoder_dropped = queue.dropped
            if queue.awaiting_keyframe:
                # The decoder fell behind and its queue was flushed: the assembler must skip
                # to a keyframe as well, or it would feed deltas the decoder cannot use.
                self.assembler.request_keyframe()
                self.keyframes.want()
                return
        if frame.keyframe:
            self.keyframes.satisfied()
            self.nack.forget_before(frame.first_sequence)

    def _pump_audio(self, now: float) -> None:
        assert self.audio_buffer is not None
        if self._decoder is None or self._codec is None:
            return
        for item in self.audio_buffer.pop(now, conceal=now >= self._losses_held_until):
            timestamp = self._mapper.map(item.timestamp)
            work: JitterFrame | Concealment
            if isinstance(item, AudioPacket):
                work = JitterFrame(item.data, timestamp)
            else:
                work = Concealment(timestamp, item.samples)
            self._decoder.queue.put((self._codec, work))
        self.stats.decoder_dropped = self._decoder.queue.dropped

    # -- timers --------------------------------------------------------------------------

    def _schedule(self) -> None:
        """One timer per receiver, armed for the earliest of playout, deadline, NACK and PLI."""
        if self._closed or self._loop is None:
            return
        held = self._losses_held_until
        candidates = [self.keyframes.next_time(), self.nack.next_due() if self.nack else None]
        for loss_decision in (
            self.audio_buffer.next_due() if self.audio_buffer else None,
            self.assembler.next_deadline() if self.assembler else None,
        ):
            if loss_decision is not None:
                candidates.append(max(loss_decision, held))
        wake = min((t for t in candidates if t is not None), default=None)
        if self._timer is not None:
            if wake is not None and self._timer.when() <= wake:
                return  # firing early is harmless: the callback re-plans
            self._timer.cancel()
            self._timer = None
        if wake is not None:
            self._timer = self._loop.call_at(wake, self._on_timer)

    def _on_timer(self) -> None:
        assert self._timer is not None
        scheduled = self._timer.when()
        self._timer = None
        if self._closed or self._loop is None:
            return
        now = self._loop.time()
        if now - scheduled > self.settings.loop_stall:
            self._losses_held_until = now + self.settings.stall_grace
        if self.audio_buffer is not None:
            self._pump_audio(now)
        if self.assembler is not None and self.nack is not None:
            if now >= self._losses_held_until:
                self._take_assembly(self.assembler.poll(now))
            retries = self.nack.due(now)
            if retries and self.media_ssrc is not None:
                self.stats.nack_requests += 1
                self._tasks.spawn(self._send_rtcp_nack(self.media_ssrc, retries), name="kiosk-nack-send")
            if self.keyframes.take(now):
                self._tasks.spawn(self._send_pli(), name="kiosk-pli-send")
        self._schedule()

    async def _send_pli(self) -> None:
        if self.media_ssrc is not None:
            self.stats.keyframe_requests += 1
            await self._request_keyframe(self.media_ssrc)

    # -- decoder callbacks (event loop thread) -------------------------------------------

    def _deliver(self, frame: Any) -> None:
        queue = self._track_queue()
        if queue is None:
            return
        if frame is None:
            queue.put_nowait(None)
            return
        self.stats.decoded_frames += 1
        limit = self.settings.video_output_queue if self.kind == "video" else self.settings.audio_output_queue
        self.stats.output_dropped += put_dropping_oldest(queue, frame, limit)

    def _on_decode_error(self) -> None:
        self.stats.decode_errors += 1
        if self.assembler is not None and not self._closed:
            # Later deltas would decode into garbage: freeze on the last good picture instead.
            self.assembler.request_keyframe()
            self.keyframes.want()
            self._schedule()


# --------------------------------------------------------------------------------------
# Installation


def tune_receiver(receiver: RTCRtpReceiver, kind: str, settings: TunedReceiverSettings | None = None) -> TunedReceiver:
    existing = tuned(receiver)
    if existing is not None:
        return existing
    if receiver_started(receiver):
        raise RuntimeError("the tuned receive path must be installed before the receiver starts")
    hook = TunedReceiver(receiver, kind, settings or TunedReceiverSettings())
    receiver._verzilvering_tuned = hook  # type: ignore[attr-defined]
    return hook


def tuned(receiver: RTCRtpReceiver) -> TunedReceiver | None:
    return getattr(receiver, "_verzilvering_tuned", None)


def install_tuned_receiver(pc: RTCPeerConnection, settings: TunedReceiverSettings | None = None) -> None:
    """Tunes every receiver `pc` has or will have. Call it right after creating `pc`; in
    `CallClient._new_peer_connection` that is the line after `pc = RTCPeerConnection(...)`:

        install_tuned_receiver(pc)
    """
    if getattr(pc, "_verzilvering_tuned", False):
        return
    take_over_receivers(pc, lambda receiver, kind: tune_receiver(receiver, kind, settings))
    pc._verzilvering_tuned = True  # type: ignore[attr-defined]


__all__ = [
    "KeyframeRequests",
    "NackTracker",
    "TunedReceiver",
    "TunedReceiverSettings",
    "install_tuned_receiver",
    "tune_receiver",
    "tuned",
]
