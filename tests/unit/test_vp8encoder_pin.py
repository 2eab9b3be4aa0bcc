"""Fails loudly when the libvpx internals the kiosk's VP8 encoder relies on move.

`kiosk_client/libvpx.py` mirrors libvpx v1.16.0's structures in ctypes; a PyAV upgrade may
bundle another libvpx whose layout differs, and then every field we write lands somewhere
else. These tests measure the layout against the library itself. (How aiortc's sender
creates its encoder, which server/rtc/sender.py relies on, is pinned in
tests/test_rtphooks_pin.py with aiortc's other internals.)
"""

from __future__ import annotations

import ctypes
import os

import av

from kiosk_client import libvpx

VPX_CODEC_ABI_MISMATCH = 3


def _default_config_bytes(fill: int) -> bytes:
    lib = libvpx.load()
    buffer = (ctypes.c_uint8 * 2048)(*([fill] * 2048))
    config = ctypes.cast(buffer, ctypes.POINTER(libvpx.EncoderConfig))
    assert lib.vpx_codec_enc_config_default(lib.vpx_codec_vp8_cx(), config, 0) == 0
    return bytes(buffer)


def test_the_bundled_libvpx_is_the_release_the_binding_describes() -> None:
    assert av.__version__ == "18.1.0"
    path = libvpx.library_path()
    assert os.path.basename(os.path.dirname(path)) == "av.libs", path
    assert libvpx.load().vpx_codec_version_str().decode() == libvpx.LIBVPX_VERSION == "v1.16.0"


def test_encoder_config_has_the_librarys_size_and_defaults_where_we_read_them() -> None:
    # The bytes vpx_codec_enc_config_default writes are its sizeof(vpx_codec_enc_cfg_t):
    # what it leaves alone keeps either fill.
    a, b = _default_config_bytes(0xAB), _default_config_bytes(0x5C)
    written = max(i for i in range(len(a)) if a[i] == b[i]) + 1
    assert ctypes.sizeof(libvpx.EncoderConfig) == written == 504
    config = libvpx.EncoderConfig.from_buffer_copy(a)
    # libvpx's VP8 defaults (vp8_cx_iface.c), each at the offset our definition gives it.
    assert (config.g_w, config.g_h, config.g_bit_depth) == (320, 240, 8)
    assert (config.g_timebase.num, config.g_timebase.den) == (1, 30)
    assert (config.g_lag_in_frames, config.rc_end_usage, config.rc_target_bitrate) == (0, 0, 256)
    assert (config.rc_min_quantizer, config.rc_max_quantizer) == (4, 63)
    assert (config.rc_undershoot_pct, config.rc_overshoot_pct) == (100, 100)
    assert (config.rc_buf_sz, config.rc_buf_initial_sz, config.rc_buf_optimal_sz) == (6000, 4000, 5000)
    assert (config.kf_mode, config.kf_min_dist, config.kf_max_dist) == (libvpx.KF_AUTO, 0, 128)
    assert (config.ss_number_layers, config.ts_number_layers) == (1, 1)
    assert [(r.num, r.den) for r in config.vizier_factors] == [(1, 1)] * 15


def test_the_encoder_abi_version_is_the_one_the_library_accepts() -> None:
    lib = libvpx.load()
    iface = lib.vpx_codec_vp8_cx()
    config = libvpx.EncoderConfig()
    assert lib.vpx_codec_enc_config_default(iface, ctypes.byref(config), 0) == 0
    for wrong in (libvpx.ENCODER_ABI_VERSION - 1, libvpx.ENCODER_ABI_VERSION + 1):
        assert lib.vpx_codec_enc_init_ver(ctypes.byref(libvpx.CodecContext()), iface, ctypes.byref(config), 0, wrong) == VPX_CODEC_ABI_MISMATCH
    config.g_w, config.rc_target_bitrate = 352, 777
    ctx = libvpx.CodecContext()
    assert lib.vpx_codec_enc_init_ver(ctypes.byref(ctx), iface, ctypes.byref(config), 0, libvpx.ENCODER_ABI_VERSION) == 0
    try:
        assert ctx.name.decode() == f"WebM Project VP8 Encoder {libvpx.LIBVPX_VERSION}"
        assert ctx.iface == iface and ctx.err == 0 and ctx.init_flags == 0 and ctx.priv
        # The encoder keeps its own copy of the configuration; `config` points at it.
        kept = libvpx.EncoderConfig.from_address(ctx.config)
        assert (kept.g_w, kept.g_h, kept.rc_target_bitrate) == (352, 240, 777)
    finally:
        assert lib.vpx_codec_destroy(ctypes.byref(ctx)) == 0


