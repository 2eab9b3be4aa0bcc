"""Several real server processes sharing a real redis-server: routing, failover, outage, drain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kiosk_client.call import CallClient
from kiosk_client.media import open_audio, open_video
from kiosk_client.signaling import SignalingError
from server.store.redis import RedisStore
from signaling.tokens import TokenIssuer

from .conftest import TEST_SECRET
from .redis_server import RedisServer

NODE_TIMEOUT_S = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One `verzilvering serve` process of the cluster: test timeouts unless `settings`
    (names of server/config.py) say otherwise; the code of `tree` (bench/faults.py runs
    an older checkout as its baseline), else this one."""

    def __init__(
        self,
        name: str,
        redis_url: str,
        prefix: str,
        data_dir: Path,
        settings: dict[str, str] | None = None,
        tree: Path | None = None,
    ) -> None:
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / f"{name}.log"
        env = dict(os.environ)
        env.update(
            VERZILVERING_TOKEN_SECRET=TEST_SECRET,
            VERZILVERING_REDIS_PREFIX=prefix,
            VERZILVERING_NODE_HEARTBEAT_S="0.5",
            VERZILVERING_NODE_TIMEOUT_S=str(NODE_TIMEOUT_S),
            VERZILVERING_DRAIN_TIMEOUT_S="10",
        )
        env.update({f"VERZILVERING_{k.upper()}": v for k, v in (settings or {}).items()})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir / name),
             "--redis-url", redis_url, "--node-id", name],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=tree,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)
                return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"node {name} did not start:\n{self.log.read_text()}")

    def health(self) -> dict[str, Any]:
        return json.load(urllib.request.urlopen(self.url + "/healthz", timeout=2))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    # Its own server (with AOF, so an outage test can restart it with data intact).
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[list[Node], str]]:
    prefix = f"vztest:{uuid.uuid4().hex}:"
    nodes = [Node("n1", redis_server.url, prefix, tmp_path), Node("n2", redis_server.url, prefix, tmp_path)]
    try:
        yield nodes, prefix
    finally:
        for node in nodes:
            node.stop()


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


async def eventually(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def flowing(a: Participant, b: Participant, timeout: float) -> None:
    """Waits until each receives fresh video and audio from the other."""
    start = (a.frames_from(b), b.frames_from(a))

    def advanced() -> bool:
        (av, aa), (bv, ba) = a.frames_from(b), b.frames_from(a)
        return av > start[0][0] + 10 and aa > start[0][1] + 10 and bv > start[1][0] + 10 and ba > start[1][1] + 10

    await eventually(advanced, timeout, f"media between {a.name} and {b.name}")


async def _participants(redis_url: str, prefix: str) -> list[tuple[str, str]]:
    store = RedisStore(redis_url, node_id="probe", prefix=prefix)
    await store.open()
    try:
        return sorted((p.participant_id, p.node_id) for p in await store.list_participants("gym"))
    finally:
        await store.close()


async def test_two_nodes_one_room_media_both_ways(cluster: tuple[list[Node], str], people: list[Participant], redis_server: RedisServer) -> None:
    (n1, n2), prefix = cluster
    alice, bob = Participant([n1.url], "Alice"), Participant([n2.url], "Bob")
    people += [alice, bob]
    await alice.start()
    await bob.start()
    await flowing(alice, bob, timeout=20)
    # The room's media lives on one node; Bob's signalling was relayed there.
    placement = await _participants(redis_server.url, prefix)
    assert placement == [("p-alice", "n1"), ("p-bob", "n1")]
    assert n1.health()["media"]["transports"] == 2
    assert n2.health()["media"]["transports"] == 0


async def test_killed_node_clients_recover_on_the_other(cluster: tuple[list[Node], str], people: list[Participant], redis_server: RedisServer) -> None:
    (n1, n2), prefix = cluster
    alice, bob = Participant([n1.url, n2.url], "Alice"), Participant([n2.url, n1.url], "Bob")
    people += [alice, bob]
    await alice.start()
    await bob.start()
    await flowing(alice, bob, timeout=20)

    killed_at = time.monotonic()
    n1.kill()
    await flowing(alice, bob, timeout=45)
    recovery_s = time.monotonic() - killed_at
    # Measured ≈ 3–8 s on this machine (node timeout 2 s + rejoin); the bound is generous.
    assert recovery_s < 30, recovery_s
    print(f"recovery after kill -9: {recovery_s:.1f} s")
    await eventually(lambda: n2.health()["media"]["transports"] == 2, 10, "both on n2")
    # The dead node's entries were reaped; nobody is listed twice.
    assert await _participants(redis_server.url, prefix) == [("p-alice", "n2"), ("p-bob", "n2")]


async def test_redis_outage_media_keeps_flowing_and_state_recovers(
    cluster: tuple[list[Node], str], people: list[Participant], redis_server: RedisServer
) -> None:
    (n1, _), prefix = cluster
    alice, bob, carol = (Participant([n1.url], name) for name in ("Alice", "Bob", "Carol"))
    people += [alice, bob, carol]
    for p in (alice, bob, carol):
        await p.start()
    await flowing(alice, bob, timeout=20)

    assert len(await _participants(redis_server.url, prefix)) == 3
    halted_at = time.monotonic()
    redis_server.halt()
    try:
        await flowing(alice, bob, timeout=10)
        # The node stays in the load balancer: its calls go on.
        health = n1.health()
        assert health["status"] == "ok" and health["store"] == "unavailable"
        # Carol leaves while the store is down: her seat must not come back as a ghost.
        await carol.close()
        # A join now fails plainly and can be retried.
        dave = CallClient(n1.url, TokenIssuer(TEST_SECRET).issue(role="senior", room="gym", name="Dave"))
        try:
            with pytest.raises(SignalingError) as refused:
                await dave.start()
            assert refused.value.code == "unavailable"
        finally:
            await dave.close()
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - halted_at)))
    finally:
        redis_server.restart()
    await flowing(alice, bob, timeout=10)

    async def state() -> list[tuple[str, str]]:
        return await _participants(redis_server.url, prefix)

    deadline = time.monotonic() + 15
    while await state() != [("p-alice", "n1"), ("p-bob", "n1")] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert await state() == [("p-alice", "n1"), ("p-bob", "n1")]


