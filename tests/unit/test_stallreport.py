"""The test suite's own watchdog (tests/stallreport.py): a stalled phase is reported with its
threads and its asyncio tasks' await chains, then the run ends, instead of hanging silently."""

from __future__ import annotations

import asyncio
import os

from tests.stallreport import StallReport


async def _waits_for(future: asyncio.Future[None]) -> None:
    await future


async def test_a_stalled_phase_is_reported_with_its_tasks_then_the_run_ends() -> None:
    read, write = os.pipe()
    os.set_blocking(read, False)
    exits: list[int] = []
    report = StallReport(write, stall_s=0.3, exit_after_report_s=0.4, check_s=0.05, exit=exits.append)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_waits_for(never), name="waits-for-ever")
    try:
        report.mark("teardown of tests/test_x.py::test_y")
        await asyncio.sleep(0.2)
        assert not exits
        with_report = b""
        for _ in range(40):  # up to 2 s: the loop is idle, so the task listing runs at once
            await asyncio.sleep(0.05)
            try:
                with_report += os.read(read, 1 << 20)
            except BlockingIOError:
                pass
            if exits:
                break
        text = with_report.decode()
        assert "stallreport: teardown of tests/test_x.py::test_y has run" in text
        assert "Thread" in text and "stall-report" not in text.split("threads:")[0]
        # The task, the future it waits for, and its chain of coroutines down to that await.
        assert "task waits-for-ever" in text and "wait_for=<Future pending" in text
        assert "in _waits_for" in text
        assert "is still stuck; ending the run" in text and exits == [3]
    finally:
        task.cancel()
        report.close()
        os.close(read)
        os.close(write)


async def test_phases_that_move_on_are_never_reported() -> None:
    read, write = os.pipe()
    os.set_blocking(read, False)
    exits: list[int] = []
    report = StallReport(write, stall_s=0.2, exit_after_report_s=0.1, check_s=0.02, exit=exits.append)
    try:
        for n in range(8):
            report.mark(f"test {n}")
            await asyncio.sleep(0.1)
        report.mark(None)
        await asyncio.sleep(0.4)  # between tests: nothing runs, nothing stalls
        try:
            written = os.read(read, 1 << 20)
        except BlockingIOError:
            written = b""
        assert written == b"" and exits == []
    finally:
        report.close()
        os.close(read)
        os.close(write)
