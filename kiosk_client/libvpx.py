"""ctypes binding to the libvpx that PyAV's wheel bundles: just enough to run a VP8 encoder.

PyAV can open a libvpx encoder but not reconfigure an open one; libvpx itself can
(`vpx_codec_enc_config_set`), which is what `kiosk_client.vp8encoder` needs to change the
bitrate without a keyframe. The structures below are our own ctypes definitions of the
public ABI of libvpx v1.16.0, the version in PyAV 18.1.0's wheel: `VPX_ENCODER_ABI_VERSION`
39 (the value `vpx_codec_enc_init_ver` of that library compares with) and a 504-byte
`vpx_codec_enc_cfg_t` (what `vpx_codec_enc_config_default` copies). A different libvpx may
lay them out differently, so loading refuses any other version and
`tests/test_vp8encoder_pin.py` re-measures the layout against the library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from ctypes import POINTER, c_char_p, c_int, c_int64, c_long, c_uint, c_uint8, c_ulong, c_void_p
from functools import cache

import av

LIBVPX_VERSION = "v1.16.0"
ENCODER_ABI_VERSION = 39

# vpx_img_fmt_t: VPX_IMG_FMT_PLANAR | 2
IMG_FMT_I420 = 0x102
# enum vpx_rc_mode
RC_CBR = 1
# enum vpx_kf_mode
KF_AUTO = 1
# vpx_enc_frame_flags_t, and VP8's own (vpx/vp8cx.h): which reference buffers a frame may
# read (LAST, GOLDEN, ALTREF) and which it overwrites.
EFLAG_FORCE_KF = 1
VP8_EFLAG_NO_REF_LAST = 1 << 16
VP8_EFLAG_NO_REF_GF = 1 << 17
VP8_EFLAG_NO_UPD_LAST = 1 << 18
VP8_EFLAG_NO_REF_ARF = 1 << 21
VP8_EFLAG_NO_UPD_GF = 1 << 22
VP8_EFLAG_NO_UPD_ARF = 1 << 23
# vpx_codec_er_flags_t
ERROR_RESILIENT_DEFAULT = 1
# vpx_enc_deadline_t
DL_REALTIME = 1
# enum vpx_codec_cx_pkt_kind
CX_FRAME_PKT = 0
# vpx_codec_frame_flags_t
FRAME_IS_KEY = 0x1
# enum vp8e_enc_control_id (vpx/vp8cx.h)
VP8E_SET_CPUUSED = 13
VP8E_SET_NOISE_SENSITIVITY = 15
VP8E_SET_STATIC_THRESHOLD = 17
VP8E_SET_TOKEN_PARTITIONS = 18
VP8E_SET_TEMPORAL_LAYER_ID = 30

_SS_MAX_LAYERS = 5
TS_MAX_LAYERS = 5
TS_MAX_PERIODICITY = 16
_MAX_LAYERS = 12
# The rate-control tuning rationals at the end of vpx_codec_enc_cfg_t (active_wq_factor to
# rd_mult_key_qp_fac), only read by VP9 when use_vizier_rc_params is set.
_VIZIER_FACTORS = 15


class Rational(ctypes.Structure):
    _fields_ = [("num", c_int), ("den", c_int)]


class FixedBuffer(ctypes.Structure):
    _fields_ = [("buf", c_void_p), ("sz", ctypes.c_size_t)]


class EncoderConfig(ctypes.Structure):
    """vpx_codec_enc_cfg_t."""

    _fields_ = [
        ("g_usage", c_uint),
        ("g_threads", c_uint),
        ("g_profile", c_uint),
        ("g_w", c_uint),
        ("g_h", c_uint),
        ("g_bit_depth", c_int),
        ("g_input_bit_depth", c_uint),
        ("g_timebase", Rational),
        ("g_error_resilient", c_uint),
        ("g_pass", c_int),
        ("g_lag_in_frames", c_uint),
        ("rc_dropframe_thresh", c_uint),
        ("rc_resize_allowed", c_uint),
        ("rc_scaled_width", c_uint),
        ("rc_scaled_height", c_uint),
        ("rc_resize_up_thresh", c_uint),
        ("rc_resize_down_thresh", c_uint),
        ("rc_end_usage", c_int),
        ("rc_twopass_stats_in", FixedBuffer),
        ("rc_firstpass_mb_stats_in", FixedBuffer),
        ("rc_target_bitrate", c_uint),
        ("rc_min_quantizer", c_uint),
        ("rc_max_quantizer", c_uint),
        ("rc_undershoot_pct", c_uint),
        ("rc_overshoot_pct", c_uint),
        ("rc_buf_sz", c_uint),
        ("rc_buf_initial_sz", c_uint),
        ("rc_buf_optimal_sz", c_uint),
        ("rc_2pass_vbr_bias_pct", c_uint),
        ("rc_2pass_vbr_minsection_pct", c_uint),
        ("rc_2pass_vbr_maxsection_pct", c_uint),
        ("rc_2pass_vbr_corpus_complexity", c_uint),
        ("kf_mode", c_int),
        ("kf_min_dist", c_uint),
        ("kf_max_dist", c_uint),
        ("ss_number_layers", c_uint),
        ("ss_enable_auto_alt_ref", c_int * _SS_MAX_LAYERS),
        ("ss_target_bitrate", c_uint * _SS_MAX_LAYERS),
        ("ts_number_layers", c_uint),
        ("ts_target_bitrate", c_uint * TS_MAX_LAYERS),
        ("ts_rate_decimator", c_uint * TS_MAX_LAYERS),
        ("ts_periodicity", c_uint),
        ("ts_layer_id", c_uint * TS_MAX_PERIODICITY),
        ("layer_target_bitrate", c_uint * _MAX_LAYERS),
        ("temporal_layering_mode", c_int),
        ("use_vizier_rc_params", c_int),
        ("vizier_factors", Rational * _VIZIER_FACTORS),
    ]


class CodecContext(ctypes.Structure):
    """vpx_codec_ctx_t; only libvpx reads and writes it."""

    _fields_ = [
        ("name", c_char_p),
        ("iface", c_void_p),
        ("err", c_int),
        ("err_detail", c_char_p),
        ("init_flags", c_long),
        ("config", c_void_p),
        ("priv", c_void_p),
    ]


class Image(ctypes.Structure):
    """vpx_image_t."""

    _fields_ = [
        ("fmt", c_int),
        ("cs", c_int),
        ("range", c_int),
        ("w", c_uint),
        ("h", c_uint),
        ("bit_depth", c_uint),
        ("d_w", c_uint),
        ("d_h", c_uint),
        ("r_w", c_uint),
        ("r_h", c_uint),
        ("x_chroma_shift", c_uint),
        ("y_chroma_shift", c_uint),
        ("planes", c_void_p * 4),
        ("stride", c_int * 4),
        ("bps", c_int),
        ("user_priv", c_void_p),
        ("img_data", c_void_p),
        ("img_data_owner", c_int),
        ("self_allocd", c_int),
        ("fb_priv", c_void_p),
    ]


class FramePacket(ctypes.Structure):
    """The leading fields of vpx_codec_cx_pkt_t with its `frame` member; read, never allocated."""

    _fields_ = [
        ("kind", c_int),
        ("buf", c_void_p),
        ("sz", ctypes.c_size_t),
        ("pts", c_int64),
        ("duration", c_ulong),
        ("flags", ctypes.c_uint32),
        ("partition_id", c_int),
        ("width", c_uint * _SS_MAX_LAYERS),
        ("height", c_uint * _SS_MAX_LAYERS),
        ("spatial_layer_encoded", c_uint8 * _SS_MAX_LAYERS),
    ]


class LibvpxError(RuntimeError):
    """A libvpx call failed; the message carries libvpx's own explanation."""


