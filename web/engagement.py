"""The coordinator's engagement pages: "Vandaag" (the start page of /admin), trends, exports.

- `/admin`: today's activities with enrolled / present now / joined earlier (kept current
  by `web/static/today.js` polling `/admin/today.json`), kiosks that need a visit, and the
  reach-out list with a "called" mark whose note goes into the audit log.
- `/admin/trends`: per week, activity and district, as SVG bar charts with the same
  figures in tables; `/admin/trends.csv` the aggregated figures (no names).
- `POST /admin/export/named`: attendance by name (seniors who agreed to be named only),
  recorded in the audit log.

Figures come from server/engagement.py at the app's clock (ENGAGEMENT_CLOCK), so tests
control time. Every route is for coordinators only.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, STORE_KEY
from server.attendance import Attendance, local_day_bounds
from server.directory import DISTRICTS, MAX_TEXT, Activity, Directory, Kiosk, Senior
from server.engagement import (
    WeekSummaries,
    kiosks_needing_attention,
    local_date,
    named_rows,
    reach_out_list,
    today_rows,
    trends,
    week_start,
)
from server.store import StoreUnavailable
from server.tasks import TaskOwner

from .admin import SELFTEST_STATUS, SELFTEST_TITLES
from .auth import current_account, form, require
from .charts import bar_chart, horizontal_bar_chart
from .i18n import N_, gettext_for, language_of
from .rendering import SECURITY_HEADERS, redirect, render

coordinator = require("coordinator")
logger = logging.getLogger(__name__)

ENGAGEMENT_CLOCK = web.AppKey("engagement_clock", Callable[[], float])
MAX_WEEKS = 53
NO_DISTRICT = N_("No district filled in")


def _now(request: web.Request) -> float:
    return request.app[ENGAGEMENT_CLOCK]()


def _dir(request: web.Request) -> Directory:
    return request.app[DIRECTORY_KEY]


async def _today(request: web.Request, now: float) -> list[Any]:
    store = request.app[STORE_KEY]
    settings = request.app[SETTINGS_KEY]
    day_start, day_end = local_day_bounds(local_date(now))
    logs = await store.attendance_between(day_start - settings.attendance_early_s, day_end)
    return today_rows(await _dir(request).list(Activity), logs, now)


# --- Vandaag ---------------------------------------------------------------------------------


@coordinator
async def today(request: web.Request) -> web.Response:
    now = _now(request)
    directory = _dir(request)
    store = request.app[STORE_KEY]
    settings = request.app[SETTINGS_KEY]
    lang = language_of(request)
    seniors = {s.id: s for s in await directory.list(Senior)}
    activities = await directory.list(Activity)
    kiosks = [k for k in await directory.list(Kiosk) if not k.revoked]
    online = {key[len("kiosk:"):] for key in await store.present_among([f"kiosk:{k.id}" for k in kiosks])}
    return render(
        request,
        "admin/today.html",
        day=local_date(now),
        rows=await _today(request, now),
        attention=kiosks_needing_attention(kiosks, seniors, online, now, settings.kiosk_attention_offline_s, lang),
        reach_out=await _reach_out(request, seniors.values(), activities, now),
        reach_out_shown=settings.reach_out_on_today,
        reach_out_days=settings.reach_out_days,
        offline_hours=round(settings.kiosk_attention_offline_s / 3600),
        check_titles=SELFTEST_TITLES,
        check_status=SELFTEST_STATUS,
        poll_ms=int(settings.today_poll_s * 1000),
        now=now,
    )


async def _reach_out(request: web.Request, seniors: Any, activities: list[Activity], now: float) -> list[Any]:
    store = request.app[STORE_KEY]
    called = {r["id"]: r for r in await store.list_records("reach_out")}
    days = request.app[SETTINGS_KEY].reach_out_days
    return reach_out_list(seniors, activities, await store.last_engaged(), called, now, days)


@coordinator
async def reach_out_page(request: web.Request) -> web.Response:
    """The whole list, in pages: nobody calls hundreds of people in one morning, and a
    page of a few dozen stays quick with thousands of seniors."""
    directory = _dir(request)
    now = _now(request)
    everyone = await _reach_out(request, await directory.list(Senior), await directory.list(Activity), now)
    size = request.app[SETTINGS_KEY].reach_out_page_size
    pages = max(1, -(-len(everyone) // size))
    raw = request.query.get("page", "1")
    page = min(int(raw), pages) if raw.isdigit() and int(raw) >= 1 else 1
    return render(
        request,
        "admin/reach_out.html",
        reach_out=everyone[(page - 1) * size : page * size],
        total=len(everyone),
        page=page,
        pages=pages,
        reach_out_days=request.app[SETTINGS_KEY].reach_out_days,
    )


@coordinator
async def today_json(request: web.Request) -> web.Response:
    now = _now(request)
    rows = await _today(request, now)
    return web.json_response(
        {"at": now, "activities": [row.to_json() for row in rows]},
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@coordinator
async def reach_out_called(request: web.Request) -> web.Response:
    directory = _dir(request)
    senior = await directory.get(Senior, request.match_info["senior_id"])
    if senior is None:
        raise web.HTTPNotFound()
    data = form(request)
    note = " ".join(str(data.get("note", "")).split())[:MAX_TEXT]
    account = current_account(request)
    await request.app[STORE_KEY].put_record(
        "reach_out", senior.id, {"id": senior.id, "at": _now(request), "by": account.name, "note": note}
    )
    await directory.audit(account.id, "called", "people", senior.id, [], note=note)
    request["session"]["flash"] = N_("Noted: called.")
    page = str(data.get("page", ""))
    back = f"/admin/reach-out?page={page}" if data.get("from") == "list" and page.isdigit() else "/admin"
    return redirect(f"{back}#reach-out-{senior.id}")


# --- trends ----------------------------------------------------------------------------------


def _weeks(request: web.Request) -> int:
    raw = request.query.get("weeks", "")
    default = request.app[SETTINGS_KEY].trend_weeks
    if raw.isdigit() and 1 <= int(raw) <= MAX_WEEKS:
        return int(raw)
    return default


async def _trends(request: web.Request, weeks: int) -> Any:
    now = _now(request)
    directory = _dir(request)
    first = week_start(local_date(now)) - dt.timedelta(weeks=weeks - 1)
    summaries = await WeekSummaries(request.app[STORE_KEY], request.app[SETTINGS_KEY]).weeks(first, weeks, now)
    activities = {a.id: a for a in await directory.list(Activity)}
    seniors = {s.id: s for s in await directory.list(Senior)}
    return trends(summaries, activities, seniors, DISTRICTS)


def _week_label(week: dt.date) -> str:
    return f"{week.isocalendar().week}"


@coordinator
async def trends_page(request: web.Request) -> web.Response:
    weeks = _weeks(request)
    figures = await _trends(request, weeks)
    _ = gettext_for(language_of(request))
    labels = [_week_label(w) for w, _f in figures.weeks]
    first, last = figures.weeks[0][0], figures.weeks[-1][0]
    period = _("weeks %(first)s to %(last)s (%(start)s – %(end)s)", first=labels[0], last=labels[-1],
               start=first.strftime("%d-%m-%Y"), end=(last + dt.timedelta(days=6)).strftime("%d-%m-%Y"))
    series = [
        ("seniors", _("Seniors taking part per week"), [f.unique_seniors for _w, f in figures.weeks]),
        ("occurrences", _("Activities held per week"), [f.occurrences for _w, f in figures.weeks]),
        ("minutes", _("Minutes of participation per week"), [round(f.minutes) for _w, f in figures.weeks]),
        ("calls", _("Family calls per week"), [f.family_calls for _w, f in figures.weeks]),
    ]
    charts = []
    for key, title, values in series:
        description = _(
            "Bar chart, %(period)s. Lowest %(low)s, highest %(high)s, total %(total)s. The table below has every week.",
            period=period, low=min(values), high=max(values), total=sum(values),
        )
        charts.append(bar_chart(f"chart-{key}", title, description, labels, values))
    activity_chart = horizontal_bar_chart(
        "chart-activity", _("Seniors taking part per activity"),
        _("Bar chart, %(period)s: the number of different seniors per activity. The table below has the figures.", period=period),
        [title for _a, title, _f in figures.activities], [f.unique_seniors for _a, _t, f in figures.activities],
    )
    district_names = [d or _(NO_DISTRICT) for d, _f in figures.districts]
    district_chart = horizontal_bar_chart(
        "chart-district", _("Seniors taking part per district"),
        _("Bar chart, %(period)s: the number of different seniors per district. The table below has the figures.", period=period),
        district_names, [f.unique_seniors for _d, f in figures.districts],
    )
    return render(
        request,
        "admin/trends.html",
        weeks=weeks,
        period=period,
        figures=figures,
        charts=charts,
        week_labels=labels,
        activity_chart=activity_chart,
        district_chart=district_chart,
        district_names=district_names,
        week_choices=(4, 13, 26, 52),
    )


def _csv_response(rows: list[list[Any]], filename: str) -> web.Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        # A cell that starts like a formula is never run by a spreadsheet.
        writer.writerow([f"'{c}" if isinstance(c, str) and c[:1] in ("=", "+", "-", "@") else c for c in row])
    return web.Response(
        text=buffer.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'},
    )


@coordinator
async def trends_csv(request: web.Request) -> web.Response:
    weeks = _weeks(request)
    figures = await _trends(request, weeks)
    rows: list[list[Any]] = [["section", "week_start", "name", "unique_seniors", "occurrences", "minutes", "family_calls"]]
    for week, f in figures.weeks:
        rows.append(["week", week.isoformat(), f"{week.isocalendar().year}-W{week.isocalendar().week:02d}", *f.row()])
    for _activity, title, f in figures.activities:
        rows.append(["activity", "", title, *f.row()])
    for district, f in figures.districts:
        rows.append(["district", "", district, *f.row()])
    return _csv_response(rows, f"verzilvering-figures-{weeks}-weeks.csv")


@coordinator
async def named_export(request: web.Request) -> web.Response:
    data = form(request)
    raw = str(data.get("weeks", ""))
    weeks = int(raw) if raw.isdigit() and 1 <= int(raw) <= MAX_WEEKS else request.app[SETTINGS_KEY].trend_weeks
    now = _now(request)
    directory = _dir(request)
    first = week_start(local_date(now)) - dt.timedelta(weeks=weeks - 1)
    logs = await request.app[STORE_KEY].attendance_between(local_day_bounds(first)[0], now + 1)
    activities = {a.id: a for a in await directory.list(Activity)}
    seniors = {s.id: s for s in await directory.list(Senior)}
    rows: list[list[Any]] = [["occurrence", "activity", "senior_id", "senior", "district", "joined", "minutes"]]
    rows += named_rows(logs, activities, seniors, now)
    await _dir(request).audit(current_account(request).id, "export", "attendance", f"{weeks} weeks", [])
    return _csv_response(rows, f"verzilvering-attendance-named-{weeks}-weeks.csv")


# --- retention -------------------------------------------------------------------------------


async def _retention(app: web.Application) -> AsyncIterator[None]:
    """Every `attendance_retention_interval_s` (hourly), one node at a time (a store lock):
    logs older than the retention period keep only anonymous counts."""

    # A stop flag as well as the cancel: a cancel that lands inside a Redis command can
    # come back as a connection error (StoreUnavailable), which the loop survives by design.
    stopping = asyncio.Event()

    async def run() -> None:
        while not stopping.is_set():
            try:
                store = app[STORE_KEY]
                settings = app[SETTINGS_KEY]
                interval = settings.attendance_retention_interval_s
                if await store.acquire_lock("attendance-retention", interval / 2):
                    now = app[ENGAGEMENT_CLOCK]()
                    cutoff = now - settings.attendance_retention_days * 86400
                    await Attendance(settings, store).reduce_older_than(cutoff, now)
                    await WeekSummaries(store, settings).forget_before(cutoff)
            except StoreUnavailable:
                logger.warning("store unavailable: attendance retention postponed")
            except Exception:
                logger.exception("attendance retention failed; trying again next round")
            try:
                await asyncio.wait_for(stopping.wait(), app[SETTINGS_KEY].attendance_retention_interval_s)
            except asyncio.TimeoutError:
                pass

    tasks = TaskOwner("engagement")
    tasks.spawn(run(), name="attendance-retention")
    yield
    stopping.set()
    await tasks.close()


def setup(app: web.Application) -> None:
    app[ENGAGEMENT_CLOCK] = time.time
    app.cleanup_ctx.append(_retention)
    r = app.router
    r.add_get("/admin", today)
    r.add_get("/admin/today.json", today_json)
    r.add_get("/admin/reach-out", reach_out_page)
    r.add_post("/admin/reach-out/{senior_id}/called", reach_out_called)
    r.add_get("/admin/trends", trends_page)
    r.add_get("/admin/trends.csv", trends_csv)
    r.add_post("/admin/export/named", named_export)
