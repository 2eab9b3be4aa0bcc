"""The store fixtures: every test that takes `store` or `make_store` runs once on the embedded
backend and once on Redis (a private redis-server started for the session; each test gets its
own key prefix, deleted afterwards)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio as aioredis

from bench.redis_server import RedisServer
from server.store import Store
from server.store.embedded import EmbeddedStore
from server.store.redis import RedisStore

StoreFactory = Callable[[], Awaitable[Store]]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["embedded", "redis"])
def backend_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings that choose one backend: none for the embedded store; for Redis, the
    session's redis-server and a key prefix of the test's own."""
    if request.param == "embedded":
        return {}
    redis: RedisServer = request.getfixturevalue("redis_server")
    return {"redis_url": redis.url, "redis_prefix": f"vztest:{uuid4().hex}:"}


@pytest.fixture(params=["embedded", "redis"])
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Opens stores of one backend that share their data, like one node restarting."""
    opened: list[Store] = []
    prefix = f"vztest:{uuid4().hex}:"
    server: RedisServer | None = (
        request.getfixturevalue("redis_server") if request.param == "redis" else None
    )

    async def factory() -> Store:
        store: Store
        if server is None:
            store = EmbeddedStore(tmp_path / "data")
        else:
            store = RedisStore(server.url, node_id="test", prefix=prefix)
        await store.open()
        opened.append(store)
        return store

    yield factory

    for store in opened:
        await store.close()
    if server is not None:
        await _delete_prefix(server.url, prefix)


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store()


async def _delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
