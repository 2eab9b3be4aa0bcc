"""The SFU's running media totals, which `/metrics` (server/metrics.py) reads."""

from __future__ import annotations


class MediaTotals:
    """Counts carried over from producers and consumers that have closed."""

    def __init__(self) -> None:
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.retransmits = 0
        self.send_refused = 0
        self.keyframe_requests = 0
        self.packets_lost = 0
