"""Weekly recurring activity times in Europe/Amsterdam, right across daylight-saving changes.

A schedule says "Tuesdays at 10:00 local time". Occurrences are computed in local wall
time and only then turned into instants, so 10:00 stays 10:00 in winter and in summer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class ScheduleError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class WeeklySlot:
    weekday: int  # 0 = Monday
    start: dt.time  # local wall-clock time
    duration_min: int

    @classmethod
    def parse(cls, weekday: str, start: str, duration_min: int) -> "WeeklySlot":
        day = weekday.strip().lower()
        if day not in WEEKDAYS:
            raise ScheduleError("weekday", f"Unknown weekday '{weekday}'.")
        try:
            hours, minutes = (int(x) for x in start.split(":"))
            start_time = dt.time(hours, minutes)
        except ValueError:
            raise ScheduleError("start", f"Start time '{start}' is not HH:MM.") from None
        if not isinstance(duration_min, int) or not 5 <= duration_min <= 480:
            raise ScheduleError("duration_min", "Duration must be between 5 and 480 minutes.")
        return cls(WEEKDAYS.index(day), start_time, duration_min)

    def to_dict(self) -> dict[str, object]:
        return {
            "weekday": WEEKDAYS[self.weekday],
            "start": self.start.strftime("%H:%M"),
            "duration_min": self.duration_min,
        }

    def occurrence_on(self, day: dt.date) -> dt.datetime:
        """The local start on `day`; a time skipped by the spring change moves forward."""
        naive = dt.datetime.combine(day, self.start)
        local = naive.replace(tzinfo=AMSTERDAM)
        # A wall time inside the spring-forward gap does not exist: normalise through UTC.
        return local.astimezone(dt.timezone.utc).astimezone(AMSTERDAM)

    def next_start(self, after: dt.datetime) -> dt.datetime:
        """The first start whose occurrence has not yet ended at `after` (aware datetime)."""
        if after.tzinfo is None:
            raise ValueError("after must be timezone-aware")
        local_day = after.astimezone(AMSTERDAM).date()
        for offset in range(-1, 8):
            day = local_day + dt.timedelta(days=offset)
            if day.weekday() != self.weekday:
                continue
            start = self.occurrence_on(day)
            # Elapsed time, not wall-clock time: adding to an aware local datetime would
            # add wall time, off by the hour the clock jumps during the activity.
            if start.astimezone(dt.timezone.utc) + dt.timedelta(minutes=self.duration_min) > after:
                return start
        raise AssertionError("a weekly slot always recurs within eight days")


def next_occurrence(slots: list[WeeklySlot], after: dt.datetime) -> tuple[dt.datetime, WeeklySlot] | None:
    """The soonest upcoming (or running) occurrence across slots."""
    found = [(slot.next_start(after), slot) for slot in slots]
    return min(found, key=lambda pair: pair[0]) if found else None
