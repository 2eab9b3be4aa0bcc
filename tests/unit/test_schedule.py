"""Weekly activity times in Europe/Amsterdam across the daylight-saving changes of 2026 and 2027.

The changes: summer time starts Sunday 29 March 2026 and 28 March 2027 (02:00 → 03:00),
and ends Sunday 25 October 2026 and 31 October 2027 (03:00 → 02:00).
"""

from __future__ import annotations

import datetime as dt

import pytest

from server.directory import Activity, DirectoryError
from server.schedule import AMSTERDAM, ScheduleError, WeeklySlot, next_occurrence

UTC = dt.timezone.utc
CET = dt.timedelta(hours=1)
CEST = dt.timedelta(hours=2)
CHANGES = {
    # date of the change: (offset the week before, offset the week after)
    dt.date(2026, 3, 29): (CET, CEST),
    dt.date(2026, 10, 25): (CEST, CET),
    dt.date(2027, 3, 28): (CET, CEST),
    dt.date(2027, 10, 31): (CEST, CET),
}


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def weekly(slot: WeeklySlot, after: dt.datetime, count: int) -> list[dt.datetime]:
    """`count` consecutive occurrences, each found by asking for the next after the last."""
    found = []
    for _ in range(count):
        start = slot.next_start(after)
        found.append(start)
        after = start + dt.timedelta(minutes=slot.duration_min, seconds=1)
    return found


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_sunday_morning_keeps_its_wall_clock_time_across_each_change(change: dt.date) -> None:
    before, after = CHANGES[change]
    slot = WeeklySlot.parse("sunday", "10:00", 60)
    starts = weekly(slot, dt.datetime.combine(change - dt.timedelta(days=8), dt.time(12), UTC), 3)
    # The Sunday before, the day of the change itself, the Sunday after.
    assert [s.date() for s in starts] == [change - dt.timedelta(days=7), change, change + dt.timedelta(days=7)]
    assert all(s.strftime("%H:%M") == "10:00" and s.tzinfo is not None for s in starts)
    assert [s.utcoffset() for s in starts] == [before, after, after]
    # In UTC the activity moves by an hour; a week between them is 7 days ± 1 hour.
    in_utc = [s.astimezone(UTC) for s in starts]
    assert in_utc[1] - in_utc[0] == dt.timedelta(days=7) + (before - after)
    assert in_utc[2] - in_utc[1] == dt.timedelta(days=7)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_tuesday_before_and_after_each_change(change: dt.date) -> None:
    before, after = CHANGES[change]
    slot = WeeklySlot.parse("Tuesday", "10:00", 90)
    tuesday_before = change - dt.timedelta(days=5)
    tuesday_after = change + dt.timedelta(days=2)
    starts = weekly(slot, dt.datetime.combine(tuesday_before, dt.time(0), AMSTERDAM), 2)
    assert [s.date() for s in starts] == [tuesday_before, tuesday_after]
    assert [s.astimezone(UTC).time() for s in starts] == [
        (dt.datetime.combine(tuesday_before, dt.time(10)) - before).time(),
        (dt.datetime.combine(tuesday_after, dt.time(10)) - after).time(),
    ]


def test_a_whole_year_of_tuesdays_stays_at_ten_and_switches_offset_on_the_right_days() -> None:
    slot = WeeklySlot.parse("tuesday", "10:00", 60)
    starts = weekly(slot, utc(2026, 1, 1), 104)  # through the end of 2027
    assert starts[0].date() == dt.date(2026, 1, 6)
    assert starts[-1].date() == dt.date(2027, 12, 28)
    assert all(s.weekday() == 1 and s.strftime("%H:%M") == "10:00" for s in starts)
    # Elapsed time between two Tuesdays: a week, or a week minus/plus the hour the clock
    # jumped in between — exactly where the offset changed.
    for a, b in zip(starts, starts[1:]):
        elapsed = b.astimezone(UTC) - a.astimezone(UTC)
        assert elapsed == dt.timedelta(days=7) + (a.utcoffset() - b.utcoffset()), (a, b)
    switches = [b.date() for a, b in zip(starts, starts[1:]) if a.utcoffset() != b.utcoffset()]
    # The first Tuesday after each change.
    assert switches == [dt.date(2026, 3, 31), dt.date(2026, 10, 27), dt.date(2027, 3, 30), dt.date(2027, 11, 2)]


def _half_past_two_on(day: dt.date, shown: str, utc: dt.time) -> tuple[WeeklySlot, dt.datetime]:
    """A Sunday 02:30 slot's occurrence on the night of a clock change: `shown` local summer time, `utc` UTC."""
    slot = WeeklySlot.parse("sunday", "02:30", 30)
    start = slot.occurrence_on(day)
    assert start.strftime("%H:%M") == shown and start.utcoffset() == CEST
    assert start.astimezone(UTC) == dt.datetime.combine(day, utc, UTC)
    return slot, start


