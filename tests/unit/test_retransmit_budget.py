"""Which NACKs a subscriber gets answered, without sockets: the budget of a congested link, and
no copy of a packet resent within a round trip or too old to help."""

from __future__ import annotations

import asyncio
import struct
import time

from aiortc import RTCPeerConnection

from server.rtc.rtphooks import (
    RETRANSMIT_BURST_BYTES,
    RETRANSMIT_MAX_AGE_S,
    RETRANSMIT_MIN_INTERVAL_S,
    SEND_HISTORY_SIZE,
    SenderFeed,
)


async def test_a_limited_rate_answers_nacks_up_to_its_bucket_and_refills_with_time() -> None:
    pc = RTCPeerConnection()
    try:
        feed = SenderFeed(pc.addTransceiver("video", direction="sendonly").sender, "video")
        assert all(feed._retransmit_allowed(1200, time.monotonic()) for _ in range(50)), "no limit without a rate"
        feed.retransmit_rate_bps = 80_000.0  # 10 kB/s: a bucket of half a second, 5 kB
        feed._retransmit_tokens, feed._tokens_at = 0.0, 0.0
        allowed = sum(feed._retransmit_allowed(1200, time.monotonic()) for _ in range(10))
        assert allowed == max(80_000 // 16, RETRANSMIT_BURST_BYTES) // 1200 == 4
        await asyncio.sleep(0.15)  # 1.5 kB more
        assert feed._retransmit_allowed(1200, time.monotonic()) and not feed._retransmit_allowed(1200, time.monotonic())
        # A refused NACK is counted and sends nothing (no transport is even needed).
        header = struct.pack("!BBHII", 0x80, 96, 7, 0, feed.ssrc)
        feed._history[7 % SEND_HISTORY_SIZE] = (header, bytes(1100), time.monotonic(), 0.0)
        assert await feed._retransmit(7) is None
        assert feed.retransmits_refused == 1 and feed.retransmits == 0
    finally:
        await pc.close()


class _Wire:
    """What a retransmission would put on the wire (the DTLS transport's RTP send)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)


async def test_a_packet_is_resent_at_most_once_a_round_trip_and_never_when_too_old() -> None:
    pc = RTCPeerConnection()
    try:
        sender = pc.addTransceiver("video", direction="sendonly").sender
        feed = SenderFeed(sender, "video")
        wire = _Wire()
        sender._RTCRtpSender__transport = wire  # type: ignore[attr-defined]
        now = time.monotonic()

        def keep(sequence_number: int, sent_at: float) -> None:
            header = struct.pack("!BBHII", 0x80, 96, sequence_number, 0, feed.ssrc)
            feed._history[sequence_number % SEND_HISTORY_SIZE] = (header, bytes(1000), sent_at, 0.0)

        keep(10, now)
        feed.round_trip_s = 0.3
        assert await feed._retransmit(10) == 1012, "the first NACK is answered at once"
        # The receiver asks again before a round trip has passed: that copy may still come.
        assert await feed._retransmit(10) is None
        assert (feed.retransmits, feed.retransmits_skipped) == (1, 1)
        header, payload, sent_at, resent_at = feed._history[10]
        feed._history[10] = (header, payload, sent_at, resent_at - 0.31)
        assert await feed._retransmit(10) == 1012, "a round trip later it is sent again"
        # Without a measured round trip, a floor still keeps a burst of NACKs from copying it.
        feed.round_trip_s = None
        keep(11, now)
        assert await feed._retransmit(11) and await feed._retransmit(11) is None
        await asyncio.sleep(RETRANSMIT_MIN_INTERVAL_S)
        assert await feed._retransmit(11)
        # A packet older than a second (or three round trips) is not worth a copy.
        keep(12, now - RETRANSMIT_MAX_AGE_S - 0.01)
        assert await feed._retransmit(12) is None
        feed.round_trip_s = 0.5
        assert await feed._retransmit(12) == 1012, "three round trips of 0.5 s: still in time"
        assert len(wire.sent) == feed.retransmits == 5 and feed.retransmits_skipped == 3
        # Probe padding copies the newest packets whatever their NACK history.
        assert await feed._retransmit(12, probe=True) == 1012 and feed.probe_packets == 1
    finally:
        await pc.close()