def bundled_library(name: str) -> str:
    """A codec library PyAV's wheel bundles (av.libs next to the av package), else the system's."""
    bundled = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs", f"lib{name}*.so*")))
    if bundled:
        return bundled[0]
    system = ctypes.util.find_library(name)
    if system is None:
        raise FileNotFoundError(f"no lib{name} found: neither in PyAV's wheel (av.libs) nor on the system")
    return system


def library_path() -> str:
    """The libvpx PyAV's wheel bundles, else the system's."""
    try:
        return bundled_library("vpx")
    except FileNotFoundError as exc:
        raise LibvpxError(str(exc)) from None


def _declare(lib: ctypes.CDLL) -> None:
    ctx = POINTER(CodecContext)
    signatures: dict[str, tuple[object, list[object]]] = {
        "vpx_codec_version_str": (c_char_p, []),
        "vpx_codec_vp8_cx": (c_void_p, []),
        "vpx_codec_err_to_string": (c_char_p, [c_int]),
        "vpx_codec_error": (c_char_p, [ctx]),
        "vpx_codec_error_detail": (c_char_p, [ctx]),
        "vpx_codec_enc_config_default": (c_int, [c_void_p, POINTER(EncoderConfig), c_uint]),
        "vpx_codec_enc_init_ver": (c_int, [ctx, c_void_p, POINTER(EncoderConfig), c_long, c_int]),
        "vpx_codec_enc_config_set": (c_int, [ctx, POINTER(EncoderConfig)]),
        "vpx_codec_encode": (c_int, [ctx, POINTER(Image), c_int64, c_ulong, c_long, c_ulong]),
        "vpx_codec_get_cx_data": (POINTER(FramePacket), [ctx, POINTER(c_void_p)]),
        "vpx_codec_destroy": (c_int, [ctx]),
        "vpx_img_wrap": (POINTER(Image), [POINTER(Image), c_int, c_uint, c_uint, c_uint, c_void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    # vpx_codec_control_ is variadic: its argtypes stay open, ints pass as C ints.
    lib.vpx_codec_control_.restype = c_int


@cache
def load() -> ctypes.CDLL:
    """The library, its functions declared; refuses a libvpx whose ABI these definitions do not describe."""
    lib = ctypes.CDLL(library_path())
    _declare(lib)
    version = lib.vpx_codec_version_str().decode()
    if version != LIBVPX_VERSION:
        raise LibvpxError(
            f"libvpx {version} found, kiosk_client/libvpx.py describes {LIBVPX_VERSION}: "
            "check the structures against that release's headers before using it"
        )
    return lib


def check(lib: ctypes.CDLL, ctx: CodecContext | None, err: int, what: str) -> None:
    """Raises LibvpxError for a failed call, with libvpx's error text and detail."""
    if err == 0:
        return
    if ctx is None:
        raise LibvpxError(f"{what}: {lib.vpx_codec_err_to_string(err).decode()}")
    message = lib.vpx_codec_error(ctypes.byref(ctx)).decode()
    detail = lib.vpx_codec_error_detail(ctypes.byref(ctx))
    raise LibvpxError(f"{what}: {message}" + (f" ({detail.decode()})" if detail else ""))
