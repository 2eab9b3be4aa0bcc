"""Headless Chromium (Debian's, via Playwright) against a real server; axe-core checks."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from server.app import create_app
from server.appkeys import DIRECTORY_KEY, ISSUER_KEY
from server.config import Settings
from server.directory import Directory

from tests.conftest import SCREENSHOTS

REPO = Path(__file__).resolve().parent.parent
AXE_DIR = REPO / "web" / "axe"
AXE = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # The knock sound plays without a click first (a host has clicked "Start" anyway).
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The call page's tests keep Chromium's autoplay rule: where it blocks sound, the page shows
# its own button to play it (web/static/callcore.js), and the screenshot shows that page.
CALL_CHROMIUM_ARGS = [arg for arg in CHROMIUM_ARGS if not arg.startswith("--autoplay-policy=")]
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}


@dataclass
class Site:
    url: str
    app: web.Application

    @property
    def directory(self) -> Directory:
        return self.app[DIRECTORY_KEY]

    def token(self, **kw: Any) -> str:
        return self.app[ISSUER_KEY].issue(**kw)


async def start_site(data_dir: Path, **overrides: Any) -> tuple[Site, web.AppRunner]:
    settings = Settings(
        **{"host": "127.0.0.1", "port": 0, "data_dir": data_dir, "ice_servers": (), **overrides}
    )
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return Site(f"http://127.0.0.1:{port}", app), runner


async def launch() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Tab:
    """One page and its console, with polling that works under the pages' CSP."""

    page: Page
    log: list[str] = field(default_factory=list)

    async def value(self, expression: str, arg: Any = None) -> Any:
        return await self.page.evaluate(expression, arg)

    async def wait_for(self, expression: str, arg: Any = None, *, until: Callable[[Any], bool] = bool,
                       timeout_s: float = 20, what: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            result = await self.value(expression, arg)
            if until(result):
                return result
            if loop.time() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s}s waiting for {what}; last value: {result!r}\n"
                    "browser console:\n" + "\n".join(self.log[-40:])
                )
            await asyncio.sleep(0.2)

    async def text(self, selector: str) -> str:
        return (await self.page.locator(selector).first.inner_text()).strip()

    async def wait_text(self, selector: str, expected: str, timeout_s: float = 20) -> None:
        await self.wait_for(
            "s => document.querySelector(s)?.textContent.trim() ?? null", selector,
            until=lambda t: t is not None and expected in t, timeout_s=timeout_s,
            what=f"{selector} to say {expected!r}",
        )

    async def screenshot(self, name: str, full_page: bool = True) -> None:
        await self.page.screenshot(path=str(SCREENSHOTS / f"web-{name}.png"), full_page=full_page)


async def open_tab(context: BrowserContext, url: str, *, status: int | None = 200) -> Tab:
    page = await context.new_page()
    tab = Tab(page)
    page.on("console", lambda m: tab.log.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: tab.log.append(f"pageerror: {e}"))
    response = await page.goto(url, timeout=15_000)
    if status is not None:
        assert response is not None and response.status == status, (url, response and response.status)
    return tab


async def submit_login(page: Page, username: str, password: str) -> None:
    """Fills in the login form on `page` and sends it."""
    await page.get_by_label("Gebruikersnaam").fill(username)
    await page.get_by_label("Wachtwoord").fill(password)
    await page.get_by_role("button", name="Inloggen").click()


async def log_in(context: BrowserContext, site_url: str, username: str, password: str, lands_on: str) -> Tab:
    """A tab signed in through the login page, on the page that leads to (`lands_on`: "/admin", "/host")."""
    tab = await open_tab(context, f"{site_url}/login")
    await submit_login(tab.page, username, password)
    await tab.page.wait_for_url(f"{site_url}{lands_on}")
    return tab