def test_image_and_frame_packet_fields_are_where_libvpx_puts_them() -> None:
    lib = libvpx.load()
    width, height = 64, 48
    pixels = (ctypes.c_uint8 * (width * height * 3 // 2))()
    base = ctypes.addressof(pixels)
    image = libvpx.Image()
    wrapped = lib.vpx_img_wrap(ctypes.byref(image), libvpx.IMG_FMT_I420, width, height, 1, base)
    assert ctypes.addressof(wrapped.contents) == ctypes.addressof(image)
    assert (image.fmt, image.d_w, image.d_h, image.bit_depth, image.bps) == (libvpx.IMG_FMT_I420, width, height, 8, 12)
    assert (image.x_chroma_shift, image.y_chroma_shift) == (1, 1)
    assert list(image.planes)[:3] == [base, base + width * height, base + width * height * 5 // 4]
    assert list(image.stride)[:3] == [width, width // 2, width // 2]
    assert image.img_data == base and image.img_data_owner == 0 and image.self_allocd == 0

    iface = lib.vpx_codec_vp8_cx()
    config = libvpx.EncoderConfig()
    assert lib.vpx_codec_enc_config_default(iface, ctypes.byref(config), 0) == 0
    config.g_w, config.g_h = width, height
    ctx = libvpx.CodecContext()
    assert lib.vpx_codec_enc_init_ver(ctypes.byref(ctx), iface, ctypes.byref(config), 0, libvpx.ENCODER_ABI_VERSION) == 0
    try:
        assert lib.vpx_codec_encode(ctypes.byref(ctx), ctypes.byref(image), 7, 1, 0, libvpx.DL_REALTIME) == 0
        packet = lib.vpx_codec_get_cx_data(ctypes.byref(ctx), ctypes.byref(ctypes.c_void_p())).contents
        assert packet.kind == libvpx.CX_FRAME_PKT and packet.sz > 0 and packet.pts == 7 and packet.duration == 1
        assert packet.flags & libvpx.FRAME_IS_KEY
        assert ctypes.string_at(packet.buf, 1)[0] & 1 == 0  # the VP8 frame tag agrees: a keyframe
        assert (packet.width[0], packet.height[0], packet.spatial_layer_encoded[0]) == (width, height, 1)
    finally:
        assert lib.vpx_codec_destroy(ctypes.byref(ctx)) == 0


VPX_CODEC_INVALID_PARAM = 8


def test_temporal_layer_fields_and_control_are_the_ones_libvpx_checks() -> None:
    # vp8_cx_iface.c validates the ts_* fields at init and the layer id per control call: a
    # value it refuses proves we wrote the field (or control id) we meant.
    lib = libvpx.load()
    iface = lib.vpx_codec_vp8_cx()

    def init(**fields: object) -> tuple[int, libvpx.CodecContext]:
        config = libvpx.EncoderConfig()
        assert lib.vpx_codec_enc_config_default(iface, ctypes.byref(config), 0) == 0
        config.ts_number_layers, config.ts_periodicity = 3, 4
        for layer, (rate, decimator) in enumerate(((300, 4), (400, 2), (500, 1))):
            config.ts_target_bitrate[layer], config.ts_rate_decimator[layer] = rate, decimator
        for index, layer in enumerate((0, 2, 1, 2)):
            config.ts_layer_id[index] = layer
        for name, value in fields.items():
            field, _, index = name.partition("__")
            if index:
                getattr(config, field)[int(index)] = value
            else:
                setattr(config, field, value)
        ctx = libvpx.CodecContext()
        return lib.vpx_codec_enc_init_ver(ctypes.byref(ctx), iface, ctypes.byref(config), 0, libvpx.ENCODER_ABI_VERSION), ctx

    for wrong, reason in (
        ({"ts_target_bitrate__1": 300}, b"ts_target_bitrate entries are not strictly increasing"),
        ({"ts_rate_decimator__0": 3}, b"ts_rate_decimator factors are not powers of 2"),
        ({"ts_rate_decimator__2": 2}, b"ts_rate_decimator"),
        ({"ts_periodicity": 17}, b"ts_periodicity"),
    ):
        err, ctx = init(**wrong)
        assert err == VPX_CODEC_INVALID_PARAM, wrong
        assert reason in ctx.err_detail, (wrong, ctx.err_detail)
    err, ctx = init()
    assert err == 0
    try:
        control = lib.vpx_codec_control_
        for layer, expected in ((0, 0), (2, 0), (3, VPX_CODEC_INVALID_PARAM), (-1, VPX_CODEC_INVALID_PARAM)):
            assert control(ctypes.byref(ctx), libvpx.VP8E_SET_TEMPORAL_LAYER_ID, ctypes.c_int(layer)) == expected, layer
    finally:
        assert lib.vpx_codec_destroy(ctypes.byref(ctx)) == 0
