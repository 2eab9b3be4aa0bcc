"""The senior calls family across nodes: two real server processes sharing a real
redis-server, the kiosk's device connection on node 1, the family page listening on node 2.
Ringing, the answer, the tokens and the media all cross over Redis; a missed call rung on
node 1 is shown by node 2."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from bench.redis_server import RedisServer
from bench.server_process import Node
from kiosk_client.call import CallClient
from kiosk_client.media import open_audio, open_video
from server.config import Settings
from server.directory import Contact, Directory, Senior
from server.invites import issue_invite, named_secret

from tests.browser_helpers import device_socket, next_message
from tests.cluster_support import cluster, probe_store, redis_server, start_nodes  # noqa: F401  (fixtures)
from tests.conftest import TEST_SECRET
from tests.support import eventually, paired_kiosk

RING_S = 3.0


@pytest.fixture(autouse=True)
def short_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    # Autouse: set before the `cluster` fixture starts the nodes.
    monkeypatch.setenv("VERZILVERING_RING_TIMEOUT_S", str(RING_S))


def _ws(url: str) -> str:
    return url.replace("http", "ws") + "/ws"


async def test_kiosk_on_node_1_calls_family_listening_on_node_2(
    cluster: tuple[list[Node], str], redis_server: RedisServer, tmp_path: Path
) -> None:
    (n1, n2), prefix = cluster
    clients: list[CallClient] = []
    async with probe_store(redis_server.url, prefix, node_id="test") as store:
        try:
            directory = Directory(store)
            await directory.put(Senior(id="s-1", name="Oma Riet"), actor="test")
            contact = Contact(id="c-sanne", senior_id="s-1", name="Sanne", trusted=True)
            await directory.put(contact, actor="test")
            invite = issue_invite(named_secret(Settings(data_dir=tmp_path / "t", token_secret=TEST_SECRET), "invite"), contact)
            async with aiohttp.ClientSession() as http:
                credential = await paired_kiosk(http, n1.url, store, directory, "s-1")
                kiosk = await device_socket(http, n1.url, credential)
                page = await http.ws_connect(_ws(n2.url))
                await page.send_json({"type": "hello", "v": 1, "contact": {"invite": invite}})
                assert (await next_message(page, "contact_welcome"))["missed_calls"] == []

                # Ring on node 2, answer on node 2, tokens back to both.
                await kiosk.send_json({"type": "call_contact", "id": "c1", "contact_id": "c-sanne"})
                ringing = await next_message(kiosk, "call_ringing")
                incoming = await next_message(page, "incoming_call")
                assert incoming["call_id"] == ringing["call_id"] and incoming["senior"]["name"] == "Oma Riet"
                await page.send_json({"type": "call_answer", "call_id": incoming["call_id"], "accept": True})
                family_join = await next_message(page, "call_join")
                kiosk_join = await next_message(kiosk, "call_join")
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
                call_id = (await next_message(kiosk, "call_ringing"))["call_id"]
                assert (await next_message(page, "incoming_call"))["call_id"] == call_id
                assert (await next_message(kiosk, "call_cancelled", timeout=RING_S + 10))["reason"] == "missed"
                assert (await next_message(page, "call_cancelled"))["reason"] == "missed"
                again = await http.ws_connect(_ws(n2.url))
                await again.send_json({"type": "hello", "v": 1, "contact": {"invite": invite}})
                assert len((await next_message(again, "contact_welcome"))["missed_calls"]) == 1

                # The senior hangs up while it rings: the cancel crosses to node 2 too.
                await kiosk.send_json({"type": "call_contact", "id": "c3", "contact_id": "c-sanne"})
                call_id = (await next_message(kiosk, "call_ringing"))["call_id"]
                await next_message(page, "incoming_call")
                await kiosk.send_json({"type": "call_hangup", "call_id": call_id})
                assert (await next_message(page, "call_cancelled"))["reason"] == "hung_up"
                for ws in (kiosk, page, again):
                    await ws.close()
        finally:
            for client in clients:
                await client.close()
