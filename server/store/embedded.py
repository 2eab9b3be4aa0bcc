"""Embedded backend: live state in this process, the durable directory in SQLite.

Needs no external service. SQLite runs on one worker thread so the event loop never
waits on disk. Revocations, bans and staff sessions are kept in SQLite too (tables
`revocations`, `bans`, `staff_sessions`), so a restart forgets none of them; revocations
and bans are also held in memory, as every hello reads them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..datadir import private_dir, private_file, restrict_existing
from .base import (
    DIRECTORY_KINDS,
    AttendanceLimits,
    attend_in,
    depart_in,
    EventHandler,
    ParticipantState,
    RoomFull,
    RoomSubscription,
    Store,
    Subscription,
    TrackState,
    check_changes,
    check_kind,
    check_record_id,
)

DATABASE_FILE = "directory.sqlite3"
_COUNTERS_BEFORE_PURGE = 10_000

logger = logging.getLogger(__name__)

_Entry = TypeVar("_Entry", ParticipantState, TrackState)


def _pop(tables: dict[str, dict[str, _Entry]], room: str, entry_id: str) -> _Entry | None:
    """Removes one participant or track of a room, and the room's table with its last one."""
    entries = tables.get(room)
    if not entries or entry_id not in entries:
        return None
    entry = entries.pop(entry_id)
    if not entries:
        del tables[room]
    return entry


def _update(cls: type[_Entry], entry: _Entry | None, changes: dict[str, Any]) -> _Entry | None:
    """Changes a held participant or track; returns a copy (None when it is not there)."""
    if entry is None:
        return None
    check_changes(cls, changes)
    for key, value in changes.items():
        setattr(entry, key, value)
    return dataclasses.replace(entry)


