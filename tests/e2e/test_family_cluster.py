"""The senior calls family across nodes: two real server processes sharing a real
redis-server, the kiosk's device connection on node 1, the family page listening on node 2.
Ringing, the answer, the tokens and the media all cross over Redis; a missed call rung on
node 1 is shown by node 2."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.redis_server import RedisServer
from bench.server_process import Node
from kiosk_client.call import CallClient
from kiosk_client.media import open_audio, open_video
from server.config import Settings
from server.directory import Contact, Directory, Senior
from server.invites import issue_invite, named_secret
from server.pairing import confirm_pairing
from server.store.redis import RedisStore

from tests.conftest import TEST_SECRET
from tests.support import eventually

RING_S = 3.0


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def nodes(redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[Node], str]]:
    monkeypatch.setenv("VERZILVERING_RING_TIMEOUT_S", str(RING_S))
    prefix = f"vztest:{uuid.uuid4().hex}:"
    made = [Node("n1", redis_server.url, prefix, tmp_path, secret=TEST_SECRET),
            Node("n2", redis_server.url, prefix, tmp_path, secret=TEST_SECRET)]
    try:
        yield made, prefix
    finally:
        for node in made:
            node.stop()


async def _next(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 15) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"socket {message.type.name} while waiting for {kind}")
            data = json.loads(message.data)
            if data.get("type") == kind:
                return data


def _ws(url: str) -> str:
    return url.replace("http", "ws") + "/ws"


async def test_kiosk_on_node_1_calls_family_listening_on_node_2(
    nodes: tuple[list[Node], str], redis_server: RedisServer, tmp_path: Path
) -> None:
    (n1, n2), prefix = nodes
    store = RedisStore(redis_server.url, node_id="test", prefix=prefix)
    await store.open()
    clients: list[CallClient] = []
    try:
        directory = Directory(store)
        await directory.put(Senior(id="s-1", name="Oma Riet"), actor="test")
        contact = Contact(id="c-sanne", senior_id="s-1", name="Sanne", trusted=True)
        await directory.put(contact, actor="test")
        invite = issue_invite(named_secret(Settings(data_dir=tmp_path / "t", token_secret=TEST_SECRET), "invite"), contact)
        async with aiohttp.ClientSession() as http:
            async with http.post(n1.url + "/api/kiosk/pair") as r:
                started = await r.json()
            await confirm_pairing(store, directory, started["code"], "s-1", actor="test")
            async with http.get(n1.url + "/api/kiosk/pair/" + started["pairing_id"],
                                headers={"X-Pairing-Secret": started["secret"]}) as r:
                credential = await r.json()

            kiosk = await http.ws_connect(_ws(n1.url))
            await kiosk.send_json({"type": "hello", "v": 1, "device": credential})
            await _next(kiosk, "device_welcome")
            page = await http.ws_connect(_ws(n2.url))
            await page.send_json({"type": "hello", "v": 1, "contact": {"invite": invite}})
            assert (await _next(page, "contact_welcome"))["missed_calls"] == []

            # Ring on node 2, answer on node 2, tokens back to both.
            await kiosk.send_json({"type": "call_contact", "id": "c1", "contact_id": "c-sanne"})
            ringing = await _next(kiosk, "call_ringing")
            incoming = await _next(page, "incoming_call")
            assert incoming["call_id"] == ringing["call_id"] and incoming["senior"]["name"] == "Oma Riet"
            await page.send_json({"type": "call_answer", "call_id": incoming["call_id"], "accept": True})
            family_join = await _next(page, "call_join")
            kiosk_join = await _next(kiosk, "call_join")
            assert family_join["room"] == kiosk_join["room"] == f"call-{incoming['call_id']}"

            # Media both ways: the kiosk joins through node 1, the family member through node 2.
            senior = CallClient(n1.url, kiosk_join["token"], video=open_video("testsrc", 160, 120, 15).video,
                                audio=open_audio("tone").audio)
            clients.append(senior)
            family = CallClient(n2.url, family_join["token"], video=open_video("testsrc", 160, 120, 15).video,
                                audio=open_audio("tone").audio)
            clients.append(family)
            await senior.start()
            await family.start()

            def both_ways() -> bool:
                a, b = family.remote.get("s-1"), senior.remote.get("c-sanne")
                return bool(a and b and a.video_frames > 5 and a.audio_frames > 5 and b.video_frames > 5 and b.audio_frames > 5)

            await eventually(both_ways, 30, "media both ways across the nodes")

            # Missed: the ring timer runs on node 1; node 2's page hears it and keeps it.
            await kiosk.send_json({"type": "call_contact", "id": "c2", "contact_id": "c-sanne"})
            call_id = (await _next(kiosk, "call_ringing"))["call_id"]
            assert (await _next(page, "incoming_call"))["call_id"] == call_id
            assert (await _next(kiosk, "call_cancelled", timeout=RING_S + 10))["reason"] == "missed"
            assert (await _next(page, "call_cancelled"))["reason"] == "missed"
            again = await http.ws_connect(_ws(n2.url))
            await again.send_json({"type": "hello", "v": 1, "contact": {"invite": invite}})
            assert len((await _next(again, "contact_welcome"))["missed_calls"]) == 1

            # The senior hangs up while it rings: the cancel crosses to node 2 too.
            await kiosk.send_json({"type": "call_contact", "id": "c3", "contact_id": "c-sanne"})
            call_id = (await _next(kiosk, "call_ringing"))["call_id"]
            await _next(page, "incoming_call")
            await kiosk.send_json({"type": "call_hangup", "call_id": call_id})
            assert (await _next(page, "call_cancelled"))["reason"] == "hung_up"
            for ws in (kiosk, page, again):
                await ws.close()
    finally:
        for client in clients:
            await client.close()
        await store.close()
