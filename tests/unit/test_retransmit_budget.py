"""The retransmission budget of a congested subscriber, without sockets."""

from __future__ import annotations

import asyncio
import struct

from aiortc import RTCPeerConnection

from server.rtc.rtphooks import RETRANSMIT_BURST_BYTES, SEND_HISTORY_SIZE, SenderFeed


async def test_a_limited_rate_answers_nacks_up_to_its_bucket_and_refills_with_time() -> None:
    pc = RTCPeerConnection()
    try:
        feed = SenderFeed(pc.addTransceiver("video", direction="sendonly").sender, "video")
        assert all(feed._retransmit_allowed(1200) for _ in range(50)), "no limit without a rate"
        feed.retransmit_rate_bps = 80_000.0  # 10 kB/s: a bucket of half a second, 5 kB
        feed._retransmit_tokens, feed._tokens_at = 0.0, 0.0
        allowed = sum(feed._retransmit_allowed(1200) for _ in range(10))
        assert allowed == max(80_000 // 16, RETRANSMIT_BURST_BYTES) // 1200 == 4
        await asyncio.sleep(0.15)  # 1.5 kB more
        assert feed._retransmit_allowed(1200) and not feed._retransmit_allowed(1200)
        # A refused NACK is counted and sends nothing (no transport is even needed).
        header = struct.pack("!BBHII", 0x80, 96, 7, 0, feed.ssrc)
        feed._history[7 % SEND_HISTORY_SIZE] = (header, bytes(1100))
        assert await feed._retransmit(7) is None
        assert feed.retransmits_refused == 1 and feed.retransmits == 0
    finally:
        await pc.close()