def ensure_axe() -> str:
    """axe-core from the npm registry (tests/run.sh installs it; this covers a bare pytest)."""
    if not AXE.exists():
        subprocess.run(["npm", "ci", "--prefix", str(AXE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
                       check=True, timeout=300)
    return AXE.read_text()


AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


async def axe_violations(tab: Tab, axe_source: str) -> list[dict[str, Any]]:
    """Serious and critical WCAG A/AA violations on the page as it is now."""
    # Evaluated through DevTools, which the page's CSP does not govern; the page itself
    # keeps its CSP (so the test also proves the pages work under it).
    await tab.page.evaluate(f"() => {{ {axe_source}\n; window.axe = axe; }}")
    result = await tab.page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
        AXE_TAGS,
    )
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"],
         "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


# Every interactive element a finger or mouse must hit, except links inside running text
# (WCAG 2.5.8 exempts inline links; the 44px rule is for controls).
TARGETS_JS = """
() => {
  const small = [];
  const seen = new Set();
  for (const el of document.querySelectorAll('button, a, input, select, textarea, summary, [role=button]')) {
    if (el.closest('[hidden]') || el.type === 'hidden') continue;
    const style = getComputedStyle(el);
    if (style.display === 'none' || style.visibility === 'hidden') continue;
    if (el.classList.contains('skip-link') || el.classList.contains('visually-hidden')) continue;
    let target = el;
    if ((el.type === 'checkbox' || el.type === 'radio') && el.labels?.length) {
      // The label is part of the target: clicking it toggles the box.
      const box = el.getBoundingClientRect();
      const label = el.labels[0].getBoundingClientRect();
      const height = Math.max(box.bottom, label.bottom) - Math.min(box.top, label.top);
      if (height < 44) small.push(`${el.id} (with its label): ${Math.round(height)}px high`);
      continue;
    }
    if (el.tagName === 'A' && !el.classList.contains('button')) {
      const parent = el.parentElement;
      const inline = parent && ['P', 'LI', 'DD', 'TD', 'SPAN', 'STRONG'].includes(parent.tagName)
        && parent.textContent.trim() !== el.textContent.trim();
      if (inline) continue;
    }
    const r = target.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if (r.height < 44 || r.width < 44) {
      const name = (el.id || el.getAttribute('name') || el.textContent || '').trim().slice(0, 40);
      const key = `${el.tagName}:${name}`;
      if (!seen.has(key)) small.push(`${el.tagName.toLowerCase()} "${name}": ${Math.round(r.width)}x${Math.round(r.height)}`);
      seen.add(key);
    }
  }
  return small;
}
"""

OVERFLOW_JS = """
() => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (el.closest('.table-wrap')) continue;  // scrolls by itself, and is focusable
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > width + 1) wide.push(`${el.tagName.toLowerCase()}.${el.className}: right ${Math.round(r.right)}`);
  }
  return {scroll: document.documentElement.scrollWidth, width, wide: wide.slice(0, 5)};
}
"""

FOCUS_JS = """
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  return {
    tag: el.tagName.toLowerCase(),
    text: (el.textContent || el.value || '').trim().slice(0, 40),
    outline: parseFloat(style.outlineWidth) || 0,
    outlineStyle: style.outlineStyle,
    shadow: style.boxShadow,
  };
}
"""


async def check_accessibility(tab: Tab, axe_source: str, name: str) -> dict[str, Any]:
    """axe (serious/critical), 44px targets, no sideways scrolling, visible keyboard focus."""
    problems: dict[str, Any] = {}
    violations = await axe_violations(tab, axe_source)
    if violations:
        problems["axe"] = violations
    small = await tab.value(TARGETS_JS)
    if small:
        problems["small targets"] = small
    overflow = await tab.value(OVERFLOW_JS)
    if overflow["scroll"] > overflow["width"] + 1:
        problems["horizontal scroll"] = overflow
    # The first few Tab stops show a focus ring.
    await tab.page.evaluate("() => { document.activeElement?.blur(); window.scrollTo(0, 0); }")
    for _ in range(4):
        await tab.page.keyboard.press("Tab")
        focused = await tab.value(FOCUS_JS)
        if focused is None:
            break
        if focused["outline"] < 2 or focused["outlineStyle"] == "none":
            problems.setdefault("focus not visible", []).append(focused)
    return problems


def jsonable(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False)


async def device_socket(http: aiohttp.ClientSession, url: str, credentials: dict[str, str]) -> aiohttp.ClientWebSocketResponse:
    """A kiosk's device connection (protocol: "Kiosk devices")."""
    ws = await http.ws_connect(url.replace("http", "ws") + "/ws")
    await ws.send_json({"type": "hello", "v": 1, "device": credentials})
    welcome = await ws.receive_json(timeout=10)
    assert welcome["type"] == "device_welcome", welcome
    return ws


async def next_message(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 15) -> dict[str, Any]:
    """The next message of type `kind` on a device or family page socket; others are passed over."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"socket {message.type.name} while waiting for {kind}")
            data = json.loads(message.data)
            if data.get("type") == kind:
                return data


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A Chromium for the call page (tests/e2e/test_browser_call.py, test_browser_simulcast.py)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CALL_CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class CallPage(Tab):
    """The call page (/call) and what it says of the call."""

    async def wait_until_connected(self) -> None:
        await self.wait_for(
            "window.verzilvering?.state", until=lambda s: s == "connected",
            timeout_s=20, what="the call page to connect",
        )

    async def participant_id_of(self, name: str) -> str:
        return await self.wait_for(
            """name => Object.values(window.verzilvering.participants)
                .find(p => p.name === name)?.participant_id ?? null""",
            name, timeout_s=20, what=f"{name!r} to appear in the participant list",
        )

    async def media_from(self, participant_id: str) -> dict[str, Any]:
        stats = await self.value("window.verzilvering.stats()")
        return stats.get(participant_id, {})

    async def wait_for_media_from(self, participant_id: str) -> dict[str, Any]:
        return await self.wait_for(
            "id => window.verzilvering.stats().then(stats => stats[id] ?? {})",
            participant_id,
            until=lambda media: (
                media.get("video", {}).get("width", 0) > 0
                and media.get("video", {}).get("framesDecoded", 0) > 0
                and media.get("audio", {}).get("packetsReceived", 0) > 0
                and media.get("audio", {}).get("totalSamplesReceived", 0) > 0
            ),
            timeout_s=20,
            what=f"decoded video and audio from {participant_id}",
        )


async def open_call(browser: Browser, base_url: str, token: str) -> CallPage:
    page = await browser.new_page(viewport={"width": 1100, "height": 760})
    call = CallPage(page)
    page.on("console", lambda message: call.log.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: call.log.append(f"pageerror: {error}"))
    response = await page.goto(f"{base_url}/call?token={token}", timeout=15_000)
    assert response is not None and response.status == 200
    return call
