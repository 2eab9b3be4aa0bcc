"""Client side of signalling protocol v1 (docs/protocol.md), with resume."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from server.tasks import TaskOwner

logger = logging.getLogger(__name__)

MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]
CONNECT_TIMEOUT_S = 10.0
# A connect that fails in these ways is tried again (on the next address). aiohttp raises
# AssertionError when the server goes away in the middle of the WebSocket upgrade.
NETWORK_ERRORS = (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, OSError, AssertionError)


class SignalingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def ws_url(server: str) -> str:
    base = server.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + "/ws"
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + "/ws"
    return base + "/ws"


async def answer_offers(
    offers: asyncio.Queue[dict[str, Any]],
    answer: MessageHandler,
    failed: Callable[[dict[str, Any], Exception], None],
) -> None:
    """Answers the server's offers (docs/protocol.md, "Negotiation") one at a time, until
    cancelled. Only the newest waiting offer counts: older ones were superseded. A failed
    answer goes to `failed` and the next offer is still answered."""
    while True:
        offer = await offers.get()
        while not offers.empty():
            offer = offers.get_nowait()
        try:
            await answer(offer)
        except Exception as exc:
            failed(offer, exc)


class SignalingClient:
    """Keeps one logical session alive across dropped WebSockets by resuming it."""

    def __init__(self, server: str | list[str], token: str, on_message: MessageHandler, heartbeat: float | None = None) -> None:
        # Several addresses (nodes) may be given: a failed connect moves on to the next.
        self.urls = [ws_url(s) for s in ([server] if isinstance(server, str) else server)]
        self._url_index = 0
        self.token = token
        self.on_message = on_message
        # WebSocket ping/pong every `heartbeat` s: a socket silently cut by the network is
        # noticed in 1.5 × heartbeat instead of when TCP gives up, minutes later.
        self.heartbeat = heartbeat
        self.welcome: dict[str, Any] = {}
        self.last_seq = 0
        self.closed = False
        self._http = aiohttp.ClientSession()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        # The socket's reader, the pinger and a resume in progress; close() ends them.
        self._tasks = TaskOwner("kiosk-signaling")
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._welcomed: asyncio.Future[dict[str, Any]] | None = None

    @property
    def url(self) -> str:
        return self.urls[self._url_index]

    def next_server(self) -> None:
        self._url_index = (self._url_index + 1) % len(self.urls)

    async def connect(self) -> dict[str, Any]:
        """Opens the socket and says hello; returns the `welcome` message. Each address
        is tried once, in order, until one answers (a dead node is skipped at once)."""
        for attempt in range(len(self.urls)):
            try:
                await self._open(resume=False)
                return self.welcome
            except NETWORK_ERRORS:
                if attempt == len(self.urls) - 1:
                    raise
                self.next_server()
        raise AssertionError("unreachable")

    async def _open(self, resume: bool) -> None:
        # Bounded: through a dead network the TCP or upgrade handshake may never finish.
        self._ws = await asyncio.wait_for(
            self._http.ws_connect(self.url, heartbeat=self.heartbeat, max_msg_size=4 * 1024 * 1024),
            timeout=CONNECT_TIMEOUT_S,
        )
        self._welcomed = asyncio.get_running_loop().create_future()
        hello: dict[str, Any] = {"type": "hello", "v": 1, "token": self.token}
        if resume:
            hello["resume"] = {
                "session_id": self.welcome["session_id"],
                "resume_key": self.welcome["resume_key"],
                "last_seq": self.last_seq,
            }
        ws, welcomed = self._ws, self._welcomed
        self._reader = self._tasks.spawn(self._read(ws, welcomed), name="kiosk-signaling-read")
        try:
            await ws.send_str(json.dumps(hello))
            await asyncio.wait_for(asyncio.shield(welcomed), timeout=10)
        except BaseException:
            if not welcomed.done():
                welcomed.cancel()
            # Not left open: a socket without a session is closed by the server after
            # its hello timeout, which read as a lost connection and started another
            # resume, every 10 s for as long as the process ran.
            self._ws = None
            await ws.close()
            raise
        if self._pinger is None or self._pinger.done():
            self._pinger = self._tasks.spawn(self._ping(), name="kiosk-signaling-ping")

    async def send(self, message: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            raise ConnectionError("signalling socket is not open")
        await self._ws.send_str(json.dumps(message))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, welcomed: asyncio.Future[dict[str, Any]]) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            kind = message.get("type")
            seq = message.get("seq")
            if isinstance(seq, int) and kind != "resumed":
                if seq <= self.last_seq:
                    continue
                self.last_seq = seq
            if kind == "welcome":
                self.welcome = message
            if kind in ("welcome", "resumed") and not welcomed.done():
                welcomed.set_result(message)
            elif kind == "error" and not welcomed.done():
                welcomed.set_exception(SignalingError(message["code"], message["message"]))
            try:
                await self.on_message(message)
            except Exception:
                logger.exception("handling %s failed", kind)
        if not welcomed.done():
            welcomed.set_exception(ConnectionError(f"socket closed ({ws.close_code})"))
        elif ws is self._ws and not self.closed:
            # The current, welcomed socket dropped; a failed hello's socket is _open's.
            self._tasks.spawn(self._reconnect(), name="kiosk-signaling-resume")

    async def _reconnect(self) -> None:
        """Resumes the session with backoff; the media path is left alone meanwhile."""
        delay = 0.2
        grace_s = self.welcome.get("resume_grace_ms", 20000) / 1000
        deadline = time.monotonic() + grace_s
        while not self.closed and time.monotonic() < deadline:
            try:
                await self._open(resume=True)
                logger.info("signalling resumed")
                return
            except SignalingError as exc:
                logger.warning("resume refused: %s", exc)
                break
            except NETWORK_ERRORS:
                self.next_server()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if not self.closed:
            await self.on_message({"type": "connection_lost"})

    async def _ping(self) -> None:
        interval = self.welcome.get("ping_interval_ms", 10000) / 1000
        while not self.closed:
            await asyncio.sleep(interval)
            try:
                await self.send({"type": "ping", "ts": time.time()})
            except (ConnectionError, aiohttp.ClientError):
                pass

    async def drop_socket(self) -> None:
        """Closes the WebSocket without leaving, as a network cut would (for tests)."""
        if self._ws is not None:
            await self._ws.close()

    async def close(self) -> None:
        self.closed = True
        if self._pinger is not None:
            self._pinger.cancel()
        if self._ws is not None and not self._ws.closed:
            try:
                await self.send({"type": "leave"})
                await asyncio.wait_for(self._reader, timeout=2) if self._reader else None
            except (ConnectionError, asyncio.TimeoutError, aiohttp.ClientError):
                pass
            await self._ws.close()
        await self._tasks.close()
        await self._http.close()
