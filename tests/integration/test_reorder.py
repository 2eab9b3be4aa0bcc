"""A link that reorders but loses nothing must not turn into retransmissions, on either leg.

Real aiortc peers through the real server; the publisher's packets reach the SFU, and the
SFU's reach the subscriber, each held 30 ± 10 ms at random (`bench.jitterlink`), so packets
overtake each other all the time. Counted: the NACKs the SFU sends the publisher and the
retransmissions it sends the subscriber, per forwarded video packet. The same run with the
reorder allowance switched off (what every gap got before: a NACK at once) shows the storm
the test would catch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.jitterlink import delay_incoming
from kiosk_client.rtpreceiver import tuned
from server.appkeys import SFU_KEY
from server.rtc.rtpseq import LearntDelay

from tests.conftest import RunningServer
from tests.support import media_from, pattern_publisher_and_viewer

WINDOW_S = 6.0
NO_ALLOWANCE = {"nack_reorder_min_s": 0.0, "nack_reorder_max_s": 0.0}


def _received(tap: Any) -> int:
    """Media packets the SFU's receiver counted from the publisher, over all its SSRCs."""
    streams = tap.receiver._RTCRtpReceiver__remote_streams
    return sum(stats.packets_received for stats in streams.values())


async def _reordering_call(server: RunningServer, allowance: bool, legs: tuple[str, ...]) -> dict[str, Any]:
    # A host: the main picture (1 Mbps), several packets per frame to overtake each other.
    async with pattern_publisher_and_viewer(server, names=("Pub", "Sub"), video_frames=10) as (publisher, subscriber):
        router = server.app[SFU_KEY].routers["room-1"]
        assert subscriber.pc is not None and publisher.self_id is not None
        # "up": into the SFU from the publisher; "down": into the subscriber from the SFU.
        if "down" in legs:
            assert delay_incoming(subscriber.pc, seed=1) == 1
        if "up" in legs:
            server_side = router.transports[publisher.self_id]._pc
            assert server_side is not None and delay_incoming(server_side, seed=2) == 1
        video_receiver = next(t.receiver for t in subscriber.pc.getTransceivers() if t.kind == "video")
        hook = tuned(video_receiver)
        assert hook is not None and hook.nack is not None
        if not allowance:
            hook.nack.reorder = LearntDelay(0.0, 0.0)
        producer = next(p for p in router.producers if p.kind == "video" and p.participant_id == publisher.self_id)
        (consumer,) = [c for c in producer.consumers]
        await asyncio.sleep(1.0)  # the jitter is in effect and the queues have settled
        start = (consumer.packets, consumer.feed.retransmits, producer.tap.nack_requests, hook.nack.reordered,
                 producer.tap.nack_reordered, _received(producer.tap))
        frames = media_from(subscriber, publisher).video_frames  # type: ignore[union-attr]
        await asyncio.sleep(WINDOW_S)
        packets = consumer.packets - start[0]
        received = _received(producer.tap) - start[5]
        decoded = media_from(subscriber, publisher).video_frames - frames  # type: ignore[union-attr]
        return {
            "packets": packets,
            "retransmitted_pct": 100 * (consumer.feed.retransmits - start[1]) / packets,
            # Of everything the SFU received from the publisher (every layer it sends).
            "received": received,
            "upstream_nack_pct": 100 * (producer.tap.nack_requests - start[2]) / received,
            "reordered_down": hook.nack.reordered - start[3],
            "reordered_up": producer.tap.nack_reordered - start[4],
            "fps": decoded / WINDOW_S,
        }


@pytest.mark.parametrize("leg", ["down", "up"])
async def test_reordering_without_loss_costs_under_one_percent_retransmissions(server: RunningServer, leg: str) -> None:
    result = await _reordering_call(server, allowance=True, legs=(leg,))
    # Down: what the SFU forwarded to the subscriber; up: what it received (every layer).
    packets = result["packets" if leg == "down" else "received"]
    assert packets > 300, result
    assert result[f"reordered_{leg}"] > 0.05 * packets, f"the link did not reorder: {result}"
    # Down: the subscriber's NACKs, answered by the SFU. Up: the SFU's NACKs to the publisher.
    assert result["retransmitted_pct" if leg == "down" else "upstream_nack_pct"] <= 1.0, result
    assert result["fps"] >= 20, result


@pytest.mark.parametrize("settings_overrides", [NO_ALLOWANCE])
async def test_without_the_allowance_the_same_links_stormed(server: RunningServer) -> None:
    result = await _reordering_call(server, allowance=False, legs=("down", "up"))
    assert result["retransmitted_pct"] > 5.0, result
    assert result["upstream_nack_pct"] > 5.0, result
