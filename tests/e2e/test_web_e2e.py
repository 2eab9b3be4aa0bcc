"""End to end in headless Chromium: the coordinator sets up, a host runs an activity, a kiosk
and a family member take part. Every step checks what the person sees on screen; each page
is photographed into docs/screenshots/web-*.png.

The kiosk is what a kiosk does on the wire: it pairs over HTTP, keeps its device socket,
asks for the activity's token (`activity_join`) and joins with the Python call client
(`verzilvering-kiosk join`, test picture and tone) as a separate process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser

from server.appkeys import STORE_KEY
from server.directory import Activity, Contact, Kiosk, Senior
from server.schedule import AMSTERDAM, WEEKDAYS

from tests.browser_helpers import (
    DESKTOP, PHONE, REPO, device_socket, launch, log_in, next_message, open_tab, start_site, submit_login,
)
from tests.support import paired_kiosk
from tests.web_helpers import jpeg

COORDINATOR_PASSWORD = "koffie-en-koek-2026"
HOST_PASSWORD = "stoelgym-op-dinsdag"
KIOSK_SECONDS = 60


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


def _create_first_coordinator(data_dir: Path) -> None:
    env = dict(os.environ)
    env.pop("VERZILVERING_TOKEN_SECRET", None)
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "admin", "create-user", "--username", "carla",
         "--name", "Carla de Boer", "--role", "coordinator", "--password-stdin", "--data-dir", str(data_dir)],
        input=COORDINATOR_PASSWORD + "\n", capture_output=True, text=True, env=env, timeout=60, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr


def _slot_now() -> tuple[str, str]:
    """Today's weekday and a start a few minutes ago (Amsterdam), so the activity runs now."""
    now = dt.datetime.now(AMSTERDAM)
    start = max(now - dt.timedelta(minutes=5), now.replace(hour=0, minute=0))
    return WEEKDAYS[now.weekday()], start.strftime("%H:%M")


