"""Several nodes behind one address: heartbeats, room placement, relaying, reaping, resync.

LiveKit's split: a room's media lives on one node (`room_node` in the store). A client's
WebSocket may land on any node (the edge). When the edge does not own the room, it relays
the client's frames to the owner over the store's fan-out (channel `node:<id>`), and the
owner's replies come back the same way; the client never knows. Nodes heartbeat into the
store; when one dies, a survivor reaps its participants, and clients that were relayed to
it are told to reconnect, which places their room on a live node.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from typing import Any, Protocol

from server.config import Settings
from server.room import Rooms
from server.store import ParticipantState, Store, StoreUnavailable, Subscription, TrackState
from server.tasks import TaskOwner

from .protocol import error
from .session import Connection, ConnectionLimits, RateLimiter, RelayedConnection

logger = logging.getLogger(__name__)

# Close code for "this node is going away; connect again" (RFC 6455 "service restart").
SERVICE_RESTART = 1012


def node_channel(node_id: str) -> str:
    return f"node:{node_id}"


class ClusterNode(Protocol):
    """What the cluster asks of this node's signalling (signaling/service.py). Small on
    purpose: the service owns the cluster, and the cluster must not reach into the whole
    service (nor import it: that was an import cycle)."""

    @property
    def idle(self) -> bool:
        """No session on this node."""

    def load(self) -> tuple[int, int]:
        """(load, rooms with media here) for placement."""

    def store_failed(self) -> None:
        """The store could not be reached (counted)."""

    async def receive(self, conn: Connection, text: str) -> None:
        """A relayed client's frame."""

    async def connection_lost(self, conn: Connection) -> None:
        """A relayed client's connection is gone."""

    async def send_everyone_elsewhere(self) -> None:
        """Ends every session here; their clients connect again (drain)."""


