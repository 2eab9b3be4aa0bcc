"""The store interface: live room state, presence, room event fan-out and the durable directory.

Callers only see this interface. The embedded backend keeps live state in memory and the
directory in SQLite; the Redis backend shares both between nodes. Every method is async so
either backend can do I/O.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Self

# The interface the rest of the program uses, as server.store (server/store/__init__.py)
# re-exports it; the other names here are shared by the two backends only.
__all__ = [
    "ADMIT",
    "ADMIT_UNLESS_LOCKED",
    "DIRECTORY_KINDS",
    "LOBBY",
    "AccessCheck",
    "AccessRefused",
    "JoinResult",
    "ParticipantState",
    "RoomFull",
    "Store",
    "StoreUnavailable",
    "Subscription",
    "TrackState",
]

# Durable directory collections. Later features store typed records in these.
DIRECTORY_KINDS = ("people", "kiosks", "contacts", "activities", "audit", "pairings", "missed_calls", "reach_out", "attendance_weeks")

EventHandler = Callable[[dict[str, Any]], None]


class RoomFull(Exception):
    """The room already holds its maximum number of participants."""


class AccessRefused(Exception):
    """A join refused by `AccessCheck`: `subject` is the revoked subject, None for a ban."""

    def __init__(self, subject: str | None) -> None:
        super().__init__(subject or "banned")
        self.subject = subject


@dataclass(frozen=True)
class AccessCheck:
    """What `Store.join_room` checks in the same step as the join (signaling/revocation.py):
    none of `subjects` revoked after `issued_at`, and the joiner not banned from the room."""

    issued_at: float
    subjects: tuple[str, ...]


class StoreUnavailable(Exception):
    """The backend cannot be reached; the caller may retry later."""


class Stored:
    """A dataclass the store keeps as a dict (JSON in Redis). Keys it does not know (written
    by a newer node during a rolling upgrade) are left out."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ParticipantState(Stored):
    participant_id: str
    room: str
    name: str
    role: str
    node_id: str
    joined_at: float
    audio_muted: bool = False
    video_muted: bool = False
    # False while the participant's WebSocket is gone but its resume grace runs.
    connected: bool = True
    # False while waiting in the lobby for a moderator to admit them.
    admitted: bool = True
    # When the participant's token expires (Unix seconds; 0 unknown): a kick bans them
    # from the room until then. Never sent to clients.
    token_expires_at: float = 0.0


@dataclass
class TrackState(Stored):
    track_id: str
    room: str
    participant_id: str
    kind: str
    muted: bool = False


# How a joiner is admitted (Store.join_room): straight in, to the lobby, or straight in
# unless the room is locked (decided atomically with the room's state).
ADMIT = "admit"
LOBBY = "lobby"
ADMIT_UNLESS_LOCKED = "unless_locked"


@dataclass
class JoinResult:
    """What a join needs from the store, read in the same step that adds the participant."""

    state: ParticipantState
    room_state: dict[str, Any]
    participants: list[ParticipantState]
    tracks: list[TrackState]

    @property
    def admitted(self) -> bool:
        return self.state.admitted


def sort_participants(states: Any) -> list[ParticipantState]:
    return sorted(states, key=lambda p: (p.joined_at, p.participant_id))


def sort_tracks(tracks: Any) -> list[TrackState]:
    # Hash order is not dependable; sorted so every backend and call agrees.
    return sorted(tracks, key=lambda t: (t.participant_id, t.track_id))


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def close(self) -> None: ...


@dataclass(eq=False)
class RoomSubscription(Subscription):
    """One handler of a room's events, until closed: the backend that made it passes its
    own way of removing it."""

    room: str
    handler: EventHandler
    unsubscribe: Callable[[RoomSubscription], Awaitable[None]]

    async def close(self) -> None:
        await self.unsubscribe(self)


