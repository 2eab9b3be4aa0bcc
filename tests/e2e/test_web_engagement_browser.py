"""Engagement end to end in headless Chromium, with the headless kiosk against the real server.

The coordinator keeps "Vandaag" open; the host starts the activity and sees the enrolled
senior missing; the host rings; the kiosk shows the invitation and sends nothing until the
senior taps; the senior joins; "Vandaag" counts them present without a reload; the trends
page (with a quarter of attendance) passes axe-core in Dutch and English.
Also makes docs/screenshots/web-admin-today.png, web-admin-trends.png, web-host-missing.png
and kiosk-invited.png.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser

from kiosk_client.appliance import Mode
from kiosk_client.clock import DEFAULT_TIMEZONE
from server.appkeys import SETTINGS_KEY, STORE_KEY
from server.attendance import Attendance
from server.directory import Activity, Kiosk, Senior

from tests.browser_helpers import DESKTOP, check_accessibility, ensure_axe, jsonable, launch, log_in, start_site
from tests.kiosk_support import kiosk_config, provision, real_clock, running_kiosk, screenshot, seed as seed_kiosk
from tests.support import eventually
from tests.web_helpers import PASSWORD, seed as seed_staff


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


async def _history(site: object, seniors: list[Senior], activities: list[Activity]) -> None:
    """Thirteen weeks of attendance: more seniors each week, some family calls."""
    attendance = Attendance(site.app[SETTINGS_KEY], site.app[STORE_KEY])  # type: ignore[attr-defined]
    today = dt.datetime.now(DEFAULT_TIMEZONE).replace(hour=10, minute=0, second=0, microsecond=0)
    for week in range(1, 13):
        day = today - dt.timedelta(weeks=week)
        for a, activity in enumerate(activities):
            start = (day + dt.timedelta(hours=3 * a)).timestamp()
            for i, senior in enumerate(seniors[: 3 + (12 - week) % 7 + a]):
                await attendance.joined(activity.id, activity, senior.id, "senior", start + i * 30, at=start + i * 30)
                await attendance.left(activity.id, activity, senior.id, "senior", start + i * 30, at=start + 2400 + i * 60)
        for c in range(week % 4):
            room, at = f"call-hist{week}x{c}", (day + dt.timedelta(days=1, hours=c)).timestamp()
            for pid, role in ((seniors[c].id, "senior"), (f"contact-{c}", "family")):
                await attendance.joined(room, None, pid, role, at, at=at)
                await attendance.left(room, None, pid, role, at, at=at + 900)


async def test_vandaag_live_host_rings_a_missing_senior_and_trends_are_accessible(browser: Browser, tmp_path: Path) -> None:
    axe = ensure_axe()
    site, runner = await start_site(tmp_path / "data")
    problems: dict[str, object] = {}
    try:
        async with asyncio.timeout(150):
            await seed_staff(site.app)
            await seed_kiosk(site, activity_start=dt.datetime.now(DEFAULT_TIMEZONE) - dt.timedelta(minutes=5))  # type: ignore[arg-type]
            directory = site.directory
            districts = ["Almere Haven", "Almere Buiten", "Almere Stad", "Almere Poort", "Oosterwold", ""]
            names = ["Jan Bakker", "Riet de Jong", "Kees Visser", "Ans Smit", "Henk Mulder", "Truus Bos", "Wim Meijer",
                     "Gerda de Wit", "Piet Dekker", "Corrie Brouwer", "Bert van Dijk", "Mien Peters"]
            extra = [Senior(id=f"senior-{i}", name=names[i], district=districts[i % 6],
                            phone=f"036 52{i:02d} 311" if i % 2 else "") for i in range(12)]
            for senior in extra:
                await directory.put(senior, actor="test")
            gym = await directory.get(Activity, "a-gym")
            assert gym is not None
            gym.host_ids, gym.enrolled = ["staff-victor"], ["s-1", "senior-0", "senior-1"]
            await directory.put(gym, actor="test")
            koor = Activity(id="a-koor", title="Zingen in koor", enrolled=[s.id for s in extra[:8]])
            await directory.put(koor, actor="test")
            await _history(site, extra, [gym, koor])
            await provision(site, tmp_path / "kiosk")  # type: ignore[arg-type]
            # A kiosk to visit: offline for two days, and its microphone failed the last self-test.
            failed = {"at": time.time() - 2 * 86400, "result": {"ok": False, "checks": {
                "microphone": {"status": "failed", "message": {"nl": "De microfoon geeft geen geluid.", "en": "No sound."}}}}}
            await directory.put(Kiosk(id="kiosk-visit", senior_id="senior-3", name="Kiosk Ans", paired_at=time.time() - 90 * 86400,
                                      last_seen=time.time() - 2 * 86400 - 3600, software_version="0.1.0",
                                      last_selftest=failed), actor="test")

            async with running_kiosk(kiosk_config(site.url, tmp_path / "kiosk"), real_clock()) as kiosk:
                await eventually(lambda: kiosk.model.mode is Mode.HOME, 20, "the kiosk at home")

                # The coordinator opens "Vandaag".
                office = await log_in(
                    await browser.new_context(locale="nl-NL", viewport=DESKTOP), site.url, "carla", PASSWORD, "/admin"
                )
                row = office.page.locator("tr[data-occurrence*=\"a-gym\"]")
                assert (await row.locator("[data-field=present]").inner_text()) == "0"
                assert (await row.locator("[data-field=enrolled]").inner_text()) == "3"

                # The host starts the activity and sees who is missing.
                studio = await log_in(
                    await browser.new_context(locale="nl-NL", viewport=DESKTOP), site.url, "victor", PASSWORD, "/host"
                )
                await studio.page.goto(f"{site.url}/host/activities/a-gym")
                await studio.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="the console")
                missing = studio.page.locator("#missing-list .missing-person")
                await missing.first.wait_for()
                assert await missing.count() == 3
                assert "Mevrouw Jansen" in await studio.text("#missing-list")
                problems["host console with seniors missing"] = await check_accessibility(studio, axe, "host console with seniors missing")
                await studio.page.locator("#missing").scroll_into_view_if_needed()
                await studio.screenshot("host-missing", full_page=False)

                # Rings Mevrouw Jansen's kiosk: the kiosk shows the invitation, sends nothing.
                sent_before = len(kiosk.sent)
                await studio.page.get_by_role("button", name="Bel de kiosk van Mevrouw Jansen").click()
                await studio.wait_text("#notice", "gaat over")
                await eventually(lambda: kiosk.model.mode is Mode.INVITED, 10, "the invitation on the kiosk")
                assert kiosk.room is None and kiosk.sent[sent_before:] == []
                screenshot(kiosk, "invited")
                kiosk.press("join_invite")
                await eventually(lambda: kiosk.model.session is not None and kiosk.model.session.phase == "connected", 30,
                                 "the senior in the activity")

                # The host's list shrinks; "Vandaag" shows her present, without a reload.
                await studio.wait_for("document.querySelectorAll('#missing-list .missing-person').length",
                                      until=lambda n: n == 2, what="Mevrouw Jansen no longer missing")
                await office.wait_for("document.querySelector('tr[data-occurrence*=\"a-gym\"] [data-field=present]').textContent",
                                      until=lambda t: t == "1", what="present now: 1", timeout_s=20)
                await office.page.reload()
                # She took part today: no longer on the list of seniors to call.
                assert "Mevrouw Jansen" not in await office.text(".reach-out")
                assert "Microfoon: werkt niet" in await office.text(".attention")
                problems["vandaag"] = await check_accessibility(office, axe, "vandaag")
                await office.screenshot("admin-today")

                # Trends: charts with their tables, in Dutch and English.
                await office.page.goto(f"{site.url}/admin/trends")
                assert await office.page.locator("svg[role=img]").count() == 6
                problems["trends"] = await check_accessibility(office, axe, "trends")
                await office.screenshot("admin-trends")
                await office.page.goto(f"{site.url}/admin/trends?lang=en&weeks=26")
                assert "Seniors taking part per week" in await office.text("figcaption")
                problems["trends (English)"] = await check_accessibility(office, axe, "trends en")
    finally:
        for context in browser.contexts:
            await context.close()
        await runner.cleanup()
    assert {name: found for name, found in problems.items() if found} == {}, jsonable(problems)
