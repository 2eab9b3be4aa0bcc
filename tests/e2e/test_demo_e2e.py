"""A newcomer's first call: `verzilvering serve --demo` and nothing but the links it prints.

The host opens the printed host link in Chromium, the kiosk runs the printed command, the
family member opens the printed family link in a second browser; the family waits in the
waiting room until the host lets them in from the page the host was given. Then all three
see and hear each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser

from tests.browser_helpers import DESKTOP, REPO, Tab, launch, open_tab

KIOSK_SECONDS = 45


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


async def _start_demo(tmp_path: Path, port: int) -> tuple[asyncio.subprocess.Process, str]:
    env = dict(os.environ)
    env.pop("VERZILVERING_TOKEN_SECRET", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "serve", "--demo", "--port", str(port),
        "--data-dir", str(tmp_path / "data"), "--log-level", "WARNING",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    printed = ""
    async with asyncio.timeout(30):
        while "/call?token=" not in printed.partition("family (familie)")[2]:
            line = await proc.stdout.readline()
            assert line, f"serve --demo stopped early:\n{printed}"
            printed += line.decode()
    return proc, printed


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _decoded_from(tab: Tab, stats_expr: str, name: str) -> dict:
    """Waits until `tab` decodes moving video and audio from the participant called `name`."""
    return await tab.wait_for(
        f"""name => {{
            const call = {stats_expr};
            const who = Object.values(call.participants).find(p => p.name === name);
            return who ? call.stats().then(s => s[who.participant_id] ?? null) : null;
        }}""",
        name,
        until=lambda m: bool(m)
        and m.get("video", {}).get("framesDecoded", 0) > 0
        and m.get("audio", {}).get("totalSamplesReceived", 0) > 0,
        timeout_s=30,
        what=f"decoded video and audio from {name}",
    )


async def test_a_newcomer_completes_a_three_way_call_from_the_printed_links(browser: Browser, tmp_path: Path) -> None:
    port = _free_port()
    server, printed = await _start_demo(tmp_path, port)
    kiosk = None
    try:
        async with asyncio.timeout(150):
            # The printed lines say what each link is for, in the order to use them.
            host_url = re.search(r"1\. host.*\n\s+(http://\S+/call\?token=\S+)", printed).group(1)
            family_url = re.search(r"3\. family.*\n\s+(http://\S+/call\?token=\S+)", printed).group(1)
            kiosk_command = re.search(r"(verzilvering-kiosk join --server \S+ --token \S+)", printed).group(1)
            # serve also says where its data is, where coordinators go, and how to stop.
            assert f"Data: {tmp_path / 'data'}" in printed, printed
            assert f"http://127.0.0.1:{port}/admin" in printed and "admin create-user" in printed, printed
            assert "Ctrl-C" in printed, printed

            host_context = await browser.new_context(locale="nl-NL", viewport=DESKTOP)
            host = await open_tab(host_context, host_url)
            # The host's own link opens the console: waiting room, admit/deny.
            assert await host.text("#lobby-title") == "Wachtkamer"
            await host.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="the host to join")
            await host.screenshot("demo-host")

            # The kiosk, exactly as printed (the console script is this checkout's module).
            argv = kiosk_command.split()[1:]
            kiosk = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kiosk_client.cli", *argv, "--duration", str(KIOSK_SECONDS),
                "--report", str(tmp_path / "kiosk.json"),
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            await _decoded_from(host, "window.verzilvering.call", "Mevrouw De Vries")

            family_context = await browser.new_context(locale="nl-NL", viewport=DESKTOP)
            family = await open_tab(family_context, family_url)
            await family.wait_for("window.verzilvering.state", until=lambda s: s == "lobby", what="family in the lobby")
            await family.wait_text("#status", "wachtkamer")

            lobby = host.page.locator("#lobby-list")
            await host.wait_for("document.querySelectorAll('.lobby-person').length", until=lambda n: n == 1,
                                what="the family member in the host's waiting room")
            await lobby.get_by_role("button", name="Kleindochter Sanne binnenlaten").click()

            await family.wait_for("window.verzilvering.state", until=lambda s: s == "connected",
                                  what="the family member to be let in")
            for who in ("Gastvrouw Ans", "Mevrouw De Vries"):
                await _decoded_from(family, "window.verzilvering", who)
            await _decoded_from(host, "window.verzilvering.call", "Kleindochter Sanne")
            await family.screenshot("demo-family")
            await host.screenshot("demo-host-three")

            assert kiosk.stdout is not None
            kiosk_out = (await kiosk.stdout.read()).decode(errors="replace")
            assert await kiosk.wait() == 0, kiosk_out
            report = json.loads((tmp_path / "kiosk.json").read_text())
            seen = {m["name"]: m for m in report["participants"].values()}
            for who in ("Gastvrouw Ans", "Kleindochter Sanne"):
                assert seen[who]["video_frames"] > 10 and seen[who]["audio_frames"] > 10, seen
    finally:
        if kiosk is not None and kiosk.returncode is None:
            kiosk.kill()
            await kiosk.wait()
        for context in browser.contexts:
            await context.close()
        server.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(server.wait(), 40)
        except TimeoutError:
            server.kill()
            await server.wait()
