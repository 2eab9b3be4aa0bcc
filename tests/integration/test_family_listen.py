"""The senior calls family: a family member's invite page listens (hello with `contact`),
the kiosk sends `call_contact`, the page rings, accepts or declines; unanswered calls are
kept as missed calls until the page says they were seen. Protocol level, real server."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, STORE_KEY
from server.directory import Contact, Senior
from server.invites import issue_invite, named_secret
from signaling.devices import contact_presence
from signaling.protocol import CloseCode

from tests.conftest import RunningServer, WsClient, hello
from tests.support import paired_kiosk

RING_S = 2.0


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"ring_timeout_s": RING_S}


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


async def _setup(server: RunningServer, http: aiohttp.ClientSession) -> dict[str, str]:
    d = server.app[DIRECTORY_KEY]
    await d.put(Senior(id="s-1", name="Oma Riet"), actor="test")
    await d.put(Senior(id="s-2", name="Opa Kees"), actor="test")
    await d.put(Contact(id="c-piet", senior_id="s-1", name="Piet"), actor="test")
    await d.put(Contact(id="c-ans", senior_id="s-1", name="Ans"), actor="test")
    await d.put(Contact(id="c-other", senior_id="s-2", name="Someone else"), actor="test")
    return await paired_kiosk(http, server.url, server.app[STORE_KEY], d, "s-1")


async def _invite(server: RunningServer, contact_id: str) -> str:
    contact = await server.app[DIRECTORY_KEY].get(Contact, contact_id)
    assert contact is not None
    return issue_invite(named_secret(server.app[SETTINGS_KEY], "invite"), contact)


async def _kiosk(connect: Any, credential: dict[str, str]) -> WsClient:
    kiosk = await connect()
    await kiosk.send({"type": "hello", "v": 1, "device": credential})
    await kiosk.expect("device_welcome")
    return kiosk


async def _listen(server: RunningServer, connect: Any, contact_id: str) -> tuple[WsClient, dict[str, Any]]:
    page = await connect()
    await page.send({"type": "hello", "v": 1, "id": "h1", "contact": {"invite": await _invite(server, contact_id)}})
    return page, await page.expect("contact_welcome")


async def test_listening_page_is_present_and_pings(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    await _setup(server, http)
    store = server.app[STORE_KEY]
    assert not await store.is_present(contact_presence("c-piet"))
    page, welcome = await _listen(server, connect, "c-piet")
    assert welcome["ref"] == "h1" and welcome["v"] == 1
    assert welcome["contact"] == {"id": "c-piet", "name": "Piet"}
    assert welcome["senior"] == {"id": "s-1", "name": "Oma Riet"}
    assert welcome["missed_calls"] == [] and welcome["ping_interval_ms"] > 0
    assert await store.is_present(contact_presence("c-piet"))
    await page.send({"type": "ping", "ts": 5, "id": "p"})
    pong = await page.expect("pong")
    assert pong["ts"] == 5 and pong["ref"] == "p"
    # A family page is no kiosk and no participant.
    for message in (
        {"type": "call_contact", "contact_id": "c-piet"},
        {"type": "activity_join", "activity_id": "a"},
        {"type": "join", "room": "call-x"},
    ):
        await page.send(message)
        await page.expect_error("forbidden")
    await page.ws.close()
    for _ in range(50):
        if not await store.is_present(contact_presence("c-piet")):
            break
        await __import__("asyncio").sleep(0.05)
    assert not await store.is_present(contact_presence("c-piet"))


async def test_bad_invite_and_bad_hello(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    await _setup(server, http)
    page = await connect()
    await page.send({"type": "hello", "v": 1, "contact": {"invite": "not-an-invite"}})
    await page.expect_error("invite_invalid")
    assert await page.closed() == CloseCode.AUTH_FAILED
    page = await connect()
    await page.send({"type": "hello", "v": 1, "contact": {}})
    await page.expect_error("bad_message")
    await page.send({"type": "hello", "v": 1, "token": "x", "contact": {"invite": "y"}})
    await page.expect_error("bad_message")
    # Only kiosks and family pages send these; a participant session is refused.
    client = await connect()
    await hello(client, server.token(room="room-1"))
    await client.send({"type": "join", "room": "room-1"})
    await client.expect("joined")
    for message in ({"type": "call_contact", "contact_id": "c-piet"}, {"type": "call_hangup", "call_id": "x"}, {"type": "missed_seen"}):
        await client.send(message)
        await client.expect_error("forbidden")


async def test_unknown_contact_and_unavailable_is_kept_as_missed(
    server: RunningServer, connect: Any, http: aiohttp.ClientSession
) -> None:
    credential = await _setup(server, http)
    kiosk = await _kiosk(connect, credential)
    await kiosk.send({"type": "call_contact", "id": "k1", "contact_id": "c-other"})
    error = await kiosk.expect_error("unknown_contact")
    assert error["ref"] == "k1"
    await kiosk.send({"type": "call_contact", "id": "k2", "contact_id": "c-nobody"})
    await kiosk.expect_error("unknown_contact")
    await kiosk.send({"type": "call_contact", "contact_id": 5})
    await kiosk.expect_error("bad_message")
    await kiosk.send({"type": "missed_seen"})
    await kiosk.expect_error("forbidden")

    # Piet's page is not open: the kiosk hears so at once, and Piet sees it later.
    before = int(time.time())
    await kiosk.send({"type": "call_contact", "id": "k3", "contact_id": "c-piet"})
    cancelled = await kiosk.expect("call_cancelled")
    assert cancelled["ref"] == "k3" and cancelled["reason"] == "unavailable" and cancelled["contact_id"] == "c-piet"
    page, welcome = await _listen(server, connect, "c-piet")
    [missed] = welcome["missed_calls"]
    assert before <= missed["at"] <= time.time()
    # Seen: cleared for good.
    await page.send({"type": "missed_seen", "id": "m"})
    assert (await page.expect("missed_cleared"))["ref"] == "m"
    _, again = await _listen(server, connect, "c-piet")
    assert again["missed_calls"] == []
    # Ans's list is her own.
    _, ans = await _listen(server, connect, "c-ans")
    assert ans["missed_calls"] == []


async def test_ring_and_accept_gives_both_sides_the_room(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    credential = await _setup(server, http)
    kiosk = await _kiosk(connect, credential)
    page, _ = await _listen(server, connect, "c-piet")
    second_page, _ = await _listen(server, connect, "c-piet")
    ans, _ = await _listen(server, connect, "c-ans")
    await kiosk.send({"type": "call_contact", "id": "k1", "contact_id": "c-piet"})
    ringing = await kiosk.expect("call_ringing")
    assert ringing["ref"] == "k1" and ringing["contact_id"] == "c-piet"
    assert ringing["ring_timeout_ms"] == int(RING_S * 1000)
    call_id = ringing["call_id"]
    for p in (page, second_page):
        incoming = await p.expect("incoming_call")
        assert incoming["call_id"] == call_id
        assert incoming["senior"]["name"] == "Oma Riet" and incoming["ring_timeout_ms"] == int(RING_S * 1000)
    # Nobody else's page rings, and others cannot answer for Piet.
    await ans.send({"type": "call_answer", "id": "a", "call_id": call_id, "accept": True})
    await ans.expect_error("unknown_call")
    assert not any(m.get("type") == "incoming_call" for m in ans.received)

    await page.send({"type": "call_answer", "id": "acc", "call_id": call_id, "accept": True})
    family_join = await page.expect("call_join")
    kiosk_join = await kiosk.expect("call_join")
    assert family_join["call_id"] == kiosk_join["call_id"] == call_id
    assert family_join["room"] == kiosk_join["room"] == f"call-{call_id}"
    assert family_join["ref"] == "acc"
    family_grant = server.issuer.verify(family_join["token"])
    senior_grant = server.issuer.verify(kiosk_join["token"])
    assert (family_grant.role, family_grant.participant_id, family_grant.room) == ("family", "c-piet", family_join["room"])
    assert (senior_grant.role, senior_grant.participant_id, senior_grant.room) == ("senior", "s-1", kiosk_join["room"])
    # The other page stops ringing; no token for it.
    other = await second_page.expect("call_cancelled")
    assert other["call_id"] == call_id and other["reason"] == "answered_elsewhere"
    assert not any(m.get("type") == "call_join" for m in second_page.received)
    # Answering twice, or hanging up an answered call, is refused.
    await second_page.send({"type": "call_answer", "call_id": call_id, "accept": True})
    await second_page.expect_error("unknown_call")
    await kiosk.send({"type": "call_hangup", "call_id": call_id})
    await kiosk.expect_error("unknown_call")
    # Both join the call room: the family member directly, no lobby.
    family = await connect()
    await hello(family, family_join["token"])
    await family.send({"type": "join", "room": family_join["room"]})
    joined = await family.expect("joined")
    assert joined["room_state"]["call"]["state"] == "accepted"


async def test_decline_missed_and_hang_up(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    credential = await _setup(server, http)
    kiosk = await _kiosk(connect, credential)
    page, _ = await _listen(server, connect, "c-piet")

    # Declined: the kiosk hears "declined"; not a missed call.
    await kiosk.send({"type": "call_contact", "id": "k1", "contact_id": "c-piet"})
    call_id = (await kiosk.expect("call_ringing"))["call_id"]
    await page.expect("incoming_call", call_id=call_id)
    await page.send({"type": "call_answer", "call_id": call_id, "accept": False})
    cancelled = await kiosk.expect("call_cancelled", call_id=call_id)
    assert cancelled["reason"] == "declined"
    assert (await page.expect("call_cancelled", call_id=call_id))["reason"] == "declined"
    assert not any(m.get("type") == "call_join" for m in kiosk.received)

    # Nobody answers: after the ring timeout both sides hear "missed"; Piet sees it later.
    await kiosk.send({"type": "call_contact", "id": "k2", "contact_id": "c-piet"})
    call_id = (await kiosk.expect("call_ringing"))["call_id"]
    await page.expect("incoming_call", call_id=call_id)
    started = time.monotonic()
    assert (await kiosk.expect("call_cancelled", call_id=call_id, timeout=RING_S + 5))["reason"] == "missed"
    assert time.monotonic() - started >= RING_S - 0.5
    assert (await page.expect("call_cancelled", call_id=call_id))["reason"] == "missed"
    await page.send({"type": "call_answer", "call_id": call_id, "accept": True})
    await page.expect_error("unknown_call")

    # The senior hangs up while it rings: the page stops ringing at once.
    await kiosk.send({"type": "call_contact", "id": "k3", "contact_id": "c-piet"})
    call_id = (await kiosk.expect("call_ringing"))["call_id"]
    await page.expect("incoming_call", call_id=call_id)
    await kiosk.send({"type": "call_hangup", "id": "h", "call_id": call_id})
    hung = await kiosk.expect("call_cancelled", call_id=call_id)
    assert hung["reason"] == "hung_up" and hung["ref"] == "h"
    assert (await page.expect("call_cancelled", call_id=call_id))["reason"] == "hung_up"
    await kiosk.send({"type": "call_hangup", "call_id": call_id})
    await kiosk.expect_error("unknown_call")
    await kiosk.send({"type": "call_hangup", "call_id": "no-such-call"})
    await kiosk.expect_error("unknown_call")

    # The missed and the hung-up call wait on Piet's page (not the declined one).
    _, welcome = await _listen(server, connect, "c-piet")
    assert len(welcome["missed_calls"]) == 2


async def test_page_opened_while_ringing_rings_too(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    credential = await _setup(server, http)
    kiosk = await _kiosk(connect, credential)
    first, _ = await _listen(server, connect, "c-piet")
    await kiosk.send({"type": "call_contact", "contact_id": "c-piet"})
    call_id = (await kiosk.expect("call_ringing"))["call_id"]
    reloaded, _ = await _listen(server, connect, "c-piet")
    assert (await reloaded.expect("incoming_call"))["call_id"] == call_id


async def test_deleting_a_contact_deletes_their_missed_calls(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    credential = await _setup(server, http)
    kiosk = await _kiosk(connect, credential)
    await kiosk.send({"type": "call_contact", "contact_id": "c-piet"})
    assert (await kiosk.expect("call_cancelled"))["reason"] == "unavailable"
    store = server.app[STORE_KEY]
    assert await store.get_record("missed_calls", "c-piet") is not None
    assert await server.app[DIRECTORY_KEY].delete(Contact, "c-piet", actor="test")
    assert await store.get_record("missed_calls", "c-piet") is None
