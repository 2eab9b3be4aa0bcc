"""Relayed frames on the owner: in order per (origin, connection), concurrent across them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from server.config import Settings
from signaling.cluster import Cluster
from signaling.session import Connection, ConnectionLimits, RateLimiter


class _Store:
    node_id = "n1"

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, channel: str, message: dict[str, Any]) -> int:
        self.published.append((channel, message))
        return 1


class _Service:
    """Records frames; a frame with text 'slow' blocks until released."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        # No session on this node (signaling/cluster.py's ClusterNode).
        self.idle = True

    async def receive(self, conn: Connection, text: str) -> None:
        if text == "slow":
            await self.release.wait()
        self.handled.append((conn.id, text))

    async def connection_lost(self, conn: Connection) -> None:
        self.handled.append((conn.id, "gone"))


async def test_relayed_frames_concurrent_across_connections_ordered_within_one() -> None:
    service = _Service()
    cluster = Cluster(service, None, Settings(), _Store())  # type: ignore[arg-type]

    def frame(origin: str, conn: str, text: str) -> dict[str, Any]:
        return {"type": "_in", "origin": origin, "conn": conn, "text": text}

    cluster._enqueue(frame("n2", "a", "slow"))
    cluster._enqueue(frame("n2", "a", "a-2"))
    cluster._enqueue(frame("n2", "b", "b-1"))
    cluster._enqueue(frame("n3", "a", "other-node-a"))
    cluster._enqueue({"type": "_gone", "origin": "n2", "conn": "b"})
    for _ in range(20):
        await asyncio.sleep(0)
    # Connection a's slow frame holds up only connection a (of node n2); b's frames ran
    # in order, and the other node's connection "a" is another lane.
    assert sorted(service.handled) == [("a", "other-node-a"), ("b", "b-1"), ("b", "gone")]
    assert [t for c, t in service.handled if c == "b"] == ["b-1", "gone"]
    service.release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert service.handled[3:] == [("a", "slow"), ("a", "a-2")]
    # Drained lanes are forgotten.
    assert cluster._lanes == {}
    for conn in cluster.remote.values():
        conn.abandon()


async def test_owner_batches_replies_per_edge_that_takes_batches() -> None:
    store = _Store()
    cluster = Cluster(_Service(), None, Settings(), store)  # type: ignore[arg-type]
    outs = [{"type": "_out", "conn": f"c{i % 2}", "text": f"t{i}"} for i in range(3)]
    # An edge that never said it takes batches (an older node) gets one publish each.
    for m in outs:
        await cluster._to_edge("old", m)
    assert [m for _, m in store.published] == outs
    store.published.clear()
    cluster._enqueue({"type": "_in", "origin": "n2", "conn": "c0", "text": "x", "batch": True})
    for m in [*outs, {"type": "_close", "conn": "c0", "code": 1000, "reason": ""}]:
        await cluster._to_edge("n2", m)
    for _ in range(10):
        await asyncio.sleep(0)
    # One publish, everything in order (the close after the texts).
    assert store.published == [
        ("node:n2", {"type": "_batch", "messages": [*outs, {"type": "_close", "conn": "c0", "code": 1000, "reason": ""}]})
    ]
    assert cluster._outbox == {}
    for conn in cluster.remote.values():
        conn.abandon()


class _Edge(Connection):
    def __init__(self) -> None:
        super().__init__(RateLimiter(10, 10), ConnectionLimits.from_settings(Settings()))
        self.texts: list[str] = []
        self.close_code: int | None = None

    @property
    def closed(self) -> bool:
        return False

    async def _deliver(self, text: str) -> None:
        self.texts.append(text)

    async def _shut(self, code: int, reason: str) -> None:
        self.close_code = code


async def test_edge_unpacks_a_batch_in_order() -> None:
    cluster = Cluster(_Service(), None, Settings(), _Store())  # type: ignore[arg-type]
    a, b = _Edge(), _Edge()
    cluster.relayed = {a.id: a, b.id: b}
    cluster._enqueue({"type": "_batch", "messages": [
        {"type": "_out", "conn": a.id, "text": "a1"},
        {"type": "_out", "conn": b.id, "text": "b1"},
        {"type": "_out", "conn": a.id, "text": "a2"},
    ]})
    for _ in range(10):
        await asyncio.sleep(0)
    assert a.texts == ["a1", "a2"] and b.texts == ["b1"]


class _ResubscribingStore(_Store):
    """Nobody listens for the first `deaf` publishes (a node resubscribing after a restart)."""

    def __init__(self, deaf: int) -> None:
        super().__init__()
        self.deaf = deaf

    async def publish(self, channel: str, message: dict[str, Any]) -> int:
        if self.deaf > 0:
            self.deaf -= 1
            return 0
        return await super().publish(channel, message)


async def test_edge_publishes_relayed_frames_again_until_the_owner_listens_in_order() -> None:
    store = _ResubscribingStore(deaf=3)
    cluster = Cluster(_Service(), None, Settings(relay_retry_s=5.0), store)  # type: ignore[arg-type]
    edge = _Edge()
    edge.relay_to = "n1"
    cluster.relayed[edge.id] = edge
    await cluster.forward(edge, "hello")
    await cluster.forward(edge, "join")
    await cluster.relay_closed(edge)
    deadline = asyncio.get_running_loop().time() + 3
    while cluster._uplinks and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    # Nothing lost to the deaf moment, nothing out of order, the goodbye last.
    assert [(m["type"], m.get("text")) for _, m in store.published] == [("_in", "hello"), ("_in", "join"), ("_gone", None)]
    assert cluster.idle


async def test_edge_sends_the_client_elsewhere_when_nobody_ever_listens_for_its_room() -> None:
    store = _ResubscribingStore(deaf=10**6)
    cluster = Cluster(_Service(), None, Settings(relay_retry_s=0.2), store)  # type: ignore[arg-type]
    edge = _Edge()
    edge.relay_to = "n1"
    cluster.relayed[edge.id] = edge
    await cluster.forward(edge, "ping")
    deadline = asyncio.get_running_loop().time() + 3
    while cluster._uplinks and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert [json.loads(t) for t in edge.texts] == [{"type": "reconnect", "reason": "node_lost"}]
    assert edge.close_code == 1012
    assert edge.relay_to is None and not cluster.relayed


async def test_owner_forgets_a_relayed_connection_when_it_closes_it() -> None:
    cluster = Cluster(_Service(), None, Settings(), _Store())  # type: ignore[arg-type]
    cluster._enqueue({"type": "_in", "origin": "n2", "conn": "c0", "text": "hello", "batch": True})
    for _ in range(10):
        await asyncio.sleep(0)
    conn = cluster.remote[("n2", "c0")]
    await conn.close(1000, "left")
    for _ in range(10):
        await asyncio.sleep(0)
    # No `_gone` comes from the edge for a connection its owner closed.
    assert cluster.remote == {}
