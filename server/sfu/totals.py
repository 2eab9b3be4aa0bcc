"""The SFU's running media totals, which `/metrics` (server/metrics.py) reads."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .consumer import Consumer
    from .producer import Producer


class MediaTotals(Counter[str]):
    """Counts of producers and consumers, by name: those that closed, carried over, plus live
    ones; totals add up with `update`, and a count never made reads 0.

    packets_in, packets_out, bytes_out, retransmits, send_refused, keyframe_requests and
    packets_lost; retransmits_refused: NACKs left unanswered, the subscriber's link congested
    and its share for repairs spent; retransmits_skipped: NACKs for a packet resent within a
    round trip or too old to help; probe_packets: padding sent to probe a subscriber's link
    ahead of an upward layer switch.
    """

    def add_producer(self, producer: Producer) -> None:
        self.update(
            packets_in=producer.packets,
            keyframe_requests=producer.keyframe_requests,
            packets_lost=producer.tap.packets_lost,
        )

    def add_consumer(self, consumer: Consumer) -> None:
        feed = consumer.feed
        self.update(
            packets_out=consumer.packets,
            bytes_out=consumer.bytes,
            retransmits=feed.retransmits,
            retransmits_refused=feed.retransmits_refused,
            retransmits_skipped=feed.retransmits_skipped,
            probe_packets=feed.probe_packets,
            send_refused=feed.refused,
        )
