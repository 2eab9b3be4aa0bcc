"""Room: one room on this node — seats, lobby, moderation, spotlight, activity rules, video
selection, speakers, and the Router it drives. Rooms: this node's rooms.

The room layer: below signalling (signaling/service.py translates messages into calls on a
Room and keeps sessions and connections), above the SFU. Room state every node sees lives in
the store; room events travel through the store's fan-out, so a Redis backend delivers them
across nodes, and the node holding a seat carries out what concerns it (`_act`). A room's
media lives in this node's SFU: one Router per room, driven only from here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from .attendance import CALL_ROOM_PREFIX, Attendance
from .config import Settings
from .directory import Activity, Directory, Senior
from .sfu.producer import Producer
from .sfu.router import Router, Sfu
from .store import (
    ADMIT,
    ADMIT_UNLESS_LOCKED,
    LOBBY,
    AccessCheck,
    JoinResult,
    ParticipantState,
    RoomFull,
    Store,
    StoreUnavailable,
    Subscription,
    TrackState,
)
from .tasks import TaskOwner
from .sfu.transport import NegotiationError, WebRtcTransport

ROOM_STATE_DEFAULTS: dict[str, Any] = {"locked": False, "spotlight": None, "music_mode": False}

logger = logging.getLogger(__name__)


class RoomError(Exception):
    """A request the room refuses; signalling sends it to the client as an error with this code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Seat holders and bans are Protocols, not imports, on purpose: the room layer sits below
# signalling (signaling/session.py's Session and Grant, signaling/revocation.py's
# Revocations fit them) and must not import it.


class Permit(Protocol):
    """What a participant's token says (signaling/tokens.py's Grant)."""

    @property
    def participant_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def room(self) -> str: ...

    @property
    def expires_at(self) -> int: ...

    def may(self, permission: str) -> bool: ...


class Seat(Protocol):
    """One participant's seat holder as the room sees it (signaling/session.py's Session)."""

    room: str | None
    transport: WebRtcTransport | None
    # False while waiting in the lobby.
    admitted: bool
    joined_at: float
    # When its presence key was last written (monotonic).
    presence_touched: float
    # While joining: room events that arrive before `joined` is sent.
    early: list[dict[str, Any]] | None

    @property
    def grant(self) -> Permit: ...

    @property
    def participant_id(self) -> str: ...

    @property
    def ended(self) -> bool: ...

    @property
    def started(self) -> float: ...

    @property
    def connection(self) -> object | None: ...

    def send(self, message: dict[str, Any]) -> None: ...


class Bans(Protocol):
    """Who is kept out of a room (signaling/revocation.py)."""

    async def ban(self, room: str, participant_id: str, name: str, until: float) -> None: ...

    async def unban(self, room: str, participant_id: str) -> bool: ...

    async def banned(self, room: str) -> list[dict[str, Any]]: ...


# Ends a seat's session for good for a reason ("replaced", "denied", "kicked", "ended",
# "media_failed"): signalling tells its client why, closes it, and calls Room.leave.
EndSeat = Callable[[Seat, str], Awaitable[None]]


