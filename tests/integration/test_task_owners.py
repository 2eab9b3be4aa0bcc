"""Background tasks in the running app have owners: a failure in one is logged, counted
and exported on /metrics; closing a signalling session and then the app leaves no task
running (server/tasks.py)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.appkeys import DIRECTORY_KEY, ISSUER_KEY, SETTINGS_KEY, SIGNALING_KEY, STORE_KEY
from server.directory import Contact, Senior
from server.invites import issue_invite, named_secret
from server.tasks import task_failures
from tests.conftest import RunningServer, WsClient, join, make_settings
from tests.kiosk_support import _device
from tests.support import paired_kiosk

RING_S = 0.5


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"ring_timeout_s": RING_S}


async def _kiosk_and_family_page(server: RunningServer, http: aiohttp.ClientSession, connect: Any) -> tuple[WsClient, WsClient]:
    """A paired kiosk on its device channel and its senior's family member's invite page."""
    d = server.app[DIRECTORY_KEY]
    await d.put(Senior(id="s-1", name="Oma Riet"), actor="test")
    contact = Contact(id="c-piet", senior_id="s-1", name="Piet")
    await d.put(contact, actor="test")
    credential = await paired_kiosk(http, server.url, server.app[STORE_KEY], d, "s-1")
    kiosk, _ = await _device(connect, credential)
    page = await connect()
    invite = issue_invite(named_secret(server.app[SETTINGS_KEY], "invite"), contact)
    await page.send({"type": "hello", "v": 1, "contact": {"invite": invite}})
    await page.expect("contact_welcome")
    return kiosk, page


async def test_a_failing_ring_timeout_is_logged_counted_and_on_metrics(
    server: RunningServer, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with aiohttp.ClientSession() as http:
        kiosk, page = await _kiosk_and_family_page(server, http, connect)
        await kiosk.send({"type": "call_contact", "id": "k1", "contact_id": "c-piet"})
        call_id = (await kiosk.expect("call_ringing"))["call_id"]
        await page.expect("incoming_call", call_id=call_id)

        # The fault: the store refuses the missed call's state when the ring times out.
        store = server.app[STORE_KEY]
        original = store.set_room_state

        async def refusing(room: str, state: dict[str, Any]) -> None:
            if call_id in room:
                raise RuntimeError("injected store fault")
            await original(room, state)

        store.set_room_state = refusing  # type: ignore[method-assign]
        before = task_failures["call-ring-timeout"]
        with caplog.at_level(logging.ERROR, logger="server.tasks"):
            for _ in range(int(RING_S * 20) + 40):
                if task_failures["call-ring-timeout"] > before:
                    break
                await asyncio.sleep(0.05)
        assert task_failures["call-ring-timeout"] == before + 1
        [record] = [r for r in caplog.records if "call-ring-timeout" in r.getMessage()]
        assert record.getMessage() == "background task call-ring-timeout of devices failed"
        assert record.exc_info is not None and str(record.exc_info[1]) == "injected store fault"
        async with http.get(server.url + "/metrics") as r:
            text = await r.text()
        assert f'verzilvering_task_failures_total{{task="call-ring-timeout"}} {float(before + 1)}' in text
        # Only the listening page's keepalive is left running; it ends with the page.
        assert {task.get_name() for task in server.app[SIGNALING_KEY].devices.tasks.tasks} == {"contact-keepalive"}


async def test_closing_a_session_and_the_app_leaves_no_task_running(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, ring_timeout_s=30.0))
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    server = RunningServer(app, str(test_server.make_url("")).rstrip("/"), app[ISSUER_KEY])
    ours = asyncio.current_task()
    try:
        async with aiohttp.ClientSession() as http:
            sockets: list[aiohttp.ClientWebSocketResponse] = []

            async def connect() -> WsClient:
                sockets.append(await http.ws_connect(server.url + "/ws"))
                return WsClient(sockets[-1])

            # A participant in a room, a kiosk ringing its family (a ring timer, the
            # listeners' keepalive): tasks of the session, the connections and the hub.
            participant = await connect()
            await join(participant, server.token(participant_id="p-1"), room="room-1")
            kiosk, page = await _kiosk_and_family_page(server, http, connect)
            await kiosk.send({"type": "call_contact", "id": "k1", "contact_id": "c-piet"})
            await kiosk.expect("call_ringing")
            hub = app[SIGNALING_KEY].devices
            assert hub.tasks.tasks, "the listeners' keepalive runs"

            # The participant leaves and closes: neither its session nor a task of its
            # connection is left.
            signaling = app[SIGNALING_KEY]
            [session] = [s for s in signaling.sessions.values() if s.participant_id == "p-1"]
            assert session.connection is not None
            connection = session.connection
            await participant.send({"type": "leave"})
            await participant.ws.close()
            for _ in range(100):
                if session.id not in signaling.sessions and not connection.tasks.tasks:
                    break
                await asyncio.sleep(0.02)
            assert session.id not in signaling.sessions and not connection.tasks.tasks
            assert session.grace_task is None or session.grace_task.done()
            for ws in sockets:
                await ws.close()
        await test_server.close()
        assert not hub.tasks.tasks and hub.tasks.closed
        # Whatever aiohttp's own closing left for the loop's next passes ends there.
        for _ in range(10):
            await asyncio.sleep(0)
        left = {task for task in asyncio.all_tasks() if task is not ours}
        assert not left, [(task.get_name(), task.get_coro()) for task in left]
    finally:
        await test_server.close()  # idempotent: for a failure above