class Store(abc.ABC):
    node_id: str
    # When this node last lost its connection to the store (monotonic time; 0.0: never).
    # After it, other nodes may still be reconnecting: no judging them dead for a while.
    disrupted_at: float = 0.0

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # --- live room state -------------------------------------------------------------

    @abc.abstractmethod
    async def add_participant(self, state: ParticipantState, max_participants: int) -> None:
        """Adds or replaces a participant atomically; raises RoomFull at the limit."""

    async def join_room(
        self, state: ParticipantState, admission: str, max_participants: int, presence_ttl_s: float,
        access: AccessCheck | None = None,
    ) -> JoinResult:
        """Adds the participant (admitted per `admission`), refreshes its presence and
        returns the room as it is right after: one step for the caller, and for Redis one
        round trip instead of six. Raises RoomFull at the limit, AccessRefused (nothing
        written) when `access` fails.

        This default runs the single steps; a backend may do it atomically.
        """
        if access is not None:
            revoked, ban = await self.access(list(access.subjects), state.room, state.participant_id)
            check_access(access, revoked, ban is not None)
        room_state = await self.get_room_state(state.room)
        if admission == ADMIT_UNLESS_LOCKED:
            admitted = not room_state.get("locked", False)
        else:
            admitted = admission == ADMIT
        state = dataclasses.replace(state, admitted=admitted)
        await self.add_participant(state, max_participants)
        await self.touch_presence(state.participant_id, presence_ttl_s)
        return JoinResult(
            state, room_state, await self.list_participants(state.room), await self.list_tracks(state.room)
        )

    @abc.abstractmethod
    async def remove_participant(self, room: str, participant_id: str) -> ParticipantState | None:
        """Removes the participant and its tracks; returns what was removed."""

    @abc.abstractmethod
    async def get_participant(self, room: str, participant_id: str) -> ParticipantState | None: ...

    @abc.abstractmethod
    async def list_participants(self, room: str) -> list[ParticipantState]: ...

    @abc.abstractmethod
    async def update_participant(
        self, room: str, participant_id: str, /, **changes: Any
    ) -> ParticipantState | None:
        """Changes fields atomically; unknown or key fields raise ValueError and change nothing."""

    @abc.abstractmethod
    async def add_track(self, track: TrackState) -> None: ...

    @abc.abstractmethod
    async def remove_track(self, room: str, track_id: str) -> TrackState | None: ...

    @abc.abstractmethod
    async def update_track(self, room: str, track_id: str, /, **changes: Any) -> TrackState | None: ...

    @abc.abstractmethod
    async def list_tracks(self, room: str) -> list[TrackState]: ...

    @abc.abstractmethod
    async def get_room_state(self, room: str) -> dict[str, Any]:
        """The room's moderation state ({} when unset); it ends with the room."""

    @abc.abstractmethod
    async def set_room_state(self, room: str, state: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def list_rooms(self) -> dict[str, int]:
        """Room name → participant count, for rooms with at least one participant."""

    # --- presence ----------------------------------------------------------------------

    @abc.abstractmethod
    async def touch_presence(self, participant_id: str, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def clear_presence(self, participant_id: str) -> None: ...

    @abc.abstractmethod
    async def is_present(self, participant_id: str) -> bool: ...

    async def present_among(self, participant_ids: list[str]) -> set[str]:
        """Those of the ids that are present; a backend may ask in one round trip."""
        return {p for p in participant_ids if await self.is_present(p)}

    # --- nodes and room placement --------------------------------------------------------

    @abc.abstractmethod
    async def heartbeat_node(self, node_id: str, info: dict[str, Any], ttl_s: float) -> None:
        """Registers the node as live for `ttl_s` with its load and state."""

    @abc.abstractmethod
    async def live_nodes(self) -> dict[str, dict[str, Any]]: ...

    @abc.abstractmethod
    async def dead_nodes(self) -> list[str]:
        """Registered nodes whose heartbeat expired."""

    @abc.abstractmethod
    async def forget_node(self, node_id: str) -> None: ...

    @abc.abstractmethod
    async def place_room(self, room: str, node_id: str, live: list[str]) -> str:
        """Atomically keeps the room's owner if it is in `live`, else makes it `node_id`."""

    @abc.abstractmethod
    async def room_owner(self, room: str) -> str | None: ...

    @abc.abstractmethod
    async def release_room(self, room: str, node_id: str) -> None:
        """Drops the placement only if `node_id` still owns the room."""

    @abc.abstractmethod
    async def rooms_of_node(self, node_id: str) -> list[str]: ...

    @abc.abstractmethod
    async def acquire_lock(self, name: str, ttl_s: float) -> bool:
        """True for exactly one caller until the lock expires."""

    # --- counters ----------------------------------------------------------------------

    @abc.abstractmethod
    async def count(self, name: str, window_s: float) -> int:
        """Adds one to the counter and returns its value.

        The counter's window starts at its first count and it disappears `window_s` later,
        so a limit over it is a fixed window, shared by every node.
        """

    @abc.abstractmethod
    async def counted(self, name: str) -> int:
        """The counter's value, 0 when it expired or was never counted."""

    @abc.abstractmethod
    async def uncount(self, name: str) -> None:
        """Takes one back from a live counter (never below 0, never starting a window): for
        an attempt counted before it was checked that turned out fine."""

    @abc.abstractmethod
    async def reset_count(self, name: str) -> None: ...

    # --- access revocation ---------------------------------------------------------------
    # Tokens are signed and live until they expire; these records are what a node checks
    # besides the signature, shared by every node and kept across restarts.

    @abc.abstractmethod
    async def revoke(self, subject: str, at: float, keep_s: float) -> None:
        """Tokens for `subject` issued before `at` (Unix seconds) are refused from now on.

        Kept `keep_s` (the longest a token lives); a later revocation of the same subject
        replaces an earlier one, an earlier one changes nothing.
        """

    @abc.abstractmethod
    async def revocations(self, subjects: list[str]) -> dict[str, float]:
        """Subject → revocation time, for those of `subjects` that are revoked."""

    @abc.abstractmethod
    async def ban(self, room: str, participant_id: str, info: dict[str, Any], until: float) -> None:
        """Keeps the participant out of the room until `until` (Unix seconds) or `unban`."""

    @abc.abstractmethod
    async def unban(self, room: str, participant_id: str) -> bool:
        """Lifts a ban; False when the participant was not banned."""

    @abc.abstractmethod
    async def bans(self, room: str) -> dict[str, dict[str, Any]]:
        """Participant id → the info given to `ban`, for the room's bans in force."""

    async def access(
        self, subjects: list[str], room: str, participant_id: str
    ) -> tuple[dict[str, float], dict[str, Any] | None]:
        """What a hello or join checks: the subjects' revocations and the participant's ban
        in the room (None when not banned). A backend may read both in one round trip."""
        return await self.revocations(subjects), (await self.bans(room)).get(participant_id)

    # --- staff sessions ----------------------------------------------------------------
    # A logged-in staff member's session: the cookie holds a random id, the store a record
    # under a hash of it, so logging out (or losing the account) ends every copy of the cookie.

    @abc.abstractmethod
    async def put_staff_session(self, key: str, record: dict[str, Any], ttl_s: float) -> None:
        """Creates or replaces the record (which names its `account`); gone after `ttl_s`."""

    @abc.abstractmethod
    async def get_staff_session(self, key: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def delete_staff_session(self, key: str) -> None: ...

    @abc.abstractmethod
    async def delete_staff_sessions(self, account_id: str, keep: str | None = None) -> int:
        """Ends every session of the account but `keep`; returns how many ended."""

    # --- room event fan-out --------------------------------------------------------------

    @abc.abstractmethod
    async def publish(self, room: str, event: dict[str, Any]) -> int:
        """Delivers the event to every subscriber of the room, on every node; returns
        how many nodes' subscriptions took it (0: nobody is listening right now).

        Handlers must be quick and must not raise; a handler's exception is logged and
        never reaches the publisher or the other handlers.
        """

    @abc.abstractmethod
    async def subscribers(self, rooms: list[str]) -> dict[str, int]:
        """How many nodes' subscriptions each room's channel has now."""

    @abc.abstractmethod
    async def subscribe(self, room: str, handler: EventHandler) -> Subscription:
        """Each call is its own subscription, closed on its own."""

    # --- durable directory ------------------------------------------------------------------

    @abc.abstractmethod
    async def put_record(self, kind: str, record_id: str, data: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def list_records(self, kind: str) -> list[dict[str, Any]]: ...

    async def get_records(self, kind: str, record_ids: list[str]) -> list[dict[str, Any] | None]:
        """Several records by id, in order (None where missing); Redis asks in one round trip."""
        return [await self.get_record(kind, record_id) for record_id in record_ids]

    @abc.abstractmethod
    async def delete_record(self, kind: str, record_id: str) -> bool: ...


    # --- attendance ---------------------------------------------------------------------------
    # One log per activity occurrence or family call (server/attendance.py), as JSON:
    # {"id", "kind", "start", "end", ..., "members": {member: {"role", "iv": [[from, to], [from]]}}}
    # where a one-element interval is still open. A reduced log (after the retention
    # period) has "reduced": true and "counts" instead of "members".

    @abc.abstractmethod
    async def attend(
        self, log: dict[str, Any], member: str, role: str, at: float, limits: "AttendanceLimits"
    ) -> None:
        """Opens the member's stay in the log (created from `log` when new), keeps an
        open one, or reopens one that ended less than `limits.merge_gap_s` ago: a kiosk
        that reconnects or joins twice is never counted twice. Atomic; for Redis one
        round trip. A senior's (role "senior") last engagement moves to `at`."""

    @abc.abstractmethod
    async def depart(self, log_id: str, member: str, at: float) -> None:
        """Closes the member's open stay at `at`; nothing when none is open (idempotent)."""

    @abc.abstractmethod
    async def attendance_between(self, start_from: float, start_to: float) -> list[dict[str, Any]]:
        """Logs whose start lies in [start_from, start_to), oldest first."""

    @abc.abstractmethod
    async def replace_attendance(self, log: dict[str, Any]) -> None:
        """Overwrites a log (retention turns it into counts)."""

    @abc.abstractmethod
    async def last_engaged(self) -> dict[str, float]:
        """Senior id → when they last took part in an activity or a family call."""

    @abc.abstractmethod
    async def forget_engaged(self, senior_id: str) -> None:
        """Drops the senior from last_engaged (the senior was removed)."""


@dataclass(frozen=True)
class AttendanceLimits:
    merge_gap_s: float = 300.0
    max_members: int = 500
    max_intervals: int = 50


def attend_in(log: dict[str, Any], member: str, role: str, at: float, limits: AttendanceLimits) -> bool:
    """attend() on a decoded log; the Redis backend runs the same rules in Lua.
    False when nothing changed (an open stay, a reduced log, the member limit)."""
    if log.get("reduced"):
        return False
    members = log.setdefault("members", {})
    entry = members.get(member)
    if entry is None:
        if len(members) >= limits.max_members:
            return False
        members[member] = {"role": role, "iv": [[at]]}
        return True
    intervals = entry["iv"]
    last = intervals[-1]
    if len(last) == 1:
        return False
    if at <= last[1] + limits.merge_gap_s or len(intervals) >= limits.max_intervals:
        intervals[-1] = [last[0]]
    else:
        intervals.append([at])
    return True


def depart_in(log: dict[str, Any], member: str, at: float) -> bool:
    entry = (log.get("members") or {}).get(member)
    if entry is None:
        return False
    last = entry["iv"][-1]
    if len(last) != 1:
        return False
    entry["iv"][-1] = [last[0], max(at, last[0])]
    return True


def check_access(access: AccessCheck, revoked: dict[str, float], banned: bool) -> None:
    """Raises AccessRefused for the first subject revoked after the token, then for a ban."""
    for subject in access.subjects:
        if access.issued_at < revoked.get(subject, 0.0):
            raise AccessRefused(subject)
    if banned:
        raise AccessRefused(None)


def check_kind(kind: str) -> None:
    if kind not in DIRECTORY_KINDS:
        raise ValueError(f"unknown directory kind {kind!r}; expected one of {', '.join(DIRECTORY_KINDS)}")


def check_record_id(record_id: str) -> None:
    if not isinstance(record_id, str) or not record_id or len(record_id) > 128:
        raise ValueError("record id must be a non-empty string of at most 128 characters")


def check_changes(cls: type, changes: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(changes) - names
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    for key in ("participant_id", "room", "track_id"):
        if key in changes:
            raise ValueError(f"{key} cannot be changed")
