"""Attendance: who took part in which activity occurrence or family call, when and how long.

Minimal and durable. One log per occurrence of an activity (its scheduled start, found
in Europe/Amsterdam wall time so a DST change never splits or shifts it) and one per
family call. Enrolled seniors are kept by id with their stays (join → leave intervals);
guests, family members and hosts in an activity only as anonymous members (a hash that
cannot be turned back into a person), so they can be counted once each. A family call's
log names its senior and contact — that a call happened, when and how long, never what
was said or shown.

Every stay is recorded through the store (`Store.attend` / `Store.depart`): the same log
on every node, after restarts and failovers. The log id is derived from the activity and
the participant's join time, so the node that closes a stay (the session's own, or the
one that reaps a dead node) finds the same log without asking anyone. A reconnect or a
second join of the same senior reopens their stay instead of adding a visit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .directory import Activity
from .schedule import AMSTERDAM
from .store import Store
from .store.base import AttendanceLimits

# A family call's room (signaling/devices.py makes them): "call-<call id>".
CALL_ROOM_PREFIX = "call-"
ACTIVITY = "activity"
CALL = "call"


def _utc(at: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc)


def local_day_bounds(day: dt.date) -> tuple[float, float]:
    """The instants a local (Amsterdam) calendar day starts and ends: 23 or 25 hours on
    the days the clocks change."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=AMSTERDAM)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=AMSTERDAM)
    return start.timestamp(), end.timestamp()


@dataclass(frozen=True)
class Occurrence:
    activity_id: str
    start: float
    end: float
    scheduled: bool

    @property
    def log_id(self) -> str:
        local = _utc(self.start).astimezone(AMSTERDAM)
        if self.scheduled:
            return f"a:{self.activity_id}:{local.strftime('%Y-%m-%dT%H:%M')}"
        return f"a:{self.activity_id}:{local.strftime('%Y-%m-%d')}"


def occurrences_on(activity: Activity, day: dt.date) -> list[Occurrence]:
    """The activity's scheduled occurrences on a local calendar day."""
    found = []
    for slot in activity.weekly_slots:
        if slot.weekday != day.weekday():
            continue
        start = slot.occurrence_on(day).timestamp()
        found.append(Occurrence(activity.id, start, start + slot.duration_min * 60, True))
    return sorted(found, key=lambda o: o.start)


def occurrence_at(activity: Activity, at: float, early_s: float, late_s: float) -> Occurrence:
    """The occurrence a join at `at` belongs to: the scheduled one whose window (from
    `early_s` before its start to `late_s` after its end) holds it, the nearest start if
    two do; otherwise an unscheduled occurrence for that local day."""
    local_day = _utc(at).astimezone(AMSTERDAM).date()
    candidates = [
        occurrence
        for offset in (-1, 0, 1)
        for occurrence in occurrences_on(activity, local_day + dt.timedelta(days=offset))
        if occurrence.start - early_s <= at <= occurrence.end + late_s
    ]
    if candidates:
        return min(candidates, key=lambda o: abs(o.start - at))
    day_start, day_end = local_day_bounds(local_day)
    return Occurrence(activity.id, day_start, day_end, False)


def anonymous_member(log_id: str, participant_id: str) -> str:
    """Counts a guest, family member or host once per log without keeping who it was."""
    digest = hashlib.sha256(f"{log_id}\0{participant_id}".encode()).hexdigest()[:16]
    return f"anon-{digest}"


def open_until(log: dict[str, Any], now: float) -> float:
    """Until when a stay still open in this log counts: now, but never past the log's
    `until` — a stay whose leave was never recorded (a single node that crashed, the
    store away at that moment) must not grow for ever."""
    until = log.get("until")
    return min(now, until) if isinstance(until, (int, float)) and not isinstance(until, bool) else now


def stays(entry: dict[str, Any], now: float) -> list[tuple[float, float]]:
    """A member's stays as (from, to); an open one runs until `now` (see open_until)."""
    return [(iv[0], iv[1] if len(iv) > 1 else max(now, iv[0])) for iv in entry.get("iv", ())]


def seconds_in(entry: dict[str, Any], now: float) -> float:
    return sum(to - start for start, to in stays(entry, now))


def is_present(entry: dict[str, Any], log: dict[str, Any], now: float) -> bool:
    intervals = entry.get("iv") or [[0, 0]]
    return len(intervals[-1]) == 1 and open_until(log, now) >= now


