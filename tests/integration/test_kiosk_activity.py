"""Auto-join at the scheduled time (with an injected clock), the activity screen with the
host large, and a 30-second network cut the kiosk recovers from without being touched."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

from kiosk_client.appliance import AUTO_JOIN_COUNTDOWN_S, Mode
from kiosk_client.call import CallClient
from kiosk_client.clock import DEFAULT_TIMEZONE, FakeClock
from kiosk_client.media import open_audio, open_video
from kiosk_client.runner import KioskApp
from server.appkeys import SFU_KEY, STORE_KEY

from tests.conftest import RunningServer
from tests.kiosk_support import (
    SENIOR,
    CuttableProxy,
    UdpBlackhole,
    kiosk_config,
    provision,
    running_kiosk,
    screenshot,
    seed,
)
from tests.support import eventually

CUT_S = 30.0


def _publisher(server: RunningServer, role: str, name: str, pid: str) -> CallClient:
    token = server.token(role=role, room="a-gym", name=name, participant_id=pid)
    return CallClient(
        server.url, token, video=open_video("testsrc", 320, 240, 15).video, audio=open_audio("tone").audio
    )


async def test_auto_join_then_network_cut_and_recovery(server: RunningServer, tmp_path: Path) -> None:
    # The activity starts at the next whole minute (+1): the server's schedule uses real time,
    # the kiosk's clock is ours to move.
    start = (dt.datetime.now(DEFAULT_TIMEZONE) + dt.timedelta(minutes=2)).replace(second=0, microsecond=0)
    await seed(server, auto_join=True, activity_start=start)
    state_dir = tmp_path / "kiosk-state"
    await provision(server, state_dir)
    url = urlparse(server.url)
    proxy = CuttableProxy(url.hostname or "127.0.0.1", url.port or 80)
    proxy_url = await proxy.start()
    clock = FakeClock(start - dt.timedelta(minutes=5))
    host = _publisher(server, "host", "Ingrid (begeleider)", "h-ingrid")
    other = _publisher(server, "senior", "Meneer Bakker", "s-bakker")
    await host.start()
    await other.start()
    try:
        async with running_kiosk(kiosk_config(proxy_url, state_dir), clock) as app:
            await eventually(lambda: app.model.mode is Mode.HOME, 10, "home")
            activity = app.model.next_activity()
            assert activity is not None and activity.start == start
            assert app.model.auto_join
            assert app.render().button("join") is not None, "lit from ten minutes before"

            # One second before the start: still home.
            clock.set(start - dt.timedelta(seconds=1))
            await asyncio.sleep(0.3)
            assert app.model.mode is Mode.HOME
            # The start: a ten-second countdown with a big Not now.
            clock.set(start + dt.timedelta(seconds=0.2))
            await eventually(lambda: app.model.mode is Mode.COUNTDOWN, 5, "the countdown")
            layout = screenshot(app, "countdown")
            assert layout.button("not_now") is not None and layout.text_shown("Stoelgym begint")
            assert app.room is None and not any(m["type"] == "activity_join" for m in app.sent)
            clock.advance(AUTO_JOIN_COUNTDOWN_S)
            await eventually(lambda: app.model.mode is Mode.IN_CALL and app.room is not None, 10, "joining")
            assert app.sent[-1]["type"] == "activity_join" and app.sent[-1]["activity_id"] == "a-gym"

            # In the activity: the host large, the others as tiles, the kiosk seen by the host.
            await eventually(
                lambda: app.wall.frames_in.get("h-ingrid", 0) >= 10 and app.wall.frames_in.get("s-bakker", 0) >= 5,
                30, "video from the host and the other senior",
            )
            await eventually(
                lambda: (m := host.remote.get(SENIOR)) is not None and m.video_frames >= 5, 20, "the host sees the kiosk"
            )
            app.render()
            await eventually(lambda: app.wall.frames_shown.get("h-ingrid", 0) >= 1 and app.wall.frames_shown.get("s-bakker", 0) >= 1, 5, "pictures converted")
            # The server hears how big the kiosk draws each one (it picks a layer to fit).
            transport = server.app[SFU_KEY].routers["a-gym"].transports[SENIOR]
            await eventually(lambda: transport.layout is not None and set(transport.layout) == {"h-ingrid", "s-bakker"}, 5, "the kiosk's layout")
            assert transport.layout is not None
            assert transport.layout["h-ingrid"][0] > 2 * transport.layout["s-bakker"][0], "the host large, the other a tile"
            layout = screenshot(app, "in-activity", min_colors=150)
            assert layout.button("leave") is not None and layout.text_shown("Ingrid (begeleider)")
            tiles = {t.text: t for t in layout.texts if t.text in ("Ingrid (begeleider)", "Meneer Bakker")}
            assert tiles["Ingrid (begeleider)"].rect.left < tiles["Meneer Bakker"].rect.left, "host large on the left"
            first_room = app.room
            assert first_room is not None and first_room.room == "a-gym"

            # The network dies for 30 s: signalling and media both.
            hole = UdpBlackhole()
            assert first_room.client is not None and first_room.client.pc is not None
            assert hole.attach(first_room.client.pc) >= 1
            hole.active = True
            proxy.cut_network()
            cut_at = asyncio.get_running_loop().time()
            await eventually(lambda: app.model.session is not None and app.model.session.phase == "reconnecting", 15, "noticing the cut")
            layout = screenshot(app, "reconnecting")
            assert layout.text_shown("Geen verbinding — we proberen het opnieuw")
            assert app.room is not None and app.room.opened is None, "camera closed while there is no connection"
            await asyncio.sleep(max(0.0, cut_at + CUT_S - asyncio.get_running_loop().time()))
            assert hole.dropped > 0
            frames_before = app.wall.frames_in.get("h-ingrid", 0)
            proxy.restore_network()
            hole.active = False

            # Back in the same activity without a touch: seen and heard again both ways.
            await eventually(
                lambda: app.room is not None and app.room.joined_count >= 1 and app.wall.frames_in.get("h-ingrid", 0) > frames_before + 10,
                45, "video from the host again",
            )
            host_view_before = host.remote[SENIOR].video_frames
            await eventually(lambda: host.remote[SENIOR].video_frames > host_view_before + 10, 30, "the host sees the kiosk again")
            assert app.model.mode is Mode.IN_CALL and app.model.session is not None
            assert app.model.session.activity_id == "a-gym"
            assert app.model.taps == 0, "no touch"
            participants = {p.participant_id: p for p in await server.app[STORE_KEY].list_participants("a-gym")}
            assert participants[SENIOR].connected
            producers = [p for p in server.app[SFU_KEY].routers["a-gym"].producers if p.participant_id == SENIOR]
            assert {p.kind for p in producers} == {"audio", "video"}
            assert app.room is not None and app.room.rebuilds, "the media path was rebuilt"
            await eventually(lambda: app.model.online, 20, "the device channel back")
    finally:
        await host.close()
        await other.close()
        await proxy.close()


@contextlib.asynccontextmanager
async def _kiosk_joining_a_hosted_activity(
    server: RunningServer, tmp_path: Path, *, locked: bool = False
) -> AsyncIterator[tuple[KioskApp, CallClient]]:
    """An activity in five minutes with its host publishing (the room locked if `locked`), and
    a paired kiosk that has just pressed its lit Join button: the kiosk and the host."""
    start = dt.datetime.now(DEFAULT_TIMEZONE) + dt.timedelta(minutes=5)
    await seed(server, activity_start=start)
    state_dir = tmp_path / "kiosk-state"
    await provision(server, state_dir)
    host = _publisher(server, "host", "Ingrid (begeleider)", "h-ingrid")
    await host.start()
    if locked:
        await host.signaling.send({"type": "lock", "locked": True})
    try:
        async with running_kiosk(kiosk_config(server.url, state_dir), FakeClock(dt.datetime.now(dt.timezone.utc))) as app:
            await eventually(lambda: app.model.mode is Mode.HOME and app.render().button("join") is not None, 10, "Join lit")
            app.press("join")
            yield app, host
    finally:
        await host.close()


async def test_watchdog_rebuilds_a_hung_media_pipeline(server: RunningServer, tmp_path: Path) -> None:
    async with _kiosk_joining_a_hosted_activity(server, tmp_path) as (app, _):
        await eventually(lambda: app.wall.frames_in.get("h-ingrid", 0) >= 5, 30, "video from the host")
        room = app.room
        assert room is not None and room.client is not None and room.rebuilds == []
        # The decoding side hangs: RTP still arrives, nothing comes out.
        for task in room.client._tasks.tasks:
            if task.get_name() == "kiosk-consume":
                task.cancel()
        await asyncio.sleep(0.5)
        hung_at = app.wall.frames_in.get("h-ingrid", 0)
        await eventually(lambda: room.rebuilds == ["watchdog"], app.config.watchdog_s + 10, "the watchdog")
        await eventually(lambda: app.wall.frames_in.get("h-ingrid", 0) > hung_at + 10, 30, "video again")
        assert app.room is room and app.model.mode is Mode.IN_CALL
        assert app.model.session is not None and app.model.session.activity_id == "a-gym"


async def test_locked_activity_waits_in_the_lobby_with_the_camera_closed(server: RunningServer, tmp_path: Path) -> None:
    async with _kiosk_joining_a_hosted_activity(server, tmp_path, locked=True) as (app, host):
        await eventually(lambda: app.model.session is not None and app.model.session.phase == "lobby", 10, "the lobby")
        layout = screenshot(app, "lobby")
        assert layout.text_shown("De begeleider laat u zo binnen")
        await asyncio.sleep(1)
        assert app.room is not None and app.room.opened is None, "camera and microphone closed in the lobby"
        assert not [p for p in server.app[SFU_KEY].routers["a-gym"].producers if p.participant_id == SENIOR]
        assert SENIOR not in host.remote
        await host.signaling.send({"type": "admit", "participant_id": SENIOR})
        await eventually(lambda: (m := host.remote.get(SENIOR)) is not None and m.video_frames >= 3, 20, "admitted and seen")
        assert app.model.session is not None and app.model.session.phase == "connected"