class Rooms:
    """This node's rooms by name, and what they share: the activity cache, attendance, tasks."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        sfu: Sfu,
        directory: Directory,
        bans: Bans,
        end_seat: EndSeat,
        released: Callable[[str], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.sfu = sfu
        self.directory = directory
        self.bans = bans
        self.end_seat = end_seat
        # Told when a room's last seat on this node is gone (the cluster drops its placement).
        self.released = released
        # Told when a seat has entered (the join's duration, for the metrics).
        self.on_entered: Callable[[Seat], None] | None = None
        self.attendance = Attendance(settings, store)
        self.tasks = TaskOwner("rooms")
        # Rooms with a seat on this node. Seats are indexed by room, so delivering a room
        # event costs O(room), not O(sessions on the node).
        self.rooms: dict[str, Room] = {}
        # room → (expires at, activity or None): see activity().
        self._activities: dict[str, tuple[float, Activity | None]] = {}
        sfu.on_active_speaker = self._active_speaker

    @property
    def presence_ttl(self) -> float:
        return self.settings.ping_timeout_s + self.settings.resume_grace_s

    def room(self, name: str) -> Room:
        """The room, made on first use; a join takes its seat in it."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self)
        return room

    def of(self, name: str) -> Room:
        """The room for a request or a leave: without a seat here, one that is not kept."""
        return self.rooms.get(name) or Room(name, self)

    def seats(self) -> Iterator[tuple[str, Seat]]:
        """(room, seat) for every seat on this node (resync)."""
        for name, room in list(self.rooms.items()):
            for seat in list(room.seats.values()):
                yield name, seat

    async def join(self, seat: Seat, ref: str | None, access: AccessCheck) -> None:
        """A participant joins the room of its token. Raises RoomError, AccessRefused
        (the token was taken back) or StoreUnavailable."""
        grant = seat.grant
        admission = await self._admission(grant)
        current = self.rooms.get(grant.room)
        stale = current.seats.get(grant.participant_id) if current is not None else None
        if stale is not None and stale is not seat:
            # The same person joined again (new device or lost session): the newest wins.
            await self.end_seat(stale, "replaced")
        # Looked up after the replaced seat's end: it may have been the room's last.
        await self.room(grant.room).join(seat, admission, ref, access)

    async def _admission(self, grant: Permit) -> str:
        """Whether a joiner enters directly or waits in the lobby (Store.join_room)."""
        if grant.may("moderate"):
            return ADMIT
        if grant.room.startswith(CALL_ROOM_PREFIX):
            return ADMIT
        if grant.role == "family":
            activity = await self.activity(grant.room)
            if activity is not None:
                if not activity.guests_allowed:
                    raise RoomError("forbidden", "This activity does not take guests.")
                return LOBBY
        # Decided in the store, against the room's lock, in the same step as the join.
        return ADMIT_UNLESS_LOCKED

    async def activity(self, room: str) -> Activity | None:
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

    async def record_stay(self, room: str, participant_id: str, role: str, joined_at: float, *, joined: bool) -> None:
        """Attendance (server/attendance.py): a stay starts or ends. Idempotent, so the
        node that reaps a dead node or resyncs after an outage may record it again."""
        try:
            activity = None if room.startswith(CALL_ROOM_PREFIX) else await self.activity(room)
            if joined:
                await self.attendance.joined(room, activity, participant_id, role, joined_at)
            else:
                await self.attendance.left(room, activity, participant_id, role, joined_at)
        except StoreUnavailable:
            # The join or leave itself went through; a resync after the outage records
            # the stays of this node's sessions again.
            logger.warning("store unavailable: attendance of %s in %s not recorded", participant_id, room)

    async def end(self, room: str, by: str | None = None) -> None:
        """Ends the room for everyone, on every node (its seats' sessions end)."""
        await self.of(room).broadcast({"type": "_end", "by": by})

    def _active_speaker(self, room: str, participant_id: str | None) -> None:
        self.tasks.spawn(
            self.of(room).broadcast({"type": "active_speaker", "participant_id": participant_id}),
            name="active-speaker",
        )

    async def close(self) -> None:
        """After every seat has left: the rooms' subscriptions and tasks end."""
        await self.tasks.close()
        for room in list(self.rooms.values()):
            await room.unsubscribe()
        self.rooms.clear()