async def test_coordinator_host_kiosk_and_family_run_an_activity(browser: Browser, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _create_first_coordinator(data_dir)
    site, runner = await start_site(data_dir)
    http = aiohttp.ClientSession()
    kiosk = None
    try:
        async with asyncio.timeout(150):
            kiosk = await _run(browser, site, http, tmp_path)
    finally:
        if kiosk is not None and kiosk.returncode is None:
            kiosk.kill()
            await kiosk.wait()
        await http.close()
        # Pages still in a call hold WebSockets that the server would wait for.
        for context in browser.contexts:
            await context.close()
        await runner.cleanup()


async def _run(browser: Browser, site, http: aiohttp.ClientSession, tmp_path: Path):  # type: ignore[no-untyped-def]
    directory = site.directory

    # ---- The coordinator logs in --------------------------------------------------------
    office = await browser.new_context(locale="nl-NL", viewport=DESKTOP)
    admin = await open_tab(office, f"{site.url}/admin", status=200)  # after the redirect: the login page
    assert admin.page.url.startswith(f"{site.url}/login?next=")
    assert await admin.text("h1") == "Inloggen"
    await admin.screenshot("login")
    await submit_login(admin.page, "carla", COORDINATOR_PASSWORD)
    await admin.page.wait_for_url(f"{site.url}/admin")
    assert (await admin.text("h1")).startswith("Vandaag")
    await admin.screenshot("admin")

    # ---- … adds a senior with a photo -----------------------------------------------------
    await admin.page.get_by_role("link", name="Senioren", exact=True).first.click()
    await admin.page.get_by_role("link", name="Senior toevoegen").click()
    await admin.page.get_by_label("Naam").fill("Mevrouw Jansen")
    await admin.page.get_by_label("Automatisch meedoen aan activiteiten").check()
    await admin.page.get_by_label("Foto", exact=True).set_input_files(
        files=[{"name": "jansen.jpg", "mimeType": "image/jpeg", "buffer": jpeg()}]
    )
    await admin.page.get_by_role("button", name="Opslaan").click()
    await admin.wait_text(".flash", "Opgeslagen.")
    assert await admin.text("h1") == "Mevrouw Jansen"
    assert await admin.page.locator("img.photo-preview").evaluate("img => img.naturalWidth") > 0
    await admin.screenshot("admin-senior")
    senior = next(s for s in await directory.list(Senior) if s.name == "Mevrouw Jansen")
    assert senior.auto_join and senior.photo_url

    # ---- … a family member, with an invite link -------------------------------------------
    await admin.page.get_by_role("link", name="Familielid of vriend toevoegen").click()
    await admin.page.get_by_label("Naam").fill("Sanne")
    await admin.page.get_by_label("Relatie").fill("kleindochter")
    await admin.page.get_by_label("Vertrouwd").check()
    await admin.page.get_by_role("button", name="Opslaan").click()
    await admin.wait_text(".flash", "Opgeslagen.")
    invite_url = await admin.page.get_by_label("Link voor Sanne").input_value()
    assert invite_url.startswith(f"{site.url}/family/")
    await admin.screenshot("admin-contact")

    # ---- … a volunteer who will host ------------------------------------------------------
    await admin.page.get_by_role("link", name="Medewerkers").click()
    await admin.screenshot("admin-accounts")
    await admin.page.get_by_role("link", name="Vrijwilliger of coördinator toevoegen").click()
    await admin.page.get_by_label("Naam (verplicht)", exact=True).fill("Ans de Gastvrouw")
    await admin.page.get_by_label("Gebruikersnaam (verplicht)", exact=True).fill("ans")
    await admin.page.get_by_label("Vrijwilliger (begeleider)").check()
    await admin.page.get_by_label("Wachtwoord").fill(HOST_PASSWORD)
    await admin.page.get_by_role("button", name="Opslaan").click()
    await admin.wait_text(".flash", "Opgeslagen.")
    assert "Ans de Gastvrouw" in await admin.text(".people")

    # ---- … pairs the kiosk by the code it shows -------------------------------------------
    started = await (await http.post(f"{site.url}/api/kiosk/pair")).json()
    await admin.page.get_by_role("link", name="Kiosken").first.click()
    await admin.page.get_by_label("Code op de kiosk").fill(started["code"])
    await admin.page.get_by_label("Senior", exact=True).select_option(label="Mevrouw Jansen")
    await admin.page.get_by_role("button", name="Koppelen").click()
    await admin.wait_text(".flash", "De kiosk is gekoppeld.")
    poll = await http.get(f"{site.url}/api/kiosk/pair/{started['pairing_id']}",
                          headers={"X-Pairing-Secret": started["secret"]})
    assert poll.status == 200
    credentials = await poll.json()
    device = await device_socket(http, site.url, credentials)
    await admin.page.reload()
    kiosk_card = admin.page.locator(f"[data-kiosk-id='{credentials['kiosk_id']}']")
    assert "online" in await kiosk_card.locator(".kiosk-status").inner_text()
    assert "Mevrouw Jansen" in await kiosk_card.inner_text()
    await admin.screenshot("admin-kiosks")
    assert (await directory.get(Kiosk, credentials["kiosk_id"])).senior_id == senior.id

    # ---- … and schedules the activity, weekly, now-ish ------------------------------------
    weekday, start = _slot_now()
    await admin.page.get_by_role("link", name="Activiteiten").first.click()
    await admin.page.get_by_role("link", name="Activiteit toevoegen").click()
    await admin.page.get_by_label("Titel").fill("Stoelgym")
    await admin.page.get_by_label("Beschrijving").fill("Bewegen op een stoel, met muziek.")
    await admin.page.locator("#f-slot-0-weekday").select_option(weekday)
    await admin.page.locator("#f-slot-0-start").fill(start)
    await admin.page.locator("#f-slot-0-duration").fill("60")
    await admin.page.get_by_label("Ans de Gastvrouw").check()
    await admin.page.get_by_label("Mevrouw Jansen").check()
    await admin.page.get_by_label("Gasten welkom").check()
    await admin.screenshot("admin-activity")
    await admin.page.get_by_role("button", name="Opslaan").click()
    await admin.wait_text(".flash", "Opgeslagen.")
    listing = await admin.text(".activity-list")
    assert "Stoelgym" in listing and f"{start} (60 min.)" in listing and "gasten welkom" in listing
    await admin.screenshot("admin-activities")
    activity = next(a for a in await directory.list(Activity) if a.title == "Stoelgym")
    ans = await directory.account_by_username("ans")
    assert activity.host_ids == [ans.id] and activity.enrolled == [senior.id] and activity.guests_allowed
    await admin.page.get_by_role("link", name="Logboek").click()
    assert "Carla de Boer" in await admin.text("table") and "Stoelgym" in await admin.text("table")
    await admin.screenshot("admin-audit")

    # ---- The host logs in and starts it ---------------------------------------------------
    studio = await browser.new_context(locale="nl-NL", viewport=DESKTOP)
    host = await log_in(studio, site.url, "ans", HOST_PASSWORD, "/host")
    card = host.page.locator(".card", has_text="Stoelgym")
    assert "begint nu" in await card.inner_text()
    await host.screenshot("host-today")
    await card.get_by_role("button", name="Start Stoelgym").click()
    await host.page.wait_for_url(f"{site.url}/host/activities/{activity.id}")
    await host.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="the console to connect")
    await host.wait_text("#status", "Verbonden. Wachten op de anderen…")
    assert await host.text("#lobby-empty") == "Er wacht niemand."

    # ---- The kiosk joins (its senior is enrolled; it asks for the activity's token) --------
    await device.send_json({"type": "activity_join", "activity_id": activity.id})
    grant = await next_message(device, "activity_token")
    report_path = tmp_path / "kiosk.json"
    kiosk_log = (tmp_path / "kiosk.log").open("wb")
    kiosk = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiosk_client.cli", "join", "--server", site.url, "--token", grant["token"],
        "--video", "testsrc", "--audio", "tone", "--duration", str(KIOSK_SECONDS), "--report", str(report_path),
        cwd=REPO, stdout=kiosk_log, stderr=subprocess.STDOUT,
    )
    tile = f".tile[data-participant-id='{senior.id}']"
    await host.wait_text(f"{tile} .name", "Mevrouw Jansen")
    await host.wait_for(
        "s => document.querySelector(s + ' video')?.videoWidth ?? 0", tile,
        what="the kiosk's picture on the host console",
    )
    quality = await host.wait_for(
        "s => document.querySelector(s + ' .quality')?.dataset.level", tile,
        until=lambda level: level in ("good", "fair", "poor"), what="a connection-quality reading",
    )
    words = {"good": "goed", "fair": "matig", "poor": "slecht"}
    meter = await host.text(f"{tile} .quality")
    assert f"Verbinding: {words[quality]}" in meter and {"good": "●", "fair": "▲", "poor": "✖"}[quality] in meter

    # ---- The family member opens the invite on a phone and goes to the activity -----------
    phone = await browser.new_context(locale="nl-NL", viewport=PHONE, is_mobile=True, has_touch=True)
    family = await open_tab(phone, invite_url)
    assert await family.text("h1") == "Mevrouw Jansen"
    assert await family.page.locator("img.senior-photo").get_attribute("alt") == "Foto van Mevrouw Jansen"
    assert await family.page.get_by_role("button", name="Bel Mevrouw Jansen").is_visible()
    await family.screenshot("family-call")
    await family.page.get_by_role("link", name="Doe mee met een activiteit van Mevrouw Jansen").click()
    assert "Stoelgym" in await family.text(".activity-list")
    await family.screenshot("family-activities")
    await family.page.get_by_role("link", name="Doe mee met Stoelgym").click()
    # Knocking is automatic: the page says they wait, the host hears and sees it.
    await family.wait_text("#status", "U bent in de wachtkamer. De begeleider laat u zo binnen.")
    await family.screenshot("family-lobby", full_page=False)
    waiting = host.page.locator(".lobby-person", has_text="Sanne")
    await waiting.wait_for(timeout=15_000)
    assert await host.value("window.verzilvering.knockSounds") >= 1
    assert await host.text("#knock-announcer") == "Sanne wacht in de wachtkamer."
    await host.screenshot("host-lobby", full_page=False)
    await waiting.get_by_role("button", name="Sanne binnenlaten").click()
    await family.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="Sanne to be let in")
    await host.wait_for("document.querySelectorAll('.lobby-person').length", until=lambda n: n == 0,
                        what="the waiting room to empty")
    sanne_tile = ".tile[data-participant-id]:not(.tile-self)"
    await family.wait_for(
        "() => [...document.querySelectorAll('.tile .name')].map(n => n.textContent)",
        until=lambda names: "Mevrouw Jansen" in names and "Ans de Gastvrouw" in names,
        what="Sanne to see the senior and the host",
    )
    await family.wait_for(
        f"() => [...document.querySelectorAll(\"{sanne_tile} video\")].filter(v => v.videoWidth > 0).length",
        until=lambda n: n >= 2, what="pictures of the senior and the host on Sanne's phone",
    )
    await host.wait_text(f".tile[data-participant-id='{(await family.value('window.verzilvering.selfId'))}'] .name", "Sanne")
    await host.screenshot("host-console")
    await family.screenshot("family-activity", full_page=False)

    # ---- The host turns every microphone off ------------------------------------------------
    await host.page.get_by_role("button", name="Alle microfoons uit").click()
    sanne_id = await family.value("window.verzilvering.selfId")
    for person in (senior.id, sanne_id):
        await host.wait_text(f".tile[data-participant-id='{person}'] .badge", "geluid uit")
    await family.wait_text("#notice", "De begeleider heeft uw microfoon uitgezet.")
    assert await family.text("#mic") == "Microfoon staat uit"
    # The host's own microphone stays on; the others' buttons now ask instead of mute.
    assert await host.text("#mic") == "Microfoon staat aan"
    assert await host.page.get_by_role("button", name="Mevrouw Jansen vragen de microfoon aan te zetten").is_visible()
    await host.screenshot("host-muted")

    # ---- … and ends the activity ----------------------------------------------------------
    await host.page.get_by_role("button", name="Activiteit beëindigen").click()
    dialog = host.page.get_by_role("dialog")
    assert "De activiteit voor iedereen beëindigen?" in await dialog.inner_text()
    await dialog.get_by_role("button", name="Ja").click()
    await family.wait_text("#status", "De activiteit is afgelopen. Bedankt voor het meedoen!")
    assert await family.value("window.verzilvering.state") == "ended"
    await host.wait_text("#status", "U heeft de activiteit beëindigd. Iedereen is weg.")
    assert await host.page.get_by_role("link", name="Terug naar de activiteiten van vandaag").is_visible()
    await family.screenshot("family-ended", full_page=False)
    await host.screenshot("host-ended", full_page=False)
    exit_code = await asyncio.wait_for(kiosk.wait(), timeout=20)
    kiosk_log.close()
    log = (tmp_path / "kiosk.log").read_text(errors="replace")
    assert exit_code == 0, log
    report = json.loads(report_path.read_text())
    # The kiosk saw and heard the host and Sanne.
    seen = {media["name"]: media for media in report["participants"].values()}
    assert seen["Ans de Gastvrouw"]["video_frames"] > 5 and seen["Ans de Gastvrouw"]["audio_frames"] > 5, seen
    assert seen["Sanne"]["video_frames"] > 0, seen
    await device.close()
    return kiosk


