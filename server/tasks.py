"""Background tasks with an owner.

Every object that starts a task spawns it through its `TaskOwner`: the owner keeps the
task (so it is neither garbage-collected mid-run nor forgotten), cancels and awaits it on
`close()`, and logs a failure with the task's name and counts it in `task_failures`,
which server/metrics.py exports as `verzilvering_task_failures_total{task=...}`. A task
whose exception is an expected outcome catches it inside its own coroutine; whatever
escapes is a failure. A task that has not ended `STUCK_REPORT_S` after `close()` cancelled
it (it swallowed the cancel, or waits on something that ignores it) is a hang in the
making: it is logged with where it waits, counted in `tasks_stuck`
(`verzilvering_tasks_stuck_total{task=...}`) and cancelled again; close() goes on waiting.

Task names are metric labels: a fixed word per kind of task ("speaker-selection",
"nack-send"), never a person, room or connection id.

The counter lives here, not in server/metrics.py, so that every layer (the SFU, the rtc
layer, the kiosk) can count without importing the program's top.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Failed background tasks of this process, by task name (for /metrics).
task_failures: Counter[str] = Counter()
# Tasks of this process that outlived their owner's close() by STUCK_REPORT_S, by task name.
tasks_stuck: Counter[str] = Counter()
# How long close() waits for cancelled tasks before it reports those still running.
STUCK_REPORT_S = 10.0


class TaskOwner:
    """Keeps the tasks one object starts; `close()` cancels and awaits them.

    Cheap when idle (there is one per signalling connection): the set of tasks exists only
    while one runs.
    """

    __slots__ = ("name", "_tasks", "_closed")

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        """The tasks not yet ended (a copy)."""
        return frozenset(self._tasks or ())

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Starts `coro` as a task this owner keeps. After close() the task is cancelled
        before it runs: a late event (a timer, a store message) cannot outlive its owner."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if self._closed:
            task.cancel()
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)
            if not self._tasks:
                self._tasks = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            name = task.get_name()
            task_failures[name] += 1
            logger.error("background task %s of %s failed", name, self.name, exc_info=exc)

    def cancel(self) -> None:
        """Cancels every task and refuses new ones, without waiting: for owners whose own
        close is synchronous (the tasks end on the event loop's next pass)."""
        self._closed = True
        for task in tuple(self._tasks or ()):
            task.cancel()

    async def close(self) -> None:
        """Cancels every task and waits until all have ended. Called from one of this
        owner's own tasks, that task is left to finish (it is the one closing)."""
        self._closed = True
        current = asyncio.current_task()
        reported: set[asyncio.Task[Any]] = set()
        while True:
            running = [task for task in self._tasks or () if task is not current and not task.done()]
            if not running:
                return
            for task in running:
                task.cancel()
            # wait(), not gather(): a task's own exception is logged by _done, not raised here.
            _, pending = await asyncio.wait(running, timeout=STUCK_REPORT_S)
            for task in pending - reported:
                reported.add(task)
                tasks_stuck[task.get_name()] += 1
                where = io.StringIO()
                task.print_stack(file=where)
                logger.warning("background task %s of %s still runs %g s after it was cancelled; cancelling"
                               " it again and waiting:\n%s", task.get_name(), self.name, STUCK_REPORT_S,
                               where.getvalue())
