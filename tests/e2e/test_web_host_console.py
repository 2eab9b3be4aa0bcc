"""The host console's moderation in headless Chromium: waiting room (admit, deny), lock,
mute one, ask to unmute, spotlight, music mode, remove and let back — each seen from both sides."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext

from server.appkeys import SETTINGS_KEY
from server.directory import Account, Activity, Contact, Senior
from server.invites import issue_invite, named_secret
from server.schedule import WEEKDAYS
from web.auth import hash_password

from tests.browser_helpers import DESKTOP, PHONE, Site, Tab, launch, log_in, open_tab, start_site

PASSWORD = "host password 1"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


async def _setup(site: Site) -> tuple[Activity, Contact, Contact]:
    d = site.directory
    await d.put(Account(id="staff-ans", name="Ans", username="ans", role="volunteer",
                        password_hash=await hash_password(PASSWORD)), actor="test")
    await d.put(Senior(id="senior-jansen", name="Mevrouw Jansen"), actor="test")
    await d.put(Senior(id="senior-bakker", name="Meneer Bakker"), actor="test")
    sanne = Contact(id="contact-sanne", senior_id="senior-jansen", name="Sanne")
    piet = Contact(id="contact-piet", senior_id="senior-bakker", name="Piet")
    await d.put(sanne, actor="test")
    await d.put(piet, actor="test")
    # A slot three days off, never today in any time zone: the host starts it with "Start … now"
    # (a fixed weekday made the button "Start Koor" on that day and the test failed then).
    weekday = WEEKDAYS[(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)).weekday()]
    activity = Activity(id="activity-koor", title="Koor", host_ids=["staff-ans"],
                        enrolled=["senior-jansen", "senior-bakker"], guests_allowed=True,
                        slots=[{"weekday": weekday, "start": "10:00", "duration_min": 60}])
    await d.put(activity, actor="test")
    return activity, sanne, piet


async def _host(context: BrowserContext, site: Site, activity: Activity) -> Tab:
    tab = await log_in(context, site.url, "ans", PASSWORD, "/host")
    await tab.page.get_by_role("button", name="Start Koor nu").click()
    await tab.page.wait_for_url(f"{site.url}/host/activities/{activity.id}")
    await tab.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="the host to connect")
    return tab


async def _guest(browser: Browser, site: Site, contact: Contact, activity: Activity) -> Tab:
    invite = issue_invite(named_secret(site.app[SETTINGS_KEY], "invite"), contact)
    context = await browser.new_context(locale="nl-NL", viewport=PHONE, is_mobile=True, has_touch=True)
    tab = await open_tab(context, f"{site.url}/family/{invite}/activities/{activity.id}")
    await tab.wait_for("window.verzilvering.state", until=lambda s: s == "lobby", what=f"{contact.name} in the lobby")
    return tab


def tile(participant_id: str) -> str:
    return f".tile[data-participant-id='{participant_id}']"


async def test_host_moderates_from_the_console(browser: Browser, tmp_path: Path) -> None:
    site, runner = await start_site(tmp_path / "data")
    try:
        async with asyncio.timeout(120):
            activity, sanne_contact, piet_contact = await _setup(site)
            host = await _host(await browser.new_context(locale="nl-NL", viewport=DESKTOP), site, activity)

            # Two guests knock; one is let in, one is not.
            sanne = await _guest(browser, site, sanne_contact, activity)
            piet = await _guest(browser, site, piet_contact, activity)
            lobby = host.page.locator("#lobby-list")
            await host.wait_for("document.querySelectorAll('.lobby-person').length", until=lambda n: n == 2,
                                what="two people in the waiting room")
            assert await host.value("window.verzilvering.knockSounds") == 2
            assert "(2)" in await host.text("#lobby-count")
            await lobby.get_by_role("button", name="Piet niet binnenlaten").click()
            await piet.wait_text("#status", "De begeleider heeft u deze keer niet binnengelaten.")
            assert await piet.value("window.verzilvering.state") == "ended"
            await lobby.get_by_role("button", name="Sanne binnenlaten").click()
            await sanne.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="Sanne let in")
            # Both pages renew their short-lived token (page_token_ttl_s) from session or invite.
            for page, api in ((host, "window.verzilvering.call"), (sanne, "window.verzilvering")):
                before = await page.value(f"{api}.token")
                await page.value(f"{api}.renewToken()")
                assert await page.value(f"{api}.token") not in (None, before)
            await host.wait_text(f"{tile(sanne_contact.id)} .name", "Sanne")
            assert await host.text("#lobby-empty") == "Er wacht niemand."

            # Locked: a senior now waits too (a senior enters an open room directly).
            lock = host.page.get_by_role("button", name="Kamer op slot")
            await lock.click()
            await host.wait_for("document.getElementById('lock').getAttribute('aria-pressed')",
                                until=lambda v: v == "true", what="the lock to show as on")
            assert "De kamer is op slot" in await host.text("#room-state")
            senior_context = await browser.new_context(locale="nl-NL", viewport=DESKTOP)
            senior_token = site.token(role="senior", room=activity.id, name="Mevrouw Jansen",
                                      participant_id="senior-jansen")
            senior = await open_tab(senior_context, f"{site.url}/call?token={senior_token}")
            await senior.wait_text("#status", "U bent in de wachtkamer.")
            await lobby.get_by_role("button", name="Mevrouw Jansen binnenlaten").click()
            await senior.wait_for("window.verzilvering.state", until=lambda s: s == "connected",
                                  what="the senior let in")
            await lock.click()
            await host.wait_for("document.getElementById('lock').getAttribute('aria-pressed')",
                                until=lambda v: v == "false", what="the lock to show as off")

            # Mute one; she sees it; the host asks her to unmute; she does.
            await host.page.get_by_role("button", name="Microfoon van Sanne uitzetten").click()
            await sanne.wait_text("#mic", "Microfoon staat uit")
            await sanne.wait_text("#notice", "De begeleider heeft uw microfoon uitgezet.")
            await host.wait_text(f"{tile(sanne_contact.id)} .badge", "geluid uit")
            await host.page.get_by_role("button", name="Sanne vragen de microfoon aan te zetten").click()
            await sanne.wait_text("#notice", "De begeleider vraagt of u uw microfoon wilt aanzetten.")
            assert await sanne.value("document.getElementById('mic').hasAttribute('data-attention')")
            await sanne.page.get_by_role("button", name="Microfoon staat uit").click()
            await host.wait_for(f"document.querySelector(\"{tile(sanne_contact.id)} .badge\")", until=lambda b: b is None,
                                what="Sanne's 'sound off' badge to go")
            assert await host.page.get_by_role("button", name="Microfoon van Sanne uitzetten").is_visible()

            # Spotlight: everyone sees Sanne big, with a word for it — and her phone sends
            # full quality instead of a small tile (publish_quality).
            settings = site.app[SETTINGS_KEY]
            tile_quality = await sanne.wait_for(
                "window.verzilvering.mediaSettings()",
                until=lambda m: m["videoMaxBitrate"] == settings.tile_video_bitrate_bps, what="Sanne sending a tile",
            )
            assert tile_quality["videoScaleDown"] > 1
            await host.page.get_by_role("button", name="Sanne groot in beeld").click()
            await sanne.wait_for(
                "window.verzilvering.mediaSettings().videoMaxBitrate",
                until=lambda b: b == settings.main_video_bitrate_bps, what="Sanne sending full quality",
            )
            await senior.wait_for(f"document.querySelector(\"{tile(sanne_contact.id)}\")?.classList.contains('spotlight')",
                                  what="Sanne in the spotlight on the senior's screen")
            assert "groot in beeld" in await senior.text(f"{tile(sanne_contact.id)} figcaption")
            # The host's "Verbinding" indicator names the layer the server forwards to it.
            layer = await host.wait_for(
                f"document.querySelector(\"{tile(sanne_contact.id)} .quality-layer\")?.textContent ?? null",
                until=lambda t: t is not None and re.fullmatch(r" · \d+p \d+ fps", t) is not None,
                what="the forwarded layer in Sanne's connection indicator",
            )
            assert layer in await host.value(f"document.querySelector(\"{tile(sanne_contact.id)} .quality\").title")
            await sanne.wait_for("document.querySelector('.tile-self').classList.contains('spotlight')",
                                 what="Sanne to see herself in the spotlight")
            await host.page.get_by_role("button", name="Sanne niet meer groot in beeld").click()
            await senior.wait_for(f"document.querySelector(\"{tile(sanne_contact.id)}\")?.classList.contains('spotlight')",
                                  until=lambda v: v is False, what="the spotlight to go off")

            # Music mode: the host's microphone stops filtering; everyone may send more.
            await host.page.get_by_role("button", name="Muziekstand").click()
            await host.wait_text("#room-state", "Muziekstand staat aan")
            settings = await host.wait_for("window.verzilvering.call.mediaSettings()",
                                           until=lambda s: s["maxBitrate"] == 128000, what="music settings")
            assert settings["echoCancellation"] is False and settings["autoGainControl"] is False
            guest = await sanne.wait_for("window.verzilvering.mediaSettings()",
                                         until=lambda s: s["maxBitrate"] == 128000, what="music bitrate for Sanne")
            # A guest keeps echo cancellation: only the host plays music into the room.
            assert guest["echoCancellation"] is not False
            await host.screenshot("host-moderation")
            await host.page.get_by_role("button", name="Muziekstand").click()
            await host.wait_text("#room-state", "Muziekstand staat uit")
            await host.wait_for("window.verzilvering.call.mediaSettings().maxBitrate", until=lambda b: b is None,
                                what="the bitrate cap to go")

            # Remove, after a question.
            await host.page.get_by_role("button", name="Sanne verwijderen").click()
            dialog = host.page.get_by_role("dialog")
            assert "Sanne uit de activiteit verwijderen?" in await dialog.inner_text()
            await dialog.get_by_role("button", name="Nee").click()
            await asyncio.sleep(0.3)
            assert await sanne.value("window.verzilvering.state") == "connected"
            await host.page.get_by_role("button", name="Sanne verwijderen").click()
            await host.page.get_by_role("dialog").get_by_role("button", name="Ja").click()
            await sanne.wait_text("#status", "De begeleider heeft u uit de groep gehaald.")
            await host.wait_for(f"document.querySelector(\"{tile(sanne_contact.id)}\")", until=lambda t: t is None,
                                what="Sanne's tile to go")
            assert "(1)" in await host.text("#participant-count")

            # Removed means kept out: her page offers no way back, a reload is refused,
            # and the console lists her until the host lets her back.
            assert await sanne.value("document.getElementById('rejoin').hidden")
            banned = host.page.locator("#banned")
            await banned.get_by_text("Sanne", exact=True).wait_for()
            assert await banned.is_visible() and "Verwijderd uit deze activiteit" in await banned.inner_text()
            await sanne.page.reload()
            await sanne.wait_text("#status", "De begeleider heeft u uit de groep gehaald.")
            assert await sanne.value("window.verzilvering.state") == "ended"
            await banned.get_by_role("button", name="Laat Sanne weer toe").click()
            await host.wait_for("document.getElementById('banned').hidden", what="the list of removed people to go")
            await sanne.page.reload()
            await sanne.wait_for("window.verzilvering.state", until=lambda s: s == "lobby", what="Sanne back in the lobby")
    finally:
        # Pages still in a call hold WebSockets that the server would wait for.
        for context in browser.contexts:
            await context.close()
        await runner.cleanup()
