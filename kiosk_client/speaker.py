"""Sound out of the kiosk: everyone's voices mixed, plus the chime and the ring, through SDL.

SDL plays to the system's default output: on the kiosk that is PulseAudio or PipeWire
(`SDL_AUDIODRIVER=pulseaudio`, see deploy/systemd/verzilvering-kiosk.service), whose
default sink is the echo canceller's virtual speaker (deploy/audio/), so whatever is played
here is also what gets removed from the microphone. ALSA directly works too
(`SDL_AUDIODRIVER=alsa`) but then nothing cancels the echo.

Each remote voice gets its own short buffer: playback starts once 40 ms are queued, and a
buffer that grows past 200 ms (the network delivered a burst) is cut back, so the delay
stays low — which matters when a group sings or exercises together.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import re
import sys
import threading
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

RATE = 48000
CHUNK = 480  # 10 ms
START_SAMPLES = RATE * 40 // 1000
MAX_SAMPLES = RATE * 200 // 1000
TRIM_TO_SAMPLES = RATE * 60 // 1000
SYSTEM = "__system__"


def volume_gain(level: int) -> float:
    """Level 6 is unchanged; each step is 3 dB (level 1: −15 dB, level 10: +12 dB)."""
    return 10 ** ((level - 6) * 3 / 20)


def tone(freqs: list[tuple[float, float]], amplitude: float = 0.35) -> np.ndarray:
    """A sequence of (frequency Hz, seconds) notes with soft edges, as int16 samples."""
    parts = []
    for freq, seconds in freqs:
        n = int(RATE * seconds)
        t = np.arange(n) / RATE
        wave = np.sin(2 * math.pi * freq * t) if freq > 0 else np.zeros(n)
        edge = min(n // 2, RATE // 100)
        envelope = np.ones(n)
        if edge:
            envelope[:edge] = np.linspace(0, 1, edge)
            envelope[-edge:] = np.linspace(1, 0, edge)
        parts.append(wave * envelope)
    samples = np.concatenate(parts) if parts else np.zeros(0)
    return (samples * amplitude * 32767).astype(np.int16)


SOUNDS = {
    # Two falling notes, like a doorbell: "someone is coming".
    "chime": tone([(880, 0.35), (0, 0.05), (660, 0.6)]),
    # A telephone-like double ring with a pause; repeated until answered.
    "ring": tone([(750, 0.4), (0, 0.2), (750, 0.4), (0, 1.5)]),
    # For the self-test.
    "test": tone([(523, 0.3), (659, 0.3), (784, 0.4)], amplitude=0.25),
}


class _Source:
    def __init__(self) -> None:
        self.buffer = np.zeros(0, dtype=np.int16)
        self.started = False
        self.resampler: Any = None


class Speaker:
    """Mixes any number of voices and system sounds into one SDL output."""

    def __init__(self, enabled: bool = True) -> None:
        self.available = False
        self.error: str | None = None
        self.samples_played = 0
        self.voice_samples_played = 0
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}
        self._system = np.zeros(0, dtype=np.int16)
        self._loop: np.ndarray | None = None
        self._gain = volume_gain(6)
        self._device: int | None = None
        self._sdl: Any = None
        # Kept referenced for as long as SDL may call it.
        self._c_callback = _CALLBACK(self._callback)
        if enabled:
            self._open()

    def _open(self) -> None:
        silence_alsa_errors()
        try:
            self._sdl = _sdl_library()
            if self._sdl.SDL_InitSubSystem(SDL_INIT_AUDIO) != 0:
                raise OSError(_sdl_error(self._sdl))
            want = _AudioSpec(freq=RATE, format=AUDIO_S16SYS, channels=1, samples=CHUNK, callback=self._c_callback)
            have = _AudioSpec()
            device = self._sdl.SDL_OpenAudioDevice(None, 0, ctypes.byref(want), ctypes.byref(have), 0)
            if device == 0:
                raise OSError(_sdl_error(self._sdl))
            self._device = device
            self._sdl.SDL_PauseAudioDevice(device, 0)
            self.available = True
        except Exception as exc:  # no sound card, no sound server: the kiosk still shows video
            self.error = str(exc) or type(exc).__name__
            logger.warning(
                "no sound: this machine has no sound card or sound server the kiosk can use (%s); "
                "it goes on without sound (see deploy/audio/)", self.error,
            )

    # --- feeding ------------------------------------------------------------------------

    def feed(self, source_id: str, frame: Any) -> None:
        """A decoded `av.AudioFrame` from one participant."""
        if not self.available:
            return
        source = self._sources.get(source_id)
        if source is None:
            import av

            source = self._sources[source_id] = _Source()
            source.resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        chunks = [f.to_ndarray().reshape(-1) for f in source.resampler.resample(frame)]
        if not chunks:
            return
        samples = np.concatenate(chunks).astype(np.int16, copy=False)
        with self._lock:
            buffer = np.concatenate((source.buffer, samples))
            if buffer.size > MAX_SAMPLES:
                buffer = buffer[-TRIM_TO_SAMPLES:]
            source.buffer = buffer

    def remove(self, source_id: str) -> None:
        with self._lock:
            self._sources.pop(source_id, None)

    def clear_voices(self) -> None:
        with self._lock:
            self._sources.clear()

    def set_volume(self, level: int) -> None:
        self._gain = volume_gain(level)

    def play(self, name: str) -> None:
        """`chime` once, `ring` until `play("none")`, `none` stops system sounds."""
        with self._lock:
            if name == "none":
                self._system = np.zeros(0, dtype=np.int16)
                self._loop = None
                return
            sound = SOUNDS[name]
            self._system = sound.copy()
            self._loop = sound if name == "ring" else None

    # --- the SDL audio thread -----------------------------------------------------------

    def _callback(self, userdata: Any, stream: Any, length: int) -> None:
        """Runs on SDL's audio thread (ctypes takes the GIL for it)."""
        try:
            out = self._mix(length // 2)
            ctypes.memmove(stream, out.ctypes.data, length)
        except Exception:  # never let an exception reach C; play silence instead
            ctypes.memset(stream, 0, length)

    def _mix(self, n: int) -> np.ndarray:
        mix = np.zeros(n, dtype=np.float32)
        voices = 0
        with self._lock:
            for source in self._sources.values():
                if not source.started:
                    if source.buffer.size < START_SAMPLES:
                        continue
                    source.started = True
                take = source.buffer[:n]
                source.buffer = source.buffer[n:]
                if take.size < n:
                    source.started = False  # ran dry: wait for a little reserve again
                mix[: take.size] += take
                voices += take.size
            mix *= self._gain
            system = self._system[:n]
            self._system = self._system[n:]
            if self._system.size < n and self._loop is not None:
                self._system = np.concatenate((self._system, self._loop))
            if system.size:
                # Calls must be heard even when the voices are turned down.
                mix[: system.size] += system * max(self._gain, 1.0)
        out = np.ascontiguousarray(np.clip(mix, -32768, 32767).astype(np.int16))
        self.samples_played += n
        self.voice_samples_played += voices
        return out

    def close(self) -> None:
        # Through ctypes the GIL is released while SDL waits for its audio thread, which may
        # be waiting for the GIL to finish a callback: no deadlock.
        if self._device is not None:
            self._sdl.SDL_CloseAudioDevice(self._device)
            self._device = None
        self.available = False


SDL_INIT_AUDIO = 0x00000010
AUDIO_S16SYS = 0x8010 if sys.byteorder == "little" else 0x9010
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int)


