"""A host presses "Start now" at /host (headless Chromium) for an activity with no slot
today; the senior's kiosk, running against the same server, learns of it at once: its card
says the activity is happening now, Join is lit, and the senior can take part."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser

from kiosk_client.appliance import Mode
from server.appkeys import ISSUER_KEY
from server.directory import Account, Activity, Senior
from web.auth import hash_password

from tests.browser_helpers import DESKTOP, launch, log_in, start_site
from tests.conftest import RunningServer
from tests.kiosk_support import SENIOR, kiosk_config, provision, real_clock, running_kiosk, screenshot
from tests.support import eventually

PASSWORD = "host password 1"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


async def test_start_now_reaches_the_kiosk(browser: Browser, tmp_path: Path) -> None:
    site, runner = await start_site(tmp_path / "data")
    server = RunningServer(site.app, site.url, site.app[ISSUER_KEY])
    d = site.directory
    await d.put(Account(id="staff-ans", name="Ans", username="ans", role="volunteer",
                        password_hash=await hash_password(PASSWORD)), actor="test")
    await d.put(Senior(id=SENIOR, name="Mevrouw Jansen"), actor="test")
    # No weekly slot at all: only "Start now" can make it run.
    await d.put(Activity(id="a-koor", title="Koor", host_ids=["staff-ans"], enrolled=[SENIOR]), actor="test")
    state_dir = tmp_path / "kiosk"
    await provision(server, state_dir)
    try:
        clock = real_clock()
        async with asyncio.timeout(90), running_kiosk(kiosk_config(site.url, state_dir), clock) as kiosk:
            await eventually(lambda: kiosk.model.mode is Mode.HOME, 15, "the kiosk's home screen")
            assert kiosk.model.next_activity() is None
            assert kiosk.render().text_shown("Er staat nu geen activiteit gepland.")

            context = await browser.new_context(locale="nl-NL", viewport=DESKTOP)
            host = await log_in(context, site.url, "ans", PASSWORD, "/host")
            await host.page.get_by_role("button", name="Start Koor nu").click()
            await host.page.wait_for_url(f"{site.url}/host/activities/a-koor")

            await eventually(lambda: kiosk.model.next_activity() is not None, 10, "the kiosk to learn of the start")
            clock.set(dt.datetime.now(dt.timezone.utc))  # the kiosk's clock is ours to move
            activity = kiosk.model.next_activity()
            assert activity is not None and activity.id == "a-koor" and kiosk.model.join_lit(activity)
            layout = screenshot(kiosk, "home-started-now")
            assert layout.text_shown("Nu bezig") and layout.text_shown("Koor")
            assert not layout.text_shown("Volgende activiteit")
            assert layout.button("join") is not None

            # The senior taps Join and is in, with the host.
            kiosk.press("join")
            await eventually(lambda: kiosk.model.mode is Mode.IN_CALL and kiosk.room is not None, 15, "joining")
            await host.wait_for(
                "Object.values(window.verzilvering.call.participants).some(p => p.name === 'Mevrouw Jansen')",
                what="the senior in the host's console",
            )
            await context.close()
    finally:
        await runner.cleanup()
