"""Kiosk pairing, the device channel, family calls and remote self-tests over the real server."""

from __future__ import annotations

import asyncio
import stat
from typing import Any

import aiohttp
import pytest

from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, SIGNALING_KEY, STORE_KEY
from server.directory import Contact, Kiosk
from server.invites import issue_invite, named_secret
from server.pairing import confirm_pairing
from signaling.protocol import CloseCode

from tests.conftest import RunningServer, WsClient, count_presence_writes, hello
from tests.kiosk_support import _device, _directory, _pair


async def test_pairing_rejects_bad_codes(server: RunningServer, http: aiohttp.ClientSession) -> None:
    await _directory(server)
    from server.directory import DirectoryError

    store, directory = server.app[STORE_KEY], server.app[DIRECTORY_KEY]
    for code, senior in (("12", "s-1"), ("000000", "s-1"), ("123456", "s-nobody")):
        with pytest.raises(DirectoryError):
            await confirm_pairing(store, directory, code, senior, actor="c")
    assert await directory.list(Kiosk) == []


async def test_device_welcome_carries_home_screen(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    await _directory(server)
    credential = await _pair(server, http)
    _, welcome = await _device(connect, credential)
    assert welcome["senior"] == {"id": "s-1", "name": "Mevrouw Jansen", "language": "nl", "auto_join": True}
    assert {c["name"]: (c["trusted"], c["auto_answer"]) for c in welcome["contacts"]} == {
        "Sanne": (True, True), "Buurman Piet": (False, False),
    }
    [activity] = welcome["activities"]
    assert activity["title"] == "Stoelgym" and activity["next_start"].endswith(("+01:00", "+02:00"))
    assert await server.app[STORE_KEY].is_present(f"kiosk:{credential['kiosk_id']}")


async def test_device_welcome_lists_contacts_in_the_coordinators_order(
    server: RunningServer, connect: Any, http: aiohttp.ClientSession
) -> None:
    await _directory(server)
    d = server.app[DIRECTORY_KEY]
    await d.put(Contact(id="c-emma", senior_id="s-1", name="Emma", trusted=True, position=1), actor="test")
    await d.put(Contact(id="c-anna", senior_id="s-1", name="Anna", trusted=True, position=2), actor="test")
    credential = await _pair(server, http)
    _, welcome = await _device(connect, credential)
    assert [(c["name"], c["position"]) for c in welcome["contacts"]] == [
        ("Buurman Piet", 0), ("Sanne", 0), ("Emma", 1), ("Anna", 2),
    ]


async def test_bad_and_revoked_credentials(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    await _directory(server)
    credential = await _pair(server, http)
    bad = await connect()
    await bad.send({"type": "hello", "v": 1, "device": {**credential, "credential": "guess"}})
    await bad.expect_error("device_invalid")
    assert await bad.closed() == CloseCode.AUTH_FAILED

    kiosk, _ = await _device(connect, credential)
    await server.app[SIGNALING_KEY].revoke_kiosk(credential["kiosk_id"])
    await kiosk.expect("revoked")
    assert await kiosk.closed() == CloseCode.AUTH_FAILED


async def test_activity_token_only_for_enrolled(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    await _directory(server)
    kiosk, _ = await _device(connect, await _pair(server, http))
    await kiosk.send({"type": "activity_join", "activity_id": "a-gym"})
    token = await kiosk.expect("activity_token")
    grant = server.issuer.verify(token["token"], room="a-gym")
    assert grant.participant_id == "s-1" and grant.role == "senior"
    await kiosk.send({"type": "activity_join", "activity_id": "a-other"})
    await kiosk.expect_error("forbidden")
    # A device is not a participant.
    await kiosk.send({"type": "join", "room": "a-gym"})
    await kiosk.expect_error("forbidden")


async def _call(server: RunningServer, http: aiohttp.ClientSession, contact_id: str) -> dict[str, Any]:
    contact = await server.app[DIRECTORY_KEY].get(Contact, contact_id)
    assert contact is not None
    invite = issue_invite(named_secret(server.app[SETTINGS_KEY], "invite"), contact)
    async with http.post(server.url + "/api/calls", json={"invite": invite}) as r:
        assert r.status == 201
        return await r.json()


async def _kiosk_rung_by(
    server: RunningServer, connect: Any, http: aiohttp.ClientSession, contact_id: str
) -> tuple[WsClient, dict[str, Any]]:
    """A paired kiosk on its device channel, and the call `contact_id` just started to it."""
    await _directory(server)
    kiosk, _ = await _device(connect, await _pair(server, http))
    return kiosk, await _call(server, http, contact_id)


async def _family_in_the_call(connect: Any, call: dict[str, Any]) -> tuple[WsClient, dict[str, Any]]:
    """The caller's page joined to the call's room: the page and its "joined"."""
    family = await connect()
    await hello(family, call["token"])
    await family.send({"type": "join", "room": call["room"]})
    return family, await family.expect("joined")


async def test_trusted_call_accepted(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    kiosk, call = await _kiosk_rung_by(server, connect, http, "c-trusted")
    assert call["state"] == "warning"
    incoming = await kiosk.expect("incoming_call")
    assert incoming["contact"]["name"] == "Sanne" and incoming["contact"]["auto_answer"] is True
    assert incoming["call_id"] == call["call_id"]

    family, joined = await _family_in_the_call(connect, call)
    assert joined["room_state"]["call"] == {"call_id": call["call_id"], "state": "warning"}

    await kiosk.send({"type": "call_answer", "call_id": call["call_id"], "accept": True})
    join = await kiosk.expect("call_join")
    grant = server.issuer.verify(join["token"], room=call["room"])
    assert grant.participant_id == "s-1"
    assert (await family.expect("call_state"))["state"] == "accepted"


async def test_untrusted_call_declined(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    kiosk, call = await _kiosk_rung_by(server, connect, http, "c-other")
    assert call["state"] == "ringing"
    family, _ = await _family_in_the_call(connect, call)
    await kiosk.expect("incoming_call")
    await kiosk.send({"type": "call_answer", "call_id": call["call_id"], "accept": False})
    assert (await family.expect("call_state"))["state"] == "declined"
    await kiosk.send({"type": "ping", "id": "p"})
    await kiosk.expect("pong")
    assert not [m for m in kiosk.received if m["type"] == "call_join"]


@pytest.mark.parametrize("settings_overrides", [{"ring_timeout_s": 0.5}])
async def test_unanswered_call_is_missed(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    kiosk, call = await _kiosk_rung_by(server, connect, http, "c-other")
    family, _ = await _family_in_the_call(connect, call)
    assert (await kiosk.expect("incoming_call"))["ring_timeout_ms"] == 500
    cancelled = await kiosk.expect("call_cancelled")
    assert cancelled["reason"] == "timeout"
    assert (await family.expect("call_state"))["state"] == "missed"


async def test_caller_leaving_cancels_the_ring(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    kiosk, call = await _kiosk_rung_by(server, connect, http, "c-other")
    family, _ = await _family_in_the_call(connect, call)
    await kiosk.expect("incoming_call")
    await family.send({"type": "leave"})
    assert (await kiosk.expect("call_cancelled"))["reason"] == "caller_left"


async def test_call_to_offline_kiosk_is_unavailable(server: RunningServer, http: aiohttp.ClientSession) -> None:
    await _directory(server)
    await _pair(server, http)
    call = await _call(server, http, "c-trusted")
    assert call["state"] == "unavailable"


async def test_stale_or_forged_invite_refused(server: RunningServer, http: aiohttp.ClientSession) -> None:
    await _directory(server)
    directory = server.app[DIRECTORY_KEY]
    contact = await directory.get(Contact, "c-trusted")
    assert contact is not None
    old = issue_invite(named_secret(server.app[SETTINGS_KEY], "invite"), contact)
    contact.invite_version += 1
    await directory.put(contact, actor="test")
    for body, status in (({"invite": old}, 403), ({"invite": "forged"}, 403), ({"nope": 1}, 400)):
        async with http.post(server.url + "/api/calls", json=body) as r:
            assert r.status == status
            assert (await r.json())["message"]
    async with http.post(server.url + "/api/calls", data=b"{not json") as r:
        assert r.status == 400


async def test_remote_selftest(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    await _directory(server)
    credential = await _pair(server, http)
    signaling = server.app[SIGNALING_KEY]
    assert await signaling.request_selftest(credential["kiosk_id"]) is False
    kiosk, _ = await _device(connect, credential)
    assert await signaling.request_selftest(credential["kiosk_id"]) is True
    await kiosk.expect("selftest_request")
    await kiosk.send({"type": "selftest_result", "result": {"ok": True, "camera": "ok"}})
    await kiosk.expect("selftest_saved")
    stored = await server.app[DIRECTORY_KEY].get(Kiosk, credential["kiosk_id"])
    assert stored is not None and stored.last_selftest is not None
    assert stored.last_selftest["result"] == {"ok": True, "camera": "ok"}
    await kiosk.ws.close()
    await asyncio.sleep(0.1)
    assert not await server.app[STORE_KEY].is_present(f"kiosk:{credential['kiosk_id']}")


async def test_busy_kiosk_and_reconnect_while_ringing(server: RunningServer, connect: Any, http: aiohttp.ClientSession) -> None:
    await _directory(server)
    credential = await _pair(server, http)
    kiosk, _ = await _device(connect, credential)
    call = await _call(server, http, "c-other")
    first = await kiosk.expect("incoming_call")
    # The kiosk's socket drops while it rings; on its return it rings again.
    await kiosk.ws.close()
    again, _ = await _device(connect, credential)
    repeated = await again.expect("incoming_call")
    assert repeated["call_id"] == first["call_id"] == call["call_id"]

    family, _ = await _family_in_the_call(connect, call)
    await again.send({"type": "call_answer", "call_id": call["call_id"], "accept": False, "reason": "busy"})
    assert (await family.expect("call_state"))["state"] == "busy"


async def test_kiosk_presence_refreshed_at_most_every_third_of_its_ttl(
    server: RunningServer, connect: Any, http: aiohttp.ClientSession
) -> None:
    """Every kiosk pings every 10 s; a store write per ping was most of an idle kiosk's cost."""
    await _directory(server)
    credential = await _pair(server, http)
    store = server.app[STORE_KEY]
    touched = count_presence_writes(store)
    kiosk, _ = await _device(connect, credential)
    assert len(touched) == 1  # the hello
    for i in range(5):
        await kiosk.send({"type": "ping", "id": f"p{i}"})
        await kiosk.expect("pong")
    assert len(touched) == 1
    # As if a third of the TTL had passed since the last write.
    hub = server.app[SIGNALING_KEY].devices
    (link,) = hub.links.values()
    link.presence_touched -= server.app[SETTINGS_KEY].ping_timeout_s / 3
    await kiosk.send({"type": "ping", "id": "late"})
    await kiosk.expect("pong")
    await kiosk.send({"type": "ping", "id": "after"})
    await kiosk.expect("pong")
    assert touched == [touched[0]] * 2
    assert await store.is_present(touched[0])
