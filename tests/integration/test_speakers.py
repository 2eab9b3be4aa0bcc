"""Active speaker and last-N audio: packets fed directly, then a real room."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.contrib.media import MediaPlayer
from aiortc.rtp import RtpPacket

from kiosk_client.call import CallClient
from server.appkeys import SFU_KEY
from server.sfu.producer import Producer
from server.rtc.rtphooks import ReceiverTap
from server.sfu.speakers import SpeakerSelector

from tests.conftest import RunningServer


def _packet(seq: int, level: int | None) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq * 960, ssrc=1, payload=b"\x00" * 40)
    if level is not None:
        packet.extensions.audio_level = (level < 60, level)
    return packet


async def test_loudest_n_are_forwarded_hosts_always_and_the_speaker_is_named() -> None:
    pc = RTCPeerConnection()
    try:
        producers = []
        for i in range(5):
            tap = ReceiverTap(pc.addTransceiver("audio", direction="recvonly").receiver, "audio")
            producers.append(Producer(f"p-{i}", "audio", tap, keyframe_request_interval_s=0.25))
        producers[4].always_audible = True  # the host, silent here
        speakers: list[str | None] = []
        selector = SpeakerSelector(lambda: producers, last_n=2, interval_s=1, on_active_speaker=speakers.append)
        # dBov levels: p-1 loudest, then p-3, p-0; p-2 and the host silent.
        levels = {0: 45, 1: 20, 2: 127, 3: 30, 4: 127}
        for seq in range(30):
            for i, producer in enumerate(producers):
                await producer._on_rtp(_packet(seq, levels[i]))
        selector.select()
        assert {p.participant_id for p in producers if p.audible} == {"p-1", "p-3", "p-4"}
        assert speakers == ["p-1"]

        # p-0 starts shouting, p-1 falls silent: the selection follows.
        levels.update({0: 10, 1: 127})
        for seq in range(30, 60):
            for i, producer in enumerate(producers):
                await producer._on_rtp(_packet(seq, levels[i]))
        selector.select()
        assert {p.participant_id for p in producers if p.audible} == {"p-0", "p-3", "p-4"}
        assert speakers == ["p-1", "p-0"]
        # A muted voice is never chosen, however loud.
        producers[0].set_paused(True)
        selector.select()
        assert not producers[0].audible
    finally:
        await pc.close()


@pytest.mark.parametrize("settings_overrides", [{"last_n_audio": 1}])
async def test_room_forwards_only_the_loudest_voice(server: RunningServer) -> None:
    clients: list[CallClient] = []
    players: list[Any] = []

    async def publisher(name: str, source: str) -> CallClient:
        player = MediaPlayer(source, format="lavfi")
        players.append(player)
        client = CallClient(server.url, server.token(name=name, participant_id=f"p-{name}"), audio=player.audio)
        clients.append(client)
        await client.start()
        return client

    try:
        await publisher("loud", "sine=frequency=440:sample_rate=48000")
        await publisher("quiet1", "anullsrc=r=48000:cl=stereo")
        await publisher("quiet2", "anullsrc=r=48000:cl=stereo")
        listener = CallClient(server.url, server.token(name="listener", participant_id="p-listener"))
        clients.append(listener)
        await listener.start()

        transport = None
        for _ in range(100):
            router = server.app[SFU_KEY].routers.get("room-1")
            transport = router.transports.get("p-listener") if router else None
            if transport is not None and len(transport.consumer_slots) == 3:
                break
            await asyncio.sleep(0.1)
        assert transport is not None and len(transport.consumer_slots) == 3
        await asyncio.sleep(1.5)  # let the selection settle
        by_name = {s.consumer.producer.participant_id: s.consumer for s in transport.consumer_slots.values()}
        before = {name: c.packets for name, c in by_name.items()}
        await asyncio.sleep(1.0)
        sent = {name: c.packets - before[name] for name, c in by_name.items()}
        assert sent["p-loud"] > 30, sent
        assert sent["p-quiet1"] == 0 and sent["p-quiet2"] == 0, sent
        assert any(
            e["type"] == "active_speaker" and e["participant_id"] == "p-loud" for e in listener.events
        )
    finally:
        for client in clients:
            await client.close()
