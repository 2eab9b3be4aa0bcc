"""Attendance: occurrences in Amsterdam time, and stays in the store on both backends.

Store tests take `make_store` (tests/store_support.py): each runs on the embedded backend and
on a real Redis; stores from one factory share their data like a node restarting.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from server.attendance import (
    Attendance,
    anonymous_member,
    call_between,
    occurrence_at,
    occurrences_on,
    reduce_log,
    seconds_in,
)
from server.config import Settings
from server.directory import Activity
from server.schedule import AMSTERDAM
from server.store import Store
from server.store.base import AttendanceLimits, attend_in, depart_in

from tests.store_support import StoreFactory, make_store, redis_server, store  # noqa: F401  (fixtures)

LIMITS = AttendanceLimits(merge_gap_s=300, max_members=5, max_intervals=3)
T0 = dt.datetime(2026, 3, 31, 10, 0, tzinfo=AMSTERDAM).timestamp()  # a Tuesday, summer time


def koffie() -> Activity:
    return Activity(
        id="activity-koffie", title="Koffie",
        slots=[{"weekday": "tuesday", "start": "10:00", "duration_min": 60},
               {"weekday": "sunday", "start": "02:30", "duration_min": 60}],
        enrolled=["senior-a", "senior-b"],
    )


def log(log_id: str = "a:x:2026-03-31T10:00", start: float = T0) -> dict:
    return {"id": log_id, "kind": "activity", "activity_id": "x", "start": start, "end": start + 3600}


# --- occurrences, DST-safe --------------------------------------------------------------------


def test_occurrence_keeps_local_wall_time_across_the_dst_change() -> None:
    activity = koffie()
    winter = dt.date(2026, 3, 24)  # the Tuesday before the clocks go forward
    summer = dt.date(2026, 3, 31)
    (before,) = [o for o in occurrences_on(activity, winter)]
    (after,) = [o for o in occurrences_on(activity, summer)]
    assert dt.datetime.fromtimestamp(before.start, AMSTERDAM).hour == 10
    assert dt.datetime.fromtimestamp(after.start, AMSTERDAM).hour == 10
    # A week apart in wall time is 167 hours apart in elapsed time this week.
    assert after.start - before.start == 167 * 3600
    assert before.log_id == "a:activity-koffie:2026-03-24T10:00"


def test_a_slot_in_the_spring_gap_moves_forward_and_keeps_one_id() -> None:
    # 02:30 on 29 March 2026 does not exist in Amsterdam; it becomes 03:30.
    (gap,) = occurrences_on(koffie(), dt.date(2026, 3, 29))
    assert dt.datetime.fromtimestamp(gap.start, AMSTERDAM).strftime("%H:%M") == "03:30"
    assert occurrence_at(koffie(), gap.start + 60, 1800, 3600).log_id == gap.log_id


def test_joins_around_an_occurrence_belong_to_it_others_to_their_day() -> None:
    activity = koffie()
    early = occurrence_at(activity, T0 - 29 * 60, 1800, 3600)
    late = occurrence_at(activity, T0 + 3600 + 59 * 60, 1800, 3600)
    assert early.log_id == late.log_id == "a:activity-koffie:2026-03-31T10:00" and early.scheduled
    evening = occurrence_at(activity, T0 + 9 * 3600, 1800, 3600)
    assert not evening.scheduled and evening.log_id == "a:activity-koffie:2026-03-31"
    assert evening.end - evening.start == 24 * 3600


def test_the_autumn_day_is_25_hours() -> None:
    activity = Activity(id="x", title="x")
    day = occurrence_at(activity, dt.datetime(2026, 10, 25, 12, tzinfo=AMSTERDAM).timestamp(), 0, 0)
    assert day.end - day.start == 25 * 3600


# --- the merge rules, without a store -------------------------------------------------------------


def test_merge_rules() -> None:
    record = log()
    assert attend_in(record, "senior-a", "senior", T0, LIMITS)
    assert not attend_in(record, "senior-a", "senior", T0 + 10, LIMITS)  # reconnect: already in
    assert depart_in(record, "senior-a", T0 + 100)
    assert not depart_in(record, "senior-a", T0 + 200)  # a second leave changes nothing
    assert attend_in(record, "senior-a", "senior", T0 + 250, LIMITS)  # back within the gap
    assert record["members"]["senior-a"]["iv"] == [[T0]]
    depart_in(record, "senior-a", T0 + 300)
    attend_in(record, "senior-a", "senior", T0 + 1000, LIMITS)  # a real second visit
    depart_in(record, "senior-a", T0 + 1100)
    assert record["members"]["senior-a"]["iv"] == [[T0, T0 + 300], [T0 + 1000, T0 + 1100]]
    assert seconds_in(record["members"]["senior-a"], T0 + 5000) == 400


def test_limits_bound_a_log() -> None:
    record = log()
    for i in range(7):
        attend_in(record, f"m{i}", "guest", T0, LIMITS)
    assert len(record["members"]) == LIMITS.max_members
    for i in range(6):
        attend_in(record, "m0", "guest", T0 + i * 1000, LIMITS)
        depart_in(record, "m0", T0 + i * 1000 + 10)
    assert len(record["members"]["m0"]["iv"]) == LIMITS.max_intervals


# --- the store, both backends -----------------------------------------------------------------------


async def test_reconnects_and_repeated_leaves_never_double_count(make_store: StoreFactory) -> None:
    store = await make_store()
    for _ in range(3):  # a kiosk reconnecting three times without a leave in between
        await store.attend(log(), "senior-a", "senior", T0, LIMITS)
    await store.depart(log()["id"], "senior-a", T0 + 60)
    await store.depart(log()["id"], "senior-a", T0 + 90)
    await store.attend(log(), "senior-a", "senior", T0 + 120, LIMITS)  # back after a network cut
    await store.depart(log()["id"], "senior-a", T0 + 600)
    (stored,) = await store.attendance_between(T0 - 1, T0 + 1)
    assert stored["members"] == {"senior-a": {"role": "senior", "iv": [[T0, T0 + 600]]}}
    assert await store.last_engaged() == {"senior-a": T0 + 600}


async def test_attendance_survives_a_restart(make_store: StoreFactory) -> None:
    first = await make_store()
    await first.attend(log(), "senior-a", "senior", T0, LIMITS)
    await first.close()
    second = await make_store()  # the same data: the embedded file or the same Redis
    await second.attend(log(), "senior-a", "senior", T0 + 5, LIMITS)  # resumed after the restart
    await second.attend(log(), "anon-1", "guest", T0 + 7, LIMITS)
    await second.depart(log()["id"], "senior-a", T0 + 1800)
    (stored,) = await second.attendance_between(T0, T0 + 1)
    assert stored["members"]["senior-a"]["iv"] == [[T0, T0 + 1800]]
    assert stored["members"]["anon-1"] == {"role": "guest", "iv": [[T0 + 7]]}
    assert await second.last_engaged() == {"senior-a": T0 + 1800}


async def test_concurrent_stays_from_two_nodes_are_all_kept(make_store: StoreFactory) -> None:
    a, b = await make_store(), await make_store()
    limits = AttendanceLimits(300, 500, 50)
    await asyncio.gather(
        *(s.attend(log(), f"senior-{i}", "senior", T0 + i, limits) for i in range(40) for s in (a, b))
    )
    await asyncio.gather(*(b.depart(log()["id"], f"senior-{i}", T0 + 100 + i) for i in range(40)))
    (stored,) = await a.attendance_between(T0, T0 + 1)
    assert sorted(stored["members"]) == sorted(f"senior-{i}" for i in range(40))
    assert all(e["iv"] == [[T0 + i, T0 + 100 + i]] for i, e in ((int(m[7:]), e) for m, e in stored["members"].items()))


async def test_range_reads_and_retention_reduce_to_counts(store: Store) -> None:
    older, newer = log("a:x:old", T0 - 400 * 86400), log("a:x:new", T0)
    for record in (older, newer):
        await store.attend(record, "senior-a", "senior", record["start"], LIMITS)
        await store.attend(record, anonymous_member(record["id"], "fam"), "family", record["start"], LIMITS)
        await store.depart(record["id"], "senior-a", record["start"] + 1800)
    assert [r["id"] for r in await store.attendance_between(0, T0 + 1)] == ["a:x:old", "a:x:new"]
    attendance = Attendance(Settings(), store)
    assert await attendance.reduce_older_than(T0 - 365 * 86400, T0) == 1
    assert await attendance.reduce_older_than(T0 - 365 * 86400, T0) == 0  # idempotent
    old, new = await store.attendance_between(0, T0 + 1)
    assert old == {**older, "reduced": True,
                   "counts": {"seniors": 1, "guests": 0, "family": 1, "hosts": 0, "senior_minutes": 30.0}}
    assert "senior-a" not in str(old)
    assert "members" in new
    # A late leave or join of a reduced log changes nothing.
    await store.attend(older, "senior-b", "senior", older["start"] + 5, LIMITS)
    assert (await store.attendance_between(0, T0 - 1))[0] == old


def test_a_family_call_is_the_overlap_of_senior_and_contact() -> None:
    record = {"id": "c:1", "kind": "call", "start": T0, "end": None}
    attend_in(record, "senior-a", "senior", T0, LIMITS)
    attend_in(record, "contact-1", "family", T0 + 30, LIMITS)
    depart_in(record, "contact-1", T0 + 630)
    depart_in(record, "senior-a", T0 + 700)
    assert call_between(record, T0 + 1000) == ("senior-a", "contact-1", T0 + 30, 600)
    reduced = reduce_log(record, T0 + 1000)
    assert reduced["counts"]["call_minutes"] == 10.0 and reduced["counts"]["call_happened"]
    assert "contact-1" not in str(reduced)
    lonely = {"id": "c:2", "kind": "call", "start": T0}
    attend_in(lonely, "senior-a", "senior", T0, LIMITS)
    assert call_between(lonely, T0 + 10) is None


async def test_records_by_id_in_one_call(store: Store) -> None:
    await store.put_record("people", "b", {"id": "b", "kind": "senior", "name": "B"})
    await store.put_record("people", "a", {"id": "a", "kind": "senior", "name": "A"})
    assert await store.get_records("people", ["a", "missing", "b"]) == [
        {"id": "a", "kind": "senior", "name": "A"}, None, {"id": "b", "kind": "senior", "name": "B"}]
    assert await store.get_records("people", []) == []


async def test_a_stay_never_closed_counts_only_until_the_occurrences_window(store: Store) -> None:
    """A lone node crashed with the senior in: nobody records the leave. The stay must
    not grow for ever, and the senior is not "present now" the next day."""
    from server.engagement import summarize_week, today_rows, week_start

    settings = Settings()
    attendance = Attendance(settings, store)
    await attendance.joined("activity-koffie", koffie(), "senior-a", "senior", T0, at=T0)
    (log,) = await store.attendance_between(T0 - 1, T0 + 1)
    assert log["until"] == T0 + 3600 + settings.attendance_late_s
    during = T0 + 1800
    assert seconds_in(log["members"]["senior-a"], during) == 1800
    later = T0 + 30 * 86400
    week = week_start(dt.datetime.fromtimestamp(T0, AMSTERDAM).date())
    assert summarize_week(week, [log], later)["minutes"] == {"senior-a": 120.0}  # 60 min + the late hour
    assert reduce_log(log, later)["counts"]["senior_minutes"] == 120.0
    (row,) = [r for r in today_rows([koffie()], [log], during) if r.key == log["id"]]
    assert row.present == 1
    (row,) = [r for r in today_rows([koffie()], [log], T0 + 3 * 3600) if r.key == log["id"]]
    assert row.present == 0


async def test_forgetting_a_seniors_last_engagement(store: Store) -> None:
    await store.attend(log(), "senior-a", "senior", T0, LIMITS)
    await store.attend(log(), "senior-b", "senior", T0 + 1, LIMITS)
    await store.forget_engaged("senior-a")
    await store.forget_engaged("senior-nobody")
    assert await store.last_engaged() == {"senior-b": T0 + 1}
