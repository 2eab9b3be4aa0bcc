"""Helpers for the kiosk appliance tests: headless SDL, a directory to work with, a kiosk
running against the real server, a network that can be cut, and screenshot checks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import aiohttp  # noqa: E402

from kiosk_client.clock import DEFAULT_TIMEZONE, FakeClock  # noqa: E402
from kiosk_client.pairing import poll_pairing, request_pairing  # noqa: E402
from kiosk_client.runner import KioskApp, KioskConfig  # noqa: E402
from kiosk_client.state import Credential, StateDir  # noqa: E402
from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, STORE_KEY  # noqa: E402
from server.directory import Activity, Contact, Kiosk, Senior  # noqa: E402
from server.invites import issue_invite, named_secret  # noqa: E402
from server.pairing import confirm_pairing  # noqa: E402
from server.schedule import WEEKDAYS  # noqa: E402

from .conftest import SCREENSHOTS, RunningServer, WsClient  # noqa: E402

SENIOR = "s-1"


def real_clock() -> FakeClock:
    """A fake clock that starts at the real time (the server schedules with real time)."""
    return FakeClock(dt.datetime.now(dt.timezone.utc))


async def _portrait(server: RunningServer) -> str:
    """A small drawn portrait stored the way web/photos.py stores uploads; returns its URL."""
    import base64
    import io

    import pygame

    picture = pygame.Surface((240, 240))
    for y in range(240):
        pygame.draw.line(picture, (70 + y // 3, 130 + y // 4, 190), (0, y), (239, y))
    pygame.draw.circle(picture, (240, 200, 170), (120, 95), 55)
    pygame.draw.ellipse(picture, (180, 60, 80), (40, 150, 160, 140))
    pygame.draw.arc(picture, (120, 70, 40), (62, 30, 116, 100), 0.2, 2.9, 18)
    buffer = io.BytesIO()
    pygame.image.save(picture, buffer, "portrait.jpg")
    photo_id = "photo-" + "t" * 22
    await server.app[STORE_KEY].put_record(
        "people", photo_id, {"id": photo_id, "kind": "photo", "jpeg": base64.b64encode(buffer.getvalue()).decode()}
    )
    return f"/photos/{photo_id}.jpg"


async def seed(server: RunningServer, *, auto_join: bool = False, activity_start: dt.datetime | None = None) -> None:
    d = server.app[DIRECTORY_KEY]
    await d.put(Senior(id=SENIOR, name="Mevrouw Jansen", auto_join=auto_join), actor="test")
    await d.put(
        Contact(id="c-sanne", senior_id=SENIOR, name="Sanne de Vries", relation="dochter", trusted=True, auto_answer=True, photo_url=await _portrait(server)),
        actor="test",
    )
    await d.put(Contact(id="c-kees", senior_id=SENIOR, name="Kees", relation="zoon", trusted=True), actor="test")
    await d.put(Contact(id="c-piet", senior_id=SENIOR, name="Buurman Piet"), actor="test")
    start = activity_start or (dt.datetime.now(DEFAULT_TIMEZONE) + dt.timedelta(hours=2))
    local = start.astimezone(DEFAULT_TIMEZONE)
    await d.put(
        Activity(
            id="a-gym",
            title="Stoelgym",
            enrolled=[SENIOR],
            slots=[{"weekday": WEEKDAYS[local.weekday()], "start": local.strftime("%H:%M"), "duration_min": 60}],
        ),
        actor="test",
    )


async def _directory(server: RunningServer) -> None:
    d = server.app[DIRECTORY_KEY]
    await d.put(Senior(id="s-1", name="Mevrouw Jansen", auto_join=True), actor="test")
    await d.put(Contact(id="c-trusted", senior_id="s-1", name="Sanne", trusted=True, auto_answer=True), actor="test")
    await d.put(Contact(id="c-other", senior_id="s-1", name="Buurman Piet"), actor="test")
    await d.put(
        Activity(id="a-gym", title="Stoelgym", enrolled=["s-1"],
                 slots=[{"weekday": "tuesday", "start": "10:00", "duration_min": 45}]),
        actor="test",
    )


async def _pair(server: RunningServer, http: aiohttp.ClientSession) -> dict[str, str]:
    async with http.post(server.url + "/api/kiosk/pair") as r:
        assert r.status == 201
        started = await r.json()
    assert len(started["code"]) == 6 and started["code"].isdigit()
    poll_url = server.url + "/api/kiosk/pair/" + started["pairing_id"]
    headers = {"X-Pairing-Secret": started["secret"]}
    async with http.get(poll_url, headers=headers) as r:
        assert r.status == 202
    async with http.get(poll_url, headers={"X-Pairing-Secret": "wrong"}) as r:
        assert r.status == 410
    store, directory = server.app[STORE_KEY], server.app[DIRECTORY_KEY]
    kiosk = await confirm_pairing(store, directory, started["code"], "s-1", actor="coordinator-1")
    async with http.get(poll_url, headers=headers) as r:
        assert r.status == 200
        credential = await r.json()
    assert credential["kiosk_id"] == kiosk.id
    # Given out once only.
    async with http.get(poll_url, headers=headers) as r:
        assert r.status == 410
    stored = await directory.get(Kiosk, kiosk.id)
    assert stored is not None and stored.credential_hash and credential["credential"] not in str(stored)
    return credential


async def _device(connect: Any, credential: dict[str, str]) -> tuple[WsClient, dict[str, Any]]:
    kiosk = await connect()
    await kiosk.send({"type": "hello", "v": 1, "device": credential})
    return kiosk, await kiosk.expect("device_welcome")


async def provision(server: RunningServer, state_dir: Path) -> Credential:
    """Pairs a kiosk through the real API and stores its credential, as `run` would."""
    async with aiohttp.ClientSession() as http:
        ticket = await request_pairing(http, server.url)
        await confirm_pairing(server.app[STORE_KEY], server.app[DIRECTORY_KEY], ticket.code, SENIOR, actor="test")
        credential = await poll_pairing(http, server.url, ticket)
    assert credential is not None
    StateDir(state_dir).save_credential(credential)
    return credential


async def family_call(server: RunningServer, contact_id: str) -> dict[str, Any]:
    contact = await server.app[DIRECTORY_KEY].get(Contact, contact_id)
    assert contact is not None
    invite = issue_invite(named_secret(server.app[SETTINGS_KEY], "invite"), contact)
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/api/calls", json={"invite": invite}) as r:
            assert r.status == 201, await r.text()
            return await r.json()


def kiosk_config(server_url: str, state_dir: Path, **overrides: Any) -> KioskConfig:
    values: dict[str, Any] = dict(
        server=server_url,
        state_dir=state_dir,
        video="testsrc",
        audio="tone",
        fullscreen=False,
        window_size=(1280, 800),
        video_size=(320, 240),
        fps=15,
        pairing_poll_s=0.2,
        tick_s=0.05,
        watchdog_s=6.0,
        device_heartbeat_s=2.0,
        room_heartbeat_s=2.0,
        device_backoff_cap_s=3.0,
        room_backoff_cap_s=3.0,
    )
    values.update(overrides)
    return KioskConfig(**values)


@contextlib.asynccontextmanager
async def running_kiosk(config: KioskConfig, clock: FakeClock) -> AsyncIterator[KioskApp]:
    app = KioskApp(config, clock=clock)
    task = asyncio.ensure_future(app.run())
    try:
        yield app
        if task.done():
            task.result()  # surface a crash
    finally:
        app.request_stop()
        try:
            await asyncio.wait_for(task, timeout=20)
        except asyncio.TimeoutError:
            task.cancel()


def check_screenshot(path: Path, *, min_colors: int = 8, min_bytes: int = 8000) -> int:
    """The file exists and shows something real: several colours, a real PNG size."""
    import pygame

    assert path.exists(), path
    size = path.stat().st_size
    assert size >= min_bytes, f"{path.name}: only {size} bytes"
    image = pygame.image.load(str(path))
    w, h = image.get_size()
    colors = {tuple(image.get_at((x, y)))[:3] for x in range(0, w, 4) for y in range(0, h, 4)}
    assert len(colors) >= min_colors, f"{path.name}: only {len(colors)} colours"
    return len(colors)


def screenshot(app: KioskApp, name: str, **check: Any) -> Any:
    path = SCREENSHOTS / f"kiosk-{name}.png"
    layout = app.screenshot(path)
    check_screenshot(path, **check)
    return layout


class CuttableProxy:
    """A TCP relay in front of the server whose "network" can be cut and restored.

    Cut: nothing passes in either direction and new connections hang unanswered — what a
    dead home router looks like, not a polite close. Restore: the connections that lived
    through the cut are dropped (the server has given up on them by then), new ones work.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.cut = False
        self._server: asyncio.Server | None = None
        self._pipes: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            self._held.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pair = (writer, up_writer)
        self._pipes.add(pair)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)
        self._pipes.discard(pair)
        for w in pair:
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if self.cut:
                continue  # lost in the dead network
            writer.write(data)
            await writer.drain()
        writer.close()

    def cut_network(self) -> None:
        self.cut = True
        self._cut_pipes = set(self._pipes)

    def restore_network(self) -> None:
        self.cut = False
        for client, upstream in list(getattr(self, "_cut_pipes", set())):
            for w in (client, upstream):
                if w is not None and w.transport is not None:
                    w.transport.abort()
        for writer in list(self._held):
            writer.transport.abort()
        self._held.clear()

    async def close(self) -> None:
        self.restore_network()
        for client, upstream in list(self._pipes):
            for w in (client, upstream):
                if w is not None:
                    w.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class UdpBlackhole:
    """Makes a peer connection's UDP sockets drop everything both ways, like a cut cable.

    Reaches into aioice (test-only): RTCIceTransport → aioice Connection → its protocols.
    """

    def __init__(self) -> None:
        self.active = False
        self.dropped = 0
        self._patched: list[Any] = []

    def attach(self, pc: Any) -> int:
        protocols = set()
        for transceiver in pc.getTransceivers():
            dtls = transceiver.sender.transport or transceiver.receiver.transport
            if dtls is None:
                continue
            connection = dtls.transport._connection
            protocols.update(connection._protocols)
        for protocol in protocols:
            self._patch(protocol)
        return len(protocols)

    def _patch(self, protocol: Any) -> None:
        hole = self
        transport = protocol.transport
        original_sendto = transport.sendto
        original_received = protocol.datagram_received

        def sendto(data: bytes, addr: Any = None) -> None:
            if hole.active:
                hole.dropped += 1
                return
            original_sendto(data, addr)

        def datagram_received(data: bytes, addr: Any) -> None:
            if hole.active:
                hole.dropped += 1
                return
            original_received(data, addr)

        transport.sendto = sendto  # type: ignore[method-assign]
        protocol.datagram_received = datagram_received
        self._patched.append(protocol)
