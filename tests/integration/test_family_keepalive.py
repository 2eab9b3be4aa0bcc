"""A family page in a background tab: its own timers may be throttled to once a minute, so
the server asks for a `ping` (`keepalive`); a page that answers only those stays connected
and present past the ping timeout, one that stays silent is closed and no longer rings."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, STORE_KEY
from server.directory import Contact, Senior
from server.invites import issue_invite, named_secret
from signaling.devices import contact_presence
from signaling.protocol import CloseCode

from tests.conftest import RunningServer

PING_TIMEOUT_S = 2.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"ping_interval_s": 0.5, "ping_timeout_s": PING_TIMEOUT_S}


async def test_keepalive_keeps_a_background_page_present(server: RunningServer, connect: Any) -> None:
    d = server.app[DIRECTORY_KEY]
    await d.put(Senior(id="s-1", name="Oma Riet"), actor="test")
    contact = Contact(id="c-piet", senior_id="s-1", name="Piet")
    await d.put(contact, actor="test")
    invite = issue_invite(named_secret(server.app[SETTINGS_KEY], "invite"), contact)
    store = server.app[STORE_KEY]

    answering = await connect()
    await answering.send({"type": "hello", "v": 1, "contact": {"invite": invite}})
    assert (await answering.expect("contact_welcome"))["ping_interval_ms"] == 500
    silent = await connect()
    await silent.send({"type": "hello", "v": 1, "contact": {"invite": invite}})
    await silent.expect("contact_welcome")
    # It reads what arrives (as a page does) but never answers.
    silent_closed = asyncio.ensure_future(silent.closed(timeout=10))

    deadline = time.monotonic() + 2.5 * PING_TIMEOUT_S
    keepalives = 0
    while time.monotonic() < deadline:
        await answering.expect("keepalive", timeout=2)
        keepalives += 1
        await answering.send({"type": "ping"})
        await answering.expect("pong")
    assert keepalives >= 5
    # The silent page was closed for not answering; the answering one is still there.
    assert await silent_closed == CloseCode.PING_TIMEOUT
    assert any(m.get("type") == "keepalive" for m in silent.received)
    assert await store.is_present(contact_presence("c-piet"))
    await answering.send({"type": "ping", "id": "last"})
    assert (await answering.expect("pong"))["ref"] == "last"
    await answering.ws.close()
    await asyncio.sleep(0.2)
    assert not await store.is_present(contact_presence("c-piet"))
