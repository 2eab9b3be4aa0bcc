"""Attendance as people really join: reconnects, resumes, second devices, a restarted server.

A real server in this process (tests/conftest.py), protocol-level WebSocket clients and the
embedded store; the two-process Redis case with kill -9 is tests/e2e/test_attendance_cluster.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer

from server.app import create_app
from server.appkeys import DIRECTORY_KEY, ISSUER_KEY, STORE_KEY
from server.directory import Activity, Senior
from server.store import Store

from tests.conftest import RunningServer, WsClient, hello, join, make_settings, resume

ROOM = "activity-koffie"


async def _activity(server: RunningServer) -> None:
    directory = server.app[DIRECTORY_KEY]
    for sid in ("senior-a", "senior-b"):
        await directory.put(Senior(id=sid, name=sid), actor="test")
    await directory.put(Activity(id=ROOM, title="Koffie", enrolled=["senior-a", "senior-b"], guests_allowed=True), actor="test")


async def _logs(store: Store) -> list[dict[str, Any]]:
    return await store.attendance_between(0, time.time() + 86400)


async def _wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_reconnect_resume_and_second_device_count_once(server: RunningServer, connect: Any) -> None:
    await _activity(server)
    store = server.app[STORE_KEY]
    senior_token = server.token(role="senior", room=ROOM, name="A", participant_id="senior-a")
    first: WsClient = await connect()
    await join(first, senior_token, ROOM)
    welcome = first.received[0]
    # A dropped WebSocket resumed within the grace period: the same stay.
    await first.ws.close()
    again: WsClient = await connect()
    await resume(again, senior_token, welcome, 0)
    # The same senior joins again from a fresh session (kiosk restarted): replaces, merges.
    second: WsClient = await connect()
    await join(second, senior_token, ROOM)
    # A host: counted, never named.
    guest: WsClient = await connect()
    await join(guest, server.token(role="host", room=ROOM, name="Gast", participant_id="guest-1"), ROOM)

    async def seen() -> bool:
        logs = await _logs(store)
        return bool(logs) and len(logs[0]["members"]) == 2

    await _wait(seen)
    (log,) = await _logs(store)
    assert log["kind"] == "activity" and log["activity_id"] == ROOM
    senior = log["members"]["senior-a"]
    assert senior["role"] == "senior" and len(senior["iv"]) == 1 and len(senior["iv"][0]) == 1  # one open stay
    (anon,) = [m for m in log["members"] if m != "senior-a"]
    assert "guest-1" not in anon and log["members"][anon]["role"] == "host"

    await second.send({"type": "leave"})
    await second.expect("left")

    async def closed() -> bool:
        return len((await _logs(store))[0]["members"]["senior-a"]["iv"][0]) == 2

    await _wait(closed)
    assert (await store.last_engaged())["senior-a"] >= senior["iv"][0][0]


async def test_family_call_stays_name_senior_and_contact(server: RunningServer, connect: Any) -> None:
    store = server.app[STORE_KEY]
    room = "call-abc123"
    senior: WsClient = await connect()
    await join(senior, server.token(role="senior", room=room, name="A", participant_id="senior-a"), room)
    family: WsClient = await connect()
    await join(family, server.token(role="family", room=room, name="Kees", participant_id="contact-1"), room)
    await family.send({"type": "leave"})
    await senior.send({"type": "leave"})
    await senior.expect("left")

    async def done() -> bool:
        logs = await _logs(store)
        return bool(logs) and all(len(e["iv"][-1]) == 2 for e in logs[0]["members"].values()) and len(logs[0]["members"]) == 2

    await _wait(done)
    (log,) = await _logs(store)
    assert log["id"] == "c:abc123" and log["kind"] == "call"
    assert {m: e["role"] for m, e in log["members"].items()} == {"senior-a": "senior", "contact-1": "family"}


async def test_embedded_store_restart_keeps_and_continues_attendance(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, resume_grace_s=0.2)
    import aiohttp

    async def run(until_leave: bool) -> None:
        app = create_app(settings)
        test_server = TestServer(app, host="127.0.0.1")
        await test_server.start_server()
        try:
            running = RunningServer(app, str(test_server.make_url("")).rstrip("/"), app[ISSUER_KEY])
            if not until_leave:
                await _activity(running)
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(running.url + "/ws")
                client = WsClient(ws)
                await join(client, running.token(role="senior", room=ROOM, name="A", participant_id="senior-a"), ROOM)
                if until_leave:
                    await client.send({"type": "leave"})
                    await client.expect("left")
                await ws.close()
        finally:
            await test_server.close()

    await run(until_leave=False)  # the server stops with the senior still in: the stay is closed on shutdown
    await run(until_leave=True)  # after the restart the senior comes back within the merge gap
    app = create_app(settings)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        (log,) = await app[STORE_KEY].attendance_between(0, time.time() + 86400)
        (stay,) = log["members"]["senior-a"]["iv"]
        assert len(stay) == 2 and stay[1] >= stay[0]
    finally:
        await test_server.close()


async def test_a_network_cut_longer_than_the_grace_is_still_one_stay(tmp_path: Path) -> None:
    """The kiosk's network is gone past the resume grace: its session ends (the stay
    closes), it joins again a little later: the same stay reopens, no second visit."""
    import aiohttp

    app = create_app(make_settings(tmp_path, resume_grace_s=0.2))
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        running = RunningServer(app, str(test_server.make_url("")).rstrip("/"), app[ISSUER_KEY])
        await _activity(running)
        store = app[STORE_KEY]
        token = running.token(role="senior", room=ROOM, name="A", participant_id="senior-a")
        async with aiohttp.ClientSession() as http:
            cut = await http.ws_connect(running.url + "/ws")
            await join(WsClient(cut), token, ROOM)
            await cut.close()  # the cut: no leave, no resume

            async def closed() -> bool:
                logs = await _logs(store)
                return bool(logs) and len(logs[0]["members"]["senior-a"]["iv"][-1]) == 2

            await _wait(closed)  # the grace ran out: the stay was closed
            back = await http.ws_connect(running.url + "/ws")
            await join(WsClient(back), token, ROOM)

            async def reopened() -> bool:
                return len((await _logs(store))[0]["members"]["senior-a"]["iv"][-1]) == 1

            await _wait(reopened)
            (log,) = await _logs(store)
            assert len(log["members"]["senior-a"]["iv"]) == 1
            await back.close()
    finally:
        await test_server.close()
