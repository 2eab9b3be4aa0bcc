"""The kiosk's publishing: REMB followed closely (a change costs no keyframe), wiggles ignored,
and our VP8 encoder in the video sender."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import aiortc.codecs.vpx as vpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, VideoStreamTrack
from aiortc.codecs import get_encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci
from av import VideoFrame

from bench.vp8_retarget import pattern_frame
from kiosk_client import libvpx
from kiosk_client.publishing import DEADBAND, BitrateGovernor, PublishControl
from kiosk_client.vp8encoder import Vp8Encoder

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
H264 = RTCRtpCodecParameters(
    mimeType="video/H264", clockRate=90000, payloadType=99,
    parameters={"packetization-mode": "1", "profile-level-id": "42e01f"},
)


def test_wiggles_within_the_deadband_leave_the_target_alone() -> None:
    governor = BitrateGovernor(ceiling=1_500_000)
    governor.target = 800_000
    assert governor.propose(830_000) is None  # +3.75 %
    assert governor.propose(770_000) is None  # -3.75 %
    assert governor.target == 800_000


def test_drops_and_rises_beyond_the_deadband_apply_at_once() -> None:
    governor = BitrateGovernor(ceiling=1_500_000)
    governor.target = 800_000
    assert governor.propose(700_000) == 700_000  # -12.5 %: aiortc's encoder would have rebuilt here
    assert governor.propose(500_000) == 500_000  # -28.6 %: congestion
    assert governor.propose(560_000) == 560_000  # +12 %: a rise needs no quiet spell, it costs nothing
    assert governor.target == 560_000


def test_the_servers_ceiling_and_the_floor_bound_the_target() -> None:
    governor = BitrateGovernor(ceiling=1_000_000)
    governor.target = 400_000
    assert governor.propose(5_000_000) == 1_000_000
    assert governor.propose(5_000_000) is None
    assert governor.propose(20_000) == vpx.MIN_BITRATE == 100_000
    governor.target = 400_000
    assert governor.cap(150_000) == 150_000
    assert governor.target == 150_000
    assert governor.propose(900_000) is None  # already at the ceiling
    assert governor.cap(1_000_000) is None  # a higher ceiling does not raise the target by itself


def test_a_remb_storm_reconfigures_only_for_moves_beyond_the_deadband() -> None:
    governor = BitrateGovernor(ceiling=1_500_000)
    governor.target = 620_000
    noise = [round(620_000 * (1 + d)) for d in (0.03, -0.02, 0.01, -0.03, 0.045, -0.045)] * 20
    assert sum(governor.propose(e) is not None for e in noise) == 0
    # Real swings are followed: after every report the target is within the deadband of it.
    for estimate in [600_000, 650_000, 560_000, 700_000, 620_000, 580_000, 680_000, 640_000] * 10:
        governor.propose(estimate)
        assert abs(governor.target - estimate) <= DEADBAND * governor.target


class PatternTrack(VideoStreamTrack):
    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = pattern_frame(pts // 3000, 320, 240)
        frame.pts, frame.time_base = pts, time_base
        return frame


@pytest.fixture
async def video_sender() -> AsyncIterator[RTCRtpSender]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sender = pc.addTransceiver("video", direction="sendonly").sender
    sender.replaceTrack(PatternTrack())
    try:
        yield sender
    finally:
        await pc.close()


def encoder_of(sender: RTCRtpSender) -> object:
    return sender._RTCRtpSender__encoder  # type: ignore[attr-defined]


async def test_a_vp8_sender_gets_our_encoder_at_the_governors_target(video_sender: RTCRtpSender) -> None:
    control = PublishControl(None)
    control.governor.target = 300_000
    control.hook_sender(video_sender)
    encoded = await video_sender._next_encoded_frame(VP8)
    assert isinstance(encoder_of(video_sender), Vp8Encoder)
    assert encoder_of(video_sender).target_bitrate == 300_000  # type: ignore[attr-defined]
    assert encoded is not None and encoded.payloads
    # REMB for this sender moves our encoder's target; a report within the deadband does not.
    remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(200_000, [video_sender._ssrc]))
    await video_sender._handle_rtcp_packet(remb)
    assert encoder_of(video_sender).target_bitrate == 200_000  # type: ignore[attr-defined]
    remb.fci = pack_remb_fci(205_000, [video_sender._ssrc])
    await video_sender._handle_rtcp_packet(remb)
    assert encoder_of(video_sender).target_bitrate == 200_000  # type: ignore[attr-defined]


async def test_our_encoder_runs_in_aiortcs_executor_not_on_the_event_loop(
    video_sender: RTCRtpSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    encode = Vp8Encoder.encode

    def recording(self: Vp8Encoder, frame: VideoFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        threads.append(threading.get_ident())
        return encode(self, frame, force_keyframe)

    monkeypatch.setattr(Vp8Encoder, "encode", recording)
    PublishControl(None).hook_sender(video_sender)
    for _ in range(3):
        await video_sender._next_encoded_frame(VP8)
    assert len(threads) == 3 and threading.get_ident() not in threads


async def test_other_codecs_keep_aiortcs_encoder_at_the_governors_target(video_sender: RTCRtpSender) -> None:
    control = PublishControl(None)
    control.governor.target = 600_000
    control.hook_sender(video_sender)
    await video_sender._next_encoded_frame(H264)
    assert isinstance(encoder_of(video_sender), H264Encoder)
    assert encoder_of(video_sender).target_bitrate == 600_000  # type: ignore[attr-defined]


async def test_without_a_usable_libvpx_the_kiosk_falls_back_to_aiortcs_vp8_encoder(
    video_sender: RTCRtpSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    def other_libvpx() -> None:
        raise libvpx.LibvpxError("libvpx v1.17.0 found")

    monkeypatch.setattr(libvpx, "load", other_libvpx)
    control = PublishControl(None)
    control.hook_sender(video_sender)
    assert await video_sender._next_encoded_frame(VP8) is not None
    assert type(encoder_of(video_sender)) is type(get_encoder(VP8)) is vpx.Vp8Encoder

