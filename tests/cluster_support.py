"""A cluster of real server processes (bench.server_process.Node) on a real redis-server, and
aiortc participants that heal themselves the way a kiosk does: for the cluster tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.redis_server import RedisServer
from bench.server_process import Node
from kiosk_client.call import CallClient
from kiosk_client.media import open_audio, open_video
from server.store.redis import RedisStore
from signaling.tokens import TokenIssuer

from tests.conftest import TEST_SECRET
from tests.support import eventually


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    # Its own server (with AOF, so an outage test can restart it with data intact).
    with RedisServer(appendonly=True) as server:
        yield server


StartNodes = Callable[..., tuple[Node, Node, str]]


@pytest.fixture
def start_nodes(redis_server: RedisServer, tmp_path: Path) -> Iterator[StartNodes]:
    """Starts n1 and n2 with extra settings; "gym" is placed on n1 by the placement hash."""
    prefix = f"vztest:{uuid.uuid4().hex}:"
    started: list[Node] = []

    def start(**settings: str) -> tuple[Node, Node, str]:
        for name in ("n1", "n2"):
            started.append(Node(name, redis_server.url, prefix, tmp_path, settings, secret=TEST_SECRET))
        return started[0], started[1], prefix

    try:
        yield start
    finally:
        for node in started:
            node.stop()


@pytest.fixture
def cluster(start_nodes: StartNodes) -> tuple[list[Node], str]:
    n1, n2, prefix = start_nodes()
    return [n1, n2], prefix


@contextlib.asynccontextmanager
async def probe_store(redis_url: str, prefix: str, node_id: str = "probe") -> AsyncIterator[RedisStore]:
    """The cluster's store, opened from outside the nodes."""
    store = RedisStore(redis_url, node_id=node_id, prefix=prefix)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


class Participant:
    """An aiortc client that heals itself the way a kiosk does: a fresh call when lost."""

    def __init__(self, servers: list[str], name: str) -> None:
        self.servers = servers
        self.name = name
        self.id = f"p-{name.lower()}"
        self.token = TokenIssuer(TEST_SECRET).issue(role="senior", room="gym", name=name, participant_id=self.id)
        self.client: CallClient | None = None
        self.attempts = 0
        self.healed_at: float | None = None
        self._healing: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self.client = await self._attempt()

    async def _attempt(self) -> CallClient:
        order = self.servers[self.attempts % len(self.servers):] + self.servers[: self.attempts % len(self.servers)]
        self.attempts += 1
        client = CallClient(
            order, self.token,
            video=open_video("testsrc", width=160, height=120, fps=15).video,
            audio=open_audio("tone").audio,
            on_event=self._event,
        )
        try:
            await client.start()
        except BaseException:
            await client.close()
            raise
        return client

    def _event(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        lost = kind in ("connection_lost", "reconnect") or (
            kind == "removed" and message.get("reason") == "media_failed"
        )
        if lost and not self._closed and (self._healing is None or self._healing.done()):
            self._healing = asyncio.ensure_future(self._heal())

    async def _heal(self) -> None:
        old, self.client = self.client, None
        if old is not None:
            try:
                await asyncio.wait_for(old.close(), 10)
            except Exception:
                pass
        delay = 0.2
        while not self._closed:
            try:
                self.client = await self._attempt()
                self.healed_at = time.monotonic()
                return
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def frames_from(self, other: "Participant") -> tuple[int, int]:
        media = self.client.remote.get(other.id) if self.client else None
        return (media.video_frames, media.audio_frames) if media else (0, 0)

    async def close(self) -> None:
        self._closed = True
        if self._healing is not None:
            self._healing.cancel()
        if self.client is not None:
            await self.client.close()


@pytest.fixture
async def people() -> AsyncIterator[list[Participant]]:
    made: list[Participant] = []
    yield made
    for p in made:
        await p.close()


async def flowing(a: Participant, b: Participant, timeout: float) -> None:
    """Waits until each receives fresh video and audio from the other."""
    start = (a.frames_from(b), b.frames_from(a))

    def advanced() -> bool:
        (av, aa), (bv, ba) = a.frames_from(b), b.frames_from(a)
        return av > start[0][0] + 10 and aa > start[0][1] + 10 and bv > start[1][0] + 10 and ba > start[1][1] + 10

    await eventually(advanced, timeout, f"media between {a.name} and {b.name}")


async def alice_and_bob(
    people: list[Participant], alice_servers: list[str], bob_servers: list[str]
) -> tuple[Participant, Participant]:
    """Alice and Bob in "gym" (each trying their servers in order), with media flowing both ways."""
    alice, bob = Participant(alice_servers, "Alice"), Participant(bob_servers, "Bob")
    people += [alice, bob]
    await alice.start()
    await bob.start()
    await flowing(alice, bob, timeout=20)
    return alice, bob
