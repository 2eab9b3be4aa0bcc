"""The senior calls family, end to end: the family member's invite page is open in headless
Chromium, the kiosk appliance (headless, SDL dummy driver) calls, the page rings; Answer
connects media both ways, "Niet opnemen" and an unanswered ring say so on the kiosk, and a
missed call waits on the family page until it is marked seen."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from playwright.async_api import Browser

from kiosk_client.appliance import Mode
from server.appkeys import SETTINGS_KEY, SFU_KEY
from server.directory import Contact, Senior
from server.invites import issue_invite, named_secret

from playwright.async_api import async_playwright

from tests.browser_helpers import (
    CHROMIUM, CHROMIUM_ARGS, PHONE, check_accessibility, device_socket, ensure_axe, launch, next_message, open_tab, start_site,
)
from tests.kiosk_support import SENIOR, kiosk_config, provision, real_clock, running_kiosk
from tests.support import eventually

RING_S = 6.0


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


def _kiosk_in_any_room(site) -> bool:  # type: ignore[no-untyped-def]
    return any(SENIOR in router.transports for router in site.app[SFU_KEY].routers.values())


async def test_senior_calls_family_page_rings_answer_decline_missed(browser: Browser, tmp_path: Path) -> None:
    axe = ensure_axe()
    site, runner = await start_site(tmp_path / "data", ring_timeout_s=RING_S)
    try:
        async with asyncio.timeout(150):
            directory = site.directory
            await directory.put(Senior(id=SENIOR, name="Oma Riet"), actor="test")
            sanne = Contact(id="c-sanne", senior_id=SENIOR, name="Sanne", relation="dochter", trusted=True)
            await directory.put(sanne, actor="test")
            invite = issue_invite(named_secret(site.app[SETTINGS_KEY], "invite"), sanne)
            state_dir = tmp_path / "kiosk-state"
            await provision(site, state_dir)  # type: ignore[arg-type]
            context = await browser.new_context(
                locale="nl-NL", timezone_id="Europe/Amsterdam", viewport=PHONE, is_mobile=True, has_touch=True
            )
            page = await open_tab(context, f"{site.url}/family/{invite}")
            await page.wait_for("window.verzilvering.listening", until=lambda s: s == "listening", what="the page listening")
            await page.wait_text("#listen-status", "Oma Riet kan u bellen zolang deze pagina open is.")
            assert await page.value("window.verzilvering.ringing") is None
            assert await page.page.locator("#incoming").is_hidden()

            async with running_kiosk(kiosk_config(site.url, state_dir), real_clock()) as kiosk:
                await eventually(lambda: kiosk.model.mode is Mode.HOME, 15, "kiosk home")

                # ---- The senior taps Sanne: the page rings, nothing leaves the kiosk yet --------
                kiosk.press("call:c-sanne")
                await page.wait_for("window.verzilvering.ringing", what="the page to ring")
                await page.wait_text("#incoming-title", "Oma Riet belt u")
                accept = page.page.get_by_role("button", name="Opnemen", exact=True)
                decline = page.page.get_by_role("button", name="Niet opnemen", exact=True)
                assert await accept.is_visible() and await decline.is_visible()
                a, d = await accept.bounding_box(), await decline.bounding_box()
                assert a and d and a["height"] >= 88 and d["height"] >= 88
                assert d["y"] - (a["y"] + a["height"]) >= 20, "far apart"
                # The ring sound plays (this Chromium allows audio without a tap first).
                assert await page.value("window.verzilvering.sound") == "running"
                await page.wait_for("window.verzilvering.ringsPlayed", until=lambda n: n >= 1, what="the ring sound")
                await page.screenshot("family-incoming", full_page=False)
                assert await check_accessibility(page, axe, "family: the senior calls") == {}
                await eventually(lambda: kiosk.model.session is not None and kiosk.model.session.phase == "ringing", 10, "kiosk calling")
                await asyncio.sleep(1.0)
                assert kiosk.room is None and not _kiosk_in_any_room(site), "no camera before Sanne accepts"

                # ---- Answer: media both ways -------------------------------------------------
                await accept.click()
                await page.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="the page in the call")
                await page.wait_for(
                    "id => window.verzilvering.call.stats().then(stats => stats[id] ?? {})", SENIOR,
                    until=lambda media: (
                        media.get("video", {}).get("framesDecoded", 0) > 5
                        and media.get("audio", {}).get("packetsReceived", 0) > 5
                    ),
                    timeout_s=30, what="Sanne sees and hears the kiosk",
                )
                await eventually(lambda: kiosk.wall.frames_in.get("c-sanne", 0) >= 5, 30, "the kiosk sees Sanne")
                await page.wait_text("#status", "U praat met Oma Riet")
                assert await page.page.locator("#incoming").is_hidden()
                await page.page.get_by_role("button", name="Ophangen").click()
                await eventually(lambda: kiosk.model.mode is Mode.HOME and kiosk.room is None, 20, "kiosk home after the call")

                # ---- Decline -----------------------------------------------------------------
                await page.page.goto(f"{site.url}/family/{invite}")
                await page.wait_for("window.verzilvering.listening", until=lambda s: s == "listening", what="listening again")
                kiosk.model.notes.clear()
                kiosk.press("call:c-sanne")
                await page.wait_for("window.verzilvering.ringing", what="ringing again")
                await page.page.get_by_role("button", name="Niet opnemen", exact=True).click()
                await eventually(lambda: kiosk.model.mode is Mode.HOME and bool(kiosk.model.notes), 10, "the kiosk hears no")
                assert kiosk.render().text_shown("Sanne kan nu niet opnemen.")
                assert kiosk.room is None and not _kiosk_in_any_room(site)
                assert await page.value("window.verzilvering.missedCalls") == []

                # ---- Nobody answers: missed, on both sides --------------------------------------
                kiosk.press("dismiss")
                kiosk.press("call:c-sanne")
                called_at = dt.datetime.now(ZoneInfo("Europe/Amsterdam"))
                await page.wait_for("window.verzilvering.ringing", what="ringing a third time")
                await page.wait_for("window.verzilvering.ringing", until=lambda r: r is None, timeout_s=RING_S + 10, what="ringing to stop")
                await eventually(lambda: kiosk.model.mode is Mode.HOME and bool(kiosk.model.notes), 10, "the kiosk gives up")
                assert kiosk.render().text_shown("Sanne neemt nu niet op.")
                assert kiosk.room is None and not _kiosk_in_any_room(site)

            # The missed call is kept: the page shows it next time, until "Gezien".
            await page.page.goto(f"{site.url}/family/{invite}")
            await page.wait_for("window.verzilvering.listening", until=lambda s: s == "listening", what="listening after reload")
            times = {called_at.strftime("%H:%M"), (called_at + dt.timedelta(minutes=1)).strftime("%H:%M")}
            line = await page.text("#missed-list li")
            assert any(line == f"Oma Riet belde om {t}" for t in times), line
            await page.screenshot("family-missed", full_page=False)
            assert await check_accessibility(page, axe, "family: missed call") == {}
            await page.page.get_by_role("button", name="Gezien").click()
            assert await page.page.locator("#missed").is_hidden()
            await page.wait_for("window.verzilvering.missedCalls", until=lambda m: m == [], what="cleared")
            await asyncio.sleep(0.5)
            await page.page.goto(f"{site.url}/family/{invite}")
            await page.wait_for("window.verzilvering.listening", until=lambda s: s == "listening", what="listening")
            assert await page.page.locator("#missed").is_hidden()
            assert page.log == [] or not any("pageerror" in line for line in page.log), page.log
    finally:
        for context in browser.contexts:
            await context.close()
        await runner.cleanup()


# The tab is in the background (a test cannot minimise a headless window), and every
# notification the page shows is counted on its way to Chromium's real Notification.
BACKGROUND_TAB_JS = """
Object.defineProperty(Document.prototype, "hidden", { get() { return true; }, configurable: true });
const RealNotification = window.Notification;
window.__notifications = [];
window.Notification = class extends RealNotification {
  constructor(title, options) {
    super(title, options);
    window.__notifications.push({ title, body: options?.body ?? "" });
  }
};
"""


async def test_sound_waits_for_one_tap_and_a_background_tab_gets_a_notification(tmp_path: Path) -> None:
    """Without the test flag, Chromium's autoplay rule holds audio until the page is touched."""
    site, runner = await start_site(tmp_path / "data")
    args = [a for a in CHROMIUM_ARGS if not a.startswith("--autoplay-policy")]
    try:
        async with async_playwright() as playwright, aiohttp.ClientSession() as http:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=args, timeout=30_000)
            try:
                await site.directory.put(Senior(id=SENIOR, name="Oma Riet"), actor="test")
                sanne = Contact(id="c-sanne", senior_id=SENIOR, name="Sanne", trusted=True)
                await site.directory.put(sanne, actor="test")
                invite = issue_invite(named_secret(site.app[SETTINGS_KEY], "invite"), sanne)
                credential = await provision(site, tmp_path / "kiosk-state")  # type: ignore[arg-type]
                device = await device_socket(http, site.url, {"kiosk_id": credential.kiosk_id, "credential": credential.credential})
                context = await browser.new_context(locale="en-GB", viewport=PHONE, is_mobile=True, has_touch=True)
                await context.grant_permissions(["notifications"], origin=site.url)
                await context.add_init_script(BACKGROUND_TAB_JS)
                page = await open_tab(context, f"{site.url}/family/{invite}?lang=en")
                await page.wait_for("window.verzilvering.listening", until=lambda s: s == "listening", what="listening")
                await page.wait_text("#listen-status", "Oma Riet can call you while this page is open.")
                assert await page.value("window.verzilvering.sound") == "suspended"
                button = page.page.get_by_role("button", name="Turn sound on")
                assert await button.is_visible()
                assert "only plays the ring after you have tapped this page once" in await page.text("#sound-row")
                # Permission was given already: no button asking for it.
                assert await page.page.locator("#notify-row").is_hidden()

                # The senior calls: the page rings silently (not allowed yet) and notifies.
                await device.send_json({"type": "call_contact", "contact_id": "c-sanne"})
                await page.wait_for("window.verzilvering.ringing", what="ringing")
                assert await page.value("window.__notifications") == [
                    {"title": "Oma Riet is calling you", "body": "Open the page to answer."}
                ]
                await asyncio.sleep(0.5)
                assert await page.value("window.verzilvering.ringsPlayed") == 0
                # One tap (here on "Turn sound on"): the ring is heard from then on.
                await button.click()
                await page.wait_for("window.verzilvering.sound", until=lambda s: s == "running", what="sound allowed")
                assert await page.page.locator("#sound-row").is_hidden()
                await page.wait_for("window.verzilvering.ringsPlayed", until=lambda n: n >= 1, timeout_s=6, what="the ring")
                # The senior hangs up: the ringing stops, the page says so and keeps the missed call.
                ringing = await next_message(device, "call_ringing")
                await device.send_json({"type": "call_hangup", "call_id": ringing["call_id"]})
                await page.wait_for("window.verzilvering.ringing", until=lambda r: r is None, what="ringing to stop")
                await page.wait_text("#listen-status", "Oma Riet hung up before you answered.")
                assert len(await page.value("window.verzilvering.missedCalls")) == 1
                assert await page.page.locator("#missed").is_visible()
                await device.close()
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
