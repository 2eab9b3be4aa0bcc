"""The signalling service: WebSocket endpoint, sessions, rooms, moderation and resume.

Room state lives in the store; room events travel through the store's fan-out so a Redis
backend can deliver them across nodes. A room's media lives in this node's SFU.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from server.config import Settings
from server.producer import Producer
from server.router import Sfu
from server.store import ParticipantState, RoomFull, Store, StoreUnavailable, Subscription, TrackState
from server.transport import NegotiationError

from .protocol import VERSION, CloseCode, ProtocolError, error, parse_client_message
from .session import Connection, RateLimiter, Session
from .tokens import TokenError, TokenIssuer

logger = logging.getLogger(__name__)


class SignalingService:
    def __init__(self, settings: Settings, store: Store, issuer: TokenIssuer, sfu: Sfu) -> None:
        self.settings = settings
        self.store = store
        self.issuer = issuer
        self.sfu = sfu
        self.sessions: dict[str, Session] = {}
        # (room, participant id) → the session holding that seat on this node.
        self._members: dict[tuple[str, str], Session] = {}
        self._room_subscriptions: dict[str, Subscription] = {}
        self._connections: set[Connection] = set()

    # --- WebSocket endpoint ----------------------------------------------------------------

    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_frame_bytes)
        await ws.prepare(request)
        conn = Connection(
            ws, RateLimiter(self.settings.messages_per_second, self.settings.message_burst)
        )
        self._connections.add(conn)
        watchdog = asyncio.ensure_future(self._watch(conn))
        try:
            async for msg in ws:
                conn.last_seen = time.monotonic()
                if msg.type == WSMsgType.TEXT:
                    await self._receive(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._reply_error(conn, ProtocolError("bad_json", "Binary frames are not accepted."))
                if ws.closed:
                    break
        finally:
            watchdog.cancel()
            self._connections.discard(conn)
            conn.abandon()
            await self._connection_lost(conn)
        return ws

    async def _watch(self, conn: Connection) -> None:
        s = self.settings
        while not conn.ws.closed:
            await asyncio.sleep(min(1.0, s.ping_interval_s / 2))
            now = time.monotonic()
            if conn.session is None and now - conn.opened > s.hello_timeout_s:
                await conn.close(CloseCode.HELLO_TIMEOUT, "no hello")
                return
            if now - conn.last_seen > s.ping_timeout_s:
                await conn.close(CloseCode.PING_TIMEOUT, "ping timeout")
                return

    async def _receive(self, conn: Connection, text: str) -> None:
        if not conn.limiter.allow():
            self._reply_error(conn, ProtocolError("rate_limited", "Too many messages; slow down."))
            return
        try:
            message = parse_client_message(text, self.settings.max_message_bytes)
            await self._dispatch(conn, message)
        except ProtocolError as exc:
            self._reply_error(conn, exc)
        except StoreUnavailable:
            self._reply_error(
                conn, ProtocolError("unavailable", "The service is busy; try again in a moment.")
            )
        except Exception:
            logger.exception("internal error handling a message")
            self._reply_error(conn, ProtocolError("internal", "Something went wrong on the server."))

    def _reply_error(self, conn: Connection, exc: ProtocolError) -> None:
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
        session = conn.session
        if session is None:
            raise ProtocolError("not_authenticated", "Send 'hello' with a token first.", ref)
        if kind == "ping":
            session.send({"type": "pong", "ts": message.get("ts"), "ref": ref})
            if session.joined:
                await self.store.touch_presence(session.participant_id, self._presence_ttl)
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

    @property
    def _presence_ttl(self) -> float:
        return self.settings.ping_timeout_s + self.settings.resume_grace_s

    # --- hello / resume ------------------------------------------------------------------

    async def _hello(self, conn: Connection, message: dict[str, Any], ref: str | None) -> None:
        if conn.session is not None:
            raise ProtocolError("already_authenticated", "This connection already said hello.", ref)
        if message["v"] != VERSION:
            conn.send(error("unsupported_version", f"Only protocol version {VERSION} is spoken here.", ref))
            await conn.close(CloseCode.AUTH_FAILED, "unsupported version")
            return
        try:
            grant = self.issuer.verify(message["token"])
        except TokenError as exc:
            conn.send(error(exc.code, exc.message, ref))
            await conn.close(CloseCode.AUTH_FAILED, exc.code)
            return
        resume = message.get("resume")
        if resume is not None:
            await self._resume(conn, grant.participant_id, resume, ref)
            return
        session = Session(grant, self.settings.resume_buffer_messages)
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
                "ice_servers": [dict(server) for server in s.ice_servers],
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
        conn.send({"type": "resumed", "ref": ref, "session_id": session.id, "seq": session.seq, "replayed": len(replay)})
        for text in replay:
            conn.send_text(text)
        offer = session.transport.pending_offer if session.transport else None
        if offer is not None:
            # Its answer may have been lost with the old socket; answering twice is harmless.
            session.send({"type": "offer", **offer})
        if session.joined:
            assert session.room is not None
            await self.store.touch_presence(session.participant_id, self._presence_ttl)
            updated = await self.store.update_participant(
                session.room, session.participant_id, connected=True
            )
            if updated is not None:
                await self._broadcast(session.room, {"type": "participant_updated", "participant": _participant(updated)})

    async def _connection_lost(self, conn: Connection) -> None:
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
        if updated is not None:
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
        key = (room, grant.participant_id)
        stale = self._members.get(key)
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
        )
        try:
            await self.store.add_participant(state, self.settings.max_participants_per_room)
        except RoomFull:
            raise ProtocolError("room_full", "This activity is full.", ref) from None
        session.room = room
        self._members[key] = session
        await self.store.touch_presence(grant.participant_id, self._presence_ttl)
        await self._subscribe_room(room)
        router = self.sfu.router(room)
        session.transport = router.create_transport(
            grant.participant_id,
            subscribe=grant.may("subscribe"),
            send_offer=lambda offer: session.send({"type": "offer", **offer}),
            on_failed=lambda: asyncio.ensure_future(
                self._end(session, "media_failed", close_code=CloseCode.MEDIA_FAILED)
            ),
        )
        participants = await self.store.list_participants(room)
        tracks = await self.store.list_tracks(room)
        session.send(
            {
                "type": "joined",
                "ref": ref,
                "room": room,
                "self_id": grant.participant_id,
                "participants": [_participant(p) for p in participants],
                "tracks": [t.to_dict() for t in tracks],
            }
        )
        await self._broadcast(room, {"type": "participant_joined", "participant": _participant(state)}, skip=grant.participant_id)

    async def _end(self, session: Session, reason: str, close_code: int | None = None) -> None:
        """Ends a session for good: media closed, seat freed, others told.

        With a close code, the session's own client is told why and its socket closed.
        """
        if session.ended:
            return
        conn = session.connection
        if close_code is not None and conn is not None:
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
        if self._members.get((room, session.participant_id)) is session:
            del self._members[(room, session.participant_id)]
        ended = await self.sfu.close_transport(room, session.participant_id)
        session.transport = None
        try:
            for producer in ended:
                await self.store.remove_track(room, producer.id)
                await self._broadcast(room, _unpublished(producer))
            await self.store.remove_participant(room, session.participant_id)
            await self.store.clear_presence(session.participant_id)
            await self._broadcast(room, {"type": "participant_left", "participant_id": session.participant_id, "reason": reason})
        except StoreUnavailable:
            logger.warning("store unavailable while %s left %s", session.participant_id, room)
        if not any(r == room for r, _ in self._members):
            subscription = self._room_subscriptions.pop(room, None)
            if subscription is not None:
                await subscription.close()

    async def _subscribe_room(self, room: str) -> None:
        if room in self._room_subscriptions:
            return
        self._room_subscriptions[room] = await self.store.subscribe(
            room, lambda event: self._deliver(room, event)
        )

    def _deliver(self, room: str, event: dict[str, Any]) -> None:
        skip = event.pop("_skip", None)
        for (member_room, participant_id), session in list(self._members.items()):
            if member_room == room and participant_id != skip and not session.ended:
                session.send(dict(event))

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
        room = session.room
        target = message.get("participant_id", session.participant_id)
        kind, muted = message["kind"], message["muted"]
        if target != session.participant_id:
            if not session.grant.may("moderate"):
                raise ProtocolError("forbidden", "Only a host may mute someone else.", ref)
            if not muted:
                raise ProtocolError(
                    "forbidden", "Only the participant can unmute themself; ask them instead.", ref
                )
        updated = await self.store.update_participant(room, target, **{f"{kind}_muted": muted})
        if updated is None:
            raise ProtocolError("unknown_participant", "That participant is not in the room.", ref)
        router = self.sfu.routers.get(room)
        transport = router.transports.get(target) if router else None
        for producer in transport.producers if transport else []:
            if producer.kind == kind:
                producer.set_paused(muted)
                await self.store.update_track(room, producer.id, muted=muted)
        await self._broadcast(
            room,
            {"type": "mute_changed", "participant_id": target, "kind": kind, "muted": muted, "by": session.participant_id},
        )

    async def _kick(self, session: Session, target_id: str, ref: str | None) -> None:
        assert session.room is not None
        if not session.grant.may("moderate"):
            raise ProtocolError("forbidden", "Only a host may remove someone.", ref)
        target = self._members.get((session.room, target_id))
        if target is None:
            raise ProtocolError("unknown_participant", "That participant is not in the room.", ref)
        await self._end(target, "kicked", close_code=CloseCode.REMOVED)

    # --- lifecycle -------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        rooms = await self.store.list_rooms()
        return {"rooms": len(rooms), "participants": sum(rooms.values()), "sessions": len(self.sessions)}

    async def close(self) -> None:
        for conn in list(self._connections):
            await conn.close(1001, "server stopping")
        for session in list(self.sessions.values()):
            await self._end(session, "left")
        for subscription in self._room_subscriptions.values():
            await subscription.close()
        self._room_subscriptions.clear()


def _participant(state: ParticipantState) -> dict[str, Any]:
    data = state.to_dict()
    data.pop("room", None)
    data.pop("node_id", None)
    return data


def _unpublished(producer: Producer) -> dict[str, Any]:
    return {
        "type": "track_unpublished",
        "track_id": producer.id,
        "participant_id": producer.participant_id,
        "kind": producer.kind,
    }