def call_between(log: dict[str, Any], now: float) -> tuple[str, str, float, float] | None:
    """(senior id, contact id, start, seconds both were in) of a family call log, or None
    when the two never were in the call together."""
    members = log.get("members") or {}
    senior = next(((m, e) for m, e in members.items() if e.get("role") == "senior"), None)
    family = next(((m, e) for m, e in members.items() if e.get("role") == "family"), None)
    if senior is None or family is None:
        return None
    overlap = 0.0
    first = None
    now = open_until(log, now)
    for a_from, a_to in stays(senior[1], now):
        for b_from, b_to in stays(family[1], now):
            start, end = max(a_from, b_from), min(a_to, b_to)
            if end > start:
                overlap += end - start
                first = start if first is None else min(first, start)
    if first is None:
        return None
    return senior[0], family[0], first, overlap


class Attendance:
    """Records stays as participants join and leave rooms; see the module docstring."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.limits = AttendanceLimits(
            settings.attendance_merge_gap_s, settings.attendance_max_members, settings.attendance_max_intervals
        )

    def _log_for(
        self, room: str, activity: Activity | None, participant_id: str, role: str, joined_at: float
    ) -> tuple[dict[str, Any], str, str] | None:
        """(log skeleton, member key, member role) or None for rooms nobody counts."""
        if room.startswith(CALL_ROOM_PREFIX):
            start = round(joined_at, 3)
            log = {
                "id": f"c:{room[len(CALL_ROOM_PREFIX):]}", "kind": CALL, "start": start, "end": None,
                "until": start + self.settings.attendance_call_cap_s,
            }
            if role in ("senior", "family"):
                return log, participant_id, role
            return None
        if activity is None:
            return None
        occurrence = occurrence_at(activity, joined_at, self.settings.attendance_early_s, self.settings.attendance_late_s)
        log = {
            "id": occurrence.log_id,
            "kind": ACTIVITY,
            "activity_id": activity.id,
            "start": occurrence.start,
            "end": occurrence.end,
            "until": occurrence.end + self.settings.attendance_late_s,
            "scheduled": occurrence.scheduled,
        }
        if role == "senior":
            return log, participant_id, "senior"
        return log, anonymous_member(log["id"], participant_id), role if role in ("family", "host", "admin") else "guest"

    async def joined(
        self, room: str, activity: Activity | None, participant_id: str, role: str, joined_at: float, at: float | None = None
    ) -> None:
        found = self._log_for(room, activity, participant_id, role, joined_at)
        if found is None:
            return
        log, member, member_role = found
        await self.store.attend(log, member, member_role, round(time.time() if at is None else at, 3), self.limits)

    async def left(
        self, room: str, activity: Activity | None, participant_id: str, role: str, joined_at: float, at: float | None = None
    ) -> None:
        found = self._log_for(room, activity, participant_id, role, joined_at)
        if found is None:
            return
        log, member, _ = found
        await self.store.depart(log["id"], member, round(time.time() if at is None else at, 3))

    # --- retention ----------------------------------------------------------------------------

    async def forget_senior(self, senior_id: str) -> int:
        """A senior removed from the directory: in every log they are from now on an
        anonymous member (still counted, never named again). Returns the logs changed.
        A stay being recorded at this very moment may be lost: remove people who are not
        in an activity."""
        changed = 0
        for log in await self.store.attendance_between(0.0, float("inf")):
            members = log.get("members") or {}
            if senior_id not in members:
                continue
            members[anonymous_member(log["id"], senior_id)] = members.pop(senior_id)
            await self.store.replace_attendance(log)
            changed += 1
        await self.store.forget_engaged(senior_id)
        return changed


    async def reduce_older_than(self, cutoff: float, now: float) -> int:
        """Retention: logs that started before `cutoff` keep only anonymous counts.
        Idempotent; returns how many logs were reduced now."""
        reduced = 0
        for log in await self.store.attendance_between(0.0, cutoff):
            if log.get("reduced"):
                continue
            await self.store.replace_attendance(reduce_log(log, now))
            reduced += 1
        return reduced


def reduce_log(log: dict[str, Any], now: float) -> dict[str, Any]:
    """The anonymous counts that remain of a log after the retention period."""
    members = log.get("members") or {}
    counts: dict[str, float] = {"seniors": 0, "guests": 0, "family": 0, "hosts": 0, "senior_minutes": 0.0}
    for entry in members.values():
        role = entry.get("role")
        if role == "senior":
            counts["seniors"] += 1
            counts["senior_minutes"] += seconds_in(entry, open_until(log, now)) / 60
        elif role == "family":
            counts["family"] += 1
        elif role in ("host", "admin"):
            counts["hosts"] += 1
        else:
            counts["guests"] += 1
    counts["senior_minutes"] = round(counts["senior_minutes"], 1)
    if log.get("kind") == CALL:
        between = call_between(log, now)
        counts["call_minutes"] = round(between[3] / 60, 1) if between else 0.0
        counts["call_happened"] = between is not None
    kept = {k: log[k] for k in ("id", "kind", "activity_id", "start", "end", "until", "scheduled") if k in log}
    return {**kept, "reduced": True, "counts": counts}
