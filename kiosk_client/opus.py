"""The kiosk's Opus: in-band FEC when it sends, and FEC or real concealment when a packet is lost.

Opus can carry a coarse copy of each packet's speech inside the next packet (in-band FEC,
"LBRR"). A receiver that lost packet n but holds n+1 decodes n from it: the word is still
there, a little duller, instead of being guessed by concealment. aiortc's Opus encoder never
turns this on, and FFmpeg's libopus decoder cannot decode it (it always passes
decode_fec=0), so:

- `FecOpusEncoder` is aiortc's encoder with libopus's `fec` and `packet_loss` options, used
  when the server's offer says listeners decode FEC (`useinbandfec=1`, `opus_offer`). At the kiosk's
  speech bitrate libopus then codes in its hybrid mode, whose SILK layer carries the FEC.
- `OfferedRateOpusEncoder` sends at the bitrate the offer asks for: a voice's 32 kbit/s
  (what browsers send; aiortc's fixed 96 kbit/s was 40 % of a weak 250 kbit/s line, per
  speaker), or music mode's `maxaveragebitrate`, changed in the middle of a call.
- `OpusDecoder` calls the libopus PyAV bundles directly (ctypes; its API has no structures,
  only an opaque decoder handle): `decode` for a packet, `conceal` for a missing one, with
  the next packet's FEC when the jitter buffer already holds it, else libopus's packet-loss
  concealment. Its frames are what aiortc's decoder gives: s16, stereo, 48 kHz.
"""

from __future__ import annotations

import ctypes
import fractions
from ctypes import POINTER, c_char_p, c_int, c_int16, c_int32, c_void_p
from functools import cache
from typing import NamedTuple

import numpy as np
from aiortc.codecs.base import Encoder
from aiortc.codecs.opus import SAMPLES_PER_FRAME, OpusEncoder
from av import AudioFrame
from av.frame import Frame
from av.packet import Packet
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

from .libvpx import bundled_library

SAMPLE_RATE = 48000
CHANNELS = 2
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
# The loss libopus plans its FEC for (libopus's packet_loss_perc): it spends more of the
# bitrate on the copy the higher this is. 10 % suits home Wi-Fi on a bad evening; a clean
# link pays only the slightly lower quality of the main copy.
EXPECTED_LOSS_PCT = 10
# RFC 6716: at most 120 ms per packet.
MAX_FRAME_SAMPLES = 5760
# A voice: libwebrtc's default for Opus, which is what a family member's browser sends.
SPEECH_BITRATE_BPS = 32_000
# RFC 7587 §6.1: the range of maxaveragebitrate.
OPUS_BITRATE_RANGE_BPS = (6_000, 510_000)


class OpusError(RuntimeError):
    """libopus refused a call; the message carries libopus's own explanation."""


class OpusOffer(NamedTuple):
    """What an offer asks of an Opus sender."""

    fec: bool  # RFC 7587 `useinbandfec=1`: the listeners decode in-band FEC
    bitrate_bps: int  # its `maxaveragebitrate` (music mode), held to RFC 7587's range, else a voice's


def opus_offer(sdp: str) -> OpusOffer:
    """What an SDP asks of an Opus sender, over all its Opus codecs."""
    fec, bitrate = False, SPEECH_BITRATE_BPS
    for media in SessionDescription.parse(sdp).media:
        for codec in media.rtp.codecs:
            if codec.mimeType.lower() != "audio/opus":
                continue
            fec = fec or codec.parameters.get("useinbandfec") == 1
            if "maxaveragebitrate" in codec.parameters:
                low, high = OPUS_BITRATE_RANGE_BPS
                bitrate = max(low, min(high, int(codec.parameters["maxaveragebitrate"])))
    return OpusOffer(fec, bitrate)


class FecOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder (voip, 20 ms) at `bitrate_bps` with in-band FEC switched on."""

    def __init__(self, bitrate_bps: int = SPEECH_BITRATE_BPS) -> None:
        super().__init__()
        self.codec.bit_rate = bitrate_bps
        # PyAV opens the codec on the first frame, with these options.
        self.codec.options = {**self.codec.options, "fec": "1", "packet_loss": str(EXPECTED_LOSS_PCT)}


class OfferedRateOpusEncoder(Encoder):
    """The kiosk's Opus sender: FEC, at the bitrate the latest offer asks for.

    FFmpeg's libopus wrapper takes its bitrate only when it opens, so a new bitrate opens a
    new encoder, on the encoding thread between two packets, which continues the old one's
    timestamps: listeners hear one packet's seam, not a jump back in time.
    """

    def __init__(self, bitrate_bps: int = SPEECH_BITRATE_BPS) -> None:
        # Set from the event loop, read on aiortc's encoding thread: one attribute, one read.
        self.bitrate_bps = bitrate_bps
        self._encoder = FecOpusEncoder(bitrate_bps)
        self._encoding_bps = bitrate_bps
        self._offset = 0
        self._next_timestamp = 0

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int | None]:
        wanted = self.bitrate_bps
        if wanted != self._encoding_bps:
            self._encoder = FecOpusEncoder(wanted)
            self._encoding_bps = wanted
            self._offset = self._next_timestamp
        packets, timestamp = self._encoder.encode(frame, force_keyframe)
        if timestamp is None:
            return packets, None
        timestamp += self._offset
        self._next_timestamp = timestamp + SAMPLES_PER_FRAME * len(packets)
        return packets, timestamp

    def pack(self, packet: Packet) -> tuple[list[bytes], int]:
        return self._encoder.pack(packet)


@cache
def load() -> ctypes.CDLL:
    lib = ctypes.CDLL(bundled_library("opus"))
    signatures: dict[str, tuple[object, list[object]]] = {
        "opus_get_version_string": (c_char_p, []),
        "opus_strerror": (c_char_p, [c_int]),
        "opus_decoder_create": (c_void_p, [c_int32, c_int, POINTER(c_int)]),
        "opus_decode": (c_int, [c_void_p, c_char_p, c_int32, POINTER(c_int16), c_int, c_int]),
        "opus_decoder_destroy": (None, [c_void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


class OpusDecoder:
    """A libopus decoder for one stream; `decode` and `conceal` return aiortc-like frames."""

    def __init__(self) -> None:
        self._lib = load()
        error = c_int(0)
        self._state = self._lib.opus_decoder_create(SAMPLE_RATE, CHANNELS, ctypes.byref(error))
        if error.value != 0 or not self._state:
            raise OpusError(f"opus_decoder_create: {self._lib.opus_strerror(error.value).decode()}")
        self._pcm = (c_int16 * (MAX_FRAME_SAMPLES * CHANNELS))()
        self.fec_recovered = 0
        self.concealed = 0

    def decode(self, data: bytes, timestamp: int) -> list[AudioFrame]:
        return self._run(data, MAX_FRAME_SAMPLES, False, timestamp)

    def conceal(self, timestamp: int, samples: int, fec: bytes | None = None) -> list[AudioFrame]:
        """`samples` of audio for a lost packet: rebuilt from the next packet's FEC when given
        (libopus conceals by itself if that packet carries none), else concealed."""
        samples = max(0, min(samples, MAX_FRAME_SAMPLES))
        if fec:
            self.fec_recovered += 1
            return self._run(fec, samples, True, timestamp)
        self.concealed += 1
        return self._run(None, samples, False, timestamp)

    def close(self) -> None:
        if self._state:
            self._lib.opus_decoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        if getattr(self, "_state", None):
            self.close()

    def _run(self, data: bytes | None, frame_size: int, fec: bool, timestamp: int) -> list[AudioFrame]:
        if not self._state:
            raise OpusError("decoder closed")
        count = self._lib.opus_decode(
            self._state, data, len(data) if data else 0, self._pcm, frame_size, 1 if fec else 0
        )
        if count < 0:
            raise OpusError(f"opus_decode: {self._lib.opus_strerror(count).decode()}")
        if count == 0:
            return []
        pcm = np.ctypeslib.as_array(self._pcm)[: count * CHANNELS].copy()
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, timestamp, TIME_BASE
        return [frame]


def is_opus(codec: RTCRtpCodecParameters) -> bool:
    return codec.mimeType.lower() == "audio/opus"
