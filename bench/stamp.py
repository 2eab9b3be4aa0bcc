"""Stamped test media: video and audio whose content says when it was captured.

Every peer in a latency run lives in one process (or reads the same CLOCK_MONOTONIC),
so the sender keeps a table "stamp -> send time" and a receiver that reads a stamp out
of a *decoded* frame looks its send time up there. Nothing rides in RTP headers or
side channels: what is measured is what a viewer would see or hear.

Video (640x480 yuv420p, 30 fps)
    The top half of the luma plane is a 8x3 grid of 80x80 px blocks, each black (Y=16)
    or white (Y=235): 16 bits of a frame counter plus an 8-bit check byte
    (low ^ high ^ 0x5A). A reader takes the mean of each block's central 40x40 px, and
    refuses the frame if any block is ambiguous (mean within 60 of mid-grey) or the
    check byte disagrees. Flat 80x80 blocks survive VP8 even at its coarsest quantiser.
    The bottom half is a scrolling noise texture with a fresh noise strip each frame, so
    the encoder has camera-like work and fills its bitrate (the packets per frame, and so
    the forwarding load, resemble real video).
    Send time = when the source track's `recv()` hands the frame to the sender (before
    encoding). Receive time = when the subscriber's `track.recv()` returns the decoded
    frame. Latency therefore includes encode, packetisation, network, jitter buffer
    and decode: glass-to-glass minus camera and display.

Audio (48 kHz stereo s16, 20 ms frames)
    Silence, with a 40 ms beep every 120 ms (2 frames on, 4 off). A beep is three
    simultaneous tones, one from each of three sets of eight frequencies: 512 codes,
    i.e. the beep counter modulo 512 (61 s before a code repeats). The receiver finds
    the onset (a frame whose RMS jumps above a threshold after at least two quiet
    frames), then reads the code from the FFT of the onset frame plus the next one
    (strongest candidate per set, and it must beat the runner-up by 4x). The code maps
    back to the newest beep with that code sent before the onset was received.
    Send time = when the source track returned the beep's first frame; receive time =
    when the decoded frame carrying the onset came out of `track.recv()`. Opus's 6.5 ms
    look-ahead moves the onset inside that same 20 ms frame, so it adds no whole frame.

Tracks pace themselves on the monotonic clock (frame i is due at start + i * period)
and never sleep-drift: a late recv() returns the overdue frame at once.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

WIDTH, HEIGHT = 640, 480
FPS = 30
VIDEO_CLOCK = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)

AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)

# --- video stamp layout -------------------------------------------------------------------
BLOCK = 80
COLS = WIDTH // BLOCK  # 8
ROWS = 3  # 16 counter bits + 8 check bits
BLACK, WHITE = 16, 235
_MARGIN = 60  # a block mean within this of 125.5 is "unreadable"
_CENTER = 20  # sample the central (BLOCK - 2*_CENTER)^2 px of a block

# --- audio stamp layout -------------------------------------------------------------------
BEEP_FRAMES = 2
BEEP_PERIOD_FRAMES = 6
TONE_SETS = (
    tuple(400 + 100 * i for i in range(8)),  # 400..1100 Hz
    tuple(1400 + 200 * i for i in range(8)),  # 1400..2800 Hz
    tuple(3200 + 400 * i for i in range(8)),  # 3200..6000 Hz
)
CODES = 8 ** len(TONE_SETS)
TONE_AMPLITUDE = 0.2  # of full scale, per tone
ONSET_RMS = 0.03
QUIET_RMS = 0.01


def _check_byte(counter: int) -> int:
    return ((counter & 0xFF) ^ (counter >> 8) ^ 0x5A) & 0xFF


def stamp_bits(counter: int) -> list[int]:
    counter &= 0xFFFF
    word = counter | (_check_byte(counter) << 16)
    return [(word >> i) & 1 for i in range(COLS * ROWS)]


class VideoStamper:
    """Builds 640x480 yuv420p frames carrying a counter."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        half = HEIGHT // 2
        # Blocky noise (8x8 cells) twice as wide as the frame, scrolled per frame.
        cells = rng.integers(40, 216, size=(half // 8, (2 * WIDTH) // 8), dtype=np.uint8)
        self._texture = np.kron(cells, np.ones((8, 8), dtype=np.uint8))
        self._rng = rng
        self._chroma = np.full((HEIGHT // 2, WIDTH), 128, dtype=np.uint8)

    def frame(self, counter: int) -> av.VideoFrame:
        image = np.empty((HEIGHT * 3 // 2, WIDTH), dtype=np.uint8)
        y = image[:HEIGHT]
        bits = stamp_bits(counter)
        for row in range(ROWS):
            for col in range(COLS):
                value = WHITE if bits[row * COLS + col] else BLACK
                y[row * BLOCK : (row + 1) * BLOCK, col * BLOCK : (col + 1) * BLOCK] = value
        top = ROWS * BLOCK
        shift = (counter * 4) % WIDTH
        y[top:] = self._texture[: HEIGHT - top, shift : shift + WIDTH]
        # A strip of fresh noise: content the encoder cannot predict, as a camera gives.
        strip = 16
        row0 = top + (counter * 8) % (HEIGHT - top - strip)
        y[row0 : row0 + strip] = self._rng.integers(0, 256, size=(strip, WIDTH), dtype=np.uint8)
        image[HEIGHT:] = self._chroma
        frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts = counter * (VIDEO_CLOCK // FPS)
        frame.time_base = VIDEO_TIME_BASE
        return frame


def read_video_stamp(frame: av.VideoFrame) -> int | None:
    """The counter a decoded frame carries, or None when it cannot be read reliably."""
    if frame.width != WIDTH or frame.height != HEIGHT or frame.format.name not in ("yuv420p", "yuvj420p"):
        frame = frame.reformat(width=WIDTH, height=HEIGHT, format="yuv420p")
    plane = frame.planes[0]
    luma = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
    band = luma[: ROWS * BLOCK, :WIDTH].reshape(ROWS, BLOCK, COLS, BLOCK)
    means = band[:, _CENTER : BLOCK - _CENTER, :, _CENTER : BLOCK - _CENTER].mean(axis=(1, 3))
    flat = means.reshape(-1)
    if np.any(np.abs(flat - (BLACK + WHITE) / 2) < _MARGIN):
        return None
    word = 0
    for i, m in enumerate(flat):
        if m > (BLACK + WHITE) / 2:
            word |= 1 << i
    counter = word & 0xFFFF
    if (word >> 16) != _check_byte(counter):
        return None
    return counter


# --- audio -----------------------------------------------------------------------------


def beep_code(beep: int) -> tuple[int, ...]:
    code = beep % CODES
    return tuple((code >> (3 * i)) & 7 for i in range(len(TONE_SETS)))


def code_value(digits: tuple[int, ...]) -> int:
    return sum(d << (3 * i) for i, d in enumerate(digits))


class AudioStamper:
    """Builds 20 ms s16 stereo frames: silence with coded beeps."""

    def __init__(self) -> None:
        self._silence = np.zeros((1, AUDIO_SAMPLES * 2), dtype=np.int16)
        self._t = np.arange(AUDIO_SAMPLES * BEEP_FRAMES) / AUDIO_RATE

    def beep_of(self, index: int) -> tuple[int, int] | None:
        """(beep number, frame within the beep) when frame `index` is part of a beep."""
        beep, phase = divmod(index, BEEP_PERIOD_FRAMES)
        return (beep, phase) if phase < BEEP_FRAMES else None

    def frame(self, index: int) -> av.AudioFrame:
        where = self.beep_of(index)
        if where is None:
            data = self._silence
        else:
            beep, phase = where
            digits = beep_code(beep)
            wave = np.zeros_like(self._t)
            for tones, d in zip(TONE_SETS, digits):
                wave += TONE_AMPLITUDE * np.sin(2 * np.pi * tones[d] * self._t)
            chunk = wave[phase * AUDIO_SAMPLES : (phase + 1) * AUDIO_SAMPLES]
            pcm = (chunk * 32767).astype(np.int16)
            data = np.repeat(pcm, 2).reshape(1, -1)  # interleaved stereo
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * AUDIO_SAMPLES
        frame.time_base = AUDIO_TIME_BASE
        return frame


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """The frame as mono float samples in [-1, 1] (aiortc's Opus decoder gives packed s16)."""
    name = frame.format.name
    scale = 32768.0 if name.startswith("s16") else 2147483648.0 if name.startswith("s32") else 1.0
    data = frame.to_ndarray().astype(np.float64) / scale
    if frame.format.is_planar:
        return data.mean(axis=0)
    return data.reshape(-1, len(frame.layout.channels)).mean(axis=1)


class AudioStampReader:
    """Finds beep onsets in a stream of decoded frames and reads their codes."""

    def __init__(self) -> None:
        self._quiet = 0
        self._pending: tuple[float, np.ndarray] | None = None
        self.unreadable = 0

    def feed(self, frame: av.AudioFrame, received_at: float) -> tuple[int, float] | None:
        """Returns (code, onset receive time) once a beep's code has been read."""
        samples = _mono(frame)
        rms = float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0
        if self._pending is not None:
            onset_at, first = self._pending
            self._pending = None
            code = _read_code(np.concatenate([first, samples]), frame.sample_rate or AUDIO_RATE)
            self._quiet = 0
            if code is None:
                self.unreadable += 1
                return None
            return code, onset_at
        if rms >= ONSET_RMS and self._quiet >= 2:
            self._pending = (received_at, samples)
            self._quiet = 0
            return None
        self._quiet = self._quiet + 1 if rms < QUIET_RMS else 0
        return None


def _read_code(samples: np.ndarray, rate: int) -> int | None:
    window = np.hanning(samples.size)
    spectrum = np.abs(np.fft.rfft(samples * window))
    resolution = rate / samples.size
    digits = []
    for tones in TONE_SETS:
        energy = []
        for f in tones:
            b = int(round(f / resolution))
            energy.append(float(spectrum[max(0, b - 1) : b + 2].sum()))
        order = sorted(range(len(tones)), key=lambda i: energy[i], reverse=True)
        if energy[order[0]] < 4 * max(energy[order[1]], 1e-9):
            return None
        digits.append(order[0])
    return code_value(tuple(digits))


# --- logs ------------------------------------------------------------------------------


@dataclass
class SendLog:
    """What a publisher's source tracks handed to their senders, and when."""

    video: dict[int, float] = field(default_factory=dict)  # counter -> send time
    beeps: list[float] = field(default_factory=list)  # beep number -> send time
    audio: list[float] = field(default_factory=list)  # every audio frame's send time

    def video_sent_between(self, t0: float, t1: float) -> set[int]:
        return {c for c, t in self.video.items() if t0 <= t < t1}

    def audio_between(self, t0: float, t1: float) -> list[float]:
        return [t for t in self.audio if t0 <= t < t1]

    def beeps_sent_between(self, t0: float, t1: float) -> list[int]:
        return [b for b, t in enumerate(self.beeps) if t0 <= t < t1]

    def beep_for_code(self, code: int, received_at: float) -> int | None:
        for beep in range(len(self.beeps) - 1, -1, -1):
            if beep % CODES == code and self.beeps[beep] <= received_at:
                return beep
        return None


@dataclass
class ReceiveLog:
    """What one subscriber decoded, and when (raw: resolved against a SendLog later).

    Kept raw so a subscriber can live in another process: it only needs the shared
    monotonic clock, and the publisher's process maps stamps to send times afterwards.
    """

    name: str
    joined_at: float | None = None
    first_video_at: float | None = None
    first_audio_at: float | None = None
    video: dict[int, float] = field(default_factory=dict)  # counter -> first decode time
    video_frames: int = 0
    video_unreadable: int = 0
    audio_frames: int = 0
    audio_onsets: list[tuple[int, float]] = field(default_factory=list)  # (code, onset time)
    audio_unreadable: int = 0
    # A sink subscriber receives every RTP packet but decodes nothing (load, not probe):
    # it records when each video frame's last packet (marker bit) and each audio packet came.
    sink: bool = False
    sink_video_at: list[float] = field(default_factory=list)
    sink_audio_at: list[float] = field(default_factory=list)
    on_first_video: Callable[["ReceiveLog"], None] | None = field(default=None, repr=False)
    _audio_reader: AudioStampReader = field(default_factory=AudioStampReader, repr=False)

    def on_frame(self, kind: str, frame: av.Frame, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if kind == "video":
            self.video_frames += 1
            counter = read_video_stamp(frame)  # type: ignore[arg-type]
            if counter is None:
                self.video_unreadable += 1
            else:
                self.video.setdefault(counter, now)
            if self.first_video_at is None:
                self.first_video_at = now
                if self.on_first_video is not None:
                    self.on_first_video(self)
        else:
            self.audio_frames += 1
            if self.first_audio_at is None:
                self.first_audio_at = now
            found = self._audio_reader.feed(frame, now)  # type: ignore[arg-type]
            self.audio_unreadable = self._audio_reader.unreadable
            if found is not None:
                self.audio_onsets.append(found)

    def on_sink_packet(self, kind: str, marker: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if kind == "audio":
            self.sink_audio_at.append(now)
        elif marker:
            self.sink_video_at.append(now)
            if self.first_video_at is None:
                self.first_video_at = now
                if self.on_first_video is not None:
                    self.on_first_video(self)

    # --- crossing a process boundary ---

    _FIELDS = ("name", "joined_at", "first_video_at", "first_audio_at", "video_frames",
               "video_unreadable", "audio_frames", "audio_unreadable", "sink", "sink_video_at", "sink_audio_at")

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {k: getattr(self, k) for k in self._FIELDS}
        data["video"] = [[c, t] for c, t in self.video.items()]
        data["audio_onsets"] = [[c, t] for c, t in self.audio_onsets]
        return data

    def load(self, data: dict[str, object]) -> None:
        for k in self._FIELDS:
            setattr(self, k, data[k])
        self.video = {int(c): float(t) for c, t in data["video"]}  # type: ignore[union-attr]
        self.audio_onsets = [(int(c), float(t)) for c, t in data["audio_onsets"]]  # type: ignore[union-attr]

    # --- resolving against the publisher's log ---

    def video_unknown(self, sent: SendLog) -> int:
        return sum(1 for c in self.video if c not in sent.video)

    def beeps(self, sent: SendLog) -> dict[int, float]:
        """Beep number -> onset receive time, for every onset whose code maps to a sent beep."""
        out: dict[int, float] = {}
        for code, onset_at in self.audio_onsets:
            beep = sent.beep_for_code(code, onset_at)
            if beep is not None:
                out.setdefault(beep, onset_at)
        return out

    def video_latencies_ms(self, sent: SendLog, t0: float, t1: float) -> list[float]:
        """Latency of every stamped frame *decoded* within [t0, t1)."""
        return [(r - sent.video[c]) * 1000 for c, r in self.video.items() if t0 <= r < t1 and c in sent.video]

    def audio_latencies_ms(self, sent: SendLog, t0: float, t1: float) -> list[float]:
        return [(r - sent.beeps[b]) * 1000 for b, r in self.beeps(sent).items() if t0 <= r < t1]


# --- tracks ----------------------------------------------------------------------------

StamperT = TypeVar("StamperT", VideoStamper, AudioStamper)


class _PacedTrack(MediaStreamTrack, Generic[StamperT]):
    """Sends the stamper's frames one every `period` seconds from the first, and notes in
    the log (`_sent`) when each went out."""

    period: float

    def __init__(self, log: SendLog, stamper: StamperT) -> None:
        super().__init__()
        self.log = log
        self._stamper = stamper
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        index = await self._next_slot()
        frame = self._stamper.frame(index)
        self._sent(index, time.monotonic())
        return frame

    def _sent(self, index: int, at: float) -> None:
        raise NotImplementedError

    async def _next_slot(self) -> int:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        index = self._index
        self._index += 1
        delay = self._start + index * self.period - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.readyState != "live":
            raise MediaStreamError
        return index


class StampedVideoTrack(_PacedTrack[VideoStamper]):
    kind = "video"
    period = 1 / FPS

    def __init__(self, log: SendLog) -> None:
        super().__init__(log, VideoStamper())

    def _sent(self, index: int, at: float) -> None:
        self.log.video[index & 0xFFFF] = at


class StampedAudioTrack(_PacedTrack[AudioStamper]):
    kind = "audio"
    period = AUDIO_SAMPLES / AUDIO_RATE

    def __init__(self, log: SendLog) -> None:
        super().__init__(log, AudioStamper())

    def _sent(self, index: int, at: float) -> None:
        self.log.audio.append(at)
        where = self._stamper.beep_of(index)
        if where is not None and where[1] == 0:
            assert where[0] == len(self.log.beeps)
            self.log.beeps.append(at)
