"""How the Redis store reports a failed call, without a server: a dropped connection is
StoreUnavailable, unless the caller was being cancelled (then it is the cancel)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from server.store import StoreUnavailable
from server.store.redis import _unavailable


async def _dropped() -> None:
    with _unavailable():
        raise RedisConnectionError("Connection closed by server.")


async def test_a_dropped_connection_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await _dropped()


async def test_a_cancelled_call_stays_a_cancel_whatever_redis_makes_of_it() -> None:
    started = asyncio.Event()

    async def cancelled_mid_read() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            # What redis-py does on a cancelled read: the connection goes, and says so.
            await _dropped()

    task = asyncio.create_task(cancelled_mid_read())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
