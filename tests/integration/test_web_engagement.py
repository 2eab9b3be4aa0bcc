"""The coordinator's "Vandaag", reach-out list, trends and exports, on a clock the test sets.

The real app with the embedded store; attendance is recorded through the store exactly as
the signalling service records it (Attendance.joined / left), at chosen instants.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, STORE_KEY
from server.attendance import Attendance
from server.directory import Activity, Directory, Kiosk, Senior
from server.engagement import reach_out_list
from server.schedule import AMSTERDAM
from web.engagement import ENGAGEMENT_CLOCK

from tests.conftest import make_settings
from tests.web_helpers import Web, seed, text_of


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, at: dt.datetime) -> None:
        self.now = at.timestamp()


def local(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=AMSTERDAM)


# Tuesday 31 March 2026, two days after the clocks went forward.
MORNING = local(2026, 3, 31, 9, 0)
KOFFIE = Activity(
    id="activity-koffie", title="Koffieochtend", enrolled=["senior-a", "senior-b", "senior-c"],
    slots=[{"weekday": "tuesday", "start": "10:00", "duration_min": 60}],
)


@pytest.fixture
async def coordinator(tmp_path: Path, aiohttp_client: Any) -> tuple[Web, Any, Clock]:
    app = create_app(make_settings(tmp_path))
    clock = Clock(MORNING)
    app[ENGAGEMENT_CLOCK] = clock
    client: TestClient = await aiohttp_client(app)
    await seed(app)
    directory: Directory = app[DIRECTORY_KEY]
    for sid, name, district, phone, named in (
        ("senior-a", "Aaltje", "Almere Haven", "036 123 4567", True),
        ("senior-b", "Bep", "Almere Buiten", "", True),
        ("senior-c", "Cor", "", "", False),
    ):
        await directory.put(Senior(id=sid, name=name, district=district, phone=phone, named_overviews=named), actor="test")
    await directory.put(KOFFIE, actor="test")
    web = Web(client)
    assert (await web.login("carla")).status == 303
    return web, app, clock


async def _stay(app: Any, senior: str, start: dt.datetime, end: dt.datetime | None, role: str = "senior") -> None:
    attendance = Attendance(app[SETTINGS_KEY], app[STORE_KEY])
    await attendance.joined(KOFFIE.id, KOFFIE, senior, role, start.timestamp(), at=start.timestamp())
    if end is not None:
        await attendance.left(KOFFIE.id, KOFFIE, senior, role, start.timestamp(), at=end.timestamp())


async def test_today_shows_enrolled_present_and_earlier_and_the_json_follows(coordinator: tuple[Web, Any, Clock]) -> None:
    web, app, clock = coordinator
    page = await web.get("/admin")
    assert 'data-occurrence="a:activity-koffie:2026-03-31T10:00"' in page
    assert "Koffieochtend" in text_of(page) and "10:00" in text_of(page)
    assert 'src="/static/today.js"' in page
    clock.set(local(2026, 3, 31, 10, 5))
    await _stay(app, "senior-a", local(2026, 3, 31, 9, 58), None)
    await _stay(app, "senior-b", local(2026, 3, 31, 10, 0), local(2026, 3, 31, 10, 3))
    await _stay(app, "guest-1", local(2026, 3, 31, 10, 1), None, role="family")
    data = json.loads(await web.get("/admin/today.json"))
    (row,) = [r for r in data["activities"] if r["id"] == "a:activity-koffie:2026-03-31T10:00"]
    assert row == {"id": "a:activity-koffie:2026-03-31T10:00", "enrolled": 3, "present": 1, "earlier": 1, "guests": 1}
    assert "guest-1" not in json.dumps(data)


async def test_reach_out_list_oldest_first_with_phone_and_called_note_in_audit(coordinator: tuple[Web, Any, Clock]) -> None:
    web, app, clock = coordinator
    # Aaltje took part on Sunday 22 March (winter time), Bep on Wednesday 25 March; Cor never
    # but asked not to be named; Oma Riet (seeded, enrolled) never.
    await _stay(app, "senior-a", local(2026, 3, 22, 10, 0), local(2026, 3, 22, 11, 0))
    await _stay(app, "senior-b", local(2026, 3, 25, 10, 0), local(2026, 3, 25, 11, 0))
    page = text_of(await web.get("/admin"))
    section = page[page.index("Senioren om te bellen"):]
    assert "Cor" not in section
    assert section.index("Oma Riet") < section.index("Aaltje")
    assert "036 123 4567" in section
    assert "Bep" not in section  # six calendar days ago: within the 7 days
    # A week later Bep shows up too, after Aaltje (older first).
    clock.set(local(2026, 4, 2, 9, 0))
    section = text_of(await web.get("/admin"))
    section = section[section.index("Senioren om te bellen"):]
    assert section.index("Oma Riet") < section.index("Aaltje") < section.index("Bep")
    # "Gebeld" with a note: shown on the list and written to the audit log.
    response = await web.post("/admin/reach-out/senior-a/called", {"note": "Was  ziek, komt volgende week weer"})
    assert response.status == 303
    page = text_of(await web.get("/admin"))
    assert "Gebeld op 02-04-2026 09:00 door Carla Coördinator: Was ziek, komt volgende week weer" in page
    audit = text_of(await web.get("/admin/audit"))
    assert "Was ziek, komt volgende week weer" in audit and "belde" in audit
    assert (await web.post("/admin/reach-out/senior-nobody/called", {"note": "x"})).status == 404


def test_reach_out_counts_calendar_days_across_the_autumn_change() -> None:
    senior = Senior(id="s", name="S")
    activity = Activity(id="a", title="A", enrolled=["s"])
    # Last seen Sunday 18 Oct 2026 23:30; the clocks go back on 25 Oct (a 25-hour day).
    # Seven calendar days later is 25 Oct from midnight, though 168 hours are only up at 22:30.
    last = local(2026, 10, 18, 23, 30).timestamp()
    within = local(2026, 10, 24, 23, 59).timestamp()
    after = local(2026, 10, 25, 0, 1).timestamp()
    assert reach_out_list([senior], [activity], {"s": last}, {}, within, 7) == []
    assert [r.senior.id for r in reach_out_list([senior], [activity], {"s": last}, {}, after, 7)] == ["s"]


async def test_kiosks_needing_a_visit_in_plain_words(coordinator: tuple[Web, Any, Clock]) -> None:
    web, app, clock = coordinator
    directory: Directory = app[DIRECTORY_KEY]
    selftest = {"at": MORNING.timestamp(), "result": {"ok": False, "checks": {
        "camera": {"status": "failed", "message": {"nl": "Geen beeld van de camera.", "en": "No picture."}},
        "speaker": {"status": "ok", "message": {"nl": "", "en": ""}},
    }}}
    await directory.put(Kiosk(id="kiosk-1", senior_id="senior-a", last_seen=MORNING.timestamp() - 3 * 86400,
                              software_version="0.1.0"), actor="test")
    await directory.put(Kiosk(id="kiosk-2", senior_id="senior-b", last_seen=MORNING.timestamp() - 600,
                              last_selftest=selftest), actor="test")
    await directory.put(Kiosk(id="kiosk-3", senior_id="senior-c", last_seen=MORNING.timestamp() - 600), actor="test")
    page = text_of(await web.get("/admin"))
    section = page[page.index("Kiosken die een bezoek nodig hebben"):page.index("Senioren om te bellen")]
    assert "Aaltje" in section and "Al 3 dagen offline." in section and "0.1.0" in section
    assert "Bep" in section and "Camera: werkt niet — Geen beeld van de camera." in section
    assert "Cor" not in section  # offline for ten minutes only, self-test fine


async def test_trends_csv_and_named_export(coordinator: tuple[Web, Any, Clock]) -> None:
    web, app, clock = coordinator
    for week in range(3):
        day = local(2026, 3, 17, 10, 0) + dt.timedelta(weeks=week)
        await _stay(app, "senior-a", day, day + dt.timedelta(minutes=45))
        if week:
            await _stay(app, "senior-c", day, day + dt.timedelta(minutes=30))
    clock.set(local(2026, 4, 1, 12, 0))
    page = await web.get("/admin/trends?weeks=4")
    assert page.count('role="img"') == 6 and page.count("<title id=") == 6 and page.count("<desc id=") == 6
    text = text_of(page)
    assert "week 14 (30-03-2026) 2 1 75 0" in text  # two seniors, one occurrence, 45 + 30 minutes
    assert "Almere Haven 1 135" in text
    assert "Aaltje" not in text
    response = await web.client.get("/admin/trends.csv?weeks=4")
    assert response.status == 200 and response.content_type == "text/csv"
    rows = list(csv.reader(io.StringIO(await response.text())))
    assert rows[0] == ["section", "week_start", "name", "unique_seniors", "occurrences", "minutes", "family_calls"]
    assert ["week", "2026-03-30", "2026-W14", "2", "1", "75", "0"] in rows
    assert ["activity", "", "Koffieochtend", "2", "3", "195", "0"] in rows
    assert not any("Aaltje" in cell or "senior-a" in cell for row in rows for cell in row)
    # The named export: coordinators only, audited, and Cor (not to be named) left out.
    response = await web.post("/admin/export/named", {"weeks": "4"})
    assert response.status == 200
    named = list(csv.reader(io.StringIO(await response.text())))
    assert [r[3] for r in named[1:]] == ["Aaltje"] * 3
    assert "Cor" not in str(named)
    assert "exporteerde" in text_of(await web.get("/admin/audit"))
    volunteer = Web(web.client)
    await web.client.post("/logout", data={"csrf_token": await web.csrf()})
    assert (await volunteer.login("victor")).status == 303
    for path in ("/admin", "/admin/trends", "/admin/trends.csv", "/admin/today.json"):
        assert (await web.client.get(path, allow_redirects=False)).status == 403


async def test_retention_reduces_old_logs_on_the_apps_clock(coordinator: tuple[Web, Any, Clock]) -> None:
    web, app, clock = coordinator
    await _stay(app, "senior-a", local(2025, 3, 25, 10, 0), local(2025, 3, 25, 11, 0))
    await _stay(app, "senior-a", local(2026, 3, 24, 10, 0), local(2026, 3, 24, 11, 0))
    attendance = Attendance(app[SETTINGS_KEY], app[STORE_KEY])
    cutoff = clock() - app[SETTINGS_KEY].attendance_retention_days * 86400
    assert await attendance.reduce_older_than(cutoff, clock()) == 1
    old, new = await app[STORE_KEY].attendance_between(0, clock())
    assert old["reduced"] and old["counts"]["seniors"] == 1 and old["counts"]["senior_minutes"] == 60.0
    assert "senior-a" not in json.dumps(old) and "senior-a" in json.dumps(new)


async def test_vandaag_shows_the_first_of_a_long_reach_out_list_and_links_the_rest(coordinator: tuple[Web, Any, Clock]) -> None:
    web, app, clock = coordinator
    directory: Directory = app[DIRECTORY_KEY]
    many = Activity(id="activity-many", title="Veel", capacity=100, enrolled=[f"senior-{i:02d}" for i in range(30)])
    for i in range(30):
        await directory.put(Senior(id=f"senior-{i:02d}", name=f"Senior {i:02d}"), actor="test")
    await directory.put(many, actor="test")
    shown = app[SETTINGS_KEY].reach_out_on_today
    page = await web.get("/admin")
    assert page.count('class="person" id="reach-out-') == shown
    assert "Alle 33 senioren om te bellen" in text_of(page)  # 30 + Aaltje, Bep, Oma Riet
    full = await web.get("/admin/reach-out")
    assert full.count('class="person" id="reach-out-') == 33
    response = await web.post("/admin/reach-out/senior-29/called", {"note": "", "from": "list", "page": "1"})
    assert response.headers["Location"] == "/admin/reach-out?page=1#reach-out-senior-29"


async def test_the_full_reach_out_list_comes_in_pages(tmp_path: Path, aiohttp_client: Any) -> None:
    app = create_app(make_settings(tmp_path, reach_out_page_size=2))
    app[ENGAGEMENT_CLOCK] = Clock(MORNING)
    client: TestClient = await aiohttp_client(app)
    await seed(app)
    directory: Directory = app[DIRECTORY_KEY]
    for sid in ("senior-a", "senior-b", "senior-c"):
        await directory.put(Senior(id=sid, name=sid.upper()), actor="test")
    await directory.put(KOFFIE, actor="test")
    await Attendance(app[SETTINGS_KEY], app[STORE_KEY]).joined(
        KOFFIE.id, KOFFIE, "senior-c", "senior", MORNING.timestamp() - 9 * 86400, at=MORNING.timestamp() - 9 * 86400)
    web = Web(client)
    await web.login("carla")
    pages = [text_of(await web.get(f"/admin/reach-out?page={n}")) for n in (1, 2, 3)]
    assert "Pagina 1 van 2 (4 senioren)" in pages[0] and "Volgende pagina" in pages[0]
    # Never took part first (by name), then the longest ago: Oma Riet, A | B, C.
    assert "Oma Riet" in pages[0] and "SENIOR-A" in pages[0] and "SENIOR-C" not in pages[0]
    assert "SENIOR-B" in pages[1] and "SENIOR-C" in pages[1] and "Vorige pagina" in pages[1]
    assert pages[2] == pages[1]  # past the end: the last page


async def test_finished_weeks_are_summarized_once_and_retention_forgets_them(coordinator: tuple[Web, Any, Clock]) -> None:
    from server.engagement import WEEK_SUMMARIES, WeekSummaries

    web, app, clock = coordinator
    store = app[STORE_KEY]
    await _stay(app, "senior-a", local(2026, 3, 17, 10, 0), local(2026, 3, 17, 10, 45))
    clock.set(local(2026, 4, 1, 12, 0))
    await web.get("/admin/trends?weeks=4")
    stored = {r["id"] for r in await store.list_records(WEEK_SUMMARIES)}
    assert stored == {"2026-03-09", "2026-03-16", "2026-03-23"}  # not the running week
    assert (await store.get_record(WEEK_SUMMARIES, "2026-03-16"))["minutes"] == {"senior-a": 45.0}
    # The kept summary is what the page shows from now on (the logs are not read again).
    await store.put_record(WEEK_SUMMARIES, "2026-03-16", {**(await store.get_record(WEEK_SUMMARIES, "2026-03-16")),
                                                          "family_calls": 7})
    assert "week 12 (16-03-2026) 1 1 45 7" in text_of(await web.get("/admin/trends?weeks=4"))
    # A week ending less than a day (plus the late window) ago is not final yet.
    summaries = WeekSummaries(store, app[SETTINGS_KEY])
    assert not summaries.finished(dt.date(2026, 3, 23), local(2026, 3, 30, 12, 0).timestamp())
    assert summaries.finished(dt.date(2026, 3, 23), local(2026, 3, 31, 2, 0).timestamp())
    assert await summaries.forget_before(local(2026, 3, 18, 0, 0).timestamp()) == 2
    assert {r["id"] for r in await store.list_records(WEEK_SUMMARIES)} == {"2026-03-23"}


async def test_the_retention_job_runs_by_itself(tmp_path: Path, aiohttp_client: Any) -> None:
    import asyncio

    app = create_app(make_settings(tmp_path, attendance_retention_interval_s=0.2))
    clock = Clock(MORNING)
    app[ENGAGEMENT_CLOCK] = clock
    await aiohttp_client(app)
    await _stay(app, "senior-a", local(2025, 3, 1, 10, 0), local(2025, 3, 1, 11, 0))  # 13 months before MORNING
    store = app[STORE_KEY]
    for _ in range(50):
        (log,) = await store.attendance_between(0, clock())
        if log.get("reduced"):
            break
        await asyncio.sleep(0.1)
    assert log.get("reduced") and "members" not in log


async def test_removing_a_senior_leaves_them_only_as_an_anonymous_count(coordinator: tuple[Web, Any, Clock]) -> None:
    from server.engagement import WEEK_SUMMARIES

    web, app, clock = coordinator
    store = app[STORE_KEY]
    await _stay(app, "senior-a", local(2026, 3, 17, 10, 0), local(2026, 3, 17, 10, 45))
    await _stay(app, "senior-b", local(2026, 3, 17, 10, 0), local(2026, 3, 17, 10, 30))
    clock.set(local(2026, 4, 1, 12, 0))
    await web.get("/admin")
    assert (await web.post("/admin/reach-out/senior-a/called", {"note": "belde"})).status == 303
    await web.get("/admin/trends?weeks=4")
    assert await store.list_records(WEEK_SUMMARIES)
    await web.get("/admin/seniors/senior-a/delete")
    assert (await web.post("/admin/seniors/senior-a/delete", {})).status == 303
    (log,) = await store.attendance_between(0, clock())
    assert "senior-a" not in json.dumps(log) and len(log["members"]) == 2  # still counted
    assert "senior-a" not in await store.last_engaged()
    assert await store.get_record("reach_out", "senior-a") is None
    assert await store.list_records(WEEK_SUMMARIES) == []
    assert "week 12 (16-03-2026) 2 1 75 0" in text_of(await web.get("/admin/trends?weeks=4"))
