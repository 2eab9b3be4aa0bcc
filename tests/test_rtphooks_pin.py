"""Fails loudly when the aiortc internals that server/rtphooks.py relies on move."""

from __future__ import annotations

import aiortc
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender

from server.rtphooks import AIORTC_VERSION, ReceiverTap, SenderFeed, check_aiortc_version


def test_aiortc_version_is_the_one_the_hooks_were_written_for() -> None:
    assert aiortc.__version__ == AIORTC_VERSION
    check_aiortc_version()


async def test_private_attributes_and_methods_exist() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        sender = pc.addTransceiver("video", direction="sendonly").sender
        for name in (
            "_RTCRtpReceiver__remote_streams",
            "_RTCRtpReceiver__remote_bitrate_estimator",
            "_RTCRtpReceiver__rtcp_ssrc",
            "_RTCRtpReceiver__rtcp_task",
            "_RTCRtpReceiver__started",
            "_RTCRtpReceiver__decoder_thread",
        ):
            assert hasattr(receiver, name), name
        for name in ("_run_rtcp", "_send_rtcp", "_send_rtcp_nack", "_send_rtcp_pli", "_handle_rtp_packet", "receive", "stop"):
            assert callable(getattr(RTCRtpReceiver, name)), name
        for name in (
            "_RTCRtpSender__ntp_timestamp",
            "_RTCRtpSender__rtp_timestamp",
            "_RTCRtpSender__octet_count",
            "_RTCRtpSender__packet_count",
        ):
            assert hasattr(sender, name), name
        for name in ("_send_keyframe", "_retransmit", "_handle_rtcp_packet", "send", "stop"):
            assert callable(getattr(RTCRtpSender, name)), name
        assert hasattr(receiver.transport, "_register_rtp_receiver")
        assert hasattr(receiver.transport, "_send_rtp")

        # The hooks install as instance attributes that aiortc then calls.
        tap = ReceiverTap(receiver, "video")
        feed = SenderFeed(sender, "video")
        assert receiver._handle_rtp_packet == tap._handle_rtp_packet
        assert sender._retransmit == feed._retransmit
    finally:
        await pc.close()
