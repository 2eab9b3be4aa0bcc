"""Simulcast through the SFU with real peers: a test-side aiortc publisher sending three
layers on their own SSRCs (rid extension), aiortc subscribers decoding what they get."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from kiosk_client.call import CallClient
from server.appkeys import SFU_KEY
from server.rtc.simulcast import answered_simulcast, offer_simulcast

from tests.conftest import RunningServer, join
from tests.simulcast_publisher import SimulcastPublisher
from tests.support import eventually, listening_client, scrape_metrics

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=recvonly\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97\r\na=mid:1\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
    "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\na=recvonly\r\n"
)


def test_the_offer_asks_for_three_layers_on_the_publish_line_only() -> None:
    sdp = offer_simulcast(OFFER, "1")
    audio, video = sdp.split("m=video")
    assert "a=rid" not in audio and "simulcast" not in audio
    for line in ("a=rid:h recv", "a=rid:m recv", "a=rid:l recv", "a=simulcast:recv h;m;l",
                 "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
                 "a=extmap:5 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"):
        assert line in video.split("\r\n"), line
    assert offer_simulcast(sdp, "1") == sdp


def test_the_answer_names_the_layers_sent_or_none() -> None:
    answer = OFFER.replace("a=recvonly", "a=sendonly").replace(
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n"
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n"
        "a=extmap:5 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n"
        "a=rid:h send\r\na=rid:l send\r\na=rid:x send\r\na=simulcast:send h;~m;l,m;x\r\n",
    )
    got = answered_simulcast(answer, "1")
    assert got is not None and got.rids == ("h", "l") and got.spatial_layers == (0, 2)
    assert (got.rid_extension_id, got.repaired_rid_extension_id) == (4, 5)
    assert answered_simulcast(OFFER.replace("a=recvonly", "a=sendonly"), "1") is None
    assert answered_simulcast(answer, "0") is None


@contextlib.contextmanager
def losing_every(client: CallClient, nth: int) -> Iterator[None]:
    """Every `nth` RTP datagram the client receives never arrives (its socket's protocol does
    not see it); RTCP still gets through, so its receiver reports tell the loss."""
    assert client.pc is not None
    dtls = next(t.receiver.transport for t in client.pc.getTransceivers() if t.receiver.transport)
    inbound = dtls.transport._connection._nominated[1].protocol
    seen = [0]

    def lossy_link(data: bytes, addr: Any) -> None:
        if not 192 <= data[1] <= 223 and data[0] >> 6 == 2:
            seen[0] += 1
            if seen[0] % nth == 0:
                return
        type(inbound).datagram_received(inbound, data, addr)

    inbound.datagram_received = lossy_link
    try:
        yield
    finally:
        del inbound.datagram_received


@pytest.fixture
async def publisher(server: RunningServer, connect: Any) -> AsyncIterator[SimulcastPublisher]:
    ws = await connect()
    await join(ws, server.token(name="Pub", participant_id="p-pub"))
    pub = SimulcastPublisher(ws)
    await pub.start()
    yield pub
    await pub.close()


@pytest.fixture
async def subscriber(server: RunningServer) -> AsyncIterator[CallClient]:
    async with listening_client(server.url, server.token(name="Sub", participant_id="p-sub")) as client:
        yield client


async def test_each_layer_is_demultiplexed_and_the_top_one_forwarded(
    server: RunningServer, publisher: SimulcastPublisher, subscriber: CallClient
) -> None:
    await eventually(lambda: (m := subscriber.remote.get("p-pub")) is not None and m.video_frames > 10,
                     what="video at the subscriber")
    producer = next(p for p in server.app[SFU_KEY].routers["room-1"].producers if p.kind == "video")
    assert producer.tap.simulcast is not None and producer.tap.simulcast.rids == ("h", "m", "l")
    assert producer.layered
    assert producer.tap.layer_ssrcs == {2: publisher.layers["h"].ssrc, 1: publisher.layers["m"].ssrc,
                                        0: publisher.layers["l"].ssrc}
    assert producer.layers.size == {2: (320, 240), 1: (160, 120), 0: (80, 60)}
    media = subscriber.remote["p-pub"]
    # No layout sent and no REMB cap yet: the top layer.
    assert (media.video_width, media.video_height) == (320, 240)
    # Keyframes are asked of the forwarded layer only: nobody forced one on the others.
    assert publisher.layers["m"].plis == 0 and publisher.layers["l"].plis == 0
    # Every layer's SSRC gets its receiver reports.
    await eventually(lambda: all(layer.receiver_reports >= 1 for layer in publisher.layers.values()), timeout=5,
                     what="receiver reports for every layer")


async def test_layout_switches_layers_down_and_up_without_a_break(
    server: RunningServer, publisher: SimulcastPublisher, subscriber: CallClient
) -> None:
    await eventually(lambda: (m := subscriber.remote.get("p-pub")) is not None and m.video_height == 240,
                     what="the top layer")
    consumer = next(
        s.consumer for s in server.app[SFU_KEY].routers["room-1"].transports["p-sub"].consumer_slots.values()
        if s.consumer.kind == "video"
    )
    media = subscriber.remote["p-pub"]
    await subscriber.signaling.send({"type": "layout", "tiles": [{"participant_id": "p-pub", "width": 80, "height": 60}]})
    await eventually(lambda: media.video_height == 60, what="the smallest layer for a small tile")
    frames = media.video_frames
    await eventually(lambda: media.video_frames >= frames + 15, timeout=5, what="video going on at the low layer")
    # Operators see the layer in /metrics, counted per layer, with no one named.
    metrics, _ = await scrape_metrics(server.url)
    assert 'verzilvering_consumer_layer{spatial="l",temporal="0"} 1.0' in metrics, metrics
    assert "p-sub" not in metrics and "p-pub" not in metrics
    await subscriber.signaling.send({"type": "layout", "tiles": [{"participant_id": "p-pub", "width": 160, "height": 120}]})
    # Up waits out the hold time (4 s), one step at a time, and a step the subscriber's
    # estimate does not cover yet (aiortc's REMB starts near what it receives) is probed
    # first: padding from a quarter of what is sent, doubling at each receiver report that
    # shows no harm (aiortc reports every 0.5-1.5 s) until it adds the step. Here the step
    # is about 8 times what the smallest layer sends: 5-6 levels, 10-13 s measured alone.
    await eventually(lambda: media.video_height == 120, timeout=25, what="the middle layer")
    frames = media.video_frames
    await eventually(lambda: media.video_frames >= frames + 15, timeout=5, what="video going on after switching up")
    assert consumer.layer_switches == 2
    assert consumer.current_spatial == 1


async def test_a_lost_packet_of_a_layer_is_nacked_on_its_ssrc_and_repaired_over_its_rtx(
    server: RunningServer, publisher: SimulcastPublisher, subscriber: CallClient
) -> None:
    await eventually(lambda: (m := subscriber.remote.get("p-pub")) is not None and m.video_height == 240,
                     what="the top layer")
    producer = next(p for p in server.app[SFU_KEY].routers["room-1"].producers if p.kind == "video")
    top, small = publisher.layers["h"], publisher.layers["l"]
    top.drop_next = small.drop_next = True
    await eventually(lambda: top.rtx_sent >= 1 and small.rtx_sent >= 1, timeout=5,
                     what="retransmissions of both layers")
    # Each loss NACKed on its own layer's SSRC, once (no NACK for the other layers' numbers).
    assert len(top.nacked) == 1 and len(small.nacked) == 1
    assert publisher.layers["m"].nacked == []
    # The RTX SSRCs, never signalled, were named by repaired-rtp-stream-id and unwrapped.
    assert producer.tap._rtx_ssrc == {top.rtx_ssrc: top.ssrc, small.rtx_ssrc: small.ssrc}
    media = subscriber.remote["p-pub"]
    frames = media.video_frames
    await eventually(lambda: media.video_frames >= frames + 15, timeout=5, what="video going on after the repair")


async def test_a_lossy_subscriber_moves_down_alone_without_forcing_keyframes_on_others(
    server: RunningServer, publisher: SimulcastPublisher, subscriber: CallClient
) -> None:
    other = CallClient(server.url, server.token(name="Other", participant_id="p-other"), video=None, audio=None)
    await other.start()
    try:
        await eventually(lambda: all((m := c.remote.get("p-pub")) is not None and m.video_height == 240
                                     for c in (subscriber, other)), what="the top layer at both")
        router = server.app[SFU_KEY].routers["room-1"]
        lossy, fine = (next(s.consumer for s in router.transports[pid].consumer_slots.values() if s.consumer.kind == "video")
                       for pid in ("p-sub", "p-other"))
        top_keyframes = publisher.layers["h"].keyframes
        # A quarter of the subscriber's incoming media never arrives.
        with losing_every(subscriber, 4):
            await eventually(lambda: lossy.current_spatial is not None and lossy.current_spatial < 2, timeout=15,
                             what="the lossy subscriber on a lower layer")
            started = asyncio.get_running_loop().time()
            # The other subscriber's own link, watched meanwhile: on a starved test machine
            # its own REMB can fall (delay) and rightly move it down; what must never move
            # it is the lossy subscriber's trouble.
            fine_link = router.transports["p-other"].estimate
            fine_congested = fine_link.congested
            while asyncio.get_running_loop().time() - started < 5:
                await asyncio.sleep(0.05)
                fine_congested = fine_congested or fine_link.congested
            if not fine_congested:
                assert fine.current_spatial == 2 and fine.layer_switches == 0, "the other subscriber kept the top layer"
            assert subscriber.remote["p-pub"].video_height < 240
            # The lossy subscriber's keyframe requests were budgeted: at most a few top-layer
            # keyframes in all that time, not four a second.
            elapsed = asyncio.get_running_loop().time() - started + 15
            assert publisher.layers["h"].keyframes - top_keyframes <= 4, (publisher.layers["h"].keyframes, elapsed)
            transport = router.transports["p-sub"]
            assert transport.estimate.loss > 0.1
        frames = other.remote["p-pub"].video_frames
        await eventually(lambda: other.remote["p-pub"].video_frames > frames + 15, timeout=5, what="the other's video")
    finally:
        await other.close()


@pytest.mark.parametrize("settings_overrides", [{"layer_up_hold_s": 0.5, "layer_allocation_interval_s": 0.25}])
async def test_a_subscriber_moved_down_climbs_back_through_padding_probes(
    server: RunningServer, publisher: SimulcastPublisher, subscriber: CallClient
) -> None:
    await eventually(lambda: (m := subscriber.remote.get("p-pub")) is not None and m.video_height == 240,
                     what="the top layer")
    transport = server.app[SFU_KEY].routers["room-1"].transports["p-sub"]
    consumer = next(s.consumer for s in transport.consumer_slots.values() if s.consumer.kind == "video")
    # A third of the subscriber's incoming media lost for a while: its estimate falls to
    # what got through (the loss cap), and it moves down.
    with losing_every(subscriber, 3):
        await eventually(lambda: consumer.current_spatial is not None and consumer.current_spatial < 2, timeout=15,
                         what="a lower layer")
    low = transport.estimate.available_bps
    assert low is not None and low < consumer.selection.rate(2, 2), "the estimate no longer covers the top layer"  # type: ignore[union-attr]
    retransmits = consumer.feed.retransmits
    # The link is clean again. The estimate alone would take long to grow back (the loss cap
    # grows 8 % a report, a REMB stays within 1.5 times what is received); padding probes
    # show each step goes through, and the step is taken.
    await eventually(lambda: consumer.current_spatial == 2, timeout=25, what="the top layer again")
    assert consumer.feed.probe_packets > 0, "the climb went through probes"
    _, metrics = await scrape_metrics(server.url)
    assert metrics["verzilvering_probe_packets_total"] >= consumer.feed.probe_packets
    frames = subscriber.remote["p-pub"].video_frames
    await eventually(lambda: subscriber.remote["p-pub"].video_frames > frames + 15, timeout=5, what="video at the top")
    assert subscriber.remote["p-pub"].video_height == 240
    # Probes are RTX copies of packets the subscriber has: not counted as retransmissions,
    # and they cost it nothing it had to ask for again.
    assert consumer.feed.retransmits - retransmits <= 5
