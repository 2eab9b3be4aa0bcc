"""Accessibility of every page, in headless Chromium.

For each page (as coordinator, volunteer, family member and visitor, with and without
form errors, and the call pages in their live states):
- axe-core (from the npm registry, injected into the page) finds no serious or critical
  WCAG 2.2 A/AA violation;
- on a 360 px wide phone, and at 200 % zoom of a 1280 px window, nothing scrolls sideways;
- every control is at least 44 × 44 px (with its label, for check boxes);
- the first Tab stops show a visible focus ring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from server.appkeys import SETTINGS_KEY
from server.directory import Kiosk
from server.invites import issue_invite, named_secret

from tests.browser_helpers import (
    DESKTOP, OVERFLOW_JS, PHONE, Site, Tab, check_accessibility, ensure_axe, jsonable, launch, open_tab, start_site,
    submit_login,
)
from tests.web_helpers import PASSWORD, seed

ZOOM_200 = {"width": 640, "height": 450}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


async def _login(tab: Tab, site: Site, username: str) -> None:
    await tab.page.goto(f"{site.url}/login")
    await submit_login(tab.page, username, PASSWORD)
    await tab.page.wait_for_load_state()


async def test_every_page_is_accessible(browser: Browser, tmp_path: Path) -> None:
    axe = ensure_axe()
    site, runner = await start_site(tmp_path / "data")
    problems: dict[str, Any] = {}
    checked: list[str] = []
    try:
        async with asyncio.timeout(170):
            data = await seed(site.app)
            settings = site.app[SETTINGS_KEY]
            invite = issue_invite(named_secret(settings, "invite"), data.contact)
            kiosk = Kiosk(id="kiosk-1", senior_id=data.senior.id, name="Kiosk Oma Riet", paired_at=time.time(),
                          last_selftest={"at": time.time(), "result": {"ok": False, "checks": {
                              "camera": {"status": "ok", "message": {"nl": "Beeld is goed.", "en": "Fine."}},
                              "speaker": {"status": "failed", "message": {"nl": "Geen geluid.", "en": "None."}}}}})
            await site.directory.put(kiosk, actor="test")
            await site.directory.put(Kiosk(id="kiosk-0", senior_id=data.senior.id, name="Oude kiosk",
                                           revoked=True), actor="test")

            async def check(tab: Tab, name: str, *, desktop_axe: bool = False) -> None:
                checked.append(name)
                await tab.page.set_viewport_size(PHONE)
                found = await check_accessibility(tab, axe, name)
                if desktop_axe:
                    await tab.page.set_viewport_size(DESKTOP)
                    desktop = await check_accessibility(tab, axe, name)
                    found.update({f"desktop {k}": v for k, v in desktop.items()})
                await tab.page.set_viewport_size(ZOOM_200)
                overflow = await tab.value(OVERFLOW_JS)
                if overflow["scroll"] > overflow["width"] + 1:
                    found["horizontal scroll at 200%"] = overflow
                await tab.page.set_viewport_size(DESKTOP)
                if found:
                    problems[name] = found

            async def visit(tab: Tab, path: str, name: str, *, then: Callable[[Page], Awaitable[None]] | None = None,
                            **kw: Any) -> None:
                await tab.page.goto(f"{site.url}{path}")
                if then is not None:
                    await then(tab.page)
                await check(tab, name, **kw)

            # A visitor.
            visitor = await open_tab(await browser.new_context(locale="nl-NL", viewport=DESKTOP), f"{site.url}/")
            await check(visitor, "landing")
            await visit(visitor, "/?lang=en", "landing (English)")
            await visit(visitor, "/login?lang=nl", "login")

            async def wrong_password(page: Page) -> None:
                await submit_login(page, "carla", "wrong")
                await page.wait_for_load_state()

            await visit(visitor, "/login", "login with an error", then=wrong_password)
            await visit(visitor, "/call", "call link incomplete")
            await visit(visitor, "/family/not-an-invite", "family link that does not work")

            # The coordinator.
            office = await open_tab(await browser.new_context(locale="nl-NL", viewport=DESKTOP), f"{site.url}/")
            await _login(office, site, "carla")
            for path, name in [
                ("/admin", "admin overview"),
                ("/admin/reach-out", "reach-out list"),
                ("/admin/trends", "trends"),
                ("/admin/overview", "overview in numbers"),
                ("/admin/seniors", "seniors"),
                ("/admin/seniors/new", "new senior"),
                (f"/admin/seniors/{data.senior.id}", "senior"),
                (f"/admin/seniors/{data.senior.id}/delete", "confirm removal"),
                (f"/admin/seniors/{data.senior.id}/contacts/new", "new contact"),
                (f"/admin/contacts/{data.contact.id}", "contact with invite link"),
                ("/admin/accounts", "staff"),
                ("/admin/accounts/new", "new account"),
                (f"/admin/accounts/{data.volunteer.id}", "account"),
                ("/admin/activities", "activities"),
                (f"/admin/activities/{data.activity.id}", "activity"),
                ("/admin/audit", "audit log"),
                ("/admin/seniors/senior-nope", "not found"),
            ]:
                await visit(office, path, name)
            await visit(office, "/admin/kiosks", "kiosks", desktop_axe=True)
            await visit(office, "/admin/activities/new", "new activity", desktop_axe=True)

            async def submit_empty(page: Page) -> None:
                await page.evaluate("() => document.querySelectorAll('[required]').forEach(e => e.required = false)")
                await page.get_by_role("button", name="Opslaan").click()
                await page.wait_for_load_state()

            async def bad_activity(page: Page) -> None:
                await page.locator("#f-slot-0-start").fill("")
                await page.locator("#f-slot-0-weekday").select_option("monday")
                await page.get_by_role("button", name="Opslaan").click()
                await page.wait_for_load_state()

            await visit(office, "/admin/seniors/new", "new senior with errors", then=submit_empty)
            await visit(office, f"/admin/activities/{data.activity.id}", "activity with errors", then=bad_activity)
            await visit(office, "/admin/kiosks?lang=en", "kiosks (English)")
            await office.page.goto(f"{site.url}/admin?lang=nl")

            # A volunteer: today's list, a refused page, the console with people in it.
            studio_context = await browser.new_context(locale="nl-NL", viewport=DESKTOP)
            studio = await open_tab(studio_context, f"{site.url}/")
            await _login(studio, site, "victor")
            await visit(studio, "/host", "host: today")
            await visit(studio, "/admin", "refused (403)")
            await studio.page.goto(f"{site.url}/host/activities/{data.activity.id}")
            await studio.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="console")

            phone = await browser.new_context(locale="nl-NL", viewport=PHONE, is_mobile=True, has_touch=True)
            guest = await open_tab(phone, f"{site.url}/family/{invite}/activities/{data.activity.id}")
            await guest.wait_for("window.verzilvering.state", until=lambda s: s == "lobby", what="the guest to wait")
            await check(guest, "family: waiting room")
            await studio.page.locator(".lobby-person").wait_for()
            await check(studio, "host console with someone waiting", desktop_axe=True)
            await studio.page.get_by_role("button", name="Sanne binnenlaten").click()
            await guest.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="admitted")
            await studio.page.locator(".tile-actions").first.wait_for()
            await studio.wait_for("document.querySelector('.tile:not(.tile-self) .quality')?.dataset.level",
                                  until=lambda level: level in ("good", "fair", "poor"), what="a quality reading")
            await check(studio, "host console with a participant", desktop_axe=True)
            await check(guest, "family: in the activity")
            await studio.page.get_by_role("button", name="Activiteit beëindigen").click()
            await check(studio, "host console: end dialog")
            await studio.page.get_by_role("dialog").get_by_role("button", name="Ja").click()
            await guest.wait_for("window.verzilvering.state", until=lambda s: s == "ended", what="the end")
            await check(guest, "family: activity ended")
            await check(studio, "host console: ended")

            # The family member's own pages.
            family = await open_tab(phone, f"{site.url}/family/{invite}")
            await check(family, "family: call")
            await family.page.get_by_role("button", name="Bel Oma Riet").click()
            await family.wait_text("#status", "Oma Riet is niet bereikbaar")
            await check(family, "family: not reachable")
            await visit(family, f"/family/{invite}/activities", "family: activities")

            # The plain call page, live.
            token = site.token(role="family", room="demo", name="Demo")
            call = await open_tab(visitor.page.context, f"{site.url}/call?token={token}")
            await call.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="the call page")
            await check(call, "call page")
    finally:
        for context in browser.contexts:
            await context.close()
        await runner.cleanup()
    assert len(checked) >= 35
    assert problems == {}, jsonable(problems)


async def test_the_checks_do_find_problems(browser: Browser, tmp_path: Path) -> None:
    """The checker is not blind: a faint text, a tiny button and a wide box are caught."""
    axe = ensure_axe()
    site, runner = await start_site(tmp_path / "data")
    try:
        context = await browser.new_context(locale="nl-NL", viewport=PHONE)
        tab = await open_tab(context, f"{site.url}/")
        assert await check_accessibility(tab, axe, "landing") == {}
        await tab.page.evaluate("""() => {
            const faint = document.createElement('p');
            faint.textContent = 'Bijna onleesbaar';
            faint.style.color = '#d0d0d0';
            const tiny = document.createElement('button');
            tiny.textContent = 'x';
            tiny.style.cssText = 'min-height: 0; min-width: 0; padding: 0; font-size: 10px';
            const wide = document.createElement('div');
            wide.style.width = '900px';
            wide.textContent = 'breed';
            document.querySelector('main').append(faint, tiny, wide);
        }""")
        found = await check_accessibility(tab, axe, "landing, spoiled")
        assert [v["id"] for v in found["axe"]] == ["color-contrast"]
        assert any('"x"' in s for s in found["small targets"])
        assert found["horizontal scroll"]["scroll"] > 360
    finally:
        for context in browser.contexts:
            await context.close()
        await runner.cleanup()

