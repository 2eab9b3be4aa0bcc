"""The SFU's running media totals, which `/metrics` (server/metrics.py) reads."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .consumer import Consumer
    from .producer import Producer


@dataclass
class MediaTotals:
    """Counts of producers and consumers: those that closed, carried over, plus live ones."""

    packets_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    retransmits: int = 0
    # NACKs left unanswered: the subscriber's link was congested and its repair share spent.
    retransmits_refused: int = 0
    # Bandwidth probe padding sent ahead of an upward layer switch.
    probe_packets: int = 0
    send_refused: int = 0
    keyframe_requests: int = 0
    packets_lost: int = 0

    def add(self, other: MediaTotals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def add_producer(self, producer: Producer) -> None:
        self.packets_in += producer.packets
        self.keyframe_requests += producer.keyframe_requests
        self.packets_lost += producer.tap.packets_lost

    def add_consumer(self, consumer: Consumer) -> None:
        feed = consumer.feed
        self.packets_out += consumer.packets
        self.bytes_out += consumer.bytes
        self.retransmits += feed.retransmits
        self.retransmits_refused += feed.retransmits_refused
        self.probe_packets += feed.probe_packets
        self.send_refused += feed.refused
