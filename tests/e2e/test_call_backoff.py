"""The call page when media cannot get through: it backs off and says what to try.

A real "no path": the server offers its media only on IPv6 (::1) and Chromium gathers only
IPv4 (its IPv6 for WebRTC switched off), so no ICE candidate pair exists. Before, the page
then said "Connected" for ever (or, where the browser reported the failure at once,
started the whole session over every half second); now each session that gets no media
ends after a while, the next one waits longer, and after a few the page says what is wrong.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from server.rtc.ice import restrict_host_addresses

from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, REPO, SCREENSHOTS, Tab, open_tab, start_site
from tests.conftest import LOOPBACK_MEDIA

IPV4_ONLY_WEBRTC = "--force-fieldtrials=WebRTC-IPv6Default/Disabled/"


def test_restart_delays_grow_to_a_cap_and_a_healthy_session_starts_from_the_socket_backoff() -> None:
    script = (
        "import {reconnectDelay} from './web/static/callcore.js';"
        "console.log(JSON.stringify({media: [1,2,3,4,5,6,7,20].map(f => reconnectDelay(0, f)),"
        " socket: [0,1,2,3,4,9].map(a => reconnectDelay(a, 0))}));"
    )
    out = subprocess.run(["node", "--input-type=module", "-e", script], cwd=REPO, capture_output=True,
                         text=True, timeout=30, check=True)
    delays = json.loads(out.stdout)
    media = delays["media"]
    assert media == sorted(media) and media[0] == 500 and media[-1] == 30000 == max(media)
    assert all(b >= 2 * a or b == 30000 for a, b in zip(media[1:], media[2:]))
    assert delays["socket"] == [500, 1000, 2000, 4000, 8000, 8000]


@pytest.fixture
async def ipv4_only_browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, IPV4_ONLY_WEBRTC], timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def server_media_on_ipv6_only() -> AsyncIterator[None]:
    restrict_host_addresses(["::1"])
    try:
        yield
    finally:
        restrict_host_addresses(list(LOOPBACK_MEDIA))


async def test_media_that_cannot_connect_backs_off_and_says_what_to_try(
    ipv4_only_browser: Browser, server_media_on_ipv6_only: None, tmp_path: Path
) -> None:
    site, runner = await start_site(tmp_path / "data")
    try:
        async with asyncio.timeout(120):
            context = await ipv4_only_browser.new_context(locale="nl-NL", viewport={"width": 1100, "height": 760})
            page = await context.new_page()
            sessions: list[float] = []
            # A session given up sends `leave` and drops its socket at once.
            left: list[float] = []

            def opened(ws) -> None:  # type: ignore[no-untyped-def]
                sessions.append(time.monotonic())
                ws.on("framesent", lambda payload: left.append(time.monotonic()) if '"leave"' in str(payload) else None)

            page.on("websocket", opened)
            token = site.token(role="family", room="koffie-zonder-pad", name="Sanne")
            await page.goto(f"{site.url}/call?token={token}")
            tab = Tab(page)
            notice = await tab.wait_for(
                "(() => { const n = document.getElementById('notice'); return n.hidden ? null : n.textContent; })()",
                timeout_s=90, what="the page to say that media cannot get through",
            )
            assert "firewall" in notice and "ander netwerk" in notice, notice
            assert await tab.value("window.verzilvering.mediaFailures") == 3
            await page.screenshot(path=str(SCREENSHOTS / "web-call-media-blocked.png"))
            # Three sessions so far; the wait between a failed session's end and the next one
            # grows (0.5 s, then 2 s, each ±25 %), where it was 0.5 s every time.
            assert len(sessions) == 3 and len(left) >= 2, (sessions, left)
            first_wait, second_wait = sessions[1] - left[0], sessions[2] - left[1]
            assert first_wait < 1.0 and second_wait >= 1.4, (first_wait, second_wait)
            # And it does not give up: the next session follows after a longer wait still.
            await asyncio.sleep(2)
            assert len(sessions) == 3, sessions
            await context.close()
    finally:
        await runner.cleanup()
