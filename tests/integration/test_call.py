"""Real calls through the SFU: aiortc clients over loopback publish test patterns and tones."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from kiosk_client.call import CallClient
from kiosk_client.media import open_audio, open_video
from server.appkeys import SFU_KEY, SIGNALING_KEY, STORE_KEY

from tests.conftest import RunningServer
from tests.support import eventually, media_from, scrape_metrics

ClientFactory = Callable[..., Awaitable[CallClient]]


@pytest.fixture
async def call_client(server: RunningServer) -> AsyncIterator[ClientFactory]:
    clients: list[CallClient] = []

    async def _make(name: str, *, publish: bool = True, role: str = "senior", **token: Any) -> CallClient:
        video = open_video("testsrc", width=320, height=240, fps=15).video if publish else None
        audio = open_audio("tone").audio if publish else None
        client = CallClient(server.url, server.token(role=role, name=name, **token), video=video, audio=audio)
        clients.append(client)
        await client.start()
        return client

    yield _make
    for client in clients:
        await client.close()


def receiving(client: CallClient, other: CallClient, frames: int = 10) -> bool:
    media = media_from(client, other)
    return (
        media is not None
        and media.video_frames >= frames
        and media.audio_frames >= frames
        and media.video_advancing
        and media.audio_advancing
    )


async def test_two_party_call_both_ways(call_client: ClientFactory) -> None:
    alice = await call_client("Alice")
    bob = await call_client("Bob")
    await eventually(lambda: receiving(alice, bob) and receiving(bob, alice), what="media both ways")
    for me, other in ((alice, bob), (bob, alice)):
        media = media_from(me, other)
        assert media is not None
        assert (media.video_width, media.video_height) == (320, 240)
        assert media.name == ("Bob" if other is bob else "Alice")
        # Without the keyframe relay the first frame would wait for aiortc's 100 s GOP.
        assert media.first_video_frame_ms is not None and media.first_video_frame_ms < 5000
    assert not alice.errors and not bob.errors


async def test_three_party_call_everyone_hears_and_sees_everyone(server: RunningServer, call_client: ClientFactory) -> None:
    clients = [await call_client(name) for name in ("Anna", "Bram", "Cor")]
    await eventually(
        lambda: all(receiving(a, b) for a in clients for b in clients if a is not b),
        what="media between all three",
    )
    stats = server.app[SFU_KEY].stats()
    assert stats == {"routers": 1, "transports": 3, "producers": 6, "consumers": 12}


async def test_forwarded_media_is_not_decoded_on_the_server(server: RunningServer, call_client: ClientFactory) -> None:
    before = {t.name for t in threading.enumerate()}
    alice = await call_client("Alice")
    bob = await call_client("Bob")
    await eventually(lambda: receiving(bob, alice) and receiving(alice, bob), what="media")
    # aiortc names its decoder threads "<kind>-decoder"; only the two clients' own
    # receivers (two each) may have them, none may belong to the server's transports.
    decoders = [t for t in threading.enumerate() if t.name.endswith("-decoder") and t.name not in before]
    assert len(decoders) == 4
    router = server.app[SFU_KEY].routers["room-1"]
    for transport in router.transports.values():
        for slot in transport.publish_slots.values():
            assert slot.transceiver.receiver._RTCRtpReceiver__decoder_thread is None


async def test_late_joiner_gets_video_promptly(call_client: ClientFactory) -> None:
    alice = await call_client("Alice")
    await asyncio.sleep(1.0)
    late = await call_client("Late", publish=False)
    await eventually(lambda: (m := media_from(late, alice)) is not None and m.video_frames > 0, what="first frame")
    media = media_from(late, alice)
    assert media is not None and media.first_video_frame_ms is not None
    assert media.first_video_frame_ms < 3000


async def test_unpublish_stops_forwarding_and_tells_everyone(server: RunningServer, call_client: ClientFactory) -> None:
    alice = await call_client("Alice")
    bob = await call_client("Bob")
    await eventually(lambda: receiving(bob, alice), what="media")
    await alice.signaling.send({"type": "unpublish", "kind": "video"})
    await eventually(
        lambda: any(e["type"] == "track_unpublished" and e["kind"] == "video" for e in bob.events),
        what="track_unpublished",
    )
    bob_transport = server.app[SFU_KEY].routers["room-1"].transports[bob.self_id]
    kinds = sorted(slot.consumer.kind for slot in bob_transport.consumer_slots.values())
    assert kinds == ["audio"]
    tracks = await server.app[STORE_KEY].list_tracks("room-1")
    assert sorted((t.participant_id == alice.self_id, t.kind) for t in tracks) == [
        (False, "audio"), (False, "video"), (True, "audio"),
    ]
    # Audio keeps flowing after the renegotiation.
    media = media_from(bob, alice)
    assert media is not None
    frames = media.audio_frames
    await eventually(lambda: media.audio_frames > frames + 20, what="audio after unpublish")


async def test_host_mute_stops_media_at_the_server(server: RunningServer, call_client: ClientFactory) -> None:
    host = await call_client("Host", role="host")
    senior = await call_client("Senior")
    await eventually(lambda: receiving(host, senior), what="media")
    await host.signaling.send({"type": "mute", "kind": "audio", "muted": True, "participant_id": senior.self_id})
    await eventually(
        lambda: any(e["type"] == "mute_changed" and e["by"] == host.self_id for e in senior.events),
        what="senior told about the mute",
    )
    transport = server.app[SFU_KEY].routers["room-1"].transports[host.self_id]
    consumer = next(s.consumer for s in transport.consumer_slots.values() if s.consumer.kind == "audio")
    await asyncio.sleep(0.3)
    frozen = consumer.packets
    await asyncio.sleep(1.0)
    assert consumer.packets == frozen
    # Only the senior can unmute.
    await senior.signaling.send({"type": "mute", "kind": "audio", "muted": False})
    await eventually(lambda: consumer.packets > frozen + 20, what="audio after unmute")


async def test_signalling_resume_leaves_media_untouched(server: RunningServer, call_client: ClientFactory) -> None:
    alice = await call_client("Alice")
    bob = await call_client("Bob")
    await eventually(lambda: receiving(bob, alice), what="media")
    session_id = alice.signaling.welcome["session_id"]
    transport = server.app[SFU_KEY].routers["room-1"].transports[alice.self_id]
    pc = alice.pc
    media = media_from(bob, alice)
    assert media is not None

    await alice.signaling.drop_socket()
    await eventually(
        lambda: any(e["type"] == "participant_updated" and not e["participant"]["connected"] for e in bob.events),
        what="bob sees alice disconnected",
    )
    frames = media.video_frames
    await eventually(lambda: media.video_frames > frames + 10, what="video during the outage")
    await eventually(
        lambda: any(e["type"] == "participant_updated" and e["participant"]["connected"] for e in bob.events),
        what="alice resumed",
    )
    assert alice.signaling.welcome["session_id"] == session_id
    assert alice.pc is pc
    assert server.app[SFU_KEY].routers["room-1"].transports[alice.self_id] is transport
    assert not any(e["type"] == "participant_left" for e in bob.events)


def _threads() -> int:
    # The default executor's pooled workers (encoding) come and go with load; any other
    # thread left behind (decoders, media players) is a leak.
    return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))


def _peer_connections() -> list[RTCPeerConnection]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection)]


async def test_twenty_join_leave_cycles_leave_nothing_behind(server: RunningServer, call_client: ClientFactory) -> None:
    watcher = await call_client("Watcher", publish=False)
    signaling = server.app[SIGNALING_KEY]
    baseline: dict[str, int] = {}

    # Cycle 0 warms up: the watcher's own peer connection appears with the first guest.
    for cycle in range(21):
        if cycle == 1:
            await asyncio.sleep(0.5)
            baseline = {
                "tasks": len(asyncio.all_tasks()),
                "threads": _threads(),
                "pcs": len(_peer_connections()),
            }
        video = open_video("testsrc", width=160, height=120, fps=15)
        audio = open_audio("tone")
        guest = CallClient(server.url, server.token(name=f"Guest {cycle}"), video=video.video, audio=audio.audio)
        await guest.start()
        await eventually(
            lambda: sum(e["type"] == "track_published" for e in watcher.events) >= 2 * (cycle + 1),
            what=f"cycle {cycle} published",
        )
        await guest.close()
        await eventually(
            lambda: sum(e["type"] == "participant_left" for e in watcher.events) >= cycle + 1,
            what=f"cycle {cycle} left",
        )

    sfu = server.app[SFU_KEY]
    await eventually(lambda: sfu.stats()["producers"] == 0, what="producers gone")
    assert sfu.stats() == {"routers": 1, "transports": 1, "producers": 0, "consumers": 0}
    assert [p.name for p in await server.app[STORE_KEY].list_participants("room-1")] == ["Watcher"]
    assert await server.app[STORE_KEY].list_tracks("room-1") == []
    assert len(signaling.sessions) == 1
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline["tasks"], what="tasks to end")
    await eventually(lambda: _threads() <= baseline["threads"], what="threads to end")
    await eventually(lambda: len(_peer_connections()) <= baseline["pcs"], what="peer connections freed")


async def test_metrics_count_the_forwarding(server: RunningServer, call_client: ClientFactory) -> None:
    alice = await call_client("Alice")
    bob = await call_client("Bob")
    await eventually(lambda: receiving(alice, bob) and receiving(bob, alice), what="media")

    _, before = await scrape_metrics(server.url)
    video = next(p for p in server.app[SFU_KEY].routers["room-1"].producers if p.kind == "video")
    video.request_keyframe()
    video.request_keyframe()  # coalesced with the first
    await asyncio.sleep(0.1)
    text, values = await scrape_metrics(server.url)
    assert values["verzilvering_pli_total"] == before["verzilvering_pli_total"] + 1
    assert values["verzilvering_rooms"] == 1
    assert values["verzilvering_participants"] == 2
    assert values["verzilvering_forwarded_streams"] == 4
    assert values["verzilvering_forwarded_packets_total"] > 100
    assert values["verzilvering_received_packets_total"] >= values["verzilvering_forwarded_packets_total"] / 2
    assert values["verzilvering_forwarded_bytes_total"] > 10_000
    # On an idle loopback no socket is full: nothing was lost at the node's own sockets.
    assert values["verzilvering_send_refused_total"] == 0
    # A clean link: no repairs refused, no higher layer to probe for.
    assert values["verzilvering_nack_refused_total"] == 0
    assert values["verzilvering_probe_packets_total"] == 0
    assert values["verzilvering_join_seconds_count"] == 2
    assert "verzilvering_redis_errors_total" in values
    assert "alice" not in text.lower() and "room-1" not in text

    # A full collection (the server runs in this process) shows as a pause of generation 2.
    pauses = 'verzilvering_gc_pause_seconds_count{generation="2"}'
    gc.collect()
    _, after_gc = await scrape_metrics(server.url)
    assert after_gc[pauses] >= values.get(pauses, 0) + 1
    assert after_gc['verzilvering_gc_pause_seconds_sum{generation="2"}'] > 0


async def _alice_watched_by_bob(call_client: ClientFactory) -> tuple[CallClient, CallClient]:
    """Alice publishing and Bob only watching, once Bob has more than 10 of her video frames."""
    alice = await call_client("Alice")
    bob = await call_client("Bob", publish=False)
    await eventually(lambda: (m := media_from(bob, alice)) is not None and m.video_frames > 10, what="video")
    return alice, bob


async def test_lost_packet_to_a_subscriber_is_retransmitted_from_history(
    server: RunningServer, call_client: ClientFactory
) -> None:
    alice, bob = await _alice_watched_by_bob(call_client)
    transport = server.app[SFU_KEY].routers["room-1"].transports[bob.self_id]
    feed = next(s.consumer.feed for s in transport.consumer_slots.values() if s.consumer.kind == "video")
    # Lose the packet on the wire: Bob's socket's protocol never sees it. (Forwarding writes
    # from C straight to the server's socket, server/_srtpsend.c; retransmissions go
    # through aiortc's own path.)
    bob_dtls = next(t.receiver.transport for t in bob.pc.getTransceivers() if t.receiver.transport)  # type: ignore[union-attr]
    inbound = bob_dtls.transport._connection._nominated[1].protocol
    dropped: list[int] = []

    def lossy(data: bytes, addr: Any) -> None:
        # Drop exactly one of this consumer's video packets (not RTCP, not a retransmission);
        # SRTP leaves the RTP header in the clear.
        is_rtcp = 192 <= data[1] <= 223  # RFC 5761 demultiplexing
        if not dropped and not is_rtcp and int.from_bytes(data[8:12], "big") == feed.ssrc:
            dropped.append(int.from_bytes(data[2:4], "big"))
            return
        type(inbound).datagram_received(inbound, data, addr)

    inbound.datagram_received = lossy
    try:
        await eventually(lambda: bool(dropped), what="a packet dropped")
        frames = media_from(bob, alice).video_frames  # type: ignore[union-attr]
        await eventually(lambda: feed.retransmits >= 1, timeout=5, what="retransmission on NACK")
        await eventually(lambda: media_from(bob, alice).video_frames > frames + 5, timeout=5, what="video after loss")  # type: ignore[union-attr]
    finally:
        del inbound.datagram_received
    # The subscriber's bandwidth estimate reaches the producer, which caps the publisher by it.
    video = next(p for p in server.app[SFU_KEY].routers["room-1"].producers if p.kind == "video")
    await eventually(lambda: video.downstream_limit() is not None, timeout=10, what="REMB from the subscriber")


async def test_tiles_are_scaled_and_capped_and_spotlight_restores_full_quality(
    server: RunningServer, call_client: ClientFactory
) -> None:
    host = await call_client("Host", role="host", participant_id="p-host")
    senior = CallClient(
        server.url, server.token(name="Senior", participant_id="p-senior"),
        video=open_video("testsrc", width=640, height=480, fps=15).video, audio=open_audio("tone").audio,
    )
    try:
        await senior.start()
        await eventually(lambda: (m := media_from(host, senior)) is not None and m.video_frames > 5, what="video")
        await eventually(lambda: media_from(host, senior).video_height == 240, what="a 240-line tile")  # type: ignore[union-attr]
        assert senior.publishing.governor.target <= 150_000
        await host.signaling.send({"type": "spotlight", "participant_id": "p-senior"})
        await eventually(lambda: media_from(host, senior).video_height == 480, what="full picture when spotlit")  # type: ignore[union-attr]
    finally:
        await senior.close()


async def test_publisher_leg_loss_is_nacked_again_until_repaired(
    server: RunningServer, call_client: ClientFactory
) -> None:
    alice, bob = await _alice_watched_by_bob(call_client)
    assert alice.pc is not None
    sender = next(t.sender for t in alice.pc.getTransceivers() if t.sender.track is not None and t.sender.kind == "video")
    dtls = sender.transport
    original = dtls._send_rtp
    dropped: list[str] = []

    async def lossy(data: bytes) -> None:
        if not 192 <= data[1] <= 223:
            ssrc = int.from_bytes(data[8:12], "big")
            # The first video packet, then the first retransmission of it.
            if ssrc == sender._ssrc and not dropped:
                dropped.append("original")
                return
            if ssrc == sender._rtx_ssrc and dropped == ["original"]:
                dropped.append("retransmission")
                return
        await original(data)

    tap = next(p for p in server.app[SFU_KEY].routers["room-1"].producers if p.kind == "video").tap
    before = tap.nack_requests
    dtls._send_rtp = lossy
    try:
        await eventually(lambda: dropped == ["original", "retransmission"], timeout=5, what="both drops")
        frames = media_from(bob, alice).video_frames  # type: ignore[union-attr]
        await eventually(lambda: tap.nack_requests >= before + 2, timeout=2, what="a second NACK")
        await eventually(lambda: media_from(bob, alice).video_frames > frames + 5, timeout=5, what="video goes on")  # type: ignore[union-attr]
    finally:
        dtls._send_rtp = original


@pytest.mark.parametrize("settings_overrides", [{"tiles_to_everyone_up_to": 2}])
async def test_activity_tiles_go_to_hosts_and_the_spotlight_to_everyone(
    server: RunningServer, call_client: ClientFactory
) -> None:
    from server.appkeys import DIRECTORY_KEY
    from server.directory import Activity

    await server.app[DIRECTORY_KEY].put(Activity(id="room-1", title="Bingo"), actor="test")
    host = await call_client("Host", role="host", participant_id="p-host")
    anna = await call_client("Anna", participant_id="p-anna")
    bram = await call_client("Bram", participant_id="p-bram")
    router = server.app[SFU_KEY].routers["room-1"]

    def consumed(subscriber: str) -> set[tuple[str, str]]:
        return {
            (s.consumer.producer.participant_id, s.consumer.kind)
            for s in router.transports[subscriber].consumer_slots.values()
        }

    await eventually(lambda: len(consumed("p-host")) == 4, what="the host sees every tile")
    assert consumed("p-anna") == {("p-host", "audio"), ("p-host", "video"), ("p-bram", "audio")}
    await eventually(lambda: receiving(anna, host) and receiving(host, bram), what="media")

    await host.signaling.send({"type": "spotlight", "participant_id": "p-bram"})
    await eventually(lambda: ("p-bram", "video") in consumed("p-anna"), what="spotlight to everyone")
    await eventually(lambda: (m := media_from(anna, bram)) is not None and m.video_frames > 5, what="Bram's video at Anna")
    await host.signaling.send({"type": "spotlight", "participant_id": None})
    await eventually(lambda: ("p-bram", "video") not in consumed("p-anna"), what="tile withdrawn")