class EmbeddedStore(Store):
    def __init__(self, data_dir: Path, node_id: str = "local") -> None:
        self.node_id = node_id
        self._path = Path(data_dir) / DATABASE_FILE
        self._participants: dict[str, dict[str, ParticipantState]] = {}
        self._tracks: dict[str, dict[str, TrackState]] = {}
        self._presence: dict[str, float] = {}
        self._room_state: dict[str, dict[str, Any]] = {}
        self._nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        self._placements: dict[str, str] = {}
        self._locks: dict[str, float] = {}
        self._counters: dict[str, tuple[int, float]] = {}
        self._handlers: dict[str, list[EventHandler]] = {}
        # subject → (revoked at, kept until); room → participant → (info, until).
        self._revoked: dict[str, tuple[float, float]] = {}
        self._bans: dict[str, dict[str, tuple[dict[str, Any], float]]] = {}
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        private_dir(self._path.parent)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        await self._run(self._open_db)

    def _open_db(self) -> None:
        # SQLite gives its -wal and -shm files the database file's mode: 0600 for all three.
        private_file(self._path)
        for suffix in ("-wal", "-shm"):
            restrict_existing(self._path.with_name(self._path.name + suffix))
        db = sqlite3.connect(self._path, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for kind in DIRECTORY_KINDS:
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {kind} (id TEXT PRIMARY KEY, data TEXT NOT NULL)"
            )
        db.execute("CREATE TABLE IF NOT EXISTS attendance (id TEXT PRIMARY KEY, start REAL NOT NULL, data TEXT NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS attendance_start ON attendance (start)")
        db.execute("CREATE TABLE IF NOT EXISTS engaged (senior TEXT PRIMARY KEY, at REAL NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS revocations (subject TEXT PRIMARY KEY, at REAL NOT NULL, expires REAL NOT NULL)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS bans (room TEXT NOT NULL, participant TEXT NOT NULL, info TEXT NOT NULL,"
            " until REAL NOT NULL, PRIMARY KEY (room, participant))"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS staff_sessions (key TEXT PRIMARY KEY, account TEXT NOT NULL,"
            " record TEXT NOT NULL, expires REAL NOT NULL)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS staff_sessions_account ON staff_sessions (account)")
        now = time.time()
        for table, column in (("revocations", "expires"), ("bans", "until"), ("staff_sessions", "expires")):
            db.execute(f"DELETE FROM {table} WHERE {column} <= ?", (now,))
        db.commit()
        for subject, at, expires in db.execute("SELECT subject, at, expires FROM revocations"):
            self._revoked[subject] = (at, expires)
        for room, participant, info, until in db.execute("SELECT room, participant, info, until FROM bans"):
            self._bans.setdefault(room, {})[participant] = (json.loads(info), until)
        self._db = db

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close_db)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        assert self._executor is not None, "store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- live room state -------------------------------------------------------------

    async def add_participant(self, state: ParticipantState, max_participants: int) -> None:
        room = self._participants.setdefault(state.room, {})
        if state.participant_id not in room and len(room) >= max_participants:
            if not room:
                del self._participants[state.room]
            raise RoomFull(state.room)
        room[state.participant_id] = dataclasses.replace(state)

    async def remove_participant(self, room: str, participant_id: str) -> ParticipantState | None:
        state = _pop(self._participants, room, participant_id)
        if state is None:
            return None
        if room not in self._participants:
            self._room_state.pop(room, None)
        tracks = self._tracks.get(room, {})
        for track_id in [t for t, tr in tracks.items() if tr.participant_id == participant_id]:
            del tracks[track_id]
        if room in self._tracks and not self._tracks[room]:
            del self._tracks[room]
        return state

    async def get_participant(self, room: str, participant_id: str) -> ParticipantState | None:
        state = self._participants.get(room, {}).get(participant_id)
        return dataclasses.replace(state) if state else None

    async def list_participants(self, room: str) -> list[ParticipantState]:
        members = self._participants.get(room, {})
        return sorted(
            (dataclasses.replace(p) for p in members.values()),
            key=lambda p: (p.joined_at, p.participant_id),
        )

    async def update_participant(
        self, room: str, participant_id: str, /, **changes: Any
    ) -> ParticipantState | None:
        return _update(ParticipantState, self._participants.get(room, {}).get(participant_id), changes)

    async def add_track(self, track: TrackState) -> None:
        if track.participant_id not in self._participants.get(track.room, {}):
            raise KeyError(f"participant {track.participant_id} is not in room {track.room}")
        self._tracks.setdefault(track.room, {})[track.track_id] = dataclasses.replace(track)

    async def remove_track(self, room: str, track_id: str) -> TrackState | None:
        return _pop(self._tracks, room, track_id)

    async def update_track(self, room: str, track_id: str, /, **changes: Any) -> TrackState | None:
        return _update(TrackState, self._tracks.get(room, {}).get(track_id), changes)

    async def list_tracks(self, room: str) -> list[TrackState]:
        return [dataclasses.replace(t) for t in self._tracks.get(room, {}).values()]

    async def get_room_state(self, room: str) -> dict[str, Any]:
        return json.loads(json.dumps(self._room_state.get(room, {})))

    async def set_room_state(self, room: str, state: dict[str, Any]) -> None:
        self._room_state[room] = json.loads(json.dumps(state))

    async def list_rooms(self) -> dict[str, int]:
        return {room: len(members) for room, members in self._participants.items()}

    # --- presence ----------------------------------------------------------------------

    async def touch_presence(self, participant_id: str, ttl_s: float) -> None:
        self._presence[participant_id] = time.monotonic() + ttl_s

    async def clear_presence(self, participant_id: str) -> None:
        self._presence.pop(participant_id, None)

    async def is_present(self, participant_id: str) -> bool:
        expires = self._presence.get(participant_id)
        if expires is None:
            return False
        if expires < time.monotonic():
            del self._presence[participant_id]
            return False
        return True

    # --- nodes and room placement --------------------------------------------------------
    # One process is the only node: placement always answers this node.

    async def heartbeat_node(self, node_id: str, info: dict[str, Any], ttl_s: float) -> None:
        self._nodes[node_id] = (time.monotonic() + ttl_s, json.loads(json.dumps(info)))

    async def live_nodes(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        return {n: info for n, (expires, info) in self._nodes.items() if expires > now}

    async def dead_nodes(self) -> list[str]:
        now = time.monotonic()
        return [n for n, (expires, _) in self._nodes.items() if expires <= now]

    async def forget_node(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)
        for room in [r for r, n in self._placements.items() if n == node_id]:
            del self._placements[room]

    async def place_room(self, room: str, node_id: str, live: list[str]) -> str:
        current = self._placements.get(room)
        if current is not None and current in live:
            return current
        self._placements[room] = node_id
        return node_id

    async def room_owner(self, room: str) -> str | None:
        return self._placements.get(room)

    async def release_room(self, room: str, node_id: str) -> None:
        if self._placements.get(room) == node_id:
            del self._placements[room]

    async def rooms_of_node(self, node_id: str) -> list[str]:
        return [r for r, n in self._placements.items() if n == node_id]

    async def acquire_lock(self, name: str, ttl_s: float) -> bool:
        now = time.monotonic()
        if len(self._locks) >= _COUNTERS_BEFORE_PURGE:
            # Locks taken once (a pairing code) must not pile up either.
            self._locks = {k: v for k, v in self._locks.items() if v > now}
        if self._locks.get(name, 0.0) > now:
            return False
        self._locks[name] = now + ttl_s
        return True

    # --- counters ----------------------------------------------------------------------

    def _live_counter(self, name: str, now: float) -> tuple[int, float] | None:
        counter = self._counters.get(name)
        if counter is not None and counter[1] <= now:
            del self._counters[name]
            return None
        return counter

    async def count(self, name: str, window_s: float) -> int:
        now = time.monotonic()
        if len(self._counters) >= _COUNTERS_BEFORE_PURGE:
            # Counters nobody reads again (a sprayed username) must not pile up.
            self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        value, expires = self._live_counter(name, now) or (0, now + window_s)
        self._counters[name] = (value + 1, expires)
        return value + 1

    async def counted(self, name: str) -> int:
        counter = self._live_counter(name, time.monotonic())
        return counter[0] if counter else 0

    async def uncount(self, name: str) -> None:
        counter = self._live_counter(name, time.monotonic())
        if counter is not None and counter[0] > 0:
            self._counters[name] = (counter[0] - 1, counter[1])

    async def reset_count(self, name: str) -> None:
        self._counters.pop(name, None)

    # --- access revocation ---------------------------------------------------------------

    def _write(self, sql: str, *params: Any) -> int:
        assert self._db is not None
        with self._db:
            return self._db.execute(sql, params).rowcount

    async def revoke(self, subject: str, at: float, keep_s: float) -> None:
        now = time.time()
        self._revoked = {k: v for k, v in self._revoked.items() if v[1] > now}
        current = self._revoked.get(subject)
        if current is not None and current[0] >= at:
            return
        self._revoked[subject] = (at, now + keep_s)
        await self._run(
            self._write,
            "INSERT INTO revocations (subject, at, expires) VALUES (?, ?, ?) ON CONFLICT(subject) DO UPDATE"
            " SET at = excluded.at, expires = excluded.expires",
            subject, at, now + keep_s,
        )

    async def revocations(self, subjects: list[str]) -> dict[str, float]:
        now = time.time()
        found = {}
        for subject in subjects:
            entry = self._revoked.get(subject)
            if entry is not None and entry[1] > now:
                found[subject] = entry[0]
        return found

    async def ban(self, room: str, participant_id: str, info: dict[str, Any], until: float) -> None:
        info = json.loads(json.dumps(info))
        self._bans.setdefault(room, {})[participant_id] = (info, until)
        await self._run(
            self._write,
            "INSERT INTO bans (room, participant, info, until) VALUES (?, ?, ?, ?) ON CONFLICT(room, participant)"
            " DO UPDATE SET info = excluded.info, until = excluded.until",
            room, participant_id, json.dumps(info), until,
        )

    async def unban(self, room: str, participant_id: str) -> bool:
        banned = participant_id in await self.bans(room)
        room_bans = self._bans.get(room, {})
        room_bans.pop(participant_id, None)
        if not room_bans:
            self._bans.pop(room, None)
        await self._run(self._write, "DELETE FROM bans WHERE room = ? AND participant = ?", room, participant_id)
        return banned

    async def bans(self, room: str) -> dict[str, dict[str, Any]]:
        now = time.time()
        room_bans = self._bans.get(room, {})
        for participant_id in [p for p, (_, until) in room_bans.items() if until <= now]:
            del room_bans[participant_id]
        if not room_bans:
            self._bans.pop(room, None)
        return {p: json.loads(json.dumps(info)) for p, (info, _) in room_bans.items()}

    # --- staff sessions ----------------------------------------------------------------

    async def put_staff_session(self, key: str, record: dict[str, Any], ttl_s: float) -> None:
        now = time.time()
        await self._run(self._write, "DELETE FROM staff_sessions WHERE expires <= ?", now)
        await self._run(
            self._write,
            "INSERT INTO staff_sessions (key, account, record, expires) VALUES (?, ?, ?, ?) ON CONFLICT(key)"
            " DO UPDATE SET account = excluded.account, record = excluded.record, expires = excluded.expires",
            key, record["account"], json.dumps(record, sort_keys=True), now + ttl_s,
        )

    async def get_staff_session(self, key: str) -> dict[str, Any] | None:
        row = await self._run(self._staff_session, key)
        return json.loads(row[0]) if row is not None and row[1] > time.time() else None

    def _staff_session(self, key: str) -> tuple[str, float] | None:
        assert self._db is not None
        return self._db.execute("SELECT record, expires FROM staff_sessions WHERE key = ?", (key,)).fetchone()

    async def delete_staff_session(self, key: str) -> None:
        await self._run(self._write, "DELETE FROM staff_sessions WHERE key = ?", key)

    async def delete_staff_sessions(self, account_id: str, keep: str | None = None) -> int:
        return await self._run(
            self._write, "DELETE FROM staff_sessions WHERE account = ? AND key != ?", account_id, keep or ""
        )

    # --- room event fan-out --------------------------------------------------------------

    async def publish(self, room: str, event: dict[str, Any]) -> int:
        # Round-trip through JSON so subscribers get the same shapes as over Redis.
        payload = json.loads(json.dumps(event))
        handlers = list(self._handlers.get(room, ()))
        for handler in handlers:
            try:
                handler(payload)
            except Exception:
                logger.exception("event handler for room %s failed", room)
        # One node: any subscription at all is this node's.
        return 1 if handlers else 0

    async def subscribers(self, rooms: list[str]) -> dict[str, int]:
        return {room: 1 if self._handlers.get(room) else 0 for room in rooms}

    async def subscribe(self, room: str, handler: EventHandler) -> Subscription:
        self._handlers.setdefault(room, []).append(handler)
        return RoomSubscription(room, handler, self._unsubscribe)

    async def _unsubscribe(self, subscription: RoomSubscription) -> None:
        handlers = self._handlers.get(subscription.room)
        if handlers is not None and subscription.handler in handlers:
            handlers.remove(subscription.handler)
            if not handlers:
                del self._handlers[subscription.room]

    # --- durable directory ------------------------------------------------------------------

    async def put_record(self, kind: str, record_id: str, data: dict[str, Any]) -> None:
        check_kind(kind)
        check_record_id(record_id)
        text = json.dumps(data, sort_keys=True)
        await self._run(self._put, kind, record_id, text)

    def _put(self, kind: str, record_id: str, text: str) -> None:
        assert self._db is not None
        with self._db:
            self._db.execute(
                f"INSERT INTO {kind} (id, data) VALUES (?, ?) "
                "ON CONFLICT(id) DO UPDATE SET data = excluded.data",
                (record_id, text),
            )

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        check_kind(kind)
        row = await self._run(self._get, kind, record_id)
        return json.loads(row) if row is not None else None

    def _get(self, kind: str, record_id: str) -> str | None:
        assert self._db is not None
        row = self._db.execute(f"SELECT data FROM {kind} WHERE id = ?", (record_id,)).fetchone()
        return row[0] if row else None

    async def list_records(self, kind: str) -> list[dict[str, Any]]:
        check_kind(kind)
        rows = await self._run(self._list, kind)
        return [json.loads(r) for r in rows]

    def _list(self, kind: str) -> list[str]:
        assert self._db is not None
        return [r[0] for r in self._db.execute(f"SELECT data FROM {kind} ORDER BY id")]

    async def delete_record(self, kind: str, record_id: str) -> bool:
        check_kind(kind)
        return await self._run(self._delete, kind, record_id)

    def _delete(self, kind: str, record_id: str) -> bool:
        assert self._db is not None
        with self._db:
            cur = self._db.execute(f"DELETE FROM {kind} WHERE id = ?", (record_id,))
        return cur.rowcount > 0


    # --- attendance ---------------------------------------------------------------------------
    # Each change is a read-modify-write inside one immediate SQLite transaction, so concurrent
    # joins and leaves never lose each other's stays, also when two nodes' stores share the file.

    @contextmanager
    def _read_modify_write(self) -> Iterator[sqlite3.Connection]:
        # A deferred transaction takes the write lock only at its first write: another
        # connection could write between our read and our write, and ours would overwrite it.
        assert self._db is not None
        self._db.execute("BEGIN IMMEDIATE")
        with self._db:
            yield self._db

    async def attend(
        self, log: dict[str, Any], member: str, role: str, at: float, limits: AttendanceLimits
    ) -> None:
        check_record_id(log["id"])
        await self._run(self._attend, log, member, role, at, limits)

    def _attend(self, fresh: dict[str, Any], member: str, role: str, at: float, limits: AttendanceLimits) -> None:
        with self._read_modify_write() as db:
            row = db.execute("SELECT data FROM attendance WHERE id = ?", (fresh["id"],)).fetchone()
            log = json.loads(row[0]) if row else json.loads(json.dumps(fresh))
            if attend_in(log, member, role, at, limits) or row is None:
                db.execute(
                    "INSERT INTO attendance (id, start, data) VALUES (?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET data = excluded.data",
                    (log["id"], float(log["start"]), json.dumps(log, sort_keys=True)),
                )
            if role == "senior" and not log.get("reduced"):
                self._engaged(member, at)

    def _engaged(self, senior: str, at: float) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT INTO engaged (senior, at) VALUES (?, ?) "
            "ON CONFLICT(senior) DO UPDATE SET at = max(at, excluded.at)",
            (senior, at),
        )

    async def depart(self, log_id: str, member: str, at: float) -> None:
        await self._run(self._depart, log_id, member, at)

    def _depart(self, log_id: str, member: str, at: float) -> None:
        with self._read_modify_write() as db:
            row = db.execute("SELECT data FROM attendance WHERE id = ?", (log_id,)).fetchone()
            if row is None:
                return
            log = json.loads(row[0])
            if depart_in(log, member, at):
                db.execute("UPDATE attendance SET data = ? WHERE id = ?", (json.dumps(log, sort_keys=True), log_id))
                if log["members"][member]["role"] == "senior":
                    self._engaged(member, at)

    async def attendance_between(self, start_from: float, start_to: float) -> list[dict[str, Any]]:
        rows = await self._run(self._attendance_between, start_from, start_to)
        return [json.loads(r) for r in rows]

    def _attendance_between(self, start_from: float, start_to: float) -> list[str]:
        assert self._db is not None
        return [
            r[0]
            for r in self._db.execute(
                "SELECT data FROM attendance WHERE start >= ? AND start < ? ORDER BY start, id", (start_from, start_to)
            )
        ]

    async def replace_attendance(self, log: dict[str, Any]) -> None:
        check_record_id(log["id"])
        await self._run(self._replace_attendance, log["id"], float(log["start"]), json.dumps(log, sort_keys=True))

    def _replace_attendance(self, log_id: str, start: float, text: str) -> None:
        assert self._db is not None
        with self._db:
            self._db.execute(
                "INSERT INTO attendance (id, start, data) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET start = excluded.start, data = excluded.data",
                (log_id, start, text),
            )

    async def last_engaged(self) -> dict[str, float]:
        return await self._run(self._last_engaged)

    def _last_engaged(self) -> dict[str, float]:
        assert self._db is not None
        return {senior: at for senior, at in self._db.execute("SELECT senior, at FROM engaged")}

    async def forget_engaged(self, senior_id: str) -> None:
        await self._run(self._forget_engaged, senior_id)

    def _forget_engaged(self, senior_id: str) -> None:
        assert self._db is not None
        with self._db:
            self._db.execute("DELETE FROM engaged WHERE senior = ?", (senior_id,))