class Cluster:
    def __init__(self, node: ClusterNode, rooms: Rooms, settings: Settings, store: Store) -> None:
        self.node = node
        # The rooms on this node: seats written again on resync, stays of reaped participants.
        self.rooms = rooms
        self.settings = settings
        self.store = store
        self.node_id = store.node_id
        self.multi_node = bool(settings.redis_url)
        self.draining = False
        self.store_down = False
        # Edge side: local WebSockets whose room lives on another node.
        self.relayed: dict[str, Connection] = {}
        # Owner side: clients whose WebSocket lives on another node.
        self.remote: dict[tuple[str, str], RelayedConnection] = {}
        self.connection_limits = ConnectionLimits.from_settings(settings)
        # Relayed frames wait here per (origin node, connection): one client's frames are
        # handled in the order sent, while different clients' frames run concurrently
        # (a relayed join waits on ~10 store round trips; one global queue made every
        # relayed client wait for all the others).
        self._lanes: dict[tuple[str, str], deque[dict[str, Any]]] = {}
        # Relay lanes, uplinks, outbox flushes, the maintenance loop and the silent-node watch.
        self._tasks = TaskOwner("cluster")
        # Owner side: per edge node, `_out`/`_close` messages waiting for one publish, and
        # the edges that said they take such batches.
        self._outbox: dict[str, list[dict[str, Any]]] = {}
        self._batching: set[str] = set()
        self._subscription: Subscription | None = None
        # Live nodes as the maintenance loop last read them (every heartbeat): a hello into
        # a placed room checks its owner against this instead of reading the nodes again.
        self._live: dict[str, dict[str, Any]] | None = None
        # Edge side: per relayed connection, (owner, message) waiting to be published in
        # order; a message nobody took is tried again (the owner may be resubscribing).
        self._uplinks: dict[str, deque[tuple[str, dict[str, Any]]]] = {}
        # Nodes whose channel had no subscriber when last looked at: since when. A node
        # killed outright drops its store connections at once, so its channel empties
        # long before its heartbeat key expires (node_timeout_s).
        self._silent_since: dict[str, float] = {}
        self._watching: asyncio.Task[None] | None = None
        # Nodes found silent for node_unreachable_s: treated as dead (their rooms are
        # placed elsewhere, links to them dropped) until heard again or reaped.
        self.unreachable: set[str] = set()
        # When the store last came back after this node saw it down (monotonic).
        self._store_back_at = 0.0

    async def start(self) -> None:
        if not self.multi_node:
            return
        # Subscribed before the first heartbeat: a node listed as live can be reached.
        self._subscription = await self.store.subscribe(node_channel(self.node_id), self._enqueue)
        await self._heartbeat()
        self._live = await self.store.live_nodes()
        self._tasks.spawn(self._maintain(), name="cluster-maintain")

    async def stop(self) -> None:
        await self._tasks.close()
        self._lanes.clear()
        self._outbox.clear()
        self._uplinks.clear()
        if self._subscription is not None:
            try:
                await self._subscription.close()
            except StoreUnavailable:
                pass
        if self.multi_node:
            try:
                await self.store.forget_node(self.node_id)
            except StoreUnavailable:
                pass

    def _info(self) -> dict[str, Any]:
        load, rooms = self.node.load()
        return {"load": load, "rooms": rooms, "draining": self.draining}

    async def _heartbeat(self) -> None:
        await self.store.heartbeat_node(self.node_id, self._info(), self.settings.node_timeout_s)

    # --- placement -----------------------------------------------------------------------

    async def owner_for(self, room: str) -> str:
        """The node hosting the room's media, placing the room when nobody live has it."""
        if not self.multi_node:
            return self.node_id
        await self._settle_after_outage()
        owner = await self.store.room_owner(room)
        if owner is not None and self._live is not None and owner in self._live:
            # The common case: the maintenance loop's view (at most a heartbeat old) says
            # the owner lives; no two more round trips per hello.
            return owner
        # Placing (or re-placing) a room: the current view, so a node that just started
        # takes rooms at once.
        live = {n: info for n, info in (await self.store.live_nodes()).items() if n not in self.unreachable}
        if owner is not None and owner in live:
            return owner
        if not self._judging() and self._live is not None:
            # Right after an outage (see _maintain): nodes live before it count as live.
            live = {**self._live, **live}
            if owner is not None and owner in live:
                return owner
        candidates = {n: info for n, info in live.items() if not info.get("draining")}
        if not self.draining:
            # Our own figure is current; the others' are up to a heartbeat old.
            candidates[self.node_id] = self._info()
        if not candidates:
            raise StoreUnavailable("no live node can take the room")
        bucket = max(1, self.settings.placement_load_bucket)

        def rank(node: str) -> tuple[int, int]:
            # Loads within one bucket count as equal: rooms placed in a burst (between
            # heartbeats, with stale loads) then spread by a per-room hash (rendezvous
            # hashing) instead of all landing on the node that looked least loaded.
            load = int(candidates[node].get("load", 0))
            return load // bucket, zlib.crc32(f"{room}\0{node}".encode())

        pick = min(candidates, key=rank)
        return await self.store.place_room(room, pick, sorted(set(live) | {pick}))

    async def _settle_after_outage(self) -> None:
        """Right after a store outage, waits until every node had a heartbeat to write its
        placements again (resync): a Redis restarted without persistence has none, and a
        room placed meanwhile would land beside its media instead of with it."""
        since = max(self._store_back_at, self.store.disrupted_at)
        if since:
            # Every node notices the store's return within a quarter heartbeat (_maintain)
            # and resyncs right then.
            wait = since + self.settings.node_heartbeat_s / 2 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    async def room_empty(self, room: str) -> None:
        if self.multi_node:
            await self.store.release_room(room, self.node_id)

    # --- relaying ----------------------------------------------------------------------------

    async def relay(self, conn: Connection, owner: str, text: str) -> None:
        """Edge: hands this connection's frames to the owner from now on."""
        conn.relay_to = owner
        self.relayed[conn.id] = conn
        await self.forward(conn, text)

    async def forward(self, conn: Connection, text: str) -> None:
        assert conn.relay_to is not None
        # "batch": this edge understands `_batch` replies (older nodes, during a rolling
        # upgrade, get one message per publish).
        self._up(conn, {"type": "_in", "conn": conn.id, "origin": self.node_id, "text": text, "batch": True})

    async def relay_closed(self, conn: Connection) -> None:
        self.relayed.pop(conn.id, None)
        if conn.relay_to is not None:
            # After the frames still waiting: the owner ends the session's connection last.
            self._up(conn, {"type": "_gone", "conn": conn.id, "origin": self.node_id})

    def _up(self, conn: Connection, message: dict[str, Any]) -> None:
        assert conn.relay_to is not None
        uplink = self._uplinks.get(conn.id)
        if uplink is None:
            uplink = self._uplinks[conn.id] = deque()
            self._tasks.spawn(self._send_up(conn, uplink), name="relay-uplink")
        elif len(uplink) >= self.settings.relay_queue_frames and message["type"] == "_in":
            # Bounded: a client cannot pile frames up while its room's node is unreachable.
            raise StoreUnavailable("too many relayed frames waiting")
        uplink.append((conn.relay_to, message))

    async def _send_up(self, conn: Connection, uplink: deque[tuple[str, dict[str, Any]]]) -> None:
        """Edge: one relayed connection's frames to its room's node, in order."""
        try:
            while uplink:
                entry = uplink[0]
                owner, message = entry
                outcome = await self._deliver(owner, message)
                if not uplink or uplink[0] is not entry:
                    # Dropped meanwhile: the owner closed the connection.
                    continue
                uplink.popleft()
                if outcome == "unavailable" and message["type"] == "_in":
                    conn.send(error("unavailable", "The service is busy; try again in a moment."))
                elif outcome == "unheard" and conn.relay_to == owner:
                    # Nobody listens for the room's node: it is gone. The client connects
                    # again and its room is placed on a live node.
                    uplink.clear()
                    await self._lose_link(conn, "node_lost")
        finally:
            if self._uplinks.get(conn.id) is uplink:
                del self._uplinks[conn.id]

    async def _deliver(self, node: str, message: dict[str, Any]) -> str:
        """Publishes to a node's channel: "ok", or after `relay_retry_s` of trying,
        "unavailable" (the store is down) or "unheard" (nobody subscribed: the node is
        resubscribing after a store outage, or dead)."""
        deadline = time.monotonic() + self.settings.relay_retry_s
        delay = 0.02
        while True:
            try:
                if await self.store.publish(node_channel(node), message):
                    return "ok"
                outcome = "unheard"
                self._suspect(node)
            except StoreUnavailable:
                outcome = "unavailable"
            if node in self.unreachable or time.monotonic() + delay > deadline:
                return outcome
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _lose_link(self, conn: Connection, reason: str) -> None:
        """Edge: a relayed connection whose room's node is gone; the client reconnects."""
        self.relayed.pop(conn.id, None)
        conn.relay_to = None
        conn.send({"type": "reconnect", "reason": reason})
        await conn.close(SERVICE_RESTART, reason.replace("_", " "))

    async def _to_edge(self, origin: str, message: dict[str, Any]) -> None:
        """Owner: queues an `_out`/`_close` for an edge. What is queued for one edge within
        one turn of the event loop leaves in one publish (a join's replies, and a room
        event for every member relayed from that edge), in order."""
        if message["type"] == "_close":
            # This node closed the connection itself (leave, kick, drain): forget it now;
            # the edge sends no `_gone` for a connection its owner closed.
            self.remote.pop((origin, message["conn"]), None)
        if origin not in self._batching:
            await self.store.publish(node_channel(origin), message)
            return
        outbox = self._outbox.get(origin)
        if outbox is not None:
            outbox.append(message)
            return
        self._outbox[origin] = [message]
        self._tasks.spawn(self._flush(origin), name="relay-flush")

    async def _flush(self, origin: str) -> None:
        try:
            await asyncio.sleep(0)
            while self._outbox.get(origin):
                messages = self._outbox[origin]
                self._outbox[origin] = []
                payload = messages[0] if len(messages) == 1 else {"type": "_batch", "messages": messages}
                # Tried again while the edge resubscribes after a store outage; what is
                # still lost after that, the session's resume buffer keeps.
                await self._deliver(origin, payload)
        finally:
            self._outbox.pop(origin, None)

    def _enqueue(self, message: dict[str, Any]) -> None:
        """Store fan-out handler for this node's channel (called in arrival order)."""
        kind = message.get("type")
        if kind == "_batch":
            for item in message.get("messages", ()):
                self._enqueue(item)
            return
        if kind == "_in" and message.get("batch"):
            self._batching.add(str(message.get("origin", "")))
        if kind == "_out":
            # Edge side, synchronous: the connection's writer queue keeps the order.
            edge = self.relayed.get(message.get("conn", ""))
            if edge is not None:
                edge.send_text(message["text"])
            return
        # `_in`/`_gone` come from an edge (origin), `_close` from an owner; either way
        # the lane is one client's connection on one peer node.
        key = (str(message.get("origin", "")), str(message.get("conn", "")))
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(message)
            return
        self._lanes[key] = deque([message])
        self._tasks.spawn(self._drain_lane(key), name="relay-lane")

    async def _drain_lane(self, key: tuple[str, str]) -> None:
        lane = self._lanes[key]
        try:
            while lane:
                message = lane[0]
                try:
                    await self._handle(message)
                except Exception:
                    logger.exception("relay message %s failed", message.get("type"))
                lane.popleft()
        finally:
            # A lane exists only while it has a task draining it.
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "_in":
            key = (message["origin"], message["conn"])
            conn = self.remote.get(key)
            if conn is None:
                origin = message["origin"]
                conn = self.remote[key] = RelayedConnection(
                    message["conn"],
                    origin,
                    lambda m, origin=origin: self._to_edge(origin, m),
                    RateLimiter(self.settings.messages_per_second * 2, self.settings.message_burst * 2),
                    self.connection_limits,
                )
            await self.node.receive(conn, message["text"])
        elif kind == "_gone":
            conn = self.remote.pop((message["origin"], message["conn"]), None)
            if conn is not None:
                conn.mark_gone()
                conn.abandon()
                await self.node.connection_lost(conn)
        elif kind == "_close":
            edge = self.relayed.pop(message["conn"], None)
            uplink = self._uplinks.get(message["conn"])
            if uplink is not None:
                # Frames after the owner's close would only make it a new, empty relayed
                # connection that nobody ends.
                uplink.clear()
            if edge is not None:
                edge.relay_to = None
                await edge.close(message["code"], message.get("reason", ""))

    # --- liveness, reaping, resync ------------------------------------------------------------

    async def _maintain(self) -> None:
        # Whatever a cancel comes out of a call as, the loop ends: caught below as an error,
        # it slept on, and stop() waited for it for ever (the store turns its own case back
        # into CancelledError; this covers any other).
        while not asyncio.current_task().cancelling():  # type: ignore[union-attr]
            # While the store is down, look for its return four times as often: every
            # node re-publishes its state (resync) within a quarter heartbeat of it.
            await asyncio.sleep(self.settings.node_heartbeat_s / (4 if self.store_down else 1))
            try:
                await self._heartbeat()
                if self.store_down:
                    self.store_down = False
                    self._store_back_at = time.monotonic()
                    logger.warning("store reachable again; re-publishing this node's live state")
                    await self.resync()
                live = await self.store.live_nodes()
                await self._listen_for(live)
                if not self._judging():
                    # Right after an outage the other nodes' heartbeat keys may have
                    # expired (or gone with a Redis restarted without persistence), and
                    # they had no chance yet to write them again: nodes live before it
                    # still count as live, and nobody is reaped.
                    self._live = {**(self._live or {}), **live}
                    continue
                live = self._live = {n: info for n, info in live.items() if n not in self.unreachable}
                await self._drop_links_to_dead_nodes(live)
                for dead in await self.store.dead_nodes():
                    await self._reap(dead)
            except StoreUnavailable as exc:
                self.node.store_failed()
                if not self.store_down:
                    logger.warning("store unreachable (%s); calls go on, joins wait", exc)
                self.store_down = True
            except Exception:
                logger.exception("cluster maintenance failed")

    def _judging(self) -> bool:
        """Whether other nodes can be judged dead or unreachable now: not within
        node_timeout_s of this node's own loss of the store (they were cut off too)."""
        since = max(self._store_back_at, self.store.disrupted_at)
        return time.monotonic() - since >= self.settings.node_timeout_s

    async def _listen_for(self, live: dict[str, dict[str, Any]]) -> None:
        """Checks that every live node still listens on its channel."""
        others = [n for n in live if n != self.node_id]
        counts = await self.store.subscribers([node_channel(n) for n in others])
        for node in others:
            if counts[node_channel(node)] > 0:
                self._silent_since.pop(node, None)
                if node in self.unreachable:
                    self.unreachable.discard(node)
                    logger.warning("node %s is reachable again", node)
            else:
                self._suspect(node)
        # Reaped or forgotten nodes need no watching.
        self.unreachable &= set(live)

    def _suspect(self, node: str) -> None:
        if node == self.node_id or node in self.unreachable or node in self._silent_since:
            return
        self._silent_since[node] = time.monotonic()
        if self._watching is None or self._watching.done():
            self._watching = self._tasks.spawn(self._watch_silent(), name="cluster-watch-silent")

    async def _watch_silent(self) -> None:
        """Looks again at silent nodes until each is heard or found unreachable."""
        patience = self.settings.node_unreachable_s
        while self._silent_since:
            await asyncio.sleep(patience / 4)
            nodes = list(self._silent_since)
            try:
                counts = await self.store.subscribers([node_channel(n) for n in nodes])
            except StoreUnavailable:
                self._silent_since.clear()
                return
            now = time.monotonic()
            lost = False
            for node in nodes:
                if counts[node_channel(node)] > 0 or not self._judging():
                    self._silent_since.pop(node, None)
                elif now - self._silent_since[node] >= patience:
                    del self._silent_since[node]
                    self.unreachable.add(node)
                    lost = True
                    logger.warning("node %s does not listen on its channel; treating it as gone", node)
            if lost and self._live is not None:
                self._live = {n: info for n, info in self._live.items() if n not in self.unreachable}
                await self._drop_links_to_dead_nodes(self._live)

    async def _drop_links_to_dead_nodes(self, live: dict[str, dict[str, Any]]) -> None:
        for conn in [c for c in self.relayed.values() if c.relay_to not in live]:
            # Its room's node is gone: the client connects again and lands on a live node.
            await self._lose_link(conn, "node_lost")
        for key, conn in [(k, c) for k, c in self.remote.items() if c.origin not in live]:
            del self.remote[key]
            conn.mark_gone()
            conn.abandon()
            await self.node.connection_lost(conn)

    async def _reap(self, dead: str) -> None:
        """Removes a dead node's participants and placements, once across the cluster."""
        if dead == self.node_id or not await self.store.acquire_lock(f"reap:{dead}", 30.0):
            return
        logger.warning("node %s is gone; removing its participants", dead)
        for room in await self.store.list_rooms():
            tracks = await self.store.list_tracks(room)
            for participant in await self.store.list_participants(room):
                if participant.node_id != dead:
                    continue
                for track in tracks:
                    if track.participant_id == participant.participant_id:
                        await self.store.publish(
                            room,
                            {"type": "track_unpublished", "track_id": track.track_id,
                             "participant_id": track.participant_id, "kind": track.kind},
                        )
                await self._remove_left_behind(room, participant, "timeout")
        await self.store.forget_node(dead)

    async def _remove_left_behind(self, room: str, participant: ParticipantState, reason: str) -> None:
        """Removes a participant the store lists but no node holds (its node died, or this
        node lost it during a store outage): its stay ends and the room hears it left."""
        await self.store.remove_participant(room, participant.participant_id)
        if participant.admitted:
            await self.rooms.record_stay(
                room, participant.participant_id, participant.role, participant.joined_at, joined=False
            )
        await self.store.publish(
            room, {"type": "participant_left", "participant_id": participant.participant_id, "reason": reason}
        )

    async def resync(self) -> None:
        """After a store outage: this node's sessions and tracks are written again, and
        participants the store still lists for this node but that are gone are removed."""
        local: set[tuple[str, str]] = set()
        for room, session in list(self.rooms.seats()):
            if session.ended:
                continue
            participant_id = session.participant_id
            local.add((room, participant_id))
            state = ParticipantState(
                participant_id=participant_id,
                room=room,
                name=session.grant.name,
                role=session.grant.role,
                node_id=self.node_id,
                joined_at=session.joined_at,
                connected=session.connection is not None,
                admitted=session.admitted,
            )
            previous = await self.store.get_participant(room, participant_id)
            if previous is not None:
                state.audio_muted, state.video_muted = previous.audio_muted, previous.video_muted
            await self.store.add_participant(state, max_participants=10**6)
            await self.store.touch_presence(participant_id, self.rooms.presence_ttl)
            if session.transport is not None:
                for producer in session.transport.producers:
                    await self.store.add_track(
                        TrackState(producer.id, room, participant_id, producer.kind, muted=producer.paused)
                    )
            if session.admitted:
                await self.store.place_room(room, self.node_id, [self.node_id])
                # Stays that began while the store was away (idempotent for the others).
                await self.rooms.record_stay(room, participant_id, session.grant.role, session.joined_at, joined=True)
        for room in await self.store.list_rooms():
            for participant in await self.store.list_participants(room):
                if participant.node_id == self.node_id and (room, participant.participant_id) not in local:
                    await self._remove_left_behind(room, participant, "left")

    # --- graceful drain ----------------------------------------------------------------------

    async def drain(self) -> None:
        """Stops taking rooms and sends every client elsewhere; their sessions end here."""
        self.draining = True
        if self.multi_node:
            try:
                await self._heartbeat()
                for room in await self.store.rooms_of_node(self.node_id):
                    await self.store.release_room(room, self.node_id)
            except StoreUnavailable:
                pass
        for conn in list(self.relayed.values()):
            # relay_to stays: when the socket has closed, the owner hears `_gone`.
            conn.send({"type": "reconnect", "reason": "draining"})
            await conn.close(SERVICE_RESTART, "draining")
        await self.node.send_everyone_elsewhere()
        # Relayed connections without a session (a hello that failed, a resume refused).
        for conn in list(self.remote.values()):
            conn.send({"type": "reconnect", "reason": "draining"})
            await conn.close(SERVICE_RESTART, "draining")

    @property
    def idle(self) -> bool:
        return self.node.idle and not self.relayed and not self.remote and not self._uplinks
