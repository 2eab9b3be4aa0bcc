"""Time for the kiosk, injectable so tests can move it: wall time for the schedule, a
monotonic reading for short timers (countdowns, ringing), both moved together by `FakeClock`."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol
from zoneinfo import ZoneInfo

# The kiosks are in Almere: show Dutch local time even when the device's own zone is UTC.
DEFAULT_TIMEZONE = ZoneInfo("Europe/Amsterdam")


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """An aware datetime."""

    def monotonic(self) -> float:
        """Seconds; only differences mean anything."""


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._now = start
        self._mono = 1000.0

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds

    def set(self, when: dt.datetime) -> None:
        """Jumps wall time (and the monotonic reading by the same amount, if forward)."""
        delta = (when - self._now).total_seconds()
        self._now = when
        if delta > 0:
            self._mono += delta
