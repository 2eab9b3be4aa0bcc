"""TaskOwner (server/tasks.py): a failing task is logged and counted; close cancels the rest."""

from __future__ import annotations

import asyncio

import pytest

from server.tasks import TaskOwner, failures


async def test_a_failing_task_is_logged_and_counted_and_close_cancels(caplog: pytest.LogCaptureFixture) -> None:
    owner = TaskOwner("test")

    async def fail() -> None:
        raise RuntimeError("boom")

    before = failures["test-fail"]
    await asyncio.gather(owner.spawn(fail(), name="test-fail"), return_exceptions=True)
    await asyncio.sleep(0)
    assert failures["test-fail"] == before + 1
    assert "task test-fail of test failed" in caplog.text
    forever = owner.spawn(asyncio.sleep(3600), name="test-sleep")
    await owner.close()
    assert forever.cancelled() and failures["test-sleep"] == 0
