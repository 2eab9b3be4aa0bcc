"""The signalling service: WebSocket endpoint, sessions, resume, and messages turned into
calls on this node's rooms.

A room is owned by its `Room` (server/room.py): seats, lobby, moderation, spotlight, media.
This service keeps sessions and connections, parses messages, checks who may send what,
and translates each message into a Room call (a RoomError into an error reply).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from server.config import Settings
from server.directory import Directory
from server.room import RoomError, Rooms, Seat
from server.turn import ice_servers_for
from server.sfu.router import Sfu
from server.store import AccessRefused, Store, StoreUnavailable, Subscription
from server.tasks import TaskOwner

from .devices import DeviceHub
from .protocol import DEVICE_ONLY, VERSION, CloseCode, ProtocolError, error, parse_client_message
from .cluster import SERVICE_RESTART, Cluster
from .revocation import Revocations
from .session import Connection, ConnectionLimits, RateLimiter, RelayedConnection, Session, WebSocketConnection
from .tokens import TokenError, TokenIssuer

if TYPE_CHECKING:
    # Handed down by server/app.py (the layer above); named here for the type checker only.
    from server.metrics import Metrics

MODERATION = ("admit", "deny", "lock", "mute_all", "ask_unmute", "spotlight", "music_mode", "end", "kick", "unban", "invite_senior")
# How a client hears that its room ended its session (Rooms' EndSeat reasons).
END_CLOSE_CODES = {
    "replaced": CloseCode.REPLACED,
    "denied": CloseCode.DENIED,
    "kicked": CloseCode.REMOVED,
    "ended": CloseCode.REMOVED,
    "media_failed": CloseCode.MEDIA_FAILED,
}

logger = logging.getLogger(__name__)


class SignalingService:
    def __init__(
        self, settings: Settings, store: Store, issuer: TokenIssuer, sfu: Sfu, directory: Directory
    ) -> None:
        self.settings = settings
        self.store = store
        self.issuer = issuer
        self.sfu = sfu
        self.directory = directory
        self.devices = DeviceHub(settings, store, directory, issuer)
        self.revocations = Revocations(store, settings.max_token_ttl_s)
        self.rooms = Rooms(
            settings, store, sfu, directory, self.revocations, end_seat=self._end_seat, released=self._room_released
        )
        self.rooms.on_entered = self._entered
        self.cluster = Cluster(self, self.rooms, settings, store)
        self._revocation_subscription: Subscription | None = None
        # The sweep, resume grace timers, socket closes and revoked sessions' ends.
        self._tasks = TaskOwner("signaling")
        self.metrics: Metrics | None = None
        # Told when a WebSocket's hello is accepted (server/connections.py stops counting
        # it as an unauthenticated connection).
        self.on_authenticated: Callable[[asyncio.BaseTransport | None], None] | None = None
        self.sessions: dict[str, Session] = {}
        self._connections: set[Connection] = set()
        self.connection_limits = ConnectionLimits.from_settings(settings)
        self._sweeper: asyncio.Task[None] | None = None
        # Seconds the event loop ran behind at the last sweep (see _sweep).
        self.loop_lag = 0.0

    # --- what the cluster asks of this node (signaling/cluster.py's ClusterNode) ----------

    @property
    def idle(self) -> bool:
        return not self.sessions

    def load(self) -> tuple[int, int]:
        stats = self.sfu.stats()
        # Sessions count too: without media every node had load 0 and every room
        # went to the same node, so a second node added no signalling capacity.
        return len(self.sessions) + stats["consumers"] + stats["producers"], stats["routers"]

    def store_failed(self) -> None:
        if self.metrics is not None:
            self.metrics.redis_errors.inc()

    async def _room_released(self, room: str) -> None:
        await self.cluster.room_empty(room)

    # --- WebSocket endpoint ----------------------------------------------------------------

    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        # No per-message deflate: its zlib state costs 110–160 KiB per idle kiosk, and
        # signalling messages are small.
        # aiohttp refuses a frame of exactly max_msg_size; a frame of max_frame_bytes is allowed.
        ws = web.WebSocketResponse(
            max_msg_size=self.settings.max_frame_bytes + 1,
            compress=False,
            timeout=self.settings.close_timeout_s,
        )
        await ws.prepare(request)
        conn = WebSocketConnection(
            ws,
            request.transport,
            RateLimiter(self.settings.messages_per_second, self.settings.message_burst),
            self.connection_limits,
        )
        self._connections.add(conn)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = self._tasks.spawn(self._sweep(), name="sweep")
        # A timer, not the once-a-second sweep: the deadline holds to the moment.
        hello_deadline = asyncio.get_running_loop().call_later(
            self.settings.hello_timeout_s, self._hello_timeout, conn
        )
        signed_in = False
        try:
            async for msg in ws:
                conn.last_seen = time.monotonic()
                if msg.type == WSMsgType.TEXT:
                    await self.receive(conn, msg.data)
                    if not signed_in and conn.signed_in:
                        signed_in = True
                        if self.on_authenticated is not None:
                            self.on_authenticated(request.transport)
                elif msg.type == WSMsgType.BINARY:
                    self._reply_error(conn, ProtocolError("bad_json", "Binary frames are not accepted."))
                if ws.closed:
                    break
        finally:
            hello_deadline.cancel()
            self._connections.discard(conn)
            conn.abandon()
            if conn.relay_to is not None:
                await self.cluster.relay_closed(conn)
            elif conn.device is not None:
                await self.devices.connection_lost(conn)
            else:
                await self.connection_lost(conn)
        return ws

    @staticmethod
    def _hello_timeout(conn: Connection) -> None:
        if not conn.signed_in:
            conn.close_soon(CloseCode.HELLO_TIMEOUT, "no hello")

    async def _sweep(self) -> None:
        """Closes connections that stopped pinging.

        One task for the whole node, not a watchdog task per connection: 10,000 idle
        kiosks were 10,000 tasks waking every second (memory and CPU per connection).
        """
        s = self.settings
        loop = asyncio.get_running_loop()
        interval = min(1.0, s.ping_interval_s / 2)
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            # How late this timer ran: the event loop's backlog, the node's overload signal.
            self.loop_lag = max(0.0, loop.time() - due)
            now = time.monotonic()
            for conn in list(self._connections):
                if conn.closing or conn.closed:
                    continue
                if now - conn.last_seen > s.ping_timeout_s:
                    # Its own task: a close flushes the writer and may wait; the sweep must not.
                    conn.close_soon(CloseCode.PING_TIMEOUT, "ping timeout")

    async def receive(self, conn: Connection, text: str) -> None:
        if conn.closing:
            return
        if not conn.limiter.allow():
            self._reply_error(conn, ProtocolError("rate_limited", "Too many messages; slow down."))
            return
        try:
            if conn.relay_to is not None:
                await self.cluster.forward(conn, text)
                return
            message = parse_client_message(
                text, self.settings.max_message_bytes, self.settings.max_message_depth
            )
            await self._dispatch(conn, message)
        except ProtocolError as exc:
            self._reply_error(conn, exc)
        except StoreUnavailable:
            self.store_failed()
            self._reply_error(
                conn, ProtocolError("unavailable", "The service is busy; try again in a moment.")
            )
        except Exception:
            logger.exception("internal error handling a message")
            self._reply_error(conn, ProtocolError("internal", "Something went wrong on the server."))

    def _reply_error(self, conn: Connection, exc: ProtocolError) -> None:
        if not conn.errors.allow():
            # Answering every bad or excess message would let a flood fill the outbound
            # buffer with our own replies; a client this wrong is closed instead.
            conn.close_soon(CloseCode.TOO_MANY_ERRORS, "too many errors")
            return
        payload = error(exc.code, exc.message, exc.ref)
        if conn.session is not None and conn.session.connection is conn:
            conn.session.send(payload)
        else:
            conn.send(payload)

    async def _dispatch(self, conn: Connection, message: dict[str, Any]) -> None:
        try:
            await self._route(conn, message)
        except RoomError as exc:
            raise ProtocolError(exc.code, exc.message, message.get("id")) from None

    async def _route(self, conn: Connection, message: dict[str, Any]) -> None:
        kind = message["type"]
        ref = message.get("id")
        if kind == "hello":
            await self._hello(conn, message, ref)
            return
        if conn.device is not None:
            await self.devices.dispatch(conn, message)
            return
        session = conn.session
        if session is None:
            raise ProtocolError("not_authenticated", "Send 'hello' with a token first.", ref)
        if kind == "ping":
            # Not sequenced and not kept for resume: a replayed pong means nothing, and
            # kept pongs filled an idle kiosk's resume buffer (+60 KiB per connection).
            conn.send({"type": "pong", "ts": message.get("ts"), "ref": ref})
            if session.joined:
                await self._refresh_presence(session)
            return
        if kind == "join":
            await self._join(session, message["room"], ref)
            return
        if kind == "leave":
            session.send({"type": "left", "ref": ref})
            await self._end(session, "left")
            await conn.close(CloseCode.NORMAL, "left")
            return
        if not session.joined:
            raise ProtocolError("not_joined", "Join a room first.", ref)
        if kind in MODERATION and not session.grant.may("moderate"):
            raise ProtocolError("forbidden", "Only a host may do that.", ref)
        if not session.admitted:
            raise ProtocolError("forbidden", "Wait until the host lets you in.", ref)
        if kind in DEVICE_ONLY:
            raise ProtocolError("forbidden", f"Only a kiosk device can send '{kind}'.", ref)
        assert session.room is not None
        room = self.rooms.of(session.room)
        if kind == "publish":
            await room.publish(session, {"audio": message["audio"], "video": message["video"]})
        elif kind == "unpublish":
            await room.publish(session, {message["kind"]: False})
        elif kind == "answer":
            await room.answer(session, message["sdp"], message["negotiation_id"])
        elif kind == "mute":
            target = message.get("participant_id", session.participant_id)
            await room.mute(session, target, message["kind"], message["muted"])
        elif kind == "kick":
            await room.kick(message["participant_id"])
        elif kind in ("admit", "deny"):
            await room.admit(message["participant_id"], kind == "admit")
        elif kind == "mute_all":
            await room.mute_all(session, message["kind"])
        elif kind == "ask_unmute":
            await room.ask_unmute(session, message["participant_id"], message["kind"])
        elif kind == "lock":
            await room.lock(message["locked"])
        elif kind == "spotlight":
            await room.spotlight(message["participant_id"])
        elif kind == "music_mode":
            await room.music_mode(message["enabled"])
        elif kind == "layout":
            room.layout(session, message["tiles"])
        elif kind == "end":
            await self.end_room(session.room, by=session.participant_id)
        elif kind == "unban":
            await room.unban(message["participant_id"])
        elif kind == "invite_senior":
            await self._invite_senior(session, message["senior_id"], ref)

    async def _refresh_presence(self, session: Session, *, force: bool = False) -> None:
        # A store write on every ping was the largest cost of an idle connection; the key
        # only needs rewriting well before it expires.
        now = time.monotonic()
        if force or now - session.presence_touched >= self.rooms.presence_ttl * self.settings.presence_refresh_fraction:
            await self.store.touch_presence(session.participant_id, self.rooms.presence_ttl)
            session.presence_touched = now

    # --- hello / resume ------------------------------------------------------------------

    async def _hello(self, conn: Connection, message: dict[str, Any], ref: str | None) -> None:
        if conn.session is not None:
            raise ProtocolError("already_authenticated", "This connection already said hello.", ref)
        if message["v"] != VERSION:
            conn.send(error("unsupported_version", f"Only protocol version {VERSION} is spoken here.", ref))
            await conn.close(CloseCode.AUTH_FAILED, "unsupported version")
            return
        if "device" in message or "contact" in message:
            if conn.device is not None:
                raise ProtocolError("already_authenticated", "This connection already said hello.", ref)
            if "contact" in message:
                await self.devices.contact_hello(conn, message["contact"], ref)
            else:
                await self.devices.hello(conn, message["device"], ref)
            return
        if (
            message.get("resume") is None
            and self.settings.overload_lag_s > 0
            and self.loop_lag > self.settings.overload_lag_s
        ):
            # Shed new sessions while the loop runs behind: taking more only grows the
            # backlog until the heartbeat misses and the other nodes reap this one.
            # Sessions in progress and resumes go on; the client retries `unavailable`.
            raise ProtocolError("unavailable", "The service is busy; try again in a moment.", ref)
        try:
            grant = self.issuer.verify(message["token"])
            if not isinstance(conn, RelayedConnection):
                # A relayed hello was checked by its edge node a moment ago.
                await self.revocations.check(grant)
        except TokenError as exc:
            conn.send(error(exc.code, exc.message, ref))
            await conn.close(CloseCode.AUTH_FAILED, exc.code)
            return
        owner = await self.cluster.owner_for(grant.room)
        if owner != self.cluster.node_id:
            await self.cluster.relay(conn, owner, json.dumps(message))
            return
        resume = message.get("resume")
        if resume is not None:
            await self._resume(conn, grant.participant_id, resume, ref)
            return
        session = Session(grant, self.settings.resume_buffer_messages, self.settings.resume_buffer_bytes)
        self.sessions[session.id] = session
        conn.session = session
        session.connection = conn
        s = self.settings
        session.send(
            {
                "type": "welcome",
                "ref": ref,
                "v": VERSION,
                "session_id": session.id,
                "resume_key": session.resume_key,
                "participant": {
                    "id": grant.participant_id,
                    "name": grant.name,
                    "role": grant.role,
                    "permissions": sorted(grant.permissions),
                },
                "room": grant.room,
                "ping_interval_ms": int(s.ping_interval_s * 1000),
                "ping_timeout_ms": int(s.ping_timeout_s * 1000),
                "resume_grace_ms": int(s.resume_grace_s * 1000),
                "ice_servers": ice_servers_for(s, grant.participant_id),
                "limits": {
                    "max_message_bytes": s.max_message_bytes,
                    "messages_per_second": s.messages_per_second,
                },
            }
        )

    async def _resume(
        self, conn: Connection, participant_id: str, resume: dict[str, Any], ref: str | None
    ) -> None:
        session = self.sessions.get(resume["session_id"])
        replay = None
        if (
            session is not None
            and not session.ended
            and session.participant_id == participant_id
            and session.check_resume_key(resume["resume_key"])
        ):
            replay = session.replay_after(resume["last_seq"])
        if session is None or replay is None:
            raise ProtocolError(
                "resume_failed", "The earlier session cannot be resumed; start a new one.", ref
            )
        previous = session.connection
        if previous is not None and previous is not conn:
            previous.session = None
            session.connection = None
            self._tasks.spawn(previous.close(CloseCode.REPLACED, "resumed elsewhere"), name="session-close")
        if session.grace_task is not None:
            session.grace_task.cancel()
            session.grace_task = None
        conn.session = session
        session.connection = conn
        conn.send(
            {
                "type": "resumed",
                "ref": ref,
                "session_id": session.id,
                "seq": session.seq,
                "replayed": len(replay),
                # Fresh TURN credentials: the old ones may be near their expiry.
                "ice_servers": ice_servers_for(self.settings, participant_id),
            }
        )
        for text in replay:
            conn.send_text(text)
        offer = session.transport.pending_offer if session.transport else None
        if offer is not None:
            # Its answer may have been lost with the old socket; answering twice is harmless.
            session.send({"type": "offer", **offer})
        if session.joined:
            assert session.room is not None
            await self._refresh_presence(session, force=True)
            await self.rooms.of(session.room).set_connected(session, True)

    async def connection_lost(self, conn: Connection) -> None:
        session = conn.session
        if session is None or session.connection is not conn or session.ended:
            return
        session.connection = None
        conn.session = None
        if not session.joined:
            self._forget(session)
            return
        assert session.room is not None
        session.grace_task = self._tasks.spawn(self._grace(session), name="resume-grace")
        try:
            await self.rooms.of(session.room).set_connected(session, False)
        except StoreUnavailable:
            return

    async def _grace(self, session: Session) -> None:
        await asyncio.sleep(self.settings.resume_grace_s)
        session.grace_task = None
        await self._end(session, "timeout")

    def _forget(self, session: Session) -> None:
        session.ended = True
        self.sessions.pop(session.id, None)


    # --- rooms: the Room does the work (server/room.py) -----------------------------------

    async def _join(self, session: Session, room: str, ref: str | None) -> None:
        if session.joined:
            raise ProtocolError("already_joined", "Already in a room.", ref)
        if room != session.grant.room:
            raise ProtocolError("token_wrong_room", "The token is for another room.", ref)
        try:
            await self.rooms.join(session, ref, self.revocations.access_check(session.grant))
        except AccessRefused as exc:
            await self._refuse(session, self.revocations.refusal(exc), ref)

    async def _refuse(self, session: Session, exc: TokenError, ref: str | None) -> None:
        """A join refused because the token was taken back: told, and closed as at hello."""
        conn = session.connection
        session.send(error(exc.code, exc.message, ref))
        await self._end(session, "revoked")
        if conn is not None:
            await conn.close(CloseCode.AUTH_FAILED, exc.code)

    def _entered(self, seat: Seat) -> None:
        if self.metrics is not None:
            self.metrics.join_seconds.observe(time.monotonic() - seat.started)

    async def _invite_senior(self, session: Session, senior_id: str, ref: str | None) -> None:
        """Rings the senior's kiosks with an invitation; the kiosk shows it and sends
        nothing until the senior taps (then the usual activity_join)."""
        assert session.room is not None
        activity = await self.rooms.activity(session.room)
        if activity is None or senior_id not in activity.enrolled:
            raise ProtocolError("not_enrolled", "That senior is not enrolled in this activity.", ref)
        if await self.store.get_participant(session.room, senior_id) is not None:
            raise ProtocolError("already_present", "That senior is already here.", ref)
        rung = await self.devices.invite_to_activity(activity, senior_id, session.grant.name)
        if not rung:
            raise ProtocolError("senior_offline", "The senior's kiosk is not online.", ref)
        session.send({"type": "invite_sent", "ref": ref, "senior_id": senior_id, "kiosks": rung})

    async def _end_seat(self, seat: Seat, reason: str) -> None:
        """What the room asks (Rooms' EndSeat): a seat's session ends, its client told why."""
        assert isinstance(seat, Session)
        await self._end(seat, reason, close_code=END_CLOSE_CODES[reason])

    async def _end(self, session: Session, reason: str, close_code: int | None = None) -> None:
        """Ends a session for good: its room frees the seat and tells the others.

        With a close code, the session's own client is told why and its socket closed.
        """
        if session.ended:
            return
        conn = session.connection
        if close_code is not None and conn is not None:
            if reason == "denied":
                session.send({"type": "denied"})
            elif reason == "moved":
                session.send({"type": "reconnect", "reason": "draining"})
            else:
                session.send({"type": "removed", "reason": reason})
            conn.session = None
            session.connection = None
            self._tasks.spawn(conn.close(close_code, reason), name="session-close")
        self._forget(session)
        if session.grace_task is not None:
            session.grace_task.cancel()
            session.grace_task = None
        if session.room is not None:
            await self.rooms.of(session.room).leave(session, reason)

    def _access_revoked(self, event: dict[str, Any]) -> None:
        """Closes this node's sessions whose access was revoked (Revocations.revoke_participant)."""
        participant_id, before = event.get("participant_id"), event.get("before")
        if not isinstance(participant_id, str) or not isinstance(before, (int, float)):
            return
        for session in list(self.sessions.values()):
            if session.participant_id == participant_id and session.grant.issued_at < before:
                self._tasks.spawn(self._end(session, "revoked", close_code=CloseCode.REVOKED), name="revoked-end")
        self.devices.access_revoked(participant_id)

    async def end_room(self, room: str, by: str | None = None) -> None:
        """Ends the room for everyone (a host's `end`, or the activity was removed)."""
        # Spent first: nobody rejoins with a token of the activity just ended.
        await self.revocations.end_room(room)
        await self.rooms.end(room, by)

    async def revoke_participant(self, participant_id: str) -> None:
        """A staff account, family contact or senior lost their access: every token issued
        to them so far is refused, on every node, and their open sessions are closed."""
        await self.revocations.revoke_participant(participant_id)

    # --- lifecycle -------------------------------------------------------------------------

    async def request_selftest(self, kiosk_id: str) -> bool:
        return await self.devices.request_selftest(kiosk_id)

    async def revoke_kiosk(self, kiosk_id: str) -> None:
        await self.devices.revoke_kiosk(kiosk_id)

    async def directory_changed(self, senior_id: str) -> None:
        await self.devices.directory_changed(senior_id)

    async def health(self) -> dict[str, Any]:
        """Cluster-wide figures (from the store); per-node ones are in `node`."""
        rooms = await self.store.list_rooms()
        return {"rooms": len(rooms), "participants": sum(rooms.values())}

    async def start(self) -> None:
        self._revocation_subscription = await self.revocations.subscribe(self._access_revoked)
        await self.cluster.start()

    async def send_everyone_elsewhere(self) -> None:
        for session in list(self.sessions.values()):
            await self._end(session, "moved", close_code=SERVICE_RESTART)

    async def close_sockets(self) -> None:
        """Closes every signalling socket with 1001: the server is stopping."""
        for conn in list(self._connections):
            await conn.close(1001, "server stopping")

    async def close(self) -> None:
        await self.cluster.stop()
        if self._revocation_subscription is not None:
            await self._revocation_subscription.close()
            self._revocation_subscription = None
        await self.close_sockets()
        await self.devices.close()
        for session in list(self.sessions.values()):
            await self._end(session, "left")
        # Last: the sessions' closes and ends started above run to their end meanwhile.
        await self.rooms.close()
        await self._tasks.close()
        self._sweeper = None


