"""server/tasks.py: a TaskOwner keeps its tasks, cancels and awaits them on close, and
logs and counts a failure, which /metrics exports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import generate_latest

from server.metrics import Metrics
from server.rtc.nackgenerator import NackGenerator
from server import tasks
from server.tasks import TaskOwner, task_failures, tasks_stuck


async def _fail(message: str) -> None:
    await asyncio.sleep(0)
    raise RuntimeError(message)


async def test_a_failure_is_logged_with_its_name_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    owner = TaskOwner("unit")
    before = task_failures["unit-failing"]
    with caplog.at_level(logging.ERROR, logger="server.tasks"):
        task = owner.spawn(_fail("injected"), name="unit-failing")
        await asyncio.wait([task])
    assert task_failures["unit-failing"] == before + 1
    [record] = [r for r in caplog.records if "unit-failing" in r.getMessage()]
    assert record.getMessage() == "background task unit-failing of unit failed"
    assert record.exc_info is not None and str(record.exc_info[1]) == "injected"
    assert owner.tasks == frozenset()
    text = generate_latest(Metrics().registry).decode()
    assert f'verzilvering_task_failures_total{{task="unit-failing"}} {float(before + 1)}' in text


async def test_a_cancelled_or_finished_task_is_no_failure(caplog: pytest.LogCaptureFixture) -> None:
    owner = TaskOwner("unit")
    before = dict(task_failures)
    with caplog.at_level(logging.ERROR, logger="server.tasks"):
        done = owner.spawn(asyncio.sleep(0, result=7), name="unit-done")
        sleeping = owner.spawn(asyncio.sleep(60), name="unit-sleeping")
        assert await done == 7
        await owner.close()
    assert sleeping.cancelled()
    assert dict(task_failures) == before
    assert not caplog.records


async def test_close_cancels_and_awaits_every_task() -> None:
    owner = TaskOwner("unit")
    finished: list[str] = []

    async def cleanup_on_cancel(name: str) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.01)  # a cleanup that itself awaits
            finished.append(name)

    tasks = [owner.spawn(cleanup_on_cancel(f"t{i}"), name="unit-sleeper") for i in range(3)]
    await asyncio.sleep(0)
    assert owner.tasks == frozenset(tasks)
    await owner.close()
    assert sorted(finished) == ["t0", "t1", "t2"]
    assert all(task.done() for task in tasks)
    assert owner.closed and owner.tasks == frozenset()
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_task_spawned_after_close_never_runs() -> None:
    owner = TaskOwner("unit")
    await owner.close()
    ran: list[bool] = []

    async def late() -> None:
        ran.append(True)

    task = owner.spawn(late(), name="unit-late")
    await asyncio.wait([task])
    assert task.cancelled() and ran == []


async def test_a_task_spawned_while_closing_is_cancelled_and_awaited_too() -> None:
    owner = TaskOwner("unit")
    started_late: list[asyncio.Task[None]] = []

    async def spawns_on_cancel() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            started_late.append(owner.spawn(asyncio.sleep(60), name="unit-late"))

    owner.spawn(spawns_on_cancel(), name="unit-spawner")
    await asyncio.sleep(0)
    await owner.close()
    [late] = started_late
    assert late.cancelled()
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_close_from_one_of_its_own_tasks_leaves_that_task_to_finish() -> None:
    owner = TaskOwner("unit")
    other = owner.spawn(asyncio.sleep(60), name="unit-other")

    async def closer() -> str:
        await owner.close()
        return "closed"

    assert await owner.spawn(closer(), name="unit-closer") == "closed"
    assert other.cancelled()


async def test_cancel_without_waiting_ends_the_tasks_on_the_next_pass() -> None:
    owner = TaskOwner("unit")
    task = owner.spawn(asyncio.sleep(60), name="unit-sleeping")
    owner.cancel()
    await asyncio.sleep(0)
    assert task.cancelled() and owner.closed


async def test_a_nack_send_that_fails_is_counted_a_lost_transport_is_not(caplog: pytest.LogCaptureFixture) -> None:
    """A real owner: the NACK generator's sends. A ConnectionError (the publisher's
    transport going) is an expected outcome; anything else is a failure."""
    sent: list[list[int]] = []

    async def broken(ssrc: int, lost: list[int]) -> None:
        sent.append(lost)
        raise ValueError("injected")

    async def gone(ssrc: int, lost: list[int]) -> None:
        sent.append(lost)
        raise ConnectionError("transport closed")

    async def lose_two(send: Callable[[int, list[int]], Awaitable[None]]) -> None:
        generator = NackGenerator(1234, send)
        # 3 and 4 missing: the NACKs go out from the generator's own tasks (after the
        # reorder allowance, then as retries).
        for seq in (1, 2, 5):
            await generator.packet(seq, retransmission=False)
        await asyncio.sleep(0.3)
        generator.close()

    before = task_failures["nack-send"]
    with caplog.at_level(logging.ERROR, logger="server.tasks"):
        await lose_two(gone)
        assert sent and task_failures["nack-send"] == before
        assert not caplog.records
        sent.clear()
        await lose_two(broken)
    assert sent and task_failures["nack-send"] == before + len(sent)
    assert len(caplog.records) == len(sent)
    assert all(r.getMessage() == "background task nack-send of nack-generator failed" for r in caplog.records)


async def test_a_task_that_outlives_its_cancel_is_reported_and_cancelled_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "STUCK_REPORT_S", 0.05)
    cancels = 0

    async def swallows_one_cancel() -> None:
        # The teardown hang's shape: a loop that takes its cancel for an error and sleeps on.
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels > 1:
                    raise
    owner = TaskOwner("unit-owner")
    before = tasks_stuck["unit-stuck"]
    task = owner.spawn(swallows_one_cancel(), name="unit-stuck")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="server.tasks"):
        async with asyncio.timeout(5):
            await owner.close()
    assert task.cancelled() and cancels == 2
    assert tasks_stuck["unit-stuck"] == before + 1
    [record] = [r for r in caplog.records if "unit-stuck" in r.getMessage()]
    message = record.getMessage()
    assert message.startswith("background task unit-stuck of unit-owner still runs 0.05 s after it was cancelled")
    assert "swallows_one_cancel" in message, "where it waits"
    text = generate_latest(Metrics().registry).decode()
    assert f'verzilvering_tasks_stuck_total{{task="unit-stuck"}} {float(before + 1)}' in text


async def test_tasks_that_end_when_cancelled_are_not_reported(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "STUCK_REPORT_S", 0.05)
    owner = TaskOwner("unit-owner")
    before = dict(tasks_stuck)
    owner.spawn(asyncio.sleep(3600), name="unit-sleeper")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="server.tasks"):
        await owner.close()
    assert dict(tasks_stuck) == before
    assert not [r for r in caplog.records if "still runs" in r.getMessage()]
