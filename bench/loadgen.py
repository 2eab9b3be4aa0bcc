"""Load generator for `bench.capacity`: synthetic publishers and consumers, no codec work.

Encode once, send many. `encode_media()` encodes a few seconds of media once, with aiortc's
own encoders (VP8 640x480@30 at 500 kbps, VP8 320x240@15 tiles at 150 kbps, Opus 20 ms at
96 kbps), and keeps the RTP payloads aiortc's packetizer made of them. A synthetic publisher
replays those payloads in real time: no encoding in the load generator.

Publishing. A `SynthParticipant` signals like `kiosk_client.call.CallClient` (same
`SignalingClient`, same answer flow), but its publish transceivers carry a
`server.rtc.rtphooks.SenderFeed` (the server's own "send ready-made RTP" hook, the same SRTP,
header extensions, send history for NACK and sender-report counters) instead of a track.
Each stream is paced on the monotonic clock (video frame i due at start + i/fps, one Opus
packet every 20 ms); all packets of a frame go out back to back, as a browser's sender
without a pacer does. A keyframe request (PLI relayed by the server) restarts the loop at
its first frame, which is a keyframe; the loop wrapping around does the same, so the replay
has a keyframe every `loop seconds`.

Stamps. Every payload gets an 18-byte trailer (after the VP8/Opus bytes, so the SFU's
keyframe check on the payload's first bytes still works; nobody decodes):
magic "VZ", stream id (publisher number << 2 | kind), payload length, a per-stream packet
counter, and the CLOCK_MONOTONIC nanoseconds just before the packet went to SRTP. Every
process on the machine reads the same CLOCK_MONOTONIC, so a consumer computes
"received - sent" without any lookup.

Consuming. A consumer is a full peer connection (ICE, DTLS, SRTP) whose receive path is cut
short one step after SRTP: `RTCDtlsTransport._handle_rtp_data` (aiortc 1.16) is shadowed by
an instance attribute that parses the RTP header and the trailer with `struct`, and the
receivers are never started (no jitter buffer, no decoder thread, no receiver reports, no
NACK or PLI: loss is measured as it happens, not repaired). Per received stream it counts
packets, extends the RTP sequence number and the trailer counter, and bins
`received - sent` into a 50 us histogram. Loss in a window = (counter advance - packets
received) per stream, summed; the RTP sequence numbers give a second figure (what a
subscriber's RTP stack would see).

The worker (`python -m bench.loadgen --worker --media FILE`) takes JSON-line commands on
stdin and answers on stdout; `bench.capacity` drives one or two of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import logging
import os
import pickle
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.looplag import LoopLag
from bench.processes import ParentPipe

logger = logging.getLogger("bench.loadgen")

MAGIC = 0x565A  # "VZ"
TRAILER = struct.Struct(">HHHIQ")  # magic, stream id, payload length, counter, send ns
TRAILER_SIZE = TRAILER.size  # 18

KIND_AUDIO, KIND_VIDEO, KIND_TILE = 0, 1, 2
KIND_NAMES = ("audio", "video", "tile")

# Latency histogram: 50 us bins up to 100 ms, then 1 ms bins up to 10 s; the last bin holds
# everything later.
BIN_NS = 50_000
FINE_BINS = 2_000  # 100 ms
COARSE_NS = 1_000_000
N_BINS = FINE_BINS + 9_900
LATE_NS = 20_000_000  # packets later than this are also listed one by one (bounded)
LATE_KEEP = 20_000


# --- pre-encoded media ---------------------------------------------------------------------


@dataclass
class EncodedStream:
    """One looped stream: per frame, the RTP payloads aiortc's packetizer made."""

    kind: str  # "audio", "video", "tile"
    period_s: float  # frame interval
    ts_step: int  # RTP timestamp advance per frame
    mime: str  # "video/vp8" or "audio/opus"
    frames: list[list[bytes]] = field(default_factory=list)
    width: int = 0
    height: int = 0

    @property
    def seconds(self) -> float:
        return len(self.frames) * self.period_s

    @property
    def packets_per_s(self) -> float:
        return sum(len(f) for f in self.frames) / self.seconds

    @property
    def kbps(self) -> float:
        """Payload bitrate including the stamp trailer (RTP/SRTP headers not counted)."""
        total = sum(len(p) + TRAILER_SIZE for f in self.frames for p in f)
        return total * 8 / self.seconds / 1000

    def describe(self) -> str:
        size = f" {self.width}x{self.height}" if self.width else ""
        return (
            f"{self.kind}:{size} {1 / self.period_s:.0f} fps, {self.seconds:.1f} s loop, "
            f"{self.kbps:.0f} kbps payload, {self.packets_per_s:.1f} packets/s"
        )


