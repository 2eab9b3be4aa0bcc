"""The kiosk's VP8 encoder, fed frames directly: real libvpx encode and decode, no network."""

from __future__ import annotations

import fractions
import math

import aiortc.codecs.vpx as vpx
import av
import numpy as np
import pytest

from bench.vp8_retarget import is_keyframe, pattern_frame, vp8_frame
from kiosk_client.libvpx import LibvpxError
from kiosk_client import vp8encoder
from kiosk_client.vp8encoder import Vp8Encoder
from kiosk_client.vp8payloader import read_written_descriptor

FPS = 30


def encode(encoder: Vp8Encoder, frames: range, width: int = 640, height: int = 480, **kw: bool) -> list[bytes]:
    return [vp8_frame(encoder.encode(pattern_frame(i, width, height), **kw)[0]) for i in frames]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def kbps(frames: list[bytes]) -> float:
    return sum(map(len, frames)) * 8 / (len(frames) / FPS) / 1000


def test_frames_decode_with_libvpx_at_the_source_size_and_quality() -> None:
    encoder = Vp8Encoder(1_000_000)
    decoder = av.CodecContext.create("libvpx", "r")
    for i in range(45):
        source = pattern_frame(i)
        payloads, timestamp = encoder.encode(source)
        assert timestamp == i * 3000  # aiortc's 90 kHz clock
        assert all(len(p) <= vpx.PACKET_MAX for p in payloads)
        (decoded,) = decoder.decode(av.Packet(vp8_frame(payloads)))
        assert (decoded.width, decoded.height) == (640, 480)
        luma = decoded.to_ndarray(format="gray")
        assert psnr(luma, source.to_ndarray(format="gray")) > 30


def test_padded_odd_sized_and_rgb_frames_are_encoded_as_they_look() -> None:
    # PyAV pads each line of a 642x482 frame to 656 bytes; libvpx must read the strides.
    encoder = Vp8Encoder(1_000_000)
    decoder = av.CodecContext.create("libvpx", "r")
    for i in range(10):
        rgb = pattern_frame(i, 642, 482).reformat(format="rgb24")
        rgb.pts, rgb.time_base = i, fractions.Fraction(1, FPS)
        assert rgb.reformat(format="yuv420p").planes[0].line_size != 642
        (decoded,) = decoder.decode(av.Packet(vp8_frame(encoder.encode(rgb)[0])))
        assert (decoded.width, decoded.height) == (642, 482)
        assert psnr(decoded.to_ndarray(format="gray"), rgb.reformat(format="gray").to_ndarray()) > 28


def test_a_bitrate_drop_applies_in_place_without_a_keyframe() -> None:
    encoder = Vp8Encoder(1_000_000)
    before = encode(encoder, range(0, 3 * FPS))
    encoder.target_bitrate = 200_000
    after = encode(encoder, range(3 * FPS, 6 * FPS))
    assert [i for i, f in enumerate(before + after) if is_keyframe(f)] == [0]
    # The second second of the first three (the first is the opening keyframe's).
    assert kbps(before[FPS:]) > 700
    # All three seconds after the drop, the first included.
    assert kbps(after) <= 1.6 * 200
    assert kbps(after[FPS:]) >= 0.6 * 200


def test_a_forced_keyframe_is_one_frame_and_decodes() -> None:
    encoder = Vp8Encoder()
    decoder = av.CodecContext.create("libvpx", "r")
    frames = [vp8_frame(encoder.encode(pattern_frame(i), force_keyframe=i == 20)[0]) for i in range(30)]
    assert [i for i, f in enumerate(frames) if is_keyframe(f)] == [0, 20]
    # A decoder joining at the forced keyframe decodes from there on.
    late = av.CodecContext.create("libvpx", "r")
    for frame in frames[20:]:
        assert late.decode(av.Packet(frame))
    for frame in frames:
        assert decoder.decode(av.Packet(frame))