async def test_family_call_says_plainly_what_happens(browser: Browser, tmp_path: Path) -> None:
    site, runner = await start_site(tmp_path / "data", ring_timeout_s=30.0)
    http = aiohttp.ClientSession()
    try:
        async with asyncio.timeout(60):
            directory = site.directory
            senior = Senior(id="senior-riet", name="Oma Riet")
            contact = Contact(id="contact-sanne", senior_id=senior.id, name="Sanne")
            await directory.put(senior, actor="test")
            await directory.put(contact, actor="test")
            kiosk_id = await paired_kiosk(http, site.url, site.app[STORE_KEY], site.directory, senior.id)
            from server.appkeys import SETTINGS_KEY
            from server.invites import issue_invite, named_secret

            invite = issue_invite(named_secret(site.app[SETTINGS_KEY], "invite"), contact)
            context = await browser.new_context(locale="nl-NL", viewport=PHONE, is_mobile=True, has_touch=True)

            # The kiosk is off: the page says so at once.
            family = await open_tab(context, f"{site.url}/family/{invite}")
            await family.page.get_by_role("button", name="Bel Oma Riet").click()
            await family.wait_text("#status", "Oma Riet is niet bereikbaar")
            assert await family.page.get_by_role("link", name="Opnieuw bellen").is_visible()
            await family.screenshot("family-unavailable", full_page=False)

            # The kiosk is on and rings; the senior declines.
            device = await device_socket(http, site.url, kiosk_id)
            await family.page.get_by_role("link", name="Opnieuw bellen").click()
            await family.page.get_by_role("button", name="Bel Oma Riet").click()
            await family.wait_text("#status", "We bellen Oma Riet…")
            await family.screenshot("family-ringing", full_page=False)
            incoming = await next_message(device, "incoming_call")
            assert incoming["contact"]["name"] == "Sanne"
            await device.send_json({"type": "call_answer", "call_id": incoming["call_id"], "accept": False})
            await family.wait_text("#status", "Oma Riet kan nu niet opnemen")
            assert await family.value("window.verzilvering.state") == "ended"
            await family.screenshot("family-declined", full_page=False)

            # A trusted contact with auto-answer: the page says the senior answers shortly.
            contact.trusted = contact.auto_answer = True
            await directory.put(contact, actor="test")
            await family.page.get_by_role("link", name="Opnieuw bellen").click()
            await family.page.get_by_role("button", name="Bel Oma Riet").click()
            await family.wait_text("#status", "Oma Riet neemt op over 10 seconden")
            incoming = await next_message(device, "incoming_call")
            await device.send_json({"type": "call_answer", "call_id": incoming["call_id"], "accept": True})
            joined = await next_message(device, "call_join")
            assert joined["call_id"] == incoming["call_id"]
            await family.wait_text("#status", "U praat met Oma Riet")
            # Hanging up is one button.
            await family.page.get_by_role("button", name="Ophangen").click()
            await family.wait_text("#status", "U heeft opgehangen.")
            await device.close()
    finally:
        await http.close()
        # Pages still in a call hold WebSockets that the server would wait for.
        for context in browser.contexts:
            await context.close()
        await runner.cleanup()