class _CameraLike:
    """640x480 yuv420p frames a VP8 CBR encoder can hold near its target: a scrolling blocky
    texture (motion) plus a strip of fresh noise each frame (detail it cannot predict).
    bench/stamp.py's stamped frames carry a 16-row noise strip, which keeps libvpx at
    ~750 kbps even at its coarsest quantiser; 8 rows land on ~500 kbps."""

    def __init__(self, seed: int, width: int = 640, height: int = 480, strip: int = 8) -> None:
        import numpy as np

        self._np = np
        self.width, self.height, self.strip = width, height, strip
        self._rng = np.random.default_rng(seed)
        cells = self._rng.integers(40, 216, size=(height // 8, (2 * width) // 8), dtype=np.uint8)
        self._texture = np.kron(cells, np.ones((8, 8), dtype=np.uint8))
        self._chroma = np.full((height // 2, width), 128, dtype=np.uint8)

    def frame(self, i: int) -> Any:
        import av

        np, w, h = self._np, self.width, self.height
        image = np.empty((h * 3 // 2, w), dtype=np.uint8)
        shift = (i * 4) % w
        image[:h] = self._texture[:, shift : shift + w]
        row0 = (i * 8) % (h - self.strip)
        image[row0 : row0 + self.strip] = self._rng.integers(0, 256, size=(self.strip, w), dtype=np.uint8)
        image[h:] = self._chroma
        return av.VideoFrame.from_ndarray(image, format="yuv420p")


def _video_stream(kind: str, width: int, height: int, fps: int, bitrate: int, seconds: float) -> EncodedStream:
    from aiortc.codecs.vpx import Vp8Encoder

    source = _CameraLike(seed=11 if kind == "video" else 23)
    encoder = Vp8Encoder()
    # aiortc clamps target_bitrate to >= 250 kbps; a small tile wants less. This sets the
    # encoder's own field (bench only: aiortc 1.16 name mangling).
    encoder._Vp8Encoder__target_bitrate = bitrate  # type: ignore[attr-defined]
    stream = EncodedStream(kind, 1 / fps, 90000 // fps, "video/vp8", width=width, height=height)
    for i in range(max(1, round(seconds * fps))):
        frame = source.frame(i)
        if (width, height) != (frame.width, frame.height):
            frame = frame.reformat(width=width, height=height)
        frame.pts = i * (90000 // fps)
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=(i == 0))
        stream.frames.append(payloads)
    return stream


def _audio_stream(seconds: float) -> EncodedStream:
    import av
    import numpy as np
    from aiortc.codecs.opus import OpusEncoder

    rate, samples = 48000, 960
    encoder = OpusEncoder()
    rng = np.random.default_rng(5)
    stream = EncodedStream("audio", 0.02, samples, "audio/opus")
    t = np.arange(samples) / rate
    n = max(1, round(seconds / 0.02))
    index = 0
    while len(stream.frames) < n and index < n + 20:
        # Voice-like: a wobbling tone plus noise, loud and soft syllables.
        f0 = 180 + 40 * np.sin(index / 7)
        envelope = 0.25 + 0.2 * np.sin(index / 3) ** 2
        wave = envelope * (np.sin(2 * np.pi * f0 * (t + index * 0.02)) + 0.3 * rng.standard_normal(samples))
        pcm = np.clip(wave * 20000, -32767, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = rate
        frame.pts = index * samples
        frame.time_base = fractions.Fraction(1, rate)
        payloads, _ = encoder.encode(frame)
        if payloads:
            stream.frames.append(payloads)
        index += 1
    return stream


def encode_media(seconds: float, tile_seconds: float | None = None) -> dict[str, EncodedStream]:
    """Encodes the media every synthetic publisher replays (once per bench run)."""
    return {
        "video": _video_stream("video", 640, 480, 30, 500_000, seconds),
        "tile": _video_stream("tile", 320, 240, 15, 150_000, tile_seconds or seconds),
        "audio": _audio_stream(seconds),
    }


def save_media(media: dict[str, EncodedStream], path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(media, f, protocol=pickle.HIGHEST_PROTOCOL)


def load_media(path: Path) -> dict[str, EncodedStream]:
    with open(path, "rb") as f:
        return pickle.load(f)


# --- receive side: statistics ---------------------------------------------------------------


class Stats:
    """Everything this worker received and sent, for the current window."""

    def __init__(self) -> None:
        self.hist = [[0] * N_BINS for _ in KIND_NAMES]
        self.received = [0] * len(KIND_NAMES)
        self.sent = [0] * len(KIND_NAMES)
        self.corrupt = 0
        self.pace_late_ms: list[float] = []
        self.late: list[tuple[int, int]] = []  # (received ns, latency ns) above LATE_NS
        self.window_started_ns = 0

    def reset(self) -> None:
        self.hist = [[0] * N_BINS for _ in KIND_NAMES]
        self.received = [0] * len(KIND_NAMES)
        self.sent = [0] * len(KIND_NAMES)
        self.corrupt = 0
        self.pace_late_ms = []
        self.late = []
        self.window_started_ns = time.monotonic_ns()


class _Stream:
    """One stream as a consumer receives it (keyed by the SSRC the SFU chose for it)."""

    __slots__ = ("kind", "sid", "first_ctr", "max_ctr", "count", "ext_seq", "first_seq", "last_ns", "snap")

    def __init__(self, kind: int, sid: int, ctr: int, seq: int, now: int) -> None:
        self.kind = kind
        self.sid = sid
        self.first_ctr = ctr
        self.max_ctr = ctr
        self.count = 0
        self.ext_seq = seq
        self.first_seq = seq
        self.last_ns = now
        self.snap: tuple[int, int, int] | None = None


class Sink:
    """A consumer's receive path, one step after SRTP: count, check and time every packet."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.streams: dict[int, _Stream] = {}
        self.installed = False
        # Self-check of the loss figures: drop every Nth packet on arrival ($VZ_LOADGEN_TEST_DROP_EVERY).
        self._drop_every = int(os.environ.get("VZ_LOADGEN_TEST_DROP_EVERY", "0"))
        self._arrived = 0

    def install(self, dtls: Any) -> None:
        if self.installed:
            return
        # aiortc 1.16: RTCDtlsTransport._recv_next calls self._handle_rtp_data(data, arrival_time_ms=...)
        # with the SRTP-decrypted packet; an instance attribute shadows the method.
        dtls._handle_rtp_data = self.handle
        self.installed = True

    async def handle(self, data: bytes, arrival_time_ms: int) -> None:
        now = time.monotonic_ns()
        stats = self.stats
        if self._drop_every:
            self._arrived += 1
            if self._arrived % self._drop_every == 0:
                return
        size = len(data)
        if size < 12 + TRAILER_SIZE:
            stats.corrupt += 1
            return
        b0 = data[0]
        offset = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            offset += 4 + 4 * ((data[offset + 2] << 8) | data[offset + 3])
        end = size - data[-1] if b0 & 0x20 else size
        if end - offset < TRAILER_SIZE:
            stats.corrupt += 1
            return
        magic, sid, length, ctr, sent_ns = TRAILER.unpack_from(data, end - TRAILER_SIZE)
        if magic != MAGIC or length != end - offset - TRAILER_SIZE:
            stats.corrupt += 1
            return
        kind = sid & 3
        ssrc = int.from_bytes(data[8:12], "big")
        seq = (data[2] << 8) | data[3]
        stream = self.streams.get(ssrc)
        if stream is None:
            stream = self.streams[ssrc] = _Stream(kind, sid, ctr, seq, now)
        else:
            if ctr > stream.max_ctr:
                stream.max_ctr = ctr
            delta = (seq - stream.ext_seq) & 0xFFFF
            if delta < 0x8000:
                stream.ext_seq += delta
            stream.last_ns = now
        stream.count += 1
        stats.received[kind] += 1
        latency = now - sent_ns
        b = latency // BIN_NS
        if b >= FINE_BINS:
            b = FINE_BINS + (latency - FINE_BINS * BIN_NS) // COARSE_NS
            if b >= N_BINS:
                b = N_BINS - 1
        elif b < 0:
            b = 0
        stats.hist[kind][b] += 1
        if latency > LATE_NS and len(stats.late) < LATE_KEEP:
            stats.late.append((now, latency))

    def snapshot(self) -> None:
        for s in self.streams.values():
            s.snap = (s.max_ctr, s.count, s.ext_seq)

    def window_loss(self, into: dict[str, list[int]]) -> None:
        """Adds [expected by counter, received, expected by RTP seq] per kind for the window."""
        for s in self.streams.values():
            if s.snap is None:
                exp_ctr, got, exp_seq = s.max_ctr - s.first_ctr + 1, s.count, s.ext_seq - s.first_seq + 1
            else:
                exp_ctr, got, exp_seq = s.max_ctr - s.snap[0], s.count - s.snap[1], s.ext_seq - s.snap[2]
            row = into.setdefault(KIND_NAMES[s.kind], [0, 0, 0])
            row[0] += exp_ctr
            row[1] += got
            row[2] += exp_seq
            s.snap = None

    def receiving(self, within_ns: int = 1_500_000_000, kind: int | None = None) -> int:
        now = time.monotonic_ns()
        return sum(1 for s in self.streams.values()
                   if now - s.last_ns < within_ns and (kind is None or (s.kind == KIND_AUDIO) == (kind == KIND_AUDIO)))


def bin_ms(b: int) -> float:
    """The middle of histogram bin b, in ms."""
    if b < FINE_BINS:
        return (b + 0.5) * BIN_NS / 1e6
    return (FINE_BINS * BIN_NS + (b - FINE_BINS + 0.5) * COARSE_NS) / 1e6


# --- send side ------------------------------------------------------------------------------


def _feed_sender(feed: Any) -> Any:
    """`feed.send` as send(payload_type, marker, seq, timestamp, payload, audio_level), whichever
    SenderFeed this tree has: one taking those fields, or (until late Nov 2026) one RtpPacket."""
    import inspect

    if "payload_type" in inspect.signature(feed.send).parameters:

        async def send_fields(pt: int, marker: int, seq: int, ts: int, payload: bytes, level: Any) -> None:
            await feed.send(pt, marker, seq, ts, payload, audio_level=level)

        return send_fields

    from aiortc.rtp import RtpPacket

    async def send_packet(pt: int, marker: int, seq: int, ts: int, payload: bytes, level: Any) -> None:
        packet = RtpPacket(payload_type=pt, marker=marker, sequence_number=seq, timestamp=ts,
                           ssrc=feed.ssrc, payload=payload)
        if level is not None:
            packet.extensions.audio_level = level
        await feed.send(packet)

    return send_packet


class StreamSender:
    """Replays one pre-encoded stream through a SenderFeed, paced in real time."""

    def __init__(self, feed: Any, media: EncodedStream, sid: int, stats: Stats, audio_level: int = 30) -> None:
        self.feed = feed
        self.media = media
        self.sid = sid
        self.kind = sid & 3
        self.stats = stats
        self.audio_level = audio_level
        self.counter = 0
        self.seq = int.from_bytes(os.urandom(2), "big")
        self.ts = int.from_bytes(os.urandom(4), "big")
        self.index = 0
        self.task: asyncio.Task[None] | None = None
        self.keyframes_requested = 0
        self._restart = False
        if media.kind != "audio":
            feed.on_keyframe_request = self._keyframe_requested

    def _keyframe_requested(self) -> None:
        self._restart = True
        self.keyframes_requested += 1

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run_logged())

    @property
    def failure(self) -> str | None:
        if self.task is not None and self.task.done() and not self.task.cancelled() and self.task.exception():
            return repr(self.task.exception())
        return None

    async def _run_logged(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("sending %s stopped", self.media.kind)
            raise

    async def _run(self) -> None:
        feed, media, stats = self.feed, self.media, self.stats
        await feed._configured.wait()
        payload_type = feed.payload_type_for(media.mime)
        if payload_type is None:
            logger.warning("no payload type for %s", media.mime)
            return
        send = _feed_sender(feed)
        period_ns = int(media.period_s * 1e9)
        due = time.monotonic_ns()
        n_frames = len(media.frames)
        kind = self.kind
        while True:
            now = time.monotonic_ns()
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                now = time.monotonic_ns()
            if stats.window_started_ns and due >= stats.window_started_ns:
                stats.pace_late_ms.append((now - due) / 1e6)
            if self._restart:
                self._restart = False
                self.index = 0
            payloads = media.frames[self.index]
            self.index = (self.index + 1) % n_frames
            last = len(payloads) - 1
            for i, payload in enumerate(payloads):
                self.counter += 1
                trailer = TRAILER.pack(MAGIC, self.sid, len(payload), self.counter & 0xFFFFFFFF, time.monotonic_ns())
                try:
                    await send(
                        payload_type,
                        1 if (i == last and kind != KIND_AUDIO) else 0,
                        self.seq,
                        self.ts,
                        payload + trailer,
                        (True, self.audio_level) if kind == KIND_AUDIO else None,
                    )
                except ConnectionError:
                    pass
                self.seq = (self.seq + 1) & 0xFFFF
                stats.sent[kind] += 1
            self.ts = (self.ts + media.ts_step) & 0xFFFFFFFF
            due += period_ns
            if now - due > 1_000_000_000:
                due = now  # more than a second behind: do not burst to catch up

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


# --- one synthetic participant -------------------------------------------------------------------


class SynthParticipant:
    """Joins a room over signalling v1; publishes replayed media and/or consumes into a Sink."""

    def __init__(
        self,
        name: str,
        server: str,
        token: str,
        number: int,
        publish: dict[str, str],
        media: dict[str, EncodedStream],
        stats: Stats,
        audio_level: int = 30,
    ) -> None:
        from kiosk_client.signaling import SignalingClient

        self.name = name
        self.number = number
        self.publish = publish  # {"audio": "audio", "video": "video"|"tile"}
        self.media = media
        self.stats = stats
        self.audio_level = audio_level
        self.signaling = SignalingClient(server, token, self._on_message)
        self.sink = Sink(stats)
        self.pc: Any = None
        self.senders: dict[str, StreamSender] = {}
        self.expected_consumers = 0
        self.expected_audio = 0
        self.errors: list[str] = []
        self.joined = asyncio.Event()
        self.answered = asyncio.Event()
        self._offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._negotiator: asyncio.Task[None] | None = None
        self._patched: set[int] = set()

    async def start(self) -> None:
        welcome = await self.signaling.connect()
        self._negotiator = asyncio.ensure_future(self._negotiate())
        await self.signaling.send({"type": "join", "room": welcome["room"]})
        await asyncio.wait_for(self.joined.wait(), timeout=20)
        if self.publish:
            await self.signaling.send(
                {"type": "publish", "audio": "audio" in self.publish, "video": "video" in self.publish}
            )

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "joined":
            self.joined.set()
        elif kind == "offer":
            self._offers.put_nowait(message)
        elif kind == "error":
            self.errors.append(str(message.get("code")))
        elif kind == "removed":
            self.errors.append(f"removed:{message.get('reason')}")

    async def _negotiate(self) -> None:
        while True:
            offer = await self._offers.get()
            while not self._offers.empty():
                offer = self._offers.get_nowait()
            try:
                await self._answer(offer)
            except Exception as exc:
                logger.exception("%s: negotiation %s failed", self.name, offer.get("negotiation_id"))
                self.errors.append(f"negotiation:{exc!r}")

    def _new_pc(self) -> Any:
        from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCPeerConnection

        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in self.signaling.welcome.get("ice_servers", [])
        ]
        return RTCPeerConnection(RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))

    async def _answer(self, offer: dict[str, Any]) -> None:
        from aiortc import RTCSessionDescription

        from server.rtc.rtphooks import SenderFeed

        if self.pc is None:
            self.pc = self._new_pc()
        pc = self.pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        publish_mids = set(offer["publish"].values())
        for transceiver in pc.getTransceivers():
            self.sink.install(transceiver.receiver.transport)
            receiver = transceiver.receiver
            if transceiver.mid not in publish_mids and id(receiver) not in self._patched:
                # Never start aiortc's receiver: no jitter buffer, no decoder thread.
                self._patched.add(id(receiver))
                receiver.receive = _no_receive
        for kind, mid in offer["publish"].items():
            transceiver = next((t for t in pc.getTransceivers() if t.mid == mid), None)
            source = self.publish.get(kind)
            if transceiver is None or source is None:
                continue
            if kind not in self.senders:
                feed = SenderFeed(transceiver.sender, kind)
                code = KIND_AUDIO if kind == "audio" else (KIND_TILE if source == "tile" else KIND_VIDEO)
                sender = StreamSender(feed, self.media[source], (self.number << 2) | code, self.stats, self.audio_level)
                self.senders[kind] = sender
                sender.start()
            transceiver.direction = "sendonly"
        self.expected_consumers = len(offer["consumers"])
        self.expected_audio = sum(1 for c in offer["consumers"] if c.get("kind") == "audio")
        await pc.setLocalDescription(await pc.createAnswer())
        await self.signaling.send(
            {"type": "answer", "sdp": pc.localDescription.sdp, "negotiation_id": offer["negotiation_id"]}
        )
        self.answered.set()

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "expected": self.expected_consumers,
            "receiving": self.sink.receiving(),
            "expected_video": self.expected_consumers - self.expected_audio,
            "receiving_video": self.sink.receiving(kind=KIND_VIDEO),
            "expected_audio": self.expected_audio,
            "receiving_audio": self.sink.receiving(kind=KIND_AUDIO),
            "publishing": sum(1 for s in self.senders.values() if s.feed.ready),
            "pc_state": self.pc.connectionState if self.pc is not None else "none",
            "publish_wanted": len(self.publish),
            "errors": (self.errors + [f"sender:{s.failure}" for s in self.senders.values() if s.failure])[-5:],
            "keyframes_requested": sum(s.keyframes_requested for s in self.senders.values()),
        }

    async def close(self) -> None:
        if self._negotiator is not None:
            self._negotiator.cancel()
        for sender in self.senders.values():
            sender.stop()
        await self.signaling.close()
        if self.pc is not None:
            await self.pc.close()


async def _no_receive(parameters: Any) -> None:
    return None


# --- worker process ------------------------------------------------------------------------


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2)


class Worker:
    def __init__(self, media: dict[str, EncodedStream]) -> None:
        self.media = media
        self.stats = Stats()
        self.participants: list[SynthParticipant] = []
        self.lag = LoopLag()
        self._direct_sink: Sink | None = None

    async def join_many(self, specs: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(max(1, concurrency))
        failures: list[str] = []

        async def one(spec: dict[str, Any]) -> None:
            async with gate:
                p = SynthParticipant(
                    spec["name"], spec["server"], spec["token"], spec["number"], spec.get("publish") or {},
                    self.media, self.stats, spec.get("audio_level", 30),
                )
                self.participants.append(p)
                try:
                    await p.start()
                    await asyncio.wait_for(p.answered.wait(), timeout=spec.get("answer_timeout", 30))
                except Exception as exc:
                    failures.append(f"{spec['name']}: {exc!r}")

        started = time.monotonic()
        await asyncio.gather(*(one(s) for s in specs))
        return {"event": "joined", "n": len(specs), "failures": failures, "seconds": round(time.monotonic() - started, 2)}

    async def direct_start(self) -> dict[str, Any]:
        """A publisher and a consumer peer connection wired to each other in this process, no server:
        the floor of the bench's own send -> receive latency (both ends' SRTP and event loop)."""
        from aiortc import RTCConfiguration, RTCPeerConnection

        from server.rtc.rtphooks import SenderFeed

        pub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        sub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._direct = (pub, sub)
        senders = []
        for kind, source, code in (("video", "video", KIND_VIDEO), ("audio", "audio", KIND_AUDIO)):
            transceiver = pub.addTransceiver(kind, direction="sendonly")
            feed = SenderFeed(transceiver.sender, kind)
            senders.append(StreamSender(feed, self.media[source], (0x3FFF << 2) | code, self.stats))
        sink = Sink(self.stats)
        await pub.setLocalDescription(await pub.createOffer())
        await sub.setRemoteDescription(pub.localDescription)
        for transceiver in sub.getTransceivers():
            sink.install(transceiver.receiver.transport)
            transceiver.receiver.receive = _no_receive
        await sub.setLocalDescription(await sub.createAnswer())
        await pub.setRemoteDescription(sub.localDescription)
        for sender in senders:
            sender.start()
        self._direct_parts = (senders, sink)
        deadline = time.monotonic() + 15
        while sink.receiving() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._direct_sink = sink
        return {"event": "direct_started", "receiving": sink.receiving()}

    async def direct_stop(self) -> dict[str, Any]:
        senders, _sink = self._direct_parts
        for sender in senders:
            sender.stop()
        for pc in self._direct:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)
        self._direct_sink = None
        return {"event": "direct_stopped"}

    def _sinks(self) -> list[Sink]:
        sinks = [p.sink for p in self.participants]
        if self._direct_sink is not None:
            sinks.append(self._direct_sink)
        return sinks

    def status(self) -> dict[str, Any]:
        return {"event": "status", "participants": [p.status() for p in self.participants]}

    def window_start(self) -> dict[str, Any]:
        self.stats.reset()
        for sink in self._sinks():
            sink.snapshot()
        self.lag.take()
        return {"event": "window_started", "t": time.monotonic()}

    def window_end(self) -> dict[str, Any]:
        stats = self.stats
        loss: dict[str, list[int]] = {}
        for sink in self._sinks():
            sink.window_loss(loss)
        hist = {
            KIND_NAMES[k]: {str(i): c for i, c in enumerate(h) if c}
            for k, h in enumerate(stats.hist)
        }
        lags = self.lag.take()
        reply = {
            "event": "window",
            "t": time.monotonic(),
            "received": dict(zip(KIND_NAMES, stats.received)),
            "sent": dict(zip(KIND_NAMES, stats.sent)),
            "corrupt": stats.corrupt,
            "loss": loss,
            "hist": hist,
            "lag_max_ms": round(max(lags), 1) if lags else None,
            "lag_p99_ms": _p99(lags),
            "late": stats.late,
            "pace_late_p99_ms": _p99(stats.pace_late_ms),
            "errors": sorted({e for p in self.participants for e in p.errors}
                             | {f"sender:{s.failure}" for p in self.participants for s in p.senders.values()
                                if s.failure}),
        }
        stats.window_started_ns = 0
        return reply


async def worker_main(media_path: Path) -> int:
    pipe = await ParentPipe.open()

    import aiortc

    # Its receive-path hook points (see the module docstring) are aiortc's at server/rtc's version.
    from server.rtc.pin import AIORTC_VERSION

    if aiortc.__version__ != AIORTC_VERSION:
        pipe.emit({"event": "error", "message": f"bench.loadgen hooks were written for aiortc {AIORTC_VERSION}, "
                                                f"found {aiortc.__version__}"})
        return 1
    worker = Worker(load_media(media_path))
    worker.lag.start()
    pipe.emit({"event": "ready", "pid": os.getpid()})
    pending: set[asyncio.Task[None]] = set()

    async def run(msg: dict[str, Any]) -> None:
        try:
            reply = await worker.join_many(msg["participants"], msg.get("concurrency", 4))
        except Exception as exc:
            reply = {"event": "joined", "n": 0, "failures": [repr(exc)], "seconds": 0}
        reply["ref"] = msg.get("ref")
        pipe.emit(reply)

    while (msg := await pipe.command()) is not None:
        cmd = msg["cmd"]
        if cmd == "join_many":
            task = asyncio.ensure_future(run(msg))
            pending.add(task)
            task.add_done_callback(pending.discard)
            continue
        if cmd == "status":
            reply = worker.status()
        elif cmd == "direct_start":
            reply = await worker.direct_start()
        elif cmd == "direct_stop":
            reply = await worker.direct_stop()
        elif cmd == "window_start":
            reply = worker.window_start()
        elif cmd == "window_end":
            reply = worker.window_end()
        elif cmd == "close":
            pipe.emit({"event": "closing", "ref": msg.get("ref")})
            break
        else:
            reply = {"event": "error", "message": f"unknown command {cmd}"}
        reply["ref"] = msg.get("ref")
        pipe.emit(reply)
    # The bench tears the server down next: skip the slow per-connection close.
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help="serve bench.capacity over stdin/stdout")
    parser.add_argument("--media", type=Path, help="pre-encoded media (pickle from encode_media)")
    parser.add_argument("--encode", type=float, metavar="SECONDS", help="encode a loop, print its figures, exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.encode:
        started = time.monotonic()
        media = encode_media(args.encode)
        for stream in media.values():
            print(stream.describe())
        print(f"encoded in {time.monotonic() - started:.1f} s")
        return 0
    if args.worker:
        if args.media is None:
            parser.error("--worker needs --media")
        return asyncio.run(worker_main(args.media))
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