class _AudioSpec(ctypes.Structure):
    _fields_ = [
        ("freq", ctypes.c_int),
        ("format", ctypes.c_uint16),
        ("channels", ctypes.c_uint8),
        ("silence", ctypes.c_uint8),
        ("samples", ctypes.c_uint16),
        ("padding", ctypes.c_uint16),
        ("size", ctypes.c_uint32),
        ("callback", _CALLBACK),
        ("userdata", ctypes.c_void_p),
    ]


_SDL: ctypes.CDLL | None = None
# alsa-lib's error handler: (file, line, function, err, fmt, ...); the varargs are ignored.
_AlsaErrorHandler = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
_ALSA_HANDLER = _AlsaErrorHandler(lambda *_: None)
_SILENCED: set[str] = set()


def silence_alsa_errors() -> None:
    """Keeps alsa-lib from printing its own lines to stderr (about nine per device opened on
    a machine without a sound card); what matters reaches the log once, in words, from where
    it is used. Every copy counts: the system's (SDL loads it) and PyAV's bundled one."""
    system = ctypes.util.find_library("asound")
    loaded: set[str] = set()
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "libasound" in line}
    except OSError:
        pass
    for name in sorted(({system} if system else set()) | loaded):
        if name in _SILENCED:
            continue
        try:
            ctypes.CDLL(name).snd_lib_error_set_handler(_ALSA_HANDLER)
        except (OSError, AttributeError):
            continue
        _SILENCED.add(name)


def _sdl_library() -> ctypes.CDLL:
    """The SDL2 that pygame-ce loaded into this process (one SDL, one audio subsystem)."""
    global _SDL
    if _SDL is not None:
        return _SDL
    import pygame  # noqa: F401  (loads its SDL2)

    path = None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit("/", 1)[-1].strip()
                if re.match(r"libSDL2-2[.-]", name) and ".so" in name:
                    path = line[line.index("/"):].strip()
                    break
    except OSError:
        pass
    path = path or ctypes.util.find_library("SDL2-2.0") or ctypes.util.find_library("SDL2")
    if path is None:
        raise OSError("SDL2 library not found")
    lib = ctypes.CDLL(path)
    lib.SDL_InitSubSystem.argtypes = [ctypes.c_uint32]
    lib.SDL_InitSubSystem.restype = ctypes.c_int
    lib.SDL_OpenAudioDevice.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(_AudioSpec), ctypes.POINTER(_AudioSpec), ctypes.c_int]
    lib.SDL_OpenAudioDevice.restype = ctypes.c_uint32
    lib.SDL_PauseAudioDevice.argtypes = [ctypes.c_uint32, ctypes.c_int]
    lib.SDL_PauseAudioDevice.restype = None
    lib.SDL_CloseAudioDevice.argtypes = [ctypes.c_uint32]
    lib.SDL_CloseAudioDevice.restype = None
    lib.SDL_GetError.restype = ctypes.c_char_p
    _SDL = lib
    return lib


def _sdl_error(lib: ctypes.CDLL) -> str:
    message = lib.SDL_GetError()
    return message.decode(errors="replace") if message else "unknown SDL error"
