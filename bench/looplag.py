"""How late a 10 ms sleep wakes up in this process's event loop, over time: a bench's own
health, so that a busy load generator is not mistaken for a slow server."""

from __future__ import annotations

import asyncio
import time


class LoopLag:
    def __init__(self) -> None:
        # (time.monotonic(), how late in ms), oldest first.
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.samples.append((now, (now - t - 0.01) * 1000))
            if len(self.samples) > 100_000:
                del self.samples[:50_000]

    def between(self, t0: float, t1: float) -> list[float]:
        return [lag for t, lag in self.samples if t0 <= t < t1]

    def take(self) -> list[float]:
        """The lags since the last take (or the start), forgotten here: one window's worth."""
        taken, self.samples = self.samples, []
        return [lag for _, lag in taken]

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
