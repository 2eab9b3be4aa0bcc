"""Keyframe detection on real encoder output, not hand-made bytes only."""

from __future__ import annotations

import fractions

import av
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from server.rtc.rtppayload import is_h264_keyframe_start, is_keyframe_start, is_vp8_keyframe_start


def _frames(n: int) -> list[av.VideoFrame]:
    frames = []
    for i in range(n):
        frame = av.VideoFrame(320, 240, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(i * 7) % 256]) * plane.buffer_size)
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        frames.append(frame)
    return frames


@pytest.mark.parametrize(
    "mime, check",
    [("video/VP8", is_vp8_keyframe_start), ("video/H264", is_h264_keyframe_start)],
)
def test_first_packet_of_encoded_keyframes_only(mime: str, check) -> None:  # type: ignore[no-untyped-def]
    params = {"packetization-mode": "1", "profile-level-id": "42e01f"} if mime == "video/H264" else {}
    encoder = get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=96, parameters=params))
    verdicts = []
    for i, frame in enumerate(_frames(6)):
        payloads, _ = encoder.encode(frame, force_keyframe=(i == 4))
        verdicts.append([check(p) for p in payloads])
        assert is_keyframe_start(mime, payloads[0]) == check(payloads[0])
    # Frame 0 and the forced frame 4 are keyframes; only their first packet says so.
    assert verdicts[0][0] and verdicts[4][0]
    assert not any(v for frame in (1, 2, 3, 5) for v in verdicts[frame])
    assert not any(verdicts[0][1:]) and not any(verdicts[4][1:])


def test_garbage_is_not_a_keyframe() -> None:
    for payload in (b"", b"\x90", b"\x90\x80", b"\x10", b"\x1c\x00"):
        assert not is_vp8_keyframe_start(payload)
    assert not is_h264_keyframe_start(b"")
    assert not is_keyframe_start("audio/opus", b"\x10\x00")