class Room:
    """One room on this node: its seats here, and everything done to it."""

    def __init__(self, name: str, rooms: Rooms) -> None:
        self.name = name
        self._rooms = rooms
        self._settings = rooms.settings
        self._store = rooms.store
        # participant id → the seat holder on this node.
        self.seats: dict[str, Seat] = {}
        self._subscription: Subscription | None = None
        self._subscribing: asyncio.Lock | None = None

    @property
    def router(self) -> Router | None:
        """The room's media on this node, while someone here has a transport."""
        return self._rooms.sfu.routers.get(self.name)

    # --- join, enter, leave -------------------------------------------------------------

    async def join(self, seat: Seat, admission: str, ref: str | None, access: AccessCheck) -> None:
        """Seats a joiner (Rooms.join decided its admission), writes it to the store, and
        lets it in or leaves it in the lobby. Nothing awaits before the seat is taken."""
        grant = seat.grant
        state = ParticipantState(
            participant_id=grant.participant_id,
            room=self.name,
            name=grant.name,
            role=grant.role,
            node_id=self._store.node_id,
            joined_at=time.time(),
            token_expires_at=grant.expires_at,
        )
        # Seated before the store step: this holds the room's subscription on this node,
        # and room events from now on reach `early` (the snapshot below may predate them).
        self.seats[grant.participant_id] = seat
        subscribed = self._subscription is not None
        seat.early = []
        try:
            # Checked again in the join step itself: the token may have been taken back since hello.
            result = await self._store.join_room(
                state, admission, self._settings.max_participants_per_room, self._rooms.presence_ttl, access,
            )
        except BaseException as exc:
            seat.early = None
            self._free(seat)
            await self._release_if_empty()
            if isinstance(exc, RoomFull):
                raise RoomError("room_full", "This activity is full.") from None
            raise
        seat.presence_touched = time.monotonic()
        seat.room = self.name
        seat.joined_at = state.joined_at
        try:
            await self._drop_stale_tracks(result)
            await self._subscribe()
        except BaseException:
            # The client hears `unavailable` and may join again: leave nothing behind (a
            # seat in the store that nobody was told of, a session collecting events).
            await self._undo_join(seat)
            raise
        if result.admitted:
            # A fresh subscription may have missed events since the snapshot: read again.
            await self.enter(seat, ref, result if subscribed else None)
        else:
            seat.early = None
            # Knocking is automatic: waiting in the lobby is the knock.
            seat.send({"type": "lobby", "ref": ref, "room": self.name})
            await self.broadcast({"type": "knock", "participant": participant(result.state), "_to": "moderators"})

    async def _drop_stale_tracks(self, result: JoinResult) -> None:
        """A new session publishes nothing yet: tracks still listed under its participant
        are an earlier session's, left by a node that died (the reaper spares a
        participant who already joined again elsewhere)."""
        mine = result.state.participant_id
        stale = [t for t in result.tracks if t.participant_id == mine]
        if not stale:
            return
        result.tracks = [t for t in result.tracks if t.participant_id != mine]
        for track in stale:
            await self._store.remove_track(self.name, track.track_id)
            await self.broadcast(
                {"type": "track_unpublished", "track_id": track.track_id, "participant_id": mine, "kind": track.kind},
            )

    async def _undo_join(self, seat: Seat) -> None:
        seat.early = None
        seat.room = None
        self._free(seat)
        try:
            await self._store.remove_participant(self.name, seat.participant_id)
            await self._store.clear_presence(seat.participant_id)
        except StoreUnavailable:
            # Presence expires; a seat left behind is the reaper's or the next join's.
            pass
        await self._release_if_empty()

    def _free(self, seat: Seat) -> None:
        if self.seats.get(seat.participant_id) is seat:
            del self.seats[seat.participant_id]

    async def _release_if_empty(self) -> None:
        """The room's last seat on this node takes the room's subscription (and this
        node's placement) with it."""
        if self.seats:
            return
        if self._rooms.rooms.get(self.name) is self:
            del self._rooms.rooms[self.name]
        if self.name in self._rooms.rooms:
            # A join made the room anew meanwhile: the placement is its.
            return
        try:
            await self.unsubscribe()
            await self._rooms.released(self.name)
        except StoreUnavailable:
            pass

    async def enter(self, seat: Seat, ref: str | None, snapshot: JoinResult | None = None) -> None:
        """Gives an admitted participant media and the room snapshot, and tells the others.

        `snapshot`: the room as the join read it; without one (admitted from the lobby,
        or a new room subscription) the room is read here.
        """
        # Until `joined` is sent, room events wait in `early`: sent at once, they would reach
        # the client before the snapshot, which may predate them and undo them (a family page
        # read a call's "warning" state after "accepted" had come, and stayed ringing).
        if seat.early is None:
            seat.early = []
        try:
            await self._enter(seat, ref, snapshot)
        finally:
            seat.early = None

    async def _enter(self, seat: Seat, ref: str | None, snapshot: JoinResult | None) -> None:
        grant = seat.grant
        seat.admitted = True
        if snapshot is not None:
            room_state = {**ROOM_STATE_DEFAULTS, **snapshot.room_state}
            everyone, tracks = snapshot.participants, snapshot.tracks
        else:
            room_state = await self.state()
        router = self._rooms.sfu.router(self.name)
        if not router.transports:
            router.configure(
                activity=await self._rooms.activity(self.name) is not None,
                tiles_to_everyone_up_to=self._settings.tiles_to_everyone_up_to,
                spotlight=room_state.get("spotlight"),
            )
        if seat.ended or seat.room is None:
            return
        transport = seat.transport = router.create_transport(
            grant.participant_id,
            moderator=grant.may("moderate"),
            subscribe=grant.may("subscribe"),
            send_offer=lambda offer: seat.send({"type": "offer", **offer}),
            on_failed=lambda: self._end_soon(seat, "media_failed"),
        )
        if snapshot is None:
            everyone = await self._store.list_participants(self.name)
            tracks = await self._store.list_tracks(self.name)
        joined: dict[str, Any] = {
            "type": "joined",
            "ref": ref,
            "room": self.name,
            "self_id": grant.participant_id,
            "participants": [participant(p) for p in everyone if p.admitted],
            "tracks": [t.to_dict() for t in tracks],
            "room_state": room_state,
        }
        if grant.may("moderate"):
            joined["lobby"] = [participant(p) for p in everyone if not p.admitted]
            joined["banned"] = await self._rooms.bans.banned(self.name)
            enrolled = await self._enrolled()
            if enrolled is not None:
                joined["enrolled"] = enrolled
        seat.send(joined)
        early, seat.early = seat.early, None
        for event in early or ():
            seat.send(event)
        if room_state.get("music_mode"):
            transport.set_music(self._settings.music_opus_bitrate_bps)
        if grant.may("publish"):
            seat.send({"type": "publish_quality", **self._quality(grant.participant_id, grant.role, room_state)})
        if self._rooms.on_entered is not None:
            self._rooms.on_entered(seat)
        me = next((p for p in everyone if p.participant_id == grant.participant_id), None)
        if me is not None:
            await self.broadcast({"type": "participant_joined", "participant": participant(me)}, skip=grant.participant_id)
        await self._rooms.record_stay(self.name, grant.participant_id, grant.role, seat.joined_at, joined=True)

    async def _enrolled(self) -> list[dict[str, str]] | None:
        """An activity's enrolled seniors for its hosts (who is missing), else None."""
        activity = await self._rooms.activity(self.name)
        if activity is None:
            return None
        return [{"id": s.id, "name": s.name} for s in await self._rooms.directory.get_many(Senior, activity.enrolled)]

    async def leave(self, seat: Seat, reason: str) -> None:
        """A seat's session ended (signalling already told its client): media closed,
        seat freed, the others told."""
        self._free(seat)
        ended = await self._rooms.sfu.close_transport(self.name, seat.participant_id)
        seat.transport = None
        try:
            for producer in ended:
                await self._store.remove_track(self.name, producer.id)
                await self.broadcast(_unpublished(producer))
            await self._store.remove_participant(self.name, seat.participant_id)
            await self._store.clear_presence(seat.participant_id)
            if seat.admitted:
                await self._rooms.record_stay(self.name, seat.participant_id, seat.grant.role, seat.joined_at, joined=False)
                # "replaced": the same participant is joining again; its new session must
                # not hear that it left.
                skip = seat.participant_id if reason == "replaced" else None
                await self.broadcast(
                    {"type": "participant_left", "participant_id": seat.participant_id, "reason": reason}, skip
                )
            elif reason != "denied":
                await self.broadcast(
                    {"type": "lobby_left", "participant_id": seat.participant_id, "reason": "left", "_to": "moderators"},
                )
        except StoreUnavailable:
            logger.warning("store unavailable while %s left %s", seat.participant_id, self.name)
        await self._release_if_empty()

    async def set_connected(self, seat: Seat, connected: bool) -> None:
        """A seat's client lost its connection or resumed: the others see it."""
        updated = await self._store.update_participant(self.name, seat.participant_id, connected=connected)
        if updated is not None and seat.admitted:
            await self.broadcast({"type": "participant_updated", "participant": participant(updated)})

    def _end_soon(self, seat: Seat, reason: str) -> None:
        self._rooms.tasks.spawn(self._rooms.end_seat(seat, reason), name=f"end-{reason}")

    # --- room events ---------------------------------------------------------------------

    async def _subscribe(self) -> None:
        # Joins into one room run concurrently: the first creates the subscription, the
        # others wait for it; two subscriptions would deliver every event twice.
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        lock = self._subscribing
        async with lock:
            if self._subscription is None:
                self._subscription = await self._store.subscribe(self.name, self._deliver)
        if not lock.locked():
            self._subscribing = None

    async def unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.close()

    def _deliver(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        if kind.startswith("_"):
            self._act(event)
            return
        skip = event.pop("_skip", None)
        to = event.pop("_to", None)
        seats = self.seats
        if not seats:
            return
        if to not in (None, "moderators"):
            # Addressed to one participant: no walk over the room.
            target = seats.get(to)
            seats = {to: target} if target is not None else {}
        for participant_id, seat in list(seats.items()):
            if participant_id == skip or seat.ended:
                continue
            if to == "moderators" and not seat.grant.may("moderate"):
                continue
            if to not in (None, "moderators") and to != participant_id:
                continue
            if seat.early is not None:
                seat.early.append(dict(event))
            elif seat.admitted:
                seat.send(dict(event))

    def _act(self, event: dict[str, Any]) -> None:
        """Room-wide effects that the node holding the affected seats carries out."""
        kind = event["type"]
        target = self.seats.get(event.get("participant_id", ""))
        if kind == "_admit" and target is not None and not target.admitted:
            self._rooms.tasks.spawn(self.enter(target, None), name="enter")
        elif kind == "_deny" and target is not None and not target.admitted:
            self._end_soon(target, "denied")
        elif kind == "_kick" and target is not None:
            self._end_soon(target, "kicked")
        elif kind == "_pause":
            router = self.router
            transport = router.transports.get(event["participant_id"]) if router else None
            for producer in transport.producers if transport else []:
                if producer.kind == event["kind"]:
                    producer.set_paused(event["muted"])
        elif kind == "_spotlight":
            router = self.router
            if router is not None:
                router.set_spotlight(event["participant_id"])
        elif kind == "_music":
            router = self.router
            bitrate = self._settings.music_opus_bitrate_bps if event["enabled"] else 0
            for transport in router.transports.values() if router else []:
                transport.set_music(bitrate)
        elif kind == "_end":
            for seat in list(self.seats.values()):
                self._end_soon(seat, "ended")

    async def broadcast(self, event: dict[str, Any], skip: str | None = None) -> None:
        if skip is not None:
            event = {**event, "_skip": skip}
        await self._store.publish(self.name, event)

    # --- media ---------------------------------------------------------------------------

    async def publish(self, seat: Seat, wanted: dict[str, bool]) -> None:
        """Starts or stops the seat's publishing per kind; a stopped track leaves everyone."""
        if any(wanted.values()) and not seat.grant.may("publish"):
            raise RoomError("forbidden", "This token may not publish media.")
        assert seat.transport is not None
        router = self._rooms.sfu.router(self.name)
        for kind, want in wanted.items():
            stopped = seat.transport.set_publishing(kind, want)
            if stopped is not None:
                router.producer_stopped(stopped)
                await self._store.remove_track(self.name, stopped.id)
                await self.broadcast(_unpublished(stopped))

    def layout(self, seat: Seat, tiles: list[dict[str, Any]]) -> None:
        """The tile sizes this participant shows: its consumers pick layers to fit them."""
        limit = self._settings.max_layout_tiles
        if len(tiles) > limit:
            raise RoomError("bad_message", f"layout: at most {limit} tiles.")
        if seat.transport is not None:
            seat.transport.set_layout({t["participant_id"]: (t["width"], t["height"]) for t in tiles})

    async def answer(self, seat: Seat, sdp: str, negotiation_id: int) -> None:
        """The seat's answer to our offer; the tracks it starts are published to the room."""
        assert seat.transport is not None
        try:
            started = await seat.transport.apply_answer(sdp, negotiation_id)
        except NegotiationError as exc:
            raise RoomError(exc.code, str(exc)) from None
        state = await self._store.get_participant(self.name, seat.participant_id)
        router = self._rooms.sfu.router(self.name)
        for producer in started:
            muted = bool(state and getattr(state, f"{producer.kind}_muted"))
            producer.set_paused(muted)
            producer.always_audible = seat.grant.may("moderate")
            track = TrackState(
                track_id=producer.id,
                room=self.name,
                participant_id=seat.participant_id,
                kind=producer.kind,
                muted=muted,
            )
            await self._store.add_track(track)
            router.producer_started(producer)
            await self.broadcast({"type": "track_published", "track": track.to_dict()})

    # --- moderation ----------------------------------------------------------------------

    async def mute(self, seat: Seat, target: str, kind: str, muted: bool) -> None:
        if target != seat.participant_id:
            if not seat.grant.may("moderate"):
                raise RoomError("forbidden", "Only a host may mute someone else.")
            if not muted:
                raise RoomError("forbidden", "Only the participant can unmute themself; ask them instead.")
        if not await self._set_muted(target, kind, muted, by=seat.participant_id):
            raise RoomError("unknown_participant", "That participant is not in the room.")

    async def mute_all(self, seat: Seat, kind: str) -> None:
        for p in await self._store.list_participants(self.name):
            if p.admitted and p.role not in ("host", "admin"):
                if not getattr(p, f"{kind}_muted"):
                    await self._set_muted(p.participant_id, kind, True, by=seat.participant_id)

    async def _set_muted(self, target: str, kind: str, muted: bool, *, by: str) -> bool:
        current = await self._store.get_participant(self.name, target)
        if current is None or not current.admitted:
            return False
        await self._store.update_participant(self.name, target, **{f"{kind}_muted": muted})
        for track in await self._store.list_tracks(self.name):
            if track.participant_id == target and track.kind == kind:
                await self._store.update_track(self.name, track.track_id, muted=muted)
        # Media stops at the server, on whichever node carries the target's producers.
        await self.broadcast({"type": "_pause", "participant_id": target, "kind": kind, "muted": muted})
        await self.broadcast({"type": "mute_changed", "participant_id": target, "kind": kind, "muted": muted, "by": by})
        return True

    async def ask_unmute(self, seat: Seat, target: str, kind: str) -> None:
        await self._admitted_target(target)
        await self.broadcast({"type": "unmute_requested", "kind": kind, "by": seat.participant_id, "_to": target})

    async def admit(self, participant_id: str, admit: bool) -> None:
        """Lets a participant in from the lobby, or sends them away."""
        waiting = await self._store.get_participant(self.name, participant_id)
        if waiting is None or waiting.admitted:
            raise RoomError("not_in_lobby", "Nobody with that id is waiting in the lobby.")
        if admit:
            await self._store.update_participant(self.name, participant_id, admitted=True)
        await self.broadcast(
            {"type": "lobby_left", "participant_id": participant_id, "reason": "admitted" if admit else "denied", "_to": "moderators"},
        )
        # The node holding the waiting participant's session acts on it.
        await self.broadcast({"type": "_admit" if admit else "_deny", "participant_id": participant_id})

    async def kick(self, target_id: str) -> None:
        target = await self._store.get_participant(self.name, target_id)
        if target is None:
            raise RoomError("unknown_participant", "That participant is not in the room.")
        # Banned before the removal: the kicked client cannot be back in between. Until its
        # token expires (any token of theirs, so a fresh link does not help either).
        until = target.token_expires_at or time.time() + self._settings.max_token_ttl_s
        await self._rooms.bans.ban(self.name, target_id, target.name, until)
        await self.broadcast({"type": "_kick", "participant_id": target_id})
        await self._send_ban_list()

    async def unban(self, target_id: str) -> None:
        if not await self._rooms.bans.unban(self.name, target_id):
            raise RoomError("not_banned", "That participant is not kept out of this room.")
        await self._send_ban_list()

    async def _send_ban_list(self) -> None:
        banned = await self._rooms.bans.banned(self.name)
        await self.broadcast({"type": "ban_list", "banned": banned, "_to": "moderators"})

    async def _admitted_target(self, participant_id: str) -> None:
        target = await self._store.get_participant(self.name, participant_id)
        if target is None or not target.admitted:
            raise RoomError("unknown_participant", "That participant is not in the room.")

    # --- room state: lock, spotlight, music ----------------------------------------------

    async def state(self) -> dict[str, Any]:
        return {**ROOM_STATE_DEFAULTS, **await self._store.get_room_state(self.name)}

    async def lock(self, locked: bool) -> None:
        await self._update(locked=locked)

    async def spotlight(self, participant_id: str | None) -> None:
        """Everyone sees the spotlit participant's video, sent at full quality."""
        if participant_id is not None:
            await self._admitted_target(participant_id)
        await self._update(spotlight=participant_id)

    async def music_mode(self, enabled: bool) -> None:
        await self._update(music_mode=enabled)

    async def _update(self, **changes: Any) -> None:
        state = await self.state()
        state.update(changes)
        await self._store.set_room_state(self.name, state)
        await self.broadcast({"type": "room_updated", "room": state})
        if "music_mode" in changes:
            await self.broadcast({"type": "_music", "enabled": state["music_mode"]})
        if "spotlight" in changes:
            await self.broadcast({"type": "_spotlight", "participant_id": state["spotlight"]})
            for p in await self._store.list_participants(self.name):
                if p.admitted:
                    quality = self._quality(p.participant_id, p.role, state)
                    await self.broadcast({"type": "publish_quality", **quality, "_to": p.participant_id})

    def _quality(self, participant_id: str, role: str, state: dict[str, Any]) -> dict[str, Any]:
        """Full quality for hosts, the spotlit and everyone in a family call; tiles otherwise."""
        s = self._settings
        main = (
            self.name.startswith(CALL_ROOM_PREFIX)
            or role in ("host", "admin")
            or state.get("spotlight") == participant_id
        )
        if main:
            return {"video": {"max_bitrate_bps": s.main_video_bitrate_bps, "max_height": s.main_video_height}}
        return {"video": {"max_bitrate_bps": s.tile_video_bitrate_bps, "max_height": s.tile_video_height}}


def participant(state: ParticipantState) -> dict[str, Any]:
    """A participant as the protocol shows it."""
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
