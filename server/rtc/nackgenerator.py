"""The SFU's NACKs towards a publisher: one generator per media SSRC, with a reorder allowance.

Publishers answer a NACK once; a retransmission lost too is asked for again every
`NACK_RETRY_INTERVAL_S` until `NACK_DEADLINE_S`, when only a keyframe would help. A gap is
asked for only after the reorder allowance (`server.rtc.rtpseq.LearntDelay`, bounded by the
settings `nack_reorder_min_s` / `nack_reorder_max_s`): over a jittery access link packets
overtake each other all the time, and a NACK for each was a retransmission for nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .rtpseq import NackTracker, LearntDelay
from ..tasks import TaskOwner

# The publisher leg's loss recovery: NACK again every 30 ms until 200 ms have passed.
# Fixed, not settings (docs/operations.md): about one round trip on a home line plus the
# publisher's answer; past 200 ms the frame has missed the receivers' playout anyway.
NACK_RETRY_INTERVAL_S = 0.03
NACK_DEADLINE_S = 0.2
# Settings.nack_reorder_min_s / nack_reorder_max_s, applied process-wide by `configure`.
_reorder_bounds = (0.005, 0.04)

SendNack = Callable[[int, list[int]], Awaitable[None]]


def configure(reorder_min_s: float, reorder_max_s: float) -> None:
    """The reorder allowance bounds for generators made from now on (process-wide)."""
    global _reorder_bounds
    LearntDelay(reorder_min_s, reorder_max_s)  # refuses impossible bounds here, not per stream
    _reorder_bounds = (reorder_min_s, reorder_max_s)


class NackGenerator:
    """Tracks one media SSRC's sequence numbers and sends its NACKs, first and retried, on time."""

    def __init__(self, ssrc: int, send_nack: SendNack) -> None:
        self.ssrc = ssrc
        self.tracker = NackTracker(NACK_RETRY_INTERVAL_S, NACK_DEADLINE_S, reorder=LearntDelay(*_reorder_bounds))
        self._send_nack = send_nack
        self._timer: asyncio.TimerHandle | None = None
        self._tasks = TaskOwner("nack-generator")
        self._closed = False

    async def packet(self, sequence_number: int, retransmission: bool) -> None:
        """A media packet of this SSRC arrived (after RTX unwrapping)."""
        lost = self.tracker.add(sequence_number, time.monotonic(), retransmission)
        if lost:
            await self._send_nack(self.ssrc, lost)
        self._schedule()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tasks.cancel()

    def _schedule(self) -> None:
        if self._closed:
            return
        due = self.tracker.next_due()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        # The tracker's clock is time.monotonic(), the loop's may differ: convert.
        when = loop.time() + max(0.0, due - time.monotonic())
        if self._timer is not None:
            if self._timer.when() <= when:
                return  # firing early is harmless: the callback re-plans
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        requests = self.tracker.due(time.monotonic())
        if requests:
            self._tasks.spawn(self._send_retries(requests), name="nack-send")
        self._schedule()

    async def _send_retries(self, requests: list[int]) -> None:
        try:
            await self._send_nack(self.ssrc, requests)
        except ConnectionError:
            pass  # the publisher's transport is going: nothing left to repair
