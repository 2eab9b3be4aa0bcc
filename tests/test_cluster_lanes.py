"""Relayed frames on the owner: in order per (origin, connection), concurrent across them."""

from __future__ import annotations

import asyncio
from typing import Any

from server.config import Settings
from signaling.cluster import Cluster
from signaling.session import Connection


class _Store:
    node_id = "n1"

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        pass


class _Service:
    """Records frames; a frame with text 'slow' blocks until released."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, str]] = []
        self.release = asyncio.Event()
        self.sessions: dict[str, Any] = {}
        self.metrics = None

    async def receive(self, conn: Connection, text: str) -> None:
        if text == "slow":
            await self.release.wait()
        self.handled.append((conn.id, text))

    async def connection_lost(self, conn: Connection) -> None:
        self.handled.append((conn.id, "gone"))


async def test_relayed_frames_concurrent_across_connections_ordered_within_one() -> None:
    service = _Service()
    cluster = Cluster(service, Settings(), _Store())  # type: ignore[arg-type]

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
