"""The consumer's rewriting and the producer's keyframe coalescing, with packets fed directly."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from server.sfu.consumer import Consumer
from server.sfu.producer import Producer
from server.rtc.rtphooks import ReceiverTap

from tests.support import RecordingFeed


async def _audio_producer(pc: RTCPeerConnection) -> Producer:
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    tap = ReceiverTap(pc.addTransceiver("audio", direction="recvonly").receiver, "audio")
    tap.codecs[96] = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, payloadType=96, channels=2)
    return Producer("p-a", "audio", tap, keyframe_request_interval_s=0.25)


def _packet(seq: int) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=(seq * 960) & 0xFFFFFFFF, ssrc=7, payload=b"\x01" * 30)


async def test_pause_and_resume_leave_no_gap_and_time_moves_on() -> None:
    pc = RTCPeerConnection()
    try:
        producer = await _audio_producer(pc)
        feed = RecordingFeed()
        Consumer(producer, feed, mid="1")  # type: ignore[arg-type]
        for seq in range(65530, 65540):  # across the 16-bit wrap
            await producer._on_rtp(_packet(seq))
        producer.set_paused(True)
        for seq in range(65540, 65600):
            await producer._on_rtp(_packet(seq))
        await asyncio.sleep(0.05)
        producer.set_paused(False)
        for seq in range(65600, 65610):
            await producer._on_rtp(_packet(seq))
        assert all(pt == 111 for pt, _, _ in feed.sent)
        seqs = [seq for _, seq, _ in feed.sent]
        assert len(seqs) == 20
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:])), seqs
        stamps = [ts for _, _, ts in feed.sent]
        # Before the pause: 20 ms steps; across it: the ≈ 50 ms that really passed, not the
        # 60 packets' worth the publisher skipped while nobody heard it.
        assert (stamps[1] - stamps[0]) & 0xFFFFFFFF == 960
        jump = (stamps[10] - stamps[9]) & 0xFFFFFFFF
        assert 48000 * 0.04 < jump < 48000 * 0.5, jump
    finally:
        await pc.close()


async def test_twenty_keyframe_requests_cost_one_pli_plus_one_trailing() -> None:
    pc = RTCPeerConnection()
    try:
        tap = ReceiverTap(pc.addTransceiver("video", direction="recvonly").receiver, "video")
        sent: list[int] = []

        async def pli(layer: int | None = None) -> None:
            sent.append(1)

        tap.request_keyframe = pli  # type: ignore[method-assign]
        producer = Producer("p-v", "video", tap, keyframe_request_interval_s=0.2)
        for _ in range(20):
            producer.request_keyframe()
        await asyncio.sleep(0.05)
        assert len(sent) == 1
        await asyncio.sleep(0.3)
        assert len(sent) == 2 and producer.keyframe_requests == 2
    finally:
        await pc.close()
