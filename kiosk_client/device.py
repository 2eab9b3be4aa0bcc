"""The kiosk's own connection to the server: one WebSocket at /ws as a *device*
(docs/protocol.md, "Kiosk devices"), open for as long as the kiosk runs.

It reconnects by itself — exponential backoff with jitter, capped at `backoff.cap`
seconds — and notices a silently dead network through WebSocket heartbeats rather than
waiting minutes for TCP. A `revoked` message or a `device_invalid` error ends it with
`DeviceRevoked`: the owner then forgets the credential and shows a pairing code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import Any

import aiohttp

from server.tasks import TaskOwner

from . import __version__
from .backoff import Backoff
from .signaling import ws_url
from .state import Credential

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
WELCOME_TIMEOUT_S = 10.0


class DeviceRevoked(Exception):
    """The server no longer accepts this kiosk's credential."""


@dataclass(eq=False)
class DeviceClient:
    server: InitVar[str]
    credential: Credential
    _: KW_ONLY
    on_welcome: Callable[[dict[str, Any]], None]
    on_message: Callable[[dict[str, Any]], None]
    on_offline: Callable[[], None]
    heartbeat_s: float = 10.0
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=15.0))

    def __post_init__(self, server: str) -> None:
        self.url = ws_url(server)
        self.welcome: dict[str, Any] = {}
        self.connected = False
        self.connects = 0
        self.failures = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._closed = False
        self._refresh = False
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Runs until `close()`; raises `DeviceRevoked` when the credential is refused."""
        self._http = aiohttp.ClientSession()
        try:
            while not self._closed:
                try:
                    await self._session()
                except DeviceRevoked:
                    raise
                except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, OSError, ValueError) as exc:
                    self.failures += 1
                    logger.info("device connection: %s", exc or type(exc).__name__)
                finally:
                    if self.connected:
                        self.connected = False
                        if not self._refresh:
                            # A refresh reconnects at once; a ringing call must not turn
                            # into a missed one because the contact list changed.
                            self.on_offline()
                if self._closed:
                    break
                if self._refresh:
                    self._refresh = False
                    continue
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.backoff.next())
                except asyncio.TimeoutError:
                    pass
        finally:
            await self._http.close()

    async def _session(self) -> None:
        assert self._http is not None
        ws = await asyncio.wait_for(
            self._http.ws_connect(self.url, heartbeat=self.heartbeat_s, max_msg_size=4 * 1024 * 1024),
            timeout=CONNECT_TIMEOUT_S,
        )
        self._ws = ws
        # This socket's pinger, ended with the socket.
        pinger = TaskOwner("kiosk-device")
        try:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "hello",
                        "v": 1,
                        "device": {
                            "kiosk_id": self.credential.kiosk_id,
                            "credential": self.credential.credential,
                            "version": __version__,
                        },
                    }
                )
            )
            first = await self._receive(ws, WELCOME_TIMEOUT_S)
            if first is None:
                raise ConnectionError(f"closed before welcome ({ws.close_code})")
            self._check_revoked(first)
            if first.get("type") != "device_welcome":
                raise ConnectionError(f"unexpected first message {first.get('type')!r}")
            self.welcome = first
            self.connected = True
            self.connects += 1
            self.backoff.reset()
            self.on_welcome(first)
            pinger.spawn(self._ping(ws, first.get("ping_interval_ms", 10000) / 1000), name="kiosk-device-ping")
            while True:
                message = await self._receive(ws, None)
                if message is None:
                    return
                self._check_revoked(message)
                self.on_message(message)
        finally:
            await pinger.close()
            self._ws = None
            if not ws.closed:
                await ws.close()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, timeout: float | None) -> dict[str, Any] | None:
        while True:
            msg = await ws.receive(timeout=timeout)
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if isinstance(data, dict):
                    return data
                continue
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return None

    @staticmethod
    def _check_revoked(message: dict[str, Any]) -> None:
        if message.get("type") == "revoked":
            raise DeviceRevoked("revoked")
        if message.get("type") == "error" and message.get("code") == "device_invalid":
            raise DeviceRevoked("device_invalid")

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse, interval: float) -> None:
        while not ws.closed:
            await asyncio.sleep(max(1.0, interval))
            try:
                await ws.send_str(json.dumps({"type": "ping", "ts": time.time()}))
            except (ConnectionError, aiohttp.ClientError):
                return

    async def send(self, message: dict[str, Any]) -> bool:
        """False when offline; the caller's state machine decides whether to ask again."""
        ws = self._ws
        if ws is None or ws.closed or not self.connected:
            return False
        try:
            await ws.send_str(json.dumps(message))
            return True
        except (ConnectionError, aiohttp.ClientError):
            return False

    async def refresh(self) -> None:
        """Reconnects now (a new `device_welcome` carries the new activities and contacts)."""
        self._refresh = True
        self._wake.set()
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()

    def reconnect_now(self) -> None:
        """Skips the current backoff wait."""
        self._wake.set()

    async def drop(self) -> None:
        """Aborts the socket as a network failure would (for tests)."""
        if self._ws is not None:
            await self._ws.close()

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
