"""TaskOwner: background tasks that are kept, cancelled on close, and whose failures are seen.

A task whose result nobody keeps loses its exception (asyncio logs it, if at all, when the
task is garbage-collected) and runs on after its owner closed. Every object that starts a
task spawns it through its owner instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Failures per task name, for every owner on this node (verzilvering_task_failures_total).
failures: Counter[str] = Counter()


class TaskOwner:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            failures[task.get_name()] += 1
            logger.error("task %s of %s failed", task.get_name(), self.name, exc_info=exc)

    async def close(self) -> None:
        """Cancels every task still running and waits until they have ended."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
