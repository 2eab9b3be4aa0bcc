"""The signalling service: WebSocket endpoint, sessions, rooms, moderation and resume.

Room state lives in the store; room events travel through the store's fan-out so a Redis
backend can deliver them across nodes. A room's media lives in this node's SFU.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from server.attendance import Attendance
from server.config import Settings
from server.directory import Activity, Directory, Senior
from server.turn import ice_servers_for
from server.sfu.producer import Producer
from server.sfu.router import Sfu
from server.store import (
    ADMIT,
    AccessRefused,
    ADMIT_UNLESS_LOCKED,
    LOBBY,
    JoinResult,
    ParticipantState,
    RoomFull,
    Store,
    StoreUnavailable,
    Subscription,
    TrackState,
)
from server.sfu.transport import NegotiationError

from .devices import CALL_ROOM_PREFIX, DeviceHub
from .protocol import DEVICE_ONLY, VERSION, CloseCode, ProtocolError, error, parse_client_message
from .cluster import SERVICE_RESTART, Cluster
from .revocation import Revocations
from .session import Connection, ConnectionLimits, RateLimiter, RelayedConnection, Session, WebSocketConnection
from .tokens import TokenError, TokenIssuer

if TYPE_CHECKING:
    # Handed down by server/app.py (the layer above); named here for the type checker only.
    from server.metrics import Metrics

MODERATION = ("admit", "deny", "lock", "mute_all", "ask_unmute", "spotlight", "music_mode", "end", "kick", "unban", "invite_senior")
ROOM_STATE_DEFAULTS: dict[str, Any] = {"locked": False, "spotlight": None, "music_mode": False}

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
        self.cluster = Cluster(self, settings, store)
        self.revocations = Revocations(store, settings.max_token_ttl_s)
        self._revocation_subscription: Subscription | None = None
        # Sessions being ended because their access was revoked: kept, so close() waits for
        # them and a failure is logged rather than lost.
        self._revoking: set[asyncio.Task[None]] = set()
        self.attendance = Attendance(settings, store)
        self.metrics: Metrics | None = None
        # Told when a WebSocket's hello is accepted (server/connections.py stops counting
        # it as an unauthenticated connection).
        self.on_authenticated: Callable[[asyncio.BaseTransport | None], None] | None = None
        sfu.on_active_speaker = self._active_speaker
        self.sessions: dict[str, Session] = {}
        # room → participant id → the session holding that seat on this node. Indexed by
        # room so delivering a room event costs O(room), not O(sessions on the node).
        self.rooms: dict[str, dict[str, Session]] = {}
        self._room_subscriptions: dict[str, Subscription] = {}
        self._subscribing: dict[str, asyncio.Lock] = {}
        self._connections: set[Connection] = set()
        self.connection_limits = ConnectionLimits.from_settings(settings)
        self._sweeper: asyncio.Task[None] | None = None
        # Seconds the event loop ran behind at the last sweep (see _sweep).
        self.loop_lag = 0.0
        # room → (expires at, activity or None): see _activity.
        self._activities: dict[str, tuple[float, Activity | None]] = {}

    @property
    def members(self) -> dict[tuple[str, str], Session]:
        """(room, participant id) → session, for whole-node walks (resync)."""
        return {(room, pid): session for room, seats in self.rooms.items() for pid, session in seats.items()}

    def _member(self, room: str, participant_id: str) -> Session | None:
        seats = self.rooms.get(room)
        return seats.get(participant_id) if seats is not None else None

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
            self._sweeper = asyncio.ensure_future(self._sweep())
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
            if self.metrics is not None:
                self.metrics.redis_errors.inc()
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
        if kind == "publish":
            await self._publish(session, {"audio": message["audio"], "video": message["video"]}, ref)
        elif kind == "unpublish":
            await self._publish(session, {message["kind"]: False}, ref)
        elif kind == "answer":
            await self._answer(session, message["sdp"], message["negotiation_id"], ref)
        elif kind == "mute":
            await self._mute(session, message, ref)
        elif kind == "kick":
            await self._kick(session, message["participant_id"], ref)
        elif kind in ("admit", "deny"):
            await self._admit(session, message["participant_id"], kind == "admit", ref)
        elif kind == "mute_all":
            await self._mute_all(session, message["kind"])
        elif kind == "ask_unmute":
            target = await self._admitted_target(session, message["participant_id"], ref)
            await self._broadcast(
                session.room,
                {"type": "unmute_requested", "kind": message["kind"], "by": session.participant_id, "_to": target},
            )
        elif kind == "lock":
            await self._update_room(session, locked=message["locked"])
        elif kind == "spotlight":
            if message["participant_id"] is not None:
                await self._admitted_target(session, message["participant_id"], ref)
            await self._update_room(session, spotlight=message["participant_id"])
        elif kind == "music_mode":
            await self._update_room(session, music_mode=message["enabled"])
        elif kind == "layout":
            self._layout(session, message["tiles"], ref)
        elif kind == "end":
            await self.end_room(session.room, by=session.participant_id)
        elif kind == "unban":
            await self._unban(session, message["participant_id"], ref)
        elif kind == "invite_senior":
            await self._invite_senior(session, message["senior_id"], ref)

    @property
    def presence_ttl(self) -> float:
        return self.settings.ping_timeout_s + self.settings.resume_grace_s

    async def _refresh_presence(self, session: Session, *, force: bool = False) -> None:
        # A store write on every ping was the largest cost of an idle connection; the key
        # only needs rewriting well before it expires.
        now = time.monotonic()
        if force or now - session.presence_touched >= self.presence_ttl * self.settings.presence_refresh_fraction:
            await self.store.touch_presence(session.participant_id, self.presence_ttl)
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
            asyncio.ensure_future(previous.close(CloseCode.REPLACED, "resumed elsewhere"))
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
            updated = await self.store.update_participant(
                session.room, session.participant_id, connected=True
            )
            if updated is not None and session.admitted:
                await self._broadcast(session.room, {"type": "participant_updated", "participant": _participant(updated)})

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
        session.grace_task = asyncio.ensure_future(self._grace(session))
        try:
            updated = await self.store.update_participant(
                session.room, session.participant_id, connected=False
            )
        except StoreUnavailable:
            return
        if updated is not None and session.admitted:
            await self._broadcast(session.room, {"type": "participant_updated", "participant": _participant(updated)})

    async def _grace(self, session: Session) -> None:
        await asyncio.sleep(self.settings.resume_grace_s)
        session.grace_task = None
        await self._end(session, "timeout")

    def _forget(self, session: Session) -> None:
        session.ended = True
        self.sessions.pop(session.id, None)

    # --- rooms ---------------------------------------------------------------------------

    async def _join(self, session: Session, room: str, ref: str | None) -> None:
        if session.joined:
            raise ProtocolError("already_joined", "Already in a room.", ref)
        if room != session.grant.room:
            raise ProtocolError("token_wrong_room", "The token is for another room.", ref)
        grant = session.grant
        admission = await self._admission(session, room, ref)
        stale = self._member(room, grant.participant_id)
        if stale is not None and stale is not session:
            # The same person joined again (new device or lost session): the newest wins.
            await self._end(stale, "replaced", close_code=CloseCode.REPLACED)
        state = ParticipantState(
            participant_id=grant.participant_id,
            room=room,
            name=grant.name,
            role=grant.role,
            node_id=self.store.node_id,
            joined_at=time.time(),
            token_expires_at=grant.expires_at,
        )
        # Seated before the store step: this holds the room's subscription on this node,
        # and room events from now on reach `early` (the snapshot below may predate them).
        self.rooms.setdefault(room, {})[grant.participant_id] = session
        subscribed = room in self._room_subscriptions
        session.early = []
        try:
            # Checked again in the join step itself: the token may have been taken back since hello.
            result = await self.store.join_room(
                state, admission, self.settings.max_participants_per_room, self.presence_ttl,
                self.revocations.access_check(grant),
            )
        except BaseException as exc:
            session.early = None
            self._free_seat(session, room)
            await self._release_if_empty(room)
            if isinstance(exc, RoomFull):
                raise ProtocolError("room_full", "This activity is full.", ref) from None
            if isinstance(exc, AccessRefused):
                await self._refuse(session, self.revocations.refusal(exc), ref)
                return
            raise
        session.presence_touched = time.monotonic()
        session.room = room
        session.joined_at = state.joined_at
        try:
            await self._drop_stale_tracks(room, result)
            await self._subscribe_room(room)
        except BaseException:
            # The client hears `unavailable` and may join again: leave nothing behind (a
            # seat in the store that nobody was told of, a session collecting events).
            await self._undo_join(session, room)
            raise
        if result.admitted:
            # A fresh subscription may have missed events since the snapshot: read again.
            await self._enter(session, ref, result if subscribed else None)
        else:
            session.early = None
            # Knocking is automatic: waiting in the lobby is the knock.
            session.send({"type": "lobby", "ref": ref, "room": room})
            await self._broadcast(room, {"type": "knock", "participant": _participant(result.state), "_to": "moderators"})

    async def _refuse(self, session: Session, exc: TokenError, ref: str | None) -> None:
        """A join refused because the token was taken back: told, and closed as at hello."""
        conn = session.connection
        session.send(error(exc.code, exc.message, ref))
        await self._end(session, "revoked")
        if conn is not None:
            await conn.close(CloseCode.AUTH_FAILED, exc.code)

    async def _drop_stale_tracks(self, room: str, result: JoinResult) -> None:
        """A new session publishes nothing yet: tracks still listed under its participant
        are an earlier session's, left by a node that died (the reaper spares a
        participant who already joined again elsewhere)."""
        mine = result.state.participant_id
        stale = [t for t in result.tracks if t.participant_id == mine]
        if not stale:
            return
        result.tracks = [t for t in result.tracks if t.participant_id != mine]
        for track in stale:
            await self.store.remove_track(room, track.track_id)
            await self._broadcast(
                room,
                {"type": "track_unpublished", "track_id": track.track_id, "participant_id": mine, "kind": track.kind},
            )

    async def _undo_join(self, session: Session, room: str) -> None:
        session.early = None
        session.room = None
        self._free_seat(session, room)
        try:
            await self.store.remove_participant(room, session.participant_id)
            await self.store.clear_presence(session.participant_id)
        except StoreUnavailable:
            # Presence expires; a seat left behind is the reaper's or the next join's.
            pass
        await self._release_if_empty(room)

    def _free_seat(self, session: Session, room: str) -> None:
        seats = self.rooms.get(room)
        if seats is not None and seats.get(session.participant_id) is session:
            del seats[session.participant_id]

    async def _release_if_empty(self, room: str) -> None:
        """The room's last seat on this node takes the room's subscription (and this
        node's placement) with it."""
        seats = self.rooms.get(room)
        if seats is not None and not seats:
            del self.rooms[room]
        if room not in self.rooms:
            subscription = self._room_subscriptions.pop(room, None)
            try:
                if subscription is not None:
                    await subscription.close()
                await self.cluster.room_empty(room)
            except StoreUnavailable:
                pass

    async def _activity(self, room: str) -> Activity | None:
        """The room's activity record, cached briefly: every join needs it."""
        now = time.monotonic()
        cached = self._activities.get(room)
        if cached is not None and cached[0] > now:
            return cached[1]
        activity = await self.directory.get(Activity, room)
        if len(self._activities) >= self.settings.activity_cache_entries:
            self._activities.clear()
        self._activities[room] = (now + self.settings.activity_cache_s, activity)
        return activity

    async def _admission(self, session: Session, room: str, ref: str | None) -> str:
        """Whether a joiner enters directly or waits in the lobby (Store.join_room)."""
        grant = session.grant
        if grant.may("moderate"):
            return ADMIT
        if room.startswith(CALL_ROOM_PREFIX):
            return ADMIT
        if grant.role == "family":
            activity = await self._activity(room)
            if activity is not None:
                if not activity.guests_allowed:
                    raise ProtocolError("forbidden", "This activity does not take guests.", ref)
                return LOBBY
        # Decided in the store, against the room's lock, in the same step as the join.
        return ADMIT_UNLESS_LOCKED

    async def _enter(self, session: Session, ref: str | None, snapshot: JoinResult | None = None) -> None:
        """Gives an admitted participant media and the room snapshot, and tells the others.

        `snapshot`: the room as the join read it; without one (admitted from the lobby,
        or a new room subscription) the room is read here.
        """
        assert session.room is not None
        room = session.room
        grant = session.grant
        session.admitted = True
        if snapshot is not None:
            room_state = {**ROOM_STATE_DEFAULTS, **snapshot.room_state}
            everyone, tracks = snapshot.participants, snapshot.tracks
        else:
            room_state = await self._room_state(room)
        router = self.sfu.router(room)
        if not router.transports:
            router.activity = await self._activity(room) is not None
            router.tiles_to_everyone_up_to = self.settings.tiles_to_everyone_up_to
            router.spotlight = room_state.get("spotlight")
        if session.ended or session.room is None:
            return
        session.transport = router.create_transport(
            grant.participant_id,
            moderator=grant.may("moderate"),
            subscribe=grant.may("subscribe"),
            send_offer=lambda offer: session.send({"type": "offer", **offer}),
            on_failed=lambda: asyncio.ensure_future(
                self._end(session, "media_failed", close_code=CloseCode.MEDIA_FAILED)
            ),
        )
        if snapshot is None:
            everyone = await self.store.list_participants(room)
            tracks = await self.store.list_tracks(room)
        joined: dict[str, Any] = {
            "type": "joined",
            "ref": ref,
            "room": room,
            "self_id": grant.participant_id,
            "participants": [_participant(p) for p in everyone if p.admitted],
            "tracks": [t.to_dict() for t in tracks],
            "room_state": room_state,
        }
        if grant.may("moderate"):
            joined["lobby"] = [_participant(p) for p in everyone if not p.admitted]
            joined["banned"] = await self.revocations.banned(room)
            enrolled = await self._enrolled(room)
            if enrolled is not None:
                joined["enrolled"] = enrolled
        session.send(joined)
        early, session.early = session.early, None
        for event in early or ():
            session.send(event)
        if room_state.get("music_mode"):
            session.transport.set_music(self.settings.music_opus_bitrate_bps)
        if grant.may("publish"):
            session.send({"type": "publish_quality", **self._quality(room, grant.participant_id, grant.role, room_state)})
        if self.metrics is not None:
            self.metrics.join_seconds.observe(time.monotonic() - session.started)
        me = next((p for p in everyone if p.participant_id == grant.participant_id), None)
        if me is not None:
            await self._broadcast(room, {"type": "participant_joined", "participant": _participant(me)}, skip=grant.participant_id)
        await self.record_stay(room, grant.participant_id, grant.role, session.joined_at, joined=True)

    async def record_stay(self, room: str, participant_id: str, role: str, joined_at: float, *, joined: bool) -> None:
        """Attendance (server/attendance.py): a stay starts or ends. Idempotent, so the
        node that reaps a dead node or resyncs after an outage may record it again."""
        try:
            activity = None if room.startswith(CALL_ROOM_PREFIX) else await self._activity(room)
            if joined:
                await self.attendance.joined(room, activity, participant_id, role, joined_at)
            else:
                await self.attendance.left(room, activity, participant_id, role, joined_at)
        except StoreUnavailable:
            # The join or leave itself went through; a resync after the outage records
            # the stays of this node's sessions again.
            logger.warning("store unavailable: attendance of %s in %s not recorded", participant_id, room)

    async def _enrolled(self, room: str) -> list[dict[str, str]] | None:
        """An activity's enrolled seniors for its hosts (who is missing), else None."""
        activity = await self._activity(room)
        if activity is None:
            return None
        return [{"id": s.id, "name": s.name} for s in await self.directory.get_many(Senior, activity.enrolled)]

    async def _invite_senior(self, session: Session, senior_id: str, ref: str | None) -> None:
        """Rings the senior's kiosks with an invitation; the kiosk shows it and sends
        nothing until the senior taps (then the usual activity_join)."""
        assert session.room is not None
        activity = await self._activity(session.room)
        if activity is None or senior_id not in activity.enrolled:
            raise ProtocolError("not_enrolled", "That senior is not enrolled in this activity.", ref)
        if await self.store.get_participant(session.room, senior_id) is not None:
            raise ProtocolError("already_present", "That senior is already here.", ref)
        rung = await self.devices.invite_to_activity(activity, senior_id, session.grant.name)
        if not rung:
            raise ProtocolError("senior_offline", "The senior's kiosk is not online.", ref)
        session.send({"type": "invite_sent", "ref": ref, "senior_id": senior_id, "kiosks": rung})

    async def _room_state(self, room: str) -> dict[str, Any]:
        return {**ROOM_STATE_DEFAULTS, **await self.store.get_room_state(room)}

    async def _update_room(self, session: Session, **changes: Any) -> None:
        assert session.room is not None
        room = session.room
        state = await self._room_state(room)
        state.update(changes)
        await self.store.set_room_state(room, state)
        await self._broadcast(room, {"type": "room_updated", "room": state})
        if "music_mode" in changes:
            await self._broadcast(room, {"type": "_music", "enabled": state["music_mode"]})
        if "spotlight" in changes:
            await self._broadcast(room, {"type": "_spotlight", "participant_id": state["spotlight"]})
            for participant in await self.store.list_participants(room):
                if participant.admitted:
                    quality = self._quality(room, participant.participant_id, participant.role, state)
                    await self._broadcast(room, {"type": "publish_quality", **quality, "_to": participant.participant_id})

    def _quality(self, room: str, participant_id: str, role: str, state: dict[str, Any]) -> dict[str, Any]:
        """Full quality for hosts, the spotlit and everyone in a family call; tiles otherwise."""
        s = self.settings
        main = (
            room.startswith(CALL_ROOM_PREFIX)
            or role in ("host", "admin")
            or state.get("spotlight") == participant_id
        )
        if main:
            return {"video": {"max_bitrate_bps": s.main_video_bitrate_bps, "max_height": s.main_video_height}}
        return {"video": {"max_bitrate_bps": s.tile_video_bitrate_bps, "max_height": s.tile_video_height}}

    async def _admitted_target(self, session: Session, participant_id: str, ref: str | None) -> str:
        assert session.room is not None
        target = await self.store.get_participant(session.room, participant_id)
        if target is None or not target.admitted:
            raise ProtocolError("unknown_participant", "That participant is not in the room.", ref)
        return participant_id

    async def _admit(self, session: Session, participant_id: str, admit: bool, ref: str | None) -> None:
        assert session.room is not None
        room = session.room
        waiting = await self.store.get_participant(room, participant_id)
        if waiting is None or waiting.admitted:
            raise ProtocolError("not_in_lobby", "Nobody with that id is waiting in the lobby.", ref)
        if admit:
            await self.store.update_participant(room, participant_id, admitted=True)
        await self._broadcast(
            room,
            {"type": "lobby_left", "participant_id": participant_id, "reason": "admitted" if admit else "denied", "_to": "moderators"},
        )
        # The node holding the waiting participant's session acts on it.
        await self._broadcast(room, {"type": "_admit" if admit else "_deny", "participant_id": participant_id})

    async def _end(self, session: Session, reason: str, close_code: int | None = None) -> None:
        """Ends a session for good: media closed, seat freed, others told.

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
            asyncio.ensure_future(conn.close(close_code, reason))
        self._forget(session)
        if session.grace_task is not None:
            session.grace_task.cancel()
            session.grace_task = None
        room = session.room
        if room is None:
            return
        self._free_seat(session, room)
        ended = await self.sfu.close_transport(room, session.participant_id)
        session.transport = None
        try:
            for producer in ended:
                await self.store.remove_track(room, producer.id)
                await self._broadcast(room, _unpublished(producer))
            await self.store.remove_participant(room, session.participant_id)
            await self.store.clear_presence(session.participant_id)
            if session.admitted:
                await self.record_stay(room, session.participant_id, session.grant.role, session.joined_at, joined=False)
                # "replaced": the same participant is joining again; its new session must
                # not hear that it left.
                skip = session.participant_id if reason == "replaced" else None
                await self._broadcast(
                    room, {"type": "participant_left", "participant_id": session.participant_id, "reason": reason}, skip
                )
            elif reason != "denied":
                await self._broadcast(
                    room,
                    {"type": "lobby_left", "participant_id": session.participant_id, "reason": "left", "_to": "moderators"},
                )
        except StoreUnavailable:
            logger.warning("store unavailable while %s left %s", session.participant_id, room)
        await self._release_if_empty(room)

    async def _subscribe_room(self, room: str) -> None:
        # Joins into one room run concurrently: the first creates the subscription, the
        # others wait for it; two subscriptions would deliver every event twice.
        lock = self._subscribing.setdefault(room, asyncio.Lock())
        async with lock:
            if room not in self._room_subscriptions:
                self._room_subscriptions[room] = await self.store.subscribe(
                    room, lambda event: self._deliver(room, event)
                )
        if not lock.locked():
            self._subscribing.pop(room, None)

    def _deliver(self, room: str, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if kind.startswith("_"):
            self._act(room, event)
            return
        skip = event.pop("_skip", None)
        to = event.pop("_to", None)
        seats = self.rooms.get(room)
        if not seats:
            return
        if to not in (None, "moderators"):
            # Addressed to one participant: no walk over the room.
            target = seats.get(to)
            seats = {to: target} if target is not None else {}
        for participant_id, session in list(seats.items()):
            if participant_id == skip or session.ended:
                continue
            if to == "moderators" and not session.grant.may("moderate"):
                continue
            if to not in (None, "moderators") and to != participant_id:
                continue
            if session.admitted:
                session.send(dict(event))
            elif session.early is not None:
                session.early.append(dict(event))

    def _act(self, room: str, event: dict[str, Any]) -> None:
        """Room-wide effects that the node holding the affected sessions carries out."""
        kind = event["type"]
        target = self._member(room, event.get("participant_id", ""))
        if kind == "_admit" and target is not None and not target.admitted:
            asyncio.ensure_future(self._enter(target, None))
        elif kind == "_deny" and target is not None and not target.admitted:
            asyncio.ensure_future(self._end(target, "denied", close_code=CloseCode.DENIED))
        elif kind == "_kick" and target is not None:
            asyncio.ensure_future(self._end(target, "kicked", close_code=CloseCode.REMOVED))
        elif kind == "_pause":
            router = self.sfu.routers.get(room)
            transport = router.transports.get(event["participant_id"]) if router else None
            for producer in transport.producers if transport else []:
                if producer.kind == event["kind"]:
                    producer.set_paused(event["muted"])
        elif kind == "_spotlight":
            router = self.sfu.routers.get(room)
            if router is not None:
                router.set_spotlight(event["participant_id"])
        elif kind == "_music":
            router = self.sfu.routers.get(room)
            bitrate = self.settings.music_opus_bitrate_bps if event["enabled"] else 0
            for transport in router.transports.values() if router else []:
                transport.set_music(bitrate)
        elif kind == "_end":
            for session in list(self.rooms.get(room, {}).values()):
                asyncio.ensure_future(self._end(session, "ended", close_code=CloseCode.REMOVED))

    async def _broadcast(self, room: str, event: dict[str, Any], skip: str | None = None) -> None:
        if skip is not None:
            event = {**event, "_skip": skip}
        await self.store.publish(room, event)

    # --- media ---------------------------------------------------------------------------

    async def _publish(self, session: Session, wanted: dict[str, bool], ref: str | None) -> None:
        if any(wanted.values()) and not session.grant.may("publish"):
            raise ProtocolError("forbidden", "This token may not publish media.", ref)
        assert session.transport is not None and session.room is not None
        router = self.sfu.router(session.room)
        for kind, want in wanted.items():
            stopped = session.transport.set_publishing(kind, want)
            if stopped is not None:
                router.producer_stopped(stopped)
                await self.store.remove_track(session.room, stopped.id)
                await self._broadcast(session.room, _unpublished(stopped))

    def _layout(self, session: Session, tiles: list[dict[str, Any]], ref: str | None) -> None:
        """The tile sizes this participant shows: its consumers pick layers to fit them."""
        limit = self.settings.max_layout_tiles
        if len(tiles) > limit:
            raise ProtocolError("bad_message", f"layout: at most {limit} tiles.", ref)
        if session.transport is not None:
            session.transport.set_layout({t["participant_id"]: (t["width"], t["height"]) for t in tiles})

    async def _answer(self, session: Session, sdp: str, negotiation_id: int, ref: str | None) -> None:
        assert session.transport is not None and session.room is not None
        try:
            started = await session.transport.apply_answer(sdp, negotiation_id)
        except NegotiationError as exc:
            raise ProtocolError(exc.code, str(exc), ref) from None
        state = await self.store.get_participant(session.room, session.participant_id)
        router = self.sfu.router(session.room)
        for producer in started:
            muted = bool(state and getattr(state, f"{producer.kind}_muted"))
            producer.set_paused(muted)
            producer.always_audible = session.grant.may("moderate")
            track = TrackState(
                track_id=producer.id,
                room=session.room,
                participant_id=session.participant_id,
                kind=producer.kind,
                muted=muted,
            )
            await self.store.add_track(track)
            router.producer_started(producer)
            await self._broadcast(session.room, {"type": "track_published", "track": track.to_dict()})

    async def _mute(self, session: Session, message: dict[str, Any], ref: str | None) -> None:
        assert session.room is not None
        target = message.get("participant_id", session.participant_id)
        kind, muted = message["kind"], message["muted"]
        if target != session.participant_id:
            if not session.grant.may("moderate"):
                raise ProtocolError("forbidden", "Only a host may mute someone else.", ref)
            if not muted:
                raise ProtocolError(
                    "forbidden", "Only the participant can unmute themself; ask them instead.", ref
                )
        if not await self._set_muted(session.room, target, kind, muted, by=session.participant_id):
            raise ProtocolError("unknown_participant", "That participant is not in the room.", ref)

    async def _mute_all(self, session: Session, kind: str) -> None:
        assert session.room is not None
        for participant in await self.store.list_participants(session.room):
            if participant.admitted and participant.role not in ("host", "admin"):
                if not getattr(participant, f"{kind}_muted"):
                    await self._set_muted(session.room, participant.participant_id, kind, True, by=session.participant_id)

    async def _set_muted(self, room: str, target: str, kind: str, muted: bool, *, by: str) -> bool:
        current = await self.store.get_participant(room, target)
        if current is None or not current.admitted:
            return False
        await self.store.update_participant(room, target, **{f"{kind}_muted": muted})
        for track in await self.store.list_tracks(room):
            if track.participant_id == target and track.kind == kind:
                await self.store.update_track(room, track.track_id, muted=muted)
        # Media stops at the server, on whichever node carries the target's producers.
        await self._broadcast(room, {"type": "_pause", "participant_id": target, "kind": kind, "muted": muted})
        await self._broadcast(
            room, {"type": "mute_changed", "participant_id": target, "kind": kind, "muted": muted, "by": by}
        )
        return True

    def _active_speaker(self, room: str, participant_id: str | None) -> None:
        task = asyncio.ensure_future(
            self._broadcast(room, {"type": "active_speaker", "participant_id": participant_id})
        )
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _kick(self, session: Session, target_id: str, ref: str | None) -> None:
        assert session.room is not None
        target = await self.store.get_participant(session.room, target_id)
        if target is None:
            raise ProtocolError("unknown_participant", "That participant is not in the room.", ref)
        # Banned before the removal: the kicked client cannot be back in between. Until its
        # token expires (any token of theirs, so a fresh link does not help either).
        until = target.token_expires_at or time.time() + self.settings.max_token_ttl_s
        await self.revocations.ban(session.room, target_id, target.name, until)
        await self._broadcast(session.room, {"type": "_kick", "participant_id": target_id})
        await self._send_ban_list(session.room)

    async def _unban(self, session: Session, target_id: str, ref: str | None) -> None:
        assert session.room is not None
        if not await self.revocations.unban(session.room, target_id):
            raise ProtocolError("not_banned", "That participant is not kept out of this room.", ref)
        await self._send_ban_list(session.room)

    async def _send_ban_list(self, room: str) -> None:
        banned = await self.revocations.banned(room)
        await self._broadcast(room, {"type": "ban_list", "banned": banned, "_to": "moderators"})

    def _access_revoked(self, event: dict[str, Any]) -> None:
        """Closes this node's sessions whose access was revoked (Revocations.revoke_participant)."""
        participant_id, before = event.get("participant_id"), event.get("before")
        if not isinstance(participant_id, str) or not isinstance(before, (int, float)):
            return
        for session in list(self.sessions.values()):
            if session.participant_id == participant_id and session.grant.issued_at < before:
                task = asyncio.ensure_future(self._end(session, "revoked", close_code=CloseCode.REVOKED))
                self._revoking.add(task)
                task.add_done_callback(self._revoked_ended)
        self.devices.access_revoked(participant_id)

    def _revoked_ended(self, task: asyncio.Task[None]) -> None:
        self._revoking.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("ending a revoked session failed", exc_info=task.exception())

    async def end_room(self, room: str, by: str | None = None) -> None:
        """Ends the room for everyone (a host's `end`, or the activity was removed)."""
        # Spent first: nobody rejoins with a token of the activity just ended.
        await self.revocations.end_room(room)
        await self._broadcast(room, {"type": "_end", "by": by})

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

    async def close(self) -> None:
        if self._revoking:
            await asyncio.gather(*self._revoking, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self.cluster.stop()
        if self._revocation_subscription is not None:
            await self._revocation_subscription.close()
            self._revocation_subscription = None
        for conn in list(self._connections):
            await conn.close(1001, "server stopping")
        await self.devices.close()
        for session in list(self.sessions.values()):
            await self._end(session, "left")
        for subscription in self._room_subscriptions.values():
            await subscription.close()
        self._room_subscriptions.clear()


def _participant(state: ParticipantState) -> dict[str, Any]:
    data = state.to_dict()
    data.pop("room", None)
    data.pop("node_id", None)
    data.pop("token_expires_at", None)
    return data


def _unpublished(producer: Producer) -> dict[str, Any]:
    return {
        "type": "track_unpublished",
        "track_id": producer.id,
        "participant_id": producer.participant_id,
        "kind": producer.kind,
    }
