"""Hostile values inside well-formed messages (issue 11 items 9 and 10): deep nesting,
non-finite numbers, lone surrogates in every identifier, answers without a usable DTLS
fingerprint. Each gets a specific error, changes nothing and never reaches `internal`.
Both state backends: identifiers become Redis keys there.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, STORE_KEY
from server.directory import Activity, Contact, Kiosk, Senior
from server.invites import issue_invite, named_secret

from tests.conftest import RunningServer, WsClient, hello, join
from tests.kiosk_support import _device
from tests.store_support import backend_overrides, redis_server  # noqa: F401  (fixtures)
from tests.support import paired_kiosk

LONE = "\ud800"


@pytest.fixture
def settings_overrides(backend_overrides: dict[str, Any]) -> dict[str, Any]:
    return backend_overrides


async def send_raw_json(client: WsClient, message: dict[str, Any]) -> None:
    # json.dumps writes a lone surrogate as the escape "\ud800", as a hostile client would.
    await client.send_raw(json.dumps(message))


async def still_answers(client: WsClient) -> None:
    await client.send({"type": "ping", "id": "alive"})
    assert (await client.expect("pong"))["ref"] == "alive"


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


async def test_deeply_nested_json_is_bad_message(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await c.send_raw('{"type": "ping", "x": ' + "[" * 999 + "]" * 999 + "}")
    await c.expect_error("bad_message")
    await hello(c, server.token())
    # One level over the limit (16, the message object included), and far beyond it.
    await c.send({"type": "ping", "x": nested(16)})
    await c.expect_error("bad_message")
    for depth in (999, 5000):
        await c.send_raw('{"type": "ping", "x": ' + "[" * depth + "]" * depth + "}")
        await c.expect_error("bad_message")
    # The limit itself (16 levels, the message object included) is fine.
    await c.send({"type": "ping", "id": "deep", "x": nested(15)})
    assert (await c.expect("pong"))["ref"] == "deep"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
async def test_non_finite_numbers_are_bad_message(server: RunningServer, connect: Any, number: str) -> None:
    c = await connect()
    await hello(c, server.token())
    await c.send_raw('{"type": "ping", "ts": ' + number + "}")
    await c.expect_error("bad_message")
    await c.send({"type": "ping", "ts": 1.5, "id": "fine"})
    pong = await c.expect("pong")
    assert pong["ts"] == 1.5 and pong["ref"] == "fine"


async def test_lone_surrogate_in_a_token_is_bad_message(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await send_raw_json(c, {"type": "hello", "v": 1, "token": LONE})
    await c.expect_error("bad_message")
    await send_raw_json(c, {"type": "hello", "v": 1, "token": server.token()[:-3] + LONE})
    await c.expect_error("bad_message")
    await hello(c, server.token())


async def test_lone_surrogate_in_a_resume_key_is_bad_message(server: RunningServer, connect: Any) -> None:
    token = server.token(participant_id="p-resume")
    first = await connect()
    welcome = await hello(first, token)
    await first.send({"type": "join", "room": "room-1"})
    await first.expect("joined")
    await first.ws.close()
    second = await connect()
    resume = {"session_id": welcome["session_id"], "resume_key": LONE, "last_seq": 0}
    await send_raw_json(second, {"type": "hello", "v": 1, "token": token, "resume": resume})
    await second.expect_error("bad_message")
    resume = {"session_id": LONE, "resume_key": "k", "last_seq": 0}
    await send_raw_json(second, {"type": "hello", "v": 1, "token": token, "resume": resume})
    await second.expect_error("bad_message")
    await still_answers_before_hello(second)


async def still_answers_before_hello(client: WsClient) -> None:
    await client.send({"type": "join", "room": "room-1"})
    await client.expect_error("not_authenticated")


async def _seed_senior(server: RunningServer) -> Contact:
    d = server.app[DIRECTORY_KEY]
    await d.put(Senior(id="s-1", name="Mevrouw Jansen"), actor="test")
    contact = Contact(id="c-sanne", senior_id="s-1", name="Sanne", trusted=True)
    await d.put(contact, actor="test")
    await d.put(Activity(id="a-gym", title="Stoelgym", enrolled=["s-1"]), actor="test")
    return contact


async def _seed_and_pair(server: RunningServer) -> dict[str, str]:
    """The senior of `_seed_senior` and a kiosk paired to her: its device credential."""
    await _seed_senior(server)
    async with aiohttp.ClientSession() as http:
        return await paired_kiosk(http, server.url, server.app[STORE_KEY], server.app[DIRECTORY_KEY], "s-1")


async def _kiosk_on_its_device_channel(server: RunningServer, connect: Any) -> tuple[WsClient, dict[str, str]]:
    credential = await _seed_and_pair(server)
    kiosk, _ = await _device(connect, credential)
    return kiosk, credential


async def test_lone_surrogate_in_kiosk_credentials_is_bad_message(server: RunningServer, connect: Any) -> None:
    credential = await _seed_and_pair(server)
    c = await connect()
    for device in (
        {"kiosk_id": LONE, "credential": credential["credential"]},
        {"kiosk_id": credential["kiosk_id"], "credential": LONE},
    ):
        await send_raw_json(c, {"type": "hello", "v": 1, "device": device})
        await c.expect_error("bad_message")
    await c.send({"type": "hello", "v": 1, "device": credential})
    await c.expect("device_welcome")


async def test_lone_surrogate_in_kiosk_messages_is_bad_message(server: RunningServer, connect: Any) -> None:
    kiosk, _ = await _kiosk_on_its_device_channel(server, connect)
    for message in (
        {"type": "activity_join", "activity_id": LONE},
        {"type": "call_hangup", "call_id": LONE},
        {"type": "call_answer", "call_id": LONE, "accept": True},
        {"type": "call_contact", "contact_id": LONE},
        {"type": "selftest_result", "result": {"checks": {LONE: {"ok": True}}}},
    ):
        await send_raw_json(kiosk, message)
        await kiosk.expect_error("bad_message")
    await kiosk.send({"type": "activity_join", "activity_id": "a-gym"})
    await kiosk.expect("activity_token")


async def test_deeply_nested_selftest_result_is_bad_message(server: RunningServer, connect: Any) -> None:
    kiosk, credential = await _kiosk_on_its_device_channel(server, connect)
    await kiosk.send_raw('{"type": "selftest_result", "result": ' + '{"a": ' * 500 + "1" + "}" * 500 + "}")
    await kiosk.expect_error("bad_message")
    stored = await server.app[DIRECTORY_KEY].get(Kiosk, credential["kiosk_id"])
    assert stored is not None and stored.last_selftest is None


async def test_lone_surrogate_in_an_invite_and_a_call_id_is_bad_message(server: RunningServer, connect: Any) -> None:
    contact = await _seed_senior(server)
    invite = issue_invite(named_secret(server.app[SETTINGS_KEY], "invite"), contact)
    page = await connect()
    await send_raw_json(page, {"type": "hello", "v": 1, "contact": {"invite": LONE}})
    await page.expect_error("bad_message")
    await send_raw_json(page, {"type": "hello", "v": 1, "contact": {"invite": invite + LONE}})
    await page.expect_error("bad_message")
    await page.send({"type": "hello", "v": 1, "contact": {"invite": invite}})
    await page.expect("contact_welcome")
    await send_raw_json(page, {"type": "call_answer", "call_id": LONE, "accept": True})
    await page.expect_error("bad_message")


@pytest.mark.parametrize(
    "message",
    [
        {"type": "kick", "participant_id": LONE},
        {"type": "admit", "participant_id": LONE},
        {"type": "deny", "participant_id": LONE},
        {"type": "mute", "kind": "audio", "muted": True, "participant_id": LONE},
        {"type": "spotlight", "participant_id": LONE},
        {"type": "ask_unmute", "participant_id": LONE, "kind": "audio"},
        {"type": "join", "room": LONE},
        {"type": "ping", "id": LONE},
    ],
    ids=lambda m: m["type"],
)
async def test_lone_surrogate_in_participant_ids_is_bad_message(
    server: RunningServer, connect: Any, message: dict[str, Any]
) -> None:
    host = await connect()
    await join(host, server.token(role="host", name="Host", participant_id="p-host"))
    await send_raw_json(host, message)
    await host.expect_error("bad_message")
    await still_answers(host)
    assert [p.participant_id for p in await server.app[STORE_KEY].list_participants("room-1")] == ["p-host"]


def _without_fingerprint(sdp: str) -> str:
    return "".join(line + "\r\n" for line in sdp.splitlines() if not line.startswith("a=fingerprint:"))


def _garbage_fingerprint(sdp: str) -> str:
    return "".join(
        ("a=fingerprint:sha-256 ZZ:not:hex" if line.startswith("a=fingerprint:") else line) + "\r\n"
        for line in sdp.splitlines()
    )


def _unknown_digest(sdp: str) -> str:
    return "".join(
        ("a=fingerprint:md5 AB:CD" if line.startswith("a=fingerprint:") else line) + "\r\n"
        for line in sdp.splitlines()
    )


async def test_answer_without_a_usable_fingerprint_is_refused(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await join(c, server.token())
    await c.send({"type": "publish", "audio": True, "video": True})
    offer = await c.expect("offer")
    pc = RTCPeerConnection()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        assert "a=fingerprint:" in answer
        for broken in (_without_fingerprint(answer), _garbage_fingerprint(answer), _unknown_digest(answer)):
            await c.send({"type": "answer", "sdp": broken, "negotiation_id": offer["negotiation_id"], "id": "bad"})
            error = await c.expect_error("bad_fingerprint")
            assert error["ref"] == "bad" and "fingerprint" in error["message"]
        # Nothing changed: the same offer still takes a proper answer.
        await c.send({"type": "answer", "sdp": answer, "negotiation_id": offer["negotiation_id"], "id": "good"})
        await c.send({"type": "ping", "id": "after"})
        pong = await c.expect("pong")
        assert pong["ref"] == "after"
        assert not [m for m in c.received if m.get("type") == "error" and m.get("ref") == "good"]
    finally:
        await pc.close()
