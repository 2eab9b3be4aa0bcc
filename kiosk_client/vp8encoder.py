"""The kiosk's VP8 encoder: libvpx driven directly, so the bitrate changes without a keyframe.

aiortc's own `Vp8Encoder` goes through PyAV, which cannot reconfigure an open libvpx
encoder: every bitrate change of more than 10 % closes it and opens a new one, whose first
frame is a keyframe. This one keeps a libvpx encoder open (`kiosk_client.libvpx`) and hands
a new `target_bitrate` to it with `vpx_codec_enc_config_set` before the next frame, as
WebRTC's own libvpx wrapper does: the rate control aims at the new rate from the next frame
on and no keyframe is sent. Only a new picture size opens a new encoder (and so starts with
a keyframe): libvpx would force one on a resize anyway, and cannot grow past its first size.

The settings are aiortc 1.16's (what its PyAV options amount to in libvpx): realtime
deadline, CBR with a 1 s buffer, lag 0, cpu-used -6, quantizer 2–56, undershoot 100 %,
overshoot 15 %, noise sensitivity 4, static threshold 1, keyframes only every 3000 frames
or on request, one token partition, error resilience off. Fed FFmpeg's timestamps, the
output is byte-identical to aiortc's; fed real frame durations (as here), libvpx's
frame-rate estimate and so the frame sizes differ slightly (BENCHMARKS.md).

The kiosk encodes three temporal layers (L1T3, `kiosk_client.temporallayers`): the SFU can
then give a subscriber 7.5, 15 or 30 fps of the same stream without asking for anything.
The per-layer rates follow `target_bitrate` in place like the total. The RTP payloads come
from our own packetizer (`kiosk_client.vp8payloader`), which writes the RFC 7741 descriptor
fields an SFU needs to pick layers (TID, Y, TL0PICIDX, KEYIDX). With one layer the frames
are aiortc's, byte for byte. `encode` is called in an executor by aiortc's
`RTCRtpSender`; ctypes releases the GIL while libvpx works.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import random
import threading

import aiortc.codecs.vpx as vpx
from aiortc.codecs.base import Encoder
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase
from av import VideoFrame
from av.frame import Frame
from av.packet import Packet

from . import libvpx
from .temporallayers import TemporalLayers
from .vp8payloader import BASE_LAYER_DELTA, BASE_LAYER_KEYFRAME, Vp8Payloader

# 90 kHz: the RTP clock of the timestamps aiortc hands back, so libvpx sees real frame gaps.
TIMEBASE_HZ = 90_000
# The frame duration assumed for a first frame or a timestamp that does not advance (30 fps).
DEFAULT_FRAME_TICKS = TIMEBASE_HZ // vpx.MAX_FRAME_RATE
KEYFRAME_INTERVAL_FRAMES = 3000
MIN_QUANTIZER, MAX_QUANTIZER = 2, 56
UNDERSHOOT_PCT, OVERSHOOT_PCT = 100, 15
BUFFER_MS = 1000
CPU_USED = -6
NOISE_SENSITIVITY = 4
STATIC_THRESHOLD = 1
# L1T3: 7.5 / 15 / 30 fps layers. Costs no measurable encode CPU (BENCHMARKS.md).
TEMPORAL_LAYERS = 3


def clamp_bitrate(bitrate: int) -> int:
    # aiortc's limits, read at call time: the kiosk lowers vpx.MIN_BITRATE for small tiles.
    return max(vpx.MIN_BITRATE, min(bitrate, vpx.MAX_BITRATE))


class EncoderClock:
    """Timestamps and durations for libvpx, which must never see time stand still or go back."""

    def __init__(self) -> None:
        self._last: int | None = None

    def tick(self, timestamp: int) -> tuple[int, int]:
        """(pts, duration) in 90 kHz ticks for a frame with this RTP-clock timestamp."""
        if self._last is None:
            self._last = timestamp
            return timestamp, DEFAULT_FRAME_TICKS
        duration = timestamp - self._last if timestamp > self._last else DEFAULT_FRAME_TICKS
        self._last += duration
        return self._last, duration


class Vp8Encoder(Encoder):
    """aiortc's `Encoder` interface for VP8; `target_bitrate` applies in place on the next frame."""

    def __init__(self, bitrate: int = vpx.DEFAULT_BITRATE, temporal_layers: int = TEMPORAL_LAYERS) -> None:
        self._lib = libvpx.load()
        self._ctx: libvpx.CodecContext | None = None
        self._config = libvpx.EncoderConfig()
        self._image = libvpx.Image()
        self._clock = EncoderClock()
        # aiortc's sender calls encode in an executor thread; close may come from another.
        self._lock = threading.Lock()
        self._target_bitrate = clamp_bitrate(bitrate)
        self._layers = TemporalLayers(temporal_layers)
        self.payloader = Vp8Payloader(
            picture_id=random.randint(0, (1 << 15) - 1), tl0_pic_idx=random.randint(0, 255)
        )

    @property
    def temporal_layers(self) -> int:
        return self._layers.layers

    @property
    def target_bitrate(self) -> int:
        """Target bitrate in bits per second."""
        return self._target_bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._target_bitrate = clamp_bitrate(bitrate)

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, VideoFrame)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        timestamp = convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)
        with self._lock:
            if self._ctx is None or (frame.width, frame.height) != (self._config.g_w, self._config.g_h):
                self._open(frame.width, frame.height)
            else:
                self._retarget()
            pts, duration = self._clock.tick(timestamp)
            planned = self._layers.plan(force_keyframe)
            data, keyframe = self._encode(frame, pts, duration, planned.flags, planned.temporal_id)
            if not data:
                return [], timestamp
            layer = self._layers.encoded(keyframe)
        return self.payloader.packetize(data, layer), timestamp

    def pack(self, packet: Packet) -> tuple[list[bytes], int]:
        # A ready-made stream has no layers: every frame is base layer, each referencing the last.
        data = bytes(packet)
        # RFC 6386 §9.1: the frame tag's lowest bit is 0 for a keyframe.
        layer = BASE_LAYER_KEYFRAME if data and not data[0] & 1 else BASE_LAYER_DELTA
        timestamp = convert_timebase(packet.pts, packet.time_base, VIDEO_TIME_BASE)
        return self.payloader.packetize(data, layer), timestamp

    def close(self) -> None:
        """Frees libvpx's encoder; a later encode opens a new one."""
        with self._lock:
            self._destroy()

    def __del__(self) -> None:
        # A half-built encoder (load() raised) has no lock and nothing to free.
        if getattr(self, "_ctx", None) is not None:
            self._destroy()

    def _open(self, width: int, height: int) -> None:
        self._destroy()
        lib = self._lib
        iface = lib.vpx_codec_vp8_cx()
        config = libvpx.EncoderConfig()
        libvpx.check(lib, None, lib.vpx_codec_enc_config_default(iface, ctypes.byref(config), 0), "vpx_codec_enc_config_default")
        config.g_w, config.g_h = width, height
        config.g_timebase.num, config.g_timebase.den = 1, TIMEBASE_HZ
        config.g_threads = vpx.number_of_threads(width * height, multiprocessing.cpu_count())
        config.g_lag_in_frames = 0
        config.rc_end_usage = libvpx.RC_CBR
        config.rc_target_bitrate = self._target_kbps()
        config.rc_min_quantizer, config.rc_max_quantizer = MIN_QUANTIZER, MAX_QUANTIZER
        config.rc_undershoot_pct, config.rc_overshoot_pct = UNDERSHOOT_PCT, OVERSHOOT_PCT
        # What FFmpeg makes of aiortc's bufsize: a 1 s buffer, starting 3/4 full (FFmpeg's
        # default initial occupancy), kept 5/6 full.
        config.rc_buf_sz = BUFFER_MS
        config.rc_buf_initial_sz = BUFFER_MS * 3 // 4
        config.rc_buf_optimal_sz = BUFFER_MS * 5 // 6
        config.kf_mode = libvpx.KF_AUTO
        config.kf_max_dist = KEYFRAME_INTERVAL_FRAMES
        self._layers.configure(config, self._target_kbps())
        ctx = libvpx.CodecContext()
        libvpx.check(
            lib, ctx,
            lib.vpx_codec_enc_init_ver(ctypes.byref(ctx), iface, ctypes.byref(config), 0, libvpx.ENCODER_ABI_VERSION),
            "vpx_codec_enc_init",
        )
        self._ctx, self._config = ctx, config
        for control, value in (
            (libvpx.VP8E_SET_CPUUSED, CPU_USED),
            (libvpx.VP8E_SET_NOISE_SENSITIVITY, NOISE_SENSITIVITY),
            (libvpx.VP8E_SET_STATIC_THRESHOLD, STATIC_THRESHOLD),
            (libvpx.VP8E_SET_TOKEN_PARTITIONS, 0),
        ):
            libvpx.check(lib, ctx, lib.vpx_codec_control_(ctypes.byref(ctx), control, ctypes.c_int(value)), f"vpx_codec_control({control})")

    def _retarget(self) -> None:
        kbps = self._target_kbps()
        if self._config.rc_target_bitrate == kbps:
            return
        assert self._ctx is not None
        self._layers.retarget(self._config, kbps)
        libvpx.check(
            self._lib, self._ctx,
            self._lib.vpx_codec_enc_config_set(ctypes.byref(self._ctx), ctypes.byref(self._config)),
            "vpx_codec_enc_config_set",
        )

    def _target_kbps(self) -> int:
        return round(self._target_bitrate / 1000)

    def _encode(self, frame: VideoFrame, pts: int, duration: int, flags: int, temporal_id: int) -> tuple[bytes, bool]:
        """The frame's VP8 bytes (empty if libvpx dropped it) and whether it is a keyframe."""
        lib, ctx, image = self._lib, self._ctx, self._image
        assert ctx is not None
        planes = [ctypes.addressof(ctypes.c_char.from_buffer(plane)) for plane in frame.planes]
        # libvpx fills in the format, sizes and chroma shifts; the planes and strides are
        # then pointed at PyAV's own buffers (lines may be padded), so nothing is copied.
        lib.vpx_img_wrap(ctypes.byref(image), libvpx.IMG_FMT_I420, frame.width, frame.height, 1, planes[0])
        for index, plane in enumerate(frame.planes):
            image.planes[index] = planes[index]
            image.stride[index] = plane.line_size
        if self._layers.layers > 1:
            # Tells libvpx's rate control which layer's budget this frame spends.
            libvpx.check(
                lib, ctx,
                lib.vpx_codec_control_(ctypes.byref(ctx), libvpx.VP8E_SET_TEMPORAL_LAYER_ID, ctypes.c_int(temporal_id)),
                "vpx_codec_control(VP8E_SET_TEMPORAL_LAYER_ID)",
            )
        libvpx.check(
            lib, ctx,
            lib.vpx_codec_encode(ctypes.byref(ctx), ctypes.byref(image), pts, duration, flags, libvpx.DL_REALTIME),
            "vpx_codec_encode",
        )
        data = b""
        keyframe = False
        iterator = ctypes.c_void_p()
        while packet := lib.vpx_codec_get_cx_data(ctypes.byref(ctx), ctypes.byref(iterator)):
            if packet.contents.kind == libvpx.CX_FRAME_PKT:
                data += ctypes.string_at(packet.contents.buf, packet.contents.sz)
                keyframe = keyframe or bool(packet.contents.flags & libvpx.FRAME_IS_KEY)
        return data, keyframe

    def _destroy(self) -> None:
        if self._ctx is not None:
            self._lib.vpx_codec_destroy(ctypes.byref(self._ctx))
            self._ctx = None