@pytest.mark.parametrize("day", [dt.date(2026, 3, 29), dt.date(2027, 3, 28)])
def test_a_time_skipped_in_spring_moves_forward_by_the_gap(day: dt.date) -> None:
    # 02:30 does not exist that night; the activity starts at 03:30 summer time, which is
    # 01:30 UTC — the instant 02:30 would have been without the change.
    slot, start = _half_past_two_on(day, shown="03:30", utc=dt.time(1, 30))
    assert slot.next_start(dt.datetime.combine(day, dt.time(0), UTC)) == start


@pytest.mark.parametrize("day", [dt.date(2026, 10, 25), dt.date(2027, 10, 31)])
def test_a_time_repeated_in_autumn_happens_once_at_its_first_occurrence(day: dt.date) -> None:
    slot, start = _half_past_two_on(day, shown="02:30", utc=dt.time(0, 30))
    # Once it is over, the next one is a week later — not the second 02:30 an hour on.
    after_first = start + dt.timedelta(minutes=31)
    following = slot.next_start(after_first)
    assert following.date() == day + dt.timedelta(days=7)


@pytest.mark.parametrize("day", [dt.date(2026, 10, 25), dt.date(2027, 10, 31), dt.date(2026, 3, 29)])
def test_an_activity_over_the_change_lasts_its_real_duration(day: dt.date) -> None:
    # 01:30 local, two hours: the clock change happens while it runs.
    slot = WeeklySlot.parse("sunday", "01:30", 120)
    start = slot.occurrence_on(day)
    end = start.astimezone(UTC) + dt.timedelta(minutes=120)
    just_before_end = end - dt.timedelta(minutes=1)
    just_after_end = end + dt.timedelta(minutes=1)
    assert slot.next_start(just_before_end) == start, "still running one minute before its end"
    assert slot.next_start(just_after_end).date() == day + dt.timedelta(days=7)


def test_a_running_activity_is_the_next_one_until_it_ends() -> None:
    slot = WeeklySlot.parse("wednesday", "14:00", 60)
    start = slot.occurrence_on(dt.date(2026, 10, 28))
    assert slot.next_start(start + dt.timedelta(minutes=59)) == start
    assert slot.next_start(start + dt.timedelta(minutes=60)).date() == dt.date(2026, 11, 4)


def test_next_occurrence_picks_the_soonest_slot_across_a_change() -> None:
    slots = [WeeklySlot.parse("tuesday", "10:00", 60), WeeklySlot.parse("friday", "15:30", 45)]
    # Saturday before the autumn change of 2026.
    start, slot = next_occurrence(slots, utc(2026, 10, 24, 12))
    assert start == dt.datetime(2026, 10, 27, 10, 0, tzinfo=AMSTERDAM) and slot is slots[0]
    assert start.utcoffset() == CET
    start, slot = next_occurrence(slots, utc(2026, 10, 28, 12))
    assert start == dt.datetime(2026, 10, 30, 15, 30, tzinfo=AMSTERDAM) and slot is slots[1]
    assert next_occurrence([], utc(2026, 1, 1)) is None


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError):
        WeeklySlot.parse("monday", "09:00", 30).next_start(dt.datetime(2026, 3, 29, 12))


@pytest.mark.parametrize(
    ("weekday", "start", "duration", "field"),
    [
        ("funday", "10:00", 60, "weekday"),
        ("monday", "25:00", 60, "start"),
        ("monday", "10h", 60, "start"),
        ("monday", "10:00", 4, "duration_min"),
        ("monday", "10:00", 481, "duration_min"),
    ],
)
def test_bad_slots_name_the_field(weekday: str, start: str, duration: int, field: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        WeeklySlot.parse(weekday, start, duration)
    assert caught.value.field == field


def test_activity_records_store_slots_normalised_and_refuse_bad_ones() -> None:
    activity = Activity(id="a", title="Stoelgym", slots=[{"weekday": "Tuesday", "start": "9:05", "duration_min": 45}])
    activity.validate()
    assert activity.slots == [{"weekday": "tuesday", "start": "09:05", "duration_min": 45}]
    assert activity.weekly_slots[0].occurrence_on(dt.date(2027, 3, 30)).utcoffset() == CEST
    bad = Activity(id="b", title="Bingo", slots=[{"weekday": "tuesday", "start": "late", "duration_min": 45}])
    with pytest.raises(DirectoryError) as caught:
        bad.validate()
    assert caught.value.field == "slots.start"
