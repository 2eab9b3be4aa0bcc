"""In headless Chromium: a family member who starts too many calls in a short while is told
so plainly on the invite page (the API's 429 rate_limited), not "calling does not work"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser

from server.appkeys import SETTINGS_KEY
from server.directory import Contact, Senior
from server.invites import issue_invite, named_secret

from tests.browser_helpers import PHONE, launch, open_tab, start_site


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


async def test_too_many_calls_are_explained_on_the_invite_page(browser: Browser, tmp_path: Path) -> None:
    site, runner = await start_site(tmp_path / "data", call_start_limit=1, call_start_window_s=600)
    try:
        await site.directory.put(Senior(id="s-1", name="Mevrouw Jansen"), actor="test")
        contact = Contact(id="c-sanne", senior_id="s-1", name="Sanne")
        await site.directory.put(contact, actor="test")
        invite = issue_invite(named_secret(site.app[SETTINGS_KEY], "invite"), contact)
        context = await browser.new_context(viewport=PHONE, locale="nl-NL")
        for attempt in range(2):
            family = await open_tab(context, f"{site.url}/family/{invite}")
            await family.page.get_by_role("button", name="Bel Mevrouw Jansen").click()
            if attempt == 0:
                # The kiosk is offline: the first call is taken and ends as unavailable.
                await family.wait_for("document.querySelector('#status')?.textContent.trim()",
                                      until=lambda t: bool(t) and "kort na elkaar" not in t, what="first call")
                await family.page.close()
        await family.wait_text("#status", "U hebt kort na elkaar een paar keer gebeld. Probeer het over een paar minuten opnieuw.")
        assert await family.page.locator("#rejoin").is_visible()
        await context.close()
    finally:
        await runner.cleanup()
