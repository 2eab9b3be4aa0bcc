"""The coordinator's figures: today's activities, kiosks to visit, seniors to call, trends.

Pure computations over directory records and attendance logs (server/attendance.py) at a
given `now`, so the pages and the tests agree and a test controls the clock. Weeks and
days are Europe/Amsterdam calendar weeks and days (Monday first), DST-safe.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .attendance import (
    ACTIVITY,
    Attendance,
    CALL,
    Occurrence,
    call_between,
    is_present,
    local_day_bounds,
    occurrences_on,
    open_until,
    seconds_in,
)
from .config import Settings
from .directory import Activity, Kiosk, Senior
from .schedule import AMSTERDAM
from .store import Store

# Self-test checks that make a kiosk need a visit, and the words for a coordinator.
ATTENTION_CHECKS = ("camera", "microphone", "speaker", "server", "turn")
PROBLEM_STATUSES = ("failed", "warning")


def local_date(at: float) -> dt.date:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).astimezone(AMSTERDAM).date()


def week_start(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


# --- today -------------------------------------------------------------------------------------


@dataclass
class TodayRow:
    activity: Activity
    occurrence: Occurrence
    enrolled: int
    present: int = 0
    earlier: int = 0
    guests: int = 0

    @property
    def key(self) -> str:
        return self.occurrence.log_id

    def to_json(self) -> dict[str, Any]:
        return {"id": self.key, "enrolled": self.enrolled, "present": self.present, "earlier": self.earlier, "guests": self.guests}


def today_rows(activities: Iterable[Activity], logs: Iterable[dict[str, Any]], now: float) -> list[TodayRow]:
    """Today's occurrences (scheduled, and unscheduled ones someone joined) with who is in
    now and who was in earlier (enrolled seniors by count; guests and family apart)."""
    today = local_date(now)
    by_id = {log["id"]: log for log in logs}
    rows = []
    for activity in activities:
        occurrences = occurrences_on(activity, today)
        day_start, day_end = local_day_bounds(today)
        unscheduled = Occurrence(activity.id, day_start, day_end, False)
        if unscheduled.log_id in by_id:
            occurrences.append(unscheduled)
        for occurrence in occurrences:
            row = TodayRow(activity, occurrence, len(activity.enrolled))
            log = by_id.get(occurrence.log_id)
            for entry in (log or {}).get("members", {}).values():
                if entry.get("role") == "senior":
                    if is_present(entry, log, now):
                        row.present += 1
                    else:
                        row.earlier += 1
                elif entry.get("role") in ("guest", "family"):
                    row.guests += 1
            rows.append(row)
    return sorted(rows, key=lambda r: (r.occurrence.start, r.activity.title.casefold()))


# --- kiosks that need a visit -------------------------------------------------------------------


@dataclass
class KioskAttention:
    kiosk: Kiosk
    senior: Senior | None
    online: bool
    offline_s: float | None
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (check, status, kiosk's own words)


def kiosks_needing_attention(
    kiosks: Iterable[Kiosk], seniors: dict[str, Senior], online: set[str], now: float, offline_after_s: float, lang: str
) -> list[KioskAttention]:
    found = []
    for kiosk in kiosks:
        if kiosk.revoked:
            continue
        is_online = kiosk.id in online
        since = kiosk.last_seen or kiosk.paired_at
        offline_s = None if is_online else max(0.0, now - since)
        problems = []
        result = (kiosk.last_selftest or {}).get("result") if isinstance(kiosk.last_selftest, dict) else None
        checks = result.get("checks") if isinstance(result, dict) else None
        if isinstance(checks, dict):
            for name in ATTENTION_CHECKS:
                check = checks.get(name)
                if isinstance(check, dict) and check.get("status") in PROBLEM_STATUSES:
                    message = check.get("message")
                    words = message.get(lang, "") if isinstance(message, dict) else str(message or "")
                    problems.append((name, check["status"], str(words)[:300]))
        if problems or (offline_s is not None and offline_s > offline_after_s):
            found.append(KioskAttention(kiosk, seniors.get(kiosk.senior_id), is_online, offline_s, problems))
    # Longest offline first, then those with a problem.
    return sorted(found, key=lambda a: (-(a.offline_s or 0), a.kiosk.id))


# --- seniors to call ---------------------------------------------------------------------------------


@dataclass
class ReachOut:
    senior: Senior
    last_engaged: float | None
    called: dict[str, Any] | None


def reach_out_list(
    seniors: Iterable[Senior],
    activities: Iterable[Activity],
    last_engaged: dict[str, float],
    called: dict[str, dict[str, Any]],
    now: float,
    days: int,
) -> list[ReachOut]:
    """Enrolled seniors with no activity and no family call in the last `days` local
    calendar days, oldest first (never seen at the top). Seniors who chose not to be
    named in overviews are left out."""
    enrolled = {senior_id for activity in activities for senior_id in activity.enrolled}
    # Calendar days, not 24-hour blocks: "7 days" is the same on a DST weekend.
    cutoff_day = local_date(now) - dt.timedelta(days=days)
    cutoff = local_day_bounds(cutoff_day)[1]
    found = []
    for senior in seniors:
        if senior.id not in enrolled or not senior.named_overviews:
            continue
        last = last_engaged.get(senior.id)
        if last is not None and last >= cutoff:
            continue
        found.append(ReachOut(senior, last, called.get(senior.id)))
    return sorted(found, key=lambda r: (r.last_engaged or 0.0, r.senior.name.casefold(), r.senior.id))


# --- trends ------------------------------------------------------------------------------------------


@dataclass
class Figures:
    unique_seniors: int = 0
    occurrences: int = 0
    minutes: float = 0.0
    family_calls: int = 0

    def row(self) -> list[Any]:
        return [self.unique_seniors, self.occurrences, round(self.minutes), self.family_calls]


@dataclass
class Trends:
    weeks: list[tuple[dt.date, Figures]]
    activities: list[tuple[Activity | None, str, Figures]]
    districts: list[tuple[str, Figures]]


def summarize_week(week: dt.date, logs: Iterable[dict[str, Any]], now: float) -> dict[str, Any]:
    """One week's attendance in a small JSON form: minutes per senior id (so weeks can be
    combined into unique counts), per activity too, occurrences held (someone was there)
    and family calls that took place. Logs reduced by retention add their counts as
    `extra_*` (their seniors cannot be told apart: each participation counts as one)."""
    summary: dict[str, Any] = {
        "id": week.isoformat(), "occurrences": 0, "family_calls": 0, "minutes": {},
        "extra_participations": 0, "extra_minutes": 0.0, "activities": {},
    }
    for log in logs:
        if week_start(local_date(float(log["start"]))) != week:
            continue
        if log.get("kind") == CALL:
            happened = log["counts"].get("call_happened") if log.get("reduced") else call_between(log, now) is not None
            summary["family_calls"] += bool(happened)
            continue
        if log.get("kind") != ACTIVITY:
            continue
        per_activity = summary["activities"].setdefault(
            log.get("activity_id", ""),
            {"occurrences": 0, "seniors": [], "minutes": 0.0, "extra_participations": 0, "extra_minutes": 0.0},
        )
        if log.get("reduced"):
            counts = log["counts"]
            if counts.get("seniors", 0) + counts.get("guests", 0) + counts.get("family", 0) == 0:
                continue
            for target in (summary, per_activity):
                target["occurrences"] += 1
                target["extra_participations"] += counts.get("seniors", 0)
                target["extra_minutes"] += counts.get("senior_minutes", 0.0)
            continue
        members = log.get("members") or {}
        if not any(e.get("role") in ("senior", "guest", "family") for e in members.values()):
            continue
        summary["occurrences"] += 1
        per_activity["occurrences"] += 1
        for member, entry in members.items():
            if entry.get("role") == "senior":
                minutes = seconds_in(entry, open_until(log, now)) / 60
                summary["minutes"][member] = summary["minutes"].get(member, 0.0) + minutes
                per_activity["minutes"] += minutes
                per_activity["seniors"].append(member)
    # Kept small: a quarter's trends read thirteen of these.
    summary["minutes"] = {m: round(v, 1) for m, v in summary["minutes"].items()}
    for part in summary["activities"].values():
        part["seniors"] = sorted(set(part["seniors"]))
    return summary


def trends(
    summaries: list[dict[str, Any]],
    activities: dict[str, Activity],
    seniors: dict[str, Senior],
    districts: Iterable[str],
) -> Trends:
    """Per week (one summary each, oldest first): unique seniors taking part, occurrences
    held, minutes of participation (seniors), family calls. Per activity and per district
    over the whole period."""
    weeks = []
    district_of = {senior_id: senior.district for senior_id, senior in seniors.items()}
    per_activity: dict[str, tuple[Figures, set[str]]] = {}
    per_district: dict[str, tuple[Figures, set[str]]] = {d: (Figures(), set()) for d in (*districts, "")}
    for summary in summaries:
        weeks.append((
            dt.date.fromisoformat(summary["id"]),
            Figures(
                unique_seniors=len(summary["minutes"]) + summary["extra_participations"],
                occurrences=summary["occurrences"],
                minutes=sum(summary["minutes"].values()) + summary["extra_minutes"],
                family_calls=summary["family_calls"],
            ),
        ))
        for activity_id, part in summary["activities"].items():
            figures, unique = per_activity.setdefault(activity_id, (Figures(), set()))
            figures.occurrences += part["occurrences"]
            figures.minutes += part["minutes"] + part["extra_minutes"]
            figures.unique_seniors += part["extra_participations"]
            unique.update(part["seniors"])
        for member, minutes in summary["minutes"].items():
            figures, unique = per_district.setdefault(district_of.get(member, ""), (Figures(), set()))
            figures.minutes += minutes
            unique.add(member)
    for figures, unique in (*per_activity.values(), *per_district.values()):
        figures.unique_seniors += len(unique)
    return Trends(
        weeks=weeks,
        activities=sorted(
            ((activities.get(a), activities[a].title if a in activities else a, f) for a, (f, _) in per_activity.items()),
            key=lambda item: item[1].casefold(),
        ),
        districts=[(d, f) for d, (f, _) in per_district.items()],
    )


def named_rows(logs: Iterable[dict[str, Any]], activities: dict[str, Activity], seniors: dict[str, Senior], now: float) -> list[list[Any]]:
    """The named export: one row per senior per occurrence, for seniors who may be named."""
    rows = []
    for log in logs:
        if log.get("kind") != ACTIVITY or log.get("reduced"):
            continue
        title = activities[log["activity_id"]].title if log.get("activity_id") in activities else log.get("activity_id", "")
        when = dt.datetime.fromtimestamp(float(log["start"]), dt.timezone.utc).astimezone(AMSTERDAM)
        for member, entry in sorted((log.get("members") or {}).items()):
            senior = seniors.get(member)
            if entry.get("role") != "senior" or senior is None or not senior.named_overviews:
                continue
            first = entry["iv"][0][0]
            joined = dt.datetime.fromtimestamp(first, dt.timezone.utc).astimezone(AMSTERDAM)
            rows.append([when.strftime("%Y-%m-%d %H:%M"), title, senior.id, senior.name, senior.district,
                         joined.strftime("%H:%M"), round(seconds_in(entry, open_until(log, now)) / 60)])
    return rows


# Finished weeks' summaries (summarize_week), kept in the store.
WEEK_SUMMARIES = "attendance_weeks"
# A week counts as finished (its summary never changes) this long after its last
# occurrence could have ended: late leaves, a dead node's reaping and resyncs are done.
WEEK_SETTLE_S = 24 * 3600.0


class WeekSummaries:
    """The trends' source: one summary per week. A finished week's summary is made once
    from its logs and kept in the store (record kind `attendance_weeks`, shared by every
    node); the running week is summarized from its logs on each request. So a quarter's
    trends read 13 small records and one week of logs, not 13 weeks of logs."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def finished(self, week: dt.date, now: float) -> bool:
        end = local_day_bounds(week + dt.timedelta(days=6))[1]
        return end + self.settings.attendance_late_s + WEEK_SETTLE_S <= now

    async def weeks(self, first: dt.date, count: int, now: float) -> list[dict[str, Any]]:
        weeks = [first + dt.timedelta(weeks=i) for i in range(count)]
        found: dict[dt.date, dict[str, Any]] = {}
        for week in weeks:
            if self.finished(week, now):
                stored = await self.store.get_record(WEEK_SUMMARIES, week.isoformat())
                if stored is not None:
                    found[week] = stored
        missing = [w for w in weeks if w not in found]
        if missing:
            start = local_day_bounds(min(missing))[0]
            end = local_day_bounds(max(missing) + dt.timedelta(days=6))[1]
            by_week: dict[dt.date, list[dict[str, Any]]] = {w: [] for w in missing}
            for log in await self.store.attendance_between(start, end):
                week = week_start(local_date(float(log["start"])))
                if week in by_week:
                    by_week[week].append(log)
            for week in missing:
                found[week] = summarize_week(week, by_week[week], now)
                if self.finished(week, now):
                    await self.store.put_record(WEEK_SUMMARIES, week.isoformat(), found[week])
        return [found[w] for w in weeks]

    async def forget_all(self) -> None:
        """After a senior was removed: every summary may name them; made again when needed."""
        for record in await self.store.list_records(WEEK_SUMMARIES):
            await self.store.delete_record(WEEK_SUMMARIES, record["id"])

    async def forget_before(self, cutoff: float) -> int:
        """Retention: summaries hold senior ids, so those of weeks reaching back before the
        cutoff go (they are made again from the reduced, anonymous logs when needed)."""
        last = week_start(local_date(cutoff)) + dt.timedelta(weeks=1)
        gone = 0
        for record in await self.store.list_records(WEEK_SUMMARIES):
            if dt.date.fromisoformat(record["id"]) < last:
                gone += await self.store.delete_record(WEEK_SUMMARIES, record["id"])
        return gone


async def forget_senior(store: Store, settings: Settings, senior_id: str) -> None:
    """A senior is removed: attendance keeps them only as an anonymous member, and their
    reach-out mark and the week summaries (which hold ids) go."""
    await Attendance(settings, store).forget_senior(senior_id)
    await WeekSummaries(store, settings).forget_all()
    await store.delete_record("reach_out", senior_id)
