"""The browser call page against the real server, in a real (headless Debian) Chromium.

Chromium's fake camera and microphone stand in for a family member's laptop; the Python
kiosk client runs as a separate process, the way it runs on a senior's tablet.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser

from server.app import create_app
from server.appkeys import ISSUER_KEY
from server.config import Settings
from signaling.tokens import TokenIssuer

from tests.browser_helpers import browser, open_call  # noqa: F401  (fixture)
from tests.conftest import SCREENSHOTS

REPO = Path(__file__).resolve().parents[2]
KIOSK_SECONDS = 8
RESUME_GRACE_S = 20.0


@dataclass
class RunningServer:
    url: str
    issuer: TokenIssuer


ServerStarter = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[ServerStarter]:
    runners: list[web.AppRunner] = []

    async def start(**overrides: Any) -> RunningServer:
        settings = Settings(
            **{
                "host": "127.0.0.1",
                "port": 0,
                "data_dir": tmp_path / f"data-{len(runners)}",
                "ice_servers": (),
                "resume_grace_s": RESUME_GRACE_S,
                **overrides,
            }
        )
        app = create_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        # Binding the socket ourselves gives a free port with no window for another
        # process to take it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        return RunningServer(f"http://127.0.0.1:{port}", app[ISSUER_KEY])

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def running_server(start_server: ServerStarter) -> RunningServer:
    return await start_server()


async def test_browser_and_kiosk_see_and_hear_each_other(
    running_server: RunningServer, browser: Browser, tmp_path: Path
) -> None:
    room = "koffieochtend-haven"
    browser_name = "Sanne (kleindochter)"
    kiosk_name = "Mevrouw Jansen"
    issuer = running_server.issuer
    browser_token = issuer.issue(role="family", room=room, name=browser_name)
    kiosk_token = issuer.issue(role="senior", room=room, name=kiosk_name)
    report_path = tmp_path / "kiosk-report.json"
    kiosk_log_path = tmp_path / "kiosk.log"

    async with asyncio.timeout(120):
        call = await open_call(browser, running_server.url, browser_token)
        await call.wait_until_connected()
        browser_id = await call.value("window.verzilvering.selfId")

        with kiosk_log_path.open("wb") as kiosk_log:
            kiosk = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kiosk_client.cli", "join",
                "--server", running_server.url,
                "--token", kiosk_token,
                "--video", "testsrc",
                "--audio", "tone",
                "--duration", str(KIOSK_SECONDS),
                "--report", str(report_path),
                cwd=REPO, stdout=kiosk_log, stderr=subprocess.STDOUT,
            )
        try:
            kiosk_id = await call.participant_id_of(kiosk_name)
            first = await call.wait_for_media_from(kiosk_id)
            await call.wait_for(
                "id => document.querySelector(`.tile[data-participant-id='${id}'] video`)"
                "?.videoWidth ?? 0",
                kiosk_id, timeout_s=10, what="the kiosk's tile to show a picture",
            )
            label = await call.value(
                "id => document.querySelector(`.tile[data-participant-id='${id}'] .name`)"
                "?.textContent",
                kiosk_id,
            )
            await call.page.screenshot(path=str(SCREENSHOTS / "web-call.png"))
            await asyncio.sleep(1.0)
            second = await call.media_from(kiosk_id)
            kiosk_exit = await asyncio.wait_for(kiosk.wait(), timeout=KIOSK_SECONDS + 30)
        finally:
            if kiosk.returncode is None:
                kiosk.kill()
                await kiosk.wait()

        kiosk_output = kiosk_log_path.read_text(errors="replace")
        assert kiosk_exit == 0, f"kiosk exited with {kiosk_exit}:\n{kiosk_output}"

        # The browser showed the kiosk under its name, decoded its picture, and the
        # picture kept moving.
        assert label == kiosk_name
        assert first["video"]["width"] > 0 and first["video"]["height"] > 0
        assert second["video"]["framesDecoded"] > first["video"]["framesDecoded"], (first, second)
        assert second["audio"]["packetsReceived"] > 0
        assert second["audio"]["totalSamplesReceived"] > 0

        # The kiosk, in turn, decoded the browser's fake camera and microphone.
        report = json.loads(report_path.read_text())
        seen = report["participants"].get(browser_id)
        assert seen is not None, f"no report entry for the browser ({browser_id}): {report}"
        assert seen["name"] == browser_name
        assert seen["video_frames"] > 10, seen
        assert seen["video_width"] > 0 and seen["video_height"] > 0, seen
        assert seen["audio_frames"] > 10, seen

        # Once the kiosk is gone its tile goes too (at the latest when its grace ends).
        await call.wait_for(
            "id => !window.verzilvering.tiles.includes(id)", kiosk_id,
            timeout_s=RESUME_GRACE_S + 10, what="the kiosk's tile to be removed",
        )


async def test_two_browsers_mute_resume_and_leave(
    running_server: RunningServer, browser: Browser
) -> None:
    room = "sjoelen"
    issuer = running_server.issuer
    async with asyncio.timeout(90):
        anna = await open_call(
            browser, running_server.url, issuer.issue(role="family", room=room, name="Anna")
        )
        await anna.wait_until_connected()
        assert await anna.value("document.getElementById('status').textContent") == (
            "Verbonden. Wachten op de anderen…"
        )
        bert = await open_call(
            browser, running_server.url, issuer.issue(role="senior", room=room, name="Bert")
        )
        await bert.wait_until_connected()
        anna_id = await bert.participant_id_of("Anna")
        bert_id = await anna.participant_id_of("Bert")
        await anna.wait_for_media_from(bert_id)
        await bert.wait_for_media_from(anna_id)

        await anna.page.click("#mic")
        assert await anna.value("document.getElementById('mic').textContent") == "Microfoon staat uit"
        await bert.wait_for(
            "id => document.querySelector(`.tile[data-participant-id='${id}'] .badge`)"
            "?.textContent",
            anna_id, until=lambda badge: badge == "geluid uit",
            timeout_s=10, what="Bert to see that Anna's sound is off",
        )

        session_before = await anna.value("window.verzilvering.sessionId")
        await anna.value("window.verzilvering.dropConnection()")
        assert await anna.value("window.verzilvering.state") == "reconnecting"
        status = await anna.value("document.getElementById('status').textContent")
        assert status == "Geen verbinding — we proberen het opnieuw"
        await anna.wait_until_connected()

        # Resumed, not started over: same session, same media, nobody saw Anna leave.
        assert await anna.value("window.verzilvering.sessionId") == session_before
        before = await anna.media_from(bert_id)
        await asyncio.sleep(1.0)
        after = await anna.media_from(bert_id)
        assert after["video"]["framesDecoded"] > before["video"]["framesDecoded"], (before, after)
        assert anna_id in await bert.value("Object.keys(window.verzilvering.participants)")
        assert await anna.value("window.verzilvering.tiles") == [bert_id]

        await anna.page.click("#leave")
        assert await anna.value("window.verzilvering.state") == "ended"
        assert await anna.value("document.getElementById('status').textContent") == (
            "U heeft de groep verlaten."
        )
        await bert.wait_for(
            "id => !(id in window.verzilvering.participants)", anna_id,
            timeout_s=10, what="Anna to leave Bert's participant list",
        )
        assert await bert.value("window.verzilvering.tiles") == []


async def test_call_page_starts_over_when_its_session_is_gone(
    start_server: ServerStarter, browser: Browser
) -> None:
    # A grace shorter than the first reconnect delay: every resume is refused.
    server = await start_server(resume_grace_s=0.05)
    room = "bingo"
    async with asyncio.timeout(60):
        anna = await open_call(
            browser, server.url, server.issuer.issue(role="family", room=room, name="Anna")
        )
        bert = await open_call(
            browser, server.url, server.issuer.issue(role="senior", room=room, name="Bert")
        )
        await anna.wait_until_connected()
        bert_id = await anna.participant_id_of("Bert")
        await anna.wait_for_media_from(bert_id)
        session_before = await anna.value("window.verzilvering.sessionId")

        await anna.value("window.verzilvering.dropConnection()")
        await anna.wait_for(
            "window.verzilvering.sessionId", until=lambda s: s not in (None, session_before),
            timeout_s=15, what="Anna to start a new session",
        )
        await anna.wait_until_connected()
        after_restart = await anna.wait_for_media_from(bert_id)
        assert after_restart["video"]["width"] > 0
        anna_id = await anna.value("window.verzilvering.selfId")
        await bert.wait_for_media_from(anna_id)


async def test_call_page_explains_a_refused_link(
    running_server: RunningServer, browser: Browser
) -> None:
    async with asyncio.timeout(30):
        call = await open_call(browser, running_server.url, "not-a-real-token")
        await call.wait_for(
            "window.verzilvering.state", until=lambda s: s == "ended",
            timeout_s=10, what="the page to give up on the link",
        )
        assert await call.value("document.getElementById('status').textContent") == (
            "Deze link werkt niet (meer). Vraag de begeleider om een nieuwe link."
        )
        assert await call.value("document.getElementById('rejoin').hidden")


async def test_pages_speak_dutch_first_and_english_on_request(
    running_server: RunningServer,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running_server.url}/") as response:
            assert response.status == 200
            assert '<html lang="nl">' in await response.text()
        async with http.get(f"{running_server.url}/?lang=en") as response:
            assert '<html lang="en">' in await response.text()
        async with http.get(f"{running_server.url}/call") as response:
            assert response.status == 400
            assert "Deze link is niet compleet" in await response.text()
        async with http.get(f"{running_server.url}/call?lang=en") as response:
            assert response.status == 400
            assert "This link is incomplete" in await response.text()
        async with http.get(f"{running_server.url}/static/call.js") as response:
            assert response.status == 200


async def test_call_page_escapes_the_token(running_server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{running_server.url}/call", params={"token": '"><script>alert(1)</script>'}
        ) as response:
            assert response.status == 200
            assert response.headers["Referrer-Policy"] == "no-referrer"
            page = await response.text()
    assert "<script>alert(1)" not in page
    assert 'data-token="&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in page