def test_a_new_picture_size_starts_a_new_stream_with_a_keyframe() -> None:
    # What ScaledVideoTrack does when the server asks for a smaller tile, and back.
    encoder = Vp8Encoder()
    decoder = av.CodecContext.create("libvpx", "r")
    sizes = [(640, 480)] * 10 + [(320, 240)] * 10 + [(640, 480)] * 10
    frames = [vp8_frame(encoder.encode(pattern_frame(i, w, h))[0]) for i, (w, h) in enumerate(sizes)]
    assert [i for i, f in enumerate(frames) if is_keyframe(f)] == [0, 10, 20]
    decoded = [decoder.decode(av.Packet(f))[0] for f in frames]
    assert [(d.width, d.height) for d in decoded] == sizes


def test_target_bitrate_is_clamped_to_aiortcs_limits_read_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vpx, "MIN_BITRATE", 100_000)
    encoder = Vp8Encoder()
    assert encoder.target_bitrate == vpx.DEFAULT_BITRATE
    encoder.target_bitrate = 50_000
    assert encoder.target_bitrate == 100_000
    encoder.target_bitrate = 10_000_000
    assert encoder.target_bitrate == vpx.MAX_BITRATE


def test_pack_sends_ready_vp8_frames_as_base_layer_with_the_rfc7741_descriptor() -> None:
    encoder = Vp8Encoder()
    frames = encode(Vp8Encoder(), range(2))
    picture_id = encoder.payloader.picture_id
    sent = []
    for pts, frame in enumerate(frames, start=2):
        packet = av.Packet(frame)
        packet.pts, packet.time_base = pts, fractions.Fraction(1, FPS)
        payloads, timestamp = encoder.pack(packet)
        assert timestamp == pts * 3000
        assert vp8_frame(payloads) == frame
        sent.append(read_written_descriptor(payloads[0])[0])
    # Ready-made frames have no layers: each is TL0, and the first one is a keyframe.
    assert [(d.picture_id, d.temporal_id, d.start) for d in sent] == [(picture_id, 0, True), ((picture_id + 1) % 32768, 0, True)]
    assert sent[1].tl0_pic_idx == (sent[0].tl0_pic_idx + 1) % 256 and sent[1].key_idx == sent[0].key_idx


def test_libvpx_errors_carry_libvpxs_explanation() -> None:
    too_wide = av.VideoFrame(16400, 16, "yuv420p")  # VP8 stops at 16383 pixels
    too_wide.pts, too_wide.time_base = 0, fractions.Fraction(1, FPS)
    with pytest.raises(LibvpxError, match=r"vpx_codec_enc_init: .*\(.*g_w.*\)"):
        Vp8Encoder().encode(too_wide)


def test_close_frees_the_encoder_and_a_later_frame_opens_a_new_one() -> None:
    encoder = Vp8Encoder()
    frames = encode(encoder, range(3))
    encoder.close()
    assert encoder._ctx is None
    frames += encode(encoder, range(3, 5))
    assert [i for i, f in enumerate(frames) if is_keyframe(f)] == [0, 3]


def test_settings_are_aiortcs_byte_for_byte_given_ffmpegs_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    # PyAV runs aiortc's libvpx encoder with a 1 µs time base and 1 µs frame durations; fed
    # the same, ours produces the very same frames: its settings are aiortc's, as far as
    # this picture exercises them (the denoiser's, for one, from the second frame on).
    monkeypatch.setattr(vp8encoder, "TIMEBASE_HZ", 1_000_000)
    theirs = vpx.Vp8Encoder()
    theirs.target_bitrate = 800_000
    ours = Vp8Encoder(800_000, temporal_layers=1)
    for i in range(40):
        frame = pattern_frame(i)
        if i == 0:
            ours._open(frame.width, frame.height)
        assert ours._encode(frame, i * 33_333, 1, 0, 0)[0] == vp8_frame(theirs.encode(frame)[0]), f"frame {i}"
