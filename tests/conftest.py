"""Shared fixtures: a real server on loopback, tokens, and a protocol-level WebSocket client."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.appkeys import ISSUER_KEY
from server.config import Settings
from server.rtc.ice import restrict_host_addresses
from signaling.tokens import TokenIssuer

from tests.stallreport import StallReport

TEST_SECRET = "test-secret-" + "x" * 40

# All media in the tests stays on loopback: in this process (clients and in-process
# servers) and in server processes the tests start (they read the environment).
LOOPBACK_MEDIA = ("127.0.0.1",)
os.environ["VERZILVERING_MEDIA_ADDRESSES"] = json.dumps(list(LOOPBACK_MEDIA))
restrict_host_addresses(list(LOOPBACK_MEDIA))

# Tests photograph kiosk screens and web pages into a folder of this run; only
# `--update-screenshots` copies them over the tracked pictures, so a test run leaves the
# checkout as it was.
SCREENSHOTS = Path(tempfile.mkdtemp(prefix="verzilvering-screenshots-"))
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def pytest_configure(config: pytest.Config) -> None:
    # Here pytest's output capture is suspended: fd 2 is the terminal's (or CI's) stderr.
    config.pluginmanager.register(StallReport(os.dup(2)), "stall-report")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-screenshots", action="store_true",
        help="after a run that passes, copy the screenshots it took into docs/screenshots/",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    # A failing run may have photographed a broken page: only a passing one replaces pictures.
    if config.getoption("--update-screenshots") and exitstatus == 0:
        pictures = sorted(SCREENSHOTS.glob("*.png"))
        for picture in pictures:
            shutil.copyfile(picture, DOCS_SCREENSHOTS / picture.name)
        terminalreporter.write_sep("-", f"copied {len(pictures)} screenshots into {DOCS_SCREENSHOTS}")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)


@dataclass
class RunningServer:
    app: web.Application
    url: str
    issuer: TokenIssuer

    def token(self, role: str = "senior", room: str = "room-1", name: str = "Test", **kw: Any) -> str:
        return self.issuer.issue(role=role, room=room, name=name, **kw)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", token_secret=TEST_SECRET, **overrides)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Tests override this to tune limits for one module."""
    return {}


@pytest.fixture
async def server(tmp_path: Path, settings_overrides: dict[str, Any]) -> AsyncIterator[RunningServer]:
    app = create_app(make_settings(tmp_path, **settings_overrides))
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield RunningServer(app, str(test_server.make_url("")).rstrip("/"), app[ISSUER_KEY])
    finally:
        await test_server.close()


class WsClient:
    """A bare protocol client for tests: send dicts or raw text, wait for typed messages."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self._cursor = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        if self._cursor < len(self.received):
            self._cursor += 1
            return self.received[self._cursor - 1]
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"socket {msg.type.name} (close code {self.ws.close_code})")
        message = json.loads(msg.data)
        self.received.append(message)
        self._cursor += 1
        return message

    async def expect(self, type_: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """Skips messages until one of `type_` whose fields match arrives."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no {type_} {fields} within {timeout}s; got {self.received[-5:]}")
            message = await self.next(timeout=remaining)
            if message.get("type") == type_ and all(message.get(k) == v for k, v in fields.items()):
                return message

    async def expect_error(self, code: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next error must carry `code`; room events in between are skipped."""
        message = await self.expect("error", timeout=timeout)
        assert message["code"] == code, message
        assert message["message"], message
        return message

    async def closed(self, timeout: float = 5.0) -> int | None:
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type == aiohttp.WSMsgType.CLOSE:
                # The code the server's close frame carries. ws.close_code can turn into
                # 1006 afterwards when the client's own close reply finds the server gone
                # (a server that waited close_timeout_s for a busy test client to answer).
                return int(msg.data)
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.received.append(json.loads(msg.data))


@pytest.fixture
async def connect(server: RunningServer) -> AsyncIterator[Any]:
    session = aiohttp.ClientSession()
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def _connect(**kw: Any) -> WsClient:
        ws = await session.ws_connect(server.url + "/ws", **kw)
        sockets.append(ws)
        return WsClient(ws)

    try:
        yield _connect
    finally:
        for ws in sockets:
            await ws.close()
        await session.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def hello(client: WsClient, token: str, **extra: Any) -> dict[str, Any]:
    await client.send({"type": "hello", "v": 1, "token": token, **extra})
    return await client.expect("welcome")


async def resume(client: WsClient, token: str, welcome: dict[str, Any], last_seq: int) -> dict[str, Any]:
    """A hello that resumes the session `welcome` opened, from `last_seq` on: the "resumed" message."""
    await client.send({"type": "hello", "v": 1, "token": token, "resume": resume_field(welcome, last_seq)})
    return await client.expect("resumed")


def resume_field(welcome: dict[str, Any], last_seq: Any) -> dict[str, Any]:
    """A hello's "resume" for the session `welcome` opened."""
    return {"session_id": welcome["session_id"], "resume_key": welcome["resume_key"], "last_seq": last_seq}


async def join(client: WsClient, token: str, room: str = "room-1") -> dict[str, Any]:
    await hello(client, token)
    await client.send({"type": "join", "room": room})
    return await client.expect("joined")


def count_presence_writes(store: Any) -> list[str]:
    """Wraps the store's touch_presence; the returned list gets each key written."""
    touched: list[str] = []
    original = store.touch_presence

    async def counting(key: str, ttl_s: float) -> None:
        touched.append(key)
        await original(key, ttl_s)

    store.touch_presence = counting
    return touched
