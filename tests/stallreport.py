"""A test phase that stalls is reported, then ended: every thread's stack, every asyncio
task's await chain and every async generator waiting in an await go to the real stderr, and
the run exits red instead of waiting for CI's timeout with nothing said.

Two full runs in five once stalled in an async fixture's teardown with the event loop idle; a
thread dump shows only `epoll` then, so the tasks' and fixtures' own stacks are what can say
what waits. The longest test takes under a minute; STALL_S is five times that.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import inspect
import os
import threading
import time
from collections.abc import Callable

import pytest

# A setup, call or teardown running this long is stuck: report it.
STALL_S = 300.0
# Still stuck this long after the report: end the run (exit status 3).
EXIT_AFTER_REPORT_S = 120.0
# How often the watchdog looks.
CHECK_S = 5.0


def _await_chain(awaited: object) -> list[str]:
    """Where a coroutine or generator waits: each frame down the chain of awaits, innermost last."""
    lines = []
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is None:
            lines.append(f"    awaits {awaited!r}")
            break
        lines.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None) or getattr(awaited, "ag_await", None)
    return lines


def describe_tasks(loop: asyncio.AbstractEventLoop) -> str:
    """Each unfinished task of `loop` with the chain of coroutines it awaits, then each async
    generator waiting inside an await (an async fixture's teardown is one: a task's chain
    ends at its `asend`, which does not say which generator it drives)."""
    lines = []
    for task in asyncio.all_tasks(loop):
        lines.append(f"task {task.get_name()}: {task!r}")
        lines += _await_chain(task.get_coro())
    for generator in gc.get_objects():
        if inspect.isasyncgen(generator) and generator.ag_await is not None:
            lines.append(f"async generator {generator.__qualname__}:")
            lines += _await_chain(generator)
    return "\n".join(lines)


class StallReport:
    """Watches the phase under way from a thread of its own; `stderr` is a file descriptor."""

    def __init__(
        self,
        stderr: int,
        stall_s: float = STALL_S,
        exit_after_report_s: float = EXIT_AFTER_REPORT_S,
        check_s: float = CHECK_S,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self._stderr = stderr
        self._stall_s, self._exit_after_report_s, self._check_s = stall_s, exit_after_report_s, check_s
        self._exit = exit
        # (phase, since when), replaced whole: the watchdog reads it from its own thread.
        self._current: tuple[str | None, float] = (None, time.monotonic())
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-report", daemon=True)
        self._thread.start()

    def mark(self, phase: str | None) -> None:
        """The phase now under way (None: between tests)."""
        self._current = (phase, time.monotonic())

    def close(self) -> None:
        self._closed.set()
        self._thread.join()

    def _write(self, text: str) -> None:
        os.write(self._stderr, text.encode(errors="replace"))

    def _watch(self) -> None:
        reported: tuple[str, float] | None = None
        while not self._closed.wait(self._check_s):
            phase, since = self._current
            now = time.monotonic()
            if phase is None or now - since < self._stall_s:
                reported = None
            elif reported != (phase, since):
                reported = (phase, since)
                self._report(phase, now - since)
            elif now - since > self._stall_s + self._exit_after_report_s:
                self._write(f"\nstallreport: {phase} is still stuck; ending the run\n")
                self._exit(3)
                return

    def _report(self, phase: str, stalled_s: float) -> None:
        self._write(f"\nstallreport: {phase} has run {stalled_s:.0f} s; threads:\n")
        faulthandler.dump_traceback(file=self._stderr, all_threads=True)
        # The loop the stuck phase runs on is whichever is running (pytest-asyncio makes one
        # per test); looked for only now, so that nothing of this touches the tests meanwhile.
        for loop in [o for o in gc.get_objects() if isinstance(o, asyncio.BaseEventLoop) and o.is_running()]:
            # On the loop's own thread: an idle loop runs it at once.
            loop.call_soon_threadsafe(lambda loop=loop: self._write(f"stallreport: tasks of {loop!r}:\n{describe_tasks(loop)}\n"))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item):  # type: ignore[no-untyped-def]
        self.mark(f"setup of {item.nodeid}")
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):  # type: ignore[no-untyped-def]
        self.mark(f"{item.nodeid}")
        yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item):  # type: ignore[no-untyped-def]
        self.mark(f"teardown of {item.nodeid}")
        yield
        self.mark(None)