async def test_graceful_drain_moves_clients(cluster: tuple[list[Node], str], people: list[Participant], redis_server: RedisServer) -> None:
    (n1, n2), prefix = cluster
    alice, bob = Participant([n1.url, n2.url], "Alice"), Participant([n1.url, n2.url], "Bob")
    people += [alice, bob]
    await alice.start()
    await bob.start()
    await flowing(alice, bob, timeout=20)

    n1.process.send_signal(signal.SIGTERM)
    await flowing(alice, bob, timeout=30)
    assert n1.process.wait(timeout=20) == 0
    assert n2.health()["media"]["transports"] == 2
    assert await _participants(redis_server.url, prefix) == [("p-alice", "n2"), ("p-bob", "n2")]


async def test_rooms_spread_over_both_nodes_without_media(cluster: tuple[list[Node], str], redis_server: RedisServer) -> None:
    """Without media every node's forwarding load is 0; rooms must still spread over the
    nodes (they all went to the alphabetically first one, so a second node added nothing)."""
    import aiohttp

    (n1, n2), prefix = cluster
    issuer = TokenIssuer(TEST_SECRET)
    rooms = [f"spread-{i}" for i in range(12)]
    async with aiohttp.ClientSession() as http:
        sockets = []
        try:
            for i, room in enumerate(rooms):
                # Every client enters through n1: placement, not the entry node, decides.
                ws = await http.ws_connect(n1.url + "/ws")
                sockets.append(ws)
                token = issuer.issue(role="senior", room=room, name=f"S{i}", participant_id=f"p-s{i}")
                await ws.send_json({"type": "hello", "v": 1, "token": token})
                assert (await ws.receive_json(timeout=10))["type"] == "welcome"
                await ws.send_json({"type": "join", "room": room})
                while (reply := await ws.receive_json(timeout=10))["type"] != "joined":
                    assert reply["type"] != "error", reply
            store = RedisStore(redis_server.url, node_id="probe", prefix=prefix)
            await store.open()
            try:
                owners = {room: await store.room_owner(room) for room in rooms}
            finally:
                await store.close()
        finally:
            for ws in sockets:
                await ws.close()
    counts = {node: list(owners.values()).count(node) for node in ("n1", "n2")}
    assert sum(counts.values()) == len(rooms), owners
    # A hash of 12 rooms over 2 nodes: neither node is left (nearly) idle.
    assert counts["n1"] >= 3 and counts["n2"] >= 3, counts
