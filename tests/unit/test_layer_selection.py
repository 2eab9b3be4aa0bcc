"""Per-subscriber layer policy without sockets: the consumer's LayerSelection, the
subscriber's LinkEstimate, the per-subscriber keyframe budget and the REMB a publisher gets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from server.sfu.consumer import Consumer, LayerPolicy, LayerSelection
from server.sfu.linkestimate import LinkEstimate, LossReport, Remb
from server.sfu.producer import NOMINAL_LAYER_BPS, REMB_HEADROOM, Producer
from server.rtc.rtphooks import ReceiverTap
from server.rtc.simulcast import SimulcastAnswer

from tests.support import RecordingFeed

# Per (spatial, temporal) bitrates of a typical three-layer L1T3 publisher.
RATES = {
    (0, 0): 40_000, (0, 1): 15_000, (0, 2): 15_000,
    (1, 0): 130_000, (1, 1): 50_000, (1, 2): 50_000,
    (2, 0): 500_000, (2, 1): 200_000, (2, 2): 200_000,
}
SIZES = {0: (160, 120), 1: (320, 240), 2: (640, 480)}


@pytest.fixture
async def producer() -> AsyncIterator[Producer]:
    pc = RTCPeerConnection()
    tap = ReceiverTap(pc.addTransceiver("video", direction="recvonly").receiver, "video")
    tap.codecs[97] = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
    tap.simulcast = SimulcastAnswer(("h", "m", "l"), 4, 5)
    producer = Producer("p-pub", "video", tap, keyframe_request_interval_s=0.2)
    producer.layered = True
    now = time.monotonic()
    for spatial in (0, 1, 2):
        producer.layers.last_seen[spatial] = now + 3600
        producer.layers.size[spatial] = SIZES[spatial]
    producer.layers.bps = {k: float(v) for k, v in RATES.items()}
    producer.layers.temporal_layers = 3
    yield producer
    producer.close()
    await pc.close()


def total(spatial: int, temporal: int) -> int:
    return sum(RATES[(spatial, t)] for t in range(temporal + 1))


def test_the_tile_size_picks_the_smallest_layer_that_covers_it(producer: Producer) -> None:
    selection = LayerSelection(producer, LayerPolicy())
    now = time.monotonic()
    selection.choose(None, now)
    assert (selection.target_spatial, selection.target_temporal) == (2, 2)  # no layout: the top
    for tile, spatial in (((300, 225), 1), ((160, 120), 0), ((100, 75), 0), ((0, 0), 0), ((1920, 1080), 2)):
        fresh = LayerSelection(producer, LayerPolicy())
        fresh.tile = tile
        fresh.choose(None, now)
        assert fresh.target_spatial == spatial, tile


def test_congestion_moves_down_at_once_and_probes_climb_after_the_hold(producer: Producer) -> None:
    policy = LayerPolicy(layer_up_hold_s=4.0)
    selection = LayerSelection(producer, policy)
    t = 1000.0
    selection.choose(None, t)
    # A congested link with room for the middle layer at 15 fps: down at once.
    selection.choose(total(1, 1) * 1.05, t + 1, congested=True)
    assert (selection.target_spatial, selection.target_temporal) == (1, 1)
    assert selection.wanted_spatial == 1  # congested: no room asked for above it
    # Room for the middle layer at 7.5 fps only: the smallest at full frame rate instead
    # (nothing sharper is forwarded below 15 fps).
    choppy = LayerSelection(producer, policy)
    choppy.choose(None, t)
    choppy.choose(total(1, 0) * 1.05, t + 1, congested=True)
    assert (choppy.target_spatial, choppy.target_temporal) == (0, 2)
    # Without congestion, nothing moves before the hold...
    selection.choose(total(1, 1) * 1.05, t + 3, congested=False)
    assert (selection.target_spatial, selection.target_temporal) == (1, 1)
    assert selection.wanted_spatial == 2  # ...but the publisher is asked to keep the next layer
    # ...then the temporal layers, as far as the estimate covers them: none while it covers
    # 15 fps only, then the next one...
    selection.choose(total(1, 1) * 1.05, t + 5.1, congested=False)
    assert (selection.target_spatial, selection.target_temporal) == (1, 1)
    selection.choose(total(1, 2) * 1.05, t + 5.2, congested=False)
    assert (selection.target_spatial, selection.target_temporal) == (1, 2)
    # ...or several at once.
    fresh = LayerSelection(producer, policy)
    fresh.choose(total(0, 0) * 1.05, t, congested=True)
    assert (fresh.target_spatial, fresh.target_temporal) == (0, 0)
    fresh.choose(total(0, 2) * 1.05, t + 5.1)
    assert (fresh.target_spatial, fresh.target_temporal) == (0, 2)
    # ...and the next spatial layer only once the link has shown room for it: first a
    # probe (the transport pads the link), then the move, when the estimate allows it...
    selection.choose(total(1, 2) * 1.05, t + 9.3, congested=False)
    assert (selection.target_spatial, selection.target_temporal) == (1, 2)
    assert selection.probe_bps == total(2, 2)
    selection.choose(total(2, 2) * 1.05 + total(1, 2), t + 10.3, congested=False)
    assert (selection.target_spatial, selection.target_temporal) == (2, 2)
    assert selection.probe_bps == 0


def test_a_probe_the_link_carried_moves_up_whatever_the_estimate(producer: Producer) -> None:
    selection = LayerSelection(producer, LayerPolicy(layer_up_hold_s=4.0))
    t = 1000.0
    selection.choose(total(0, 2), t, congested=True)
    assert selection.target_spatial == 0  # a congested link from the start: what it carries
    selection.choose(total(0, 2), t + 5)
    assert selection.target_spatial == 0 and selection.probe_bps == total(1, 2)
    selection.probe_passed = True  # the transport's padding went through without loss
    selection.choose(total(0, 2), t + 6)
    assert (selection.target_spatial, selection.target_temporal) == (1, 2)
    assert not selection.probe_passed and selection.probe_bps == 0


def test_a_probe_that_meets_congestion_doubles_the_hold(producer: Producer) -> None:
    selection = LayerSelection(producer, LayerPolicy(layer_up_hold_s=4.0))
    t = 1000.0
    selection.choose(None, t)
    selection.choose(total(0, 2), t + 1, congested=True)
    assert selection.target_spatial == 0
    selection.choose(total(0, 2), t + 5.5, congested=False)  # probe up
    assert selection.probe_bps == total(1, 2)
    selection.choose(total(0, 2), t + 6, holding=True)  # the padding met loss
    assert selection.probe_bps == 0 and (selection.target_spatial, selection.target_temporal) == (0, 2)
    selection.choose(total(0, 2), t + 13.5, congested=False)
    assert selection.probe_bps == 0, "the hold is 8 s now, not 4"
    selection.choose(total(0, 2), t + 14.5, congested=False)
    assert selection.probe_bps == total(1, 2)
    # A step taken (the estimate allowed it) that meets congestion soon after doubles it too.
    selection.choose(total(1, 2) * 1.05, t + 15)
    assert selection.target_spatial == 1
    selection.choose(total(0, 2), t + 16, congested=True)
    assert selection.target_spatial == 0
    selection.choose(total(1, 2) * 1.05, t + 16 + 15)
    assert selection.target_spatial == 0, "the hold is 16 s now"
    selection.choose(total(1, 2) * 1.05, t + 16 + 16.5)
    assert selection.target_spatial == 1


def test_a_smaller_tile_moves_down_at_once_even_without_congestion(producer: Producer) -> None:
    selection = LayerSelection(producer, LayerPolicy())
    selection.choose(None, 1000.0)
    selection.tile = (150, 110)
    selection.choose(None, 1000.5)
    assert selection.target_spatial == 0


def test_the_estimate_counts_each_remb_once_and_loss_caps_it() -> None:
    estimate = LinkEstimate()
    # Chromium: one REMB naming both video SSRCs, seen by both consumers' feeds.
    both = frozenset({1, 2})
    assert estimate.update([Remb(800_000, both, 10.0), Remb(800_000, both, 10.0)], [], 0, 10.5) == 800_000
    # aiortc: one REMB per stream; they add up.
    assert LinkEstimate().update([Remb(300_000, frozenset({1}), 10.0), Remb(200_000, frozenset({2}), 10.0)], [], 0, 10.5) == 500_000
    # 30 % loss while 900 kbit/s went out: down to what got through, whatever REMB says.
    capped = estimate.update([Remb(800_000, both, 11.0)], [LossReport(0.3, 11.0)], 900_000, 11.5)
    assert capped == pytest.approx(900_000 * 0.7)
    assert estimate.congested
    # Loss gone: the cap grows 8 % per report until REMB decides again.
    grown = estimate.update([Remb(800_000, both, 12.0)], [LossReport(0.0, 12.0)], 500_000, 12.5)
    assert grown == pytest.approx(min(800_000, 900_000 * 0.7 * 1.08))
    assert estimate.congested  # remembered for a few seconds
    assert not (estimate.update([Remb(800_000, both, 20.0)], [LossReport(0.0, 20.0)], 500_000, 20.5), estimate.congested)[1]
    # A falling REMB is congestion too.
    estimate.update([Remb(500_000, both, 21.0)], [], 500_000, 21.5)
    assert estimate.congested
    assert LinkEstimate().update([], [], 0, 1.0) is None
    # 2-10 % loss (what a link that only reorders shows in single reports): hold, no more.
    reordering = LinkEstimate()
    assert reordering.update([Remb(800_000, both, 30.0)], [LossReport(0.04, 30.0)], 700_000, 30.5) == 800_000
    assert reordering.holding and not reordering.congested
    reordering.update([Remb(800_000, both, 34.0)], [LossReport(0.0, 34.0)], 700_000, 34.5)
    assert not reordering.holding


def test_a_new_subscriber_starts_at_the_top_unless_its_link_is_congested(producer: Producer) -> None:
    # Most links carry the top layer: a first picture as sharp as it gets. A link that is
    # already congested gets what its estimate fits, at 15 fps or more above the lowest layer.
    selection = LayerSelection(producer, LayerPolicy())
    selection.choose(300_000, 1000.0)
    assert (selection.target_spatial, selection.target_temporal) == (2, 2)
    congested = LayerSelection(producer, LayerPolicy())
    congested.choose(total(2, 0) * 1.05, 1000.0, congested=True)
    assert (congested.target_spatial, congested.target_temporal) == (1, 2), "not the top at 7.5 fps"


def test_some_loss_holds_the_layer_where_it_is(producer: Producer) -> None:
    selection = LayerSelection(producer, LayerPolicy(layer_up_hold_s=4.0))
    t = 1000.0
    selection.choose(None, t)
    selection.choose(total(1, 2), t + 1, congested=True)
    assert (selection.target_spatial, selection.target_temporal) == (1, 2)
    # A budget below the layer with some loss: it stays (a REMB below a layer's rate does
    # not forbid it), and it does not probe up however long the loss lasts.
    for dt in (2, 6, 11, 20):
        selection.choose(total(1, 0), t + dt, holding=True)
        assert (selection.target_spatial, selection.target_temporal) == (1, 2), dt
        assert selection.wanted_spatial == 1, "no room asked for the next layer while holding"
    selection.choose(total(1, 0), t + 25)
    assert selection.probe_bps == total(2, 2), "loss gone: the climb begins"


KEYFRAME = RtpPacket(payload_type=97, sequence_number=1, timestamp=0, ssrc=5, payload=b"\x10\x00\x00\x00" + bytes(40))


async def _plain_vp8_producer(pc: RTCPeerConnection, sent: list[float], answer: bool) -> Producer:
    """A VP8 producer whose publisher answers each PLI with a keyframe 5 ms later (`answer`)."""
    tap = ReceiverTap(pc.addTransceiver("video", direction="recvonly").receiver, "video")
    tap.codecs[97] = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
    producer = Producer("p-v", "video", tap, keyframe_request_interval_s=0.0)

    async def pli(layer: int | None = None) -> None:
        sent.append(time.monotonic())
        if answer:
            await asyncio.sleep(0.005)
            await producer._on_rtp(KEYFRAME)

    tap.request_keyframe = pli  # type: ignore[method-assign]
    return producer


POLICY = LayerPolicy(subscriber_keyframe_interval_s=0.05, subscriber_keyframe_max_interval_s=0.4,
                     keyframe_failure_window_s=1.0)


async def test_one_subscriber_failing_keyframes_again_and_again_gets_ever_fewer() -> None:
    pc = RTCPeerConnection()
    try:
        sent: list[float] = []
        producer = await _plain_vp8_producer(pc, sent, answer=True)
        weak = Consumer(producer, RecordingFeed(), mid="1", policy=POLICY)  # type: ignore[arg-type]
        # Another subscriber watches the same stream: every keyframe costs it too.
        other = Consumer(producer, RecordingFeed(), mid="2", policy=POLICY)  # type: ignore[arg-type]
        start = time.monotonic()
        asked = 0
        while time.monotonic() - start < 1.6:
            # Its keyframes come, and it keeps failing to complete them.
            weak.subscriber_wants_keyframe()
            asked += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        gaps = [b - a for a, b in zip(sent, sent[1:])]
        # 0.05, 0.1, 0.2, 0.4, 0.4, ... apart: 6-7 keyframes in 1.6 s instead of one per request.
        assert asked >= 60, "the loop ran too slowly to test anything"
        assert 5 <= len(sent) <= 9, gaps
        assert all(b >= a * 0.9 for a, b in zip(gaps, gaps[1:])), gaps
        assert gaps[-1] >= 0.35
        assert weak.keyframe_requests_dropped == asked - len(sent)
        # The other subscriber's request is not held back by the weak one's budget.
        before = len(sent)
        other.subscriber_wants_keyframe()
        await asyncio.sleep(0.01)
        assert len(sent) == before + 1
    finally:
        await pc.close()


@pytest.mark.parametrize("answer", [True, False], ids=["alone-failing-keyframes", "keyframe-not-come-yet"])
async def test_a_subscriber_alone_or_still_waiting_asks_again_without_backing_off(answer: bool) -> None:
    # answer=True: its keyframes come and it fails them, but nobody else pays for them.
    # answer=False: no keyframe comes (the PLI was lost): its requests are duplicates.
    pc = RTCPeerConnection()
    try:
        sent: list[float] = []
        producer = await _plain_vp8_producer(pc, sent, answer=answer)
        alone = Consumer(producer, RecordingFeed(), mid="1", policy=POLICY)  # type: ignore[arg-type]
        start = time.monotonic()
        while time.monotonic() - start < 1.0:
            alone.subscriber_wants_keyframe()
            await asyncio.sleep(0.01)
        gaps = [b - a for a, b in zip(sent, sent[1:])]
        # Once per base interval (0.05 s), never doubling: backing off would only freeze it.
        assert len(sent) >= 10, gaps
        assert max(gaps) < 0.1, gaps
    finally:
        await pc.close()


async def test_each_keyframe_request_upstream_is_counted_for_every_subscriber_that_asked_for_it() -> None:
    pc = RTCPeerConnection()
    try:
        sent: list[float] = []
        producer = await _plain_vp8_producer(pc, sent, answer=False)
        producer._keyframe_interval = 0.1
        first, second, silent = (Consumer(producer, RecordingFeed(), mid=str(i), policy=POLICY)  # type: ignore[arg-type]
                                 for i in range(3))
        first.subscriber_wants_keyframe()
        await asyncio.sleep(0.06)  # past the subscriber's own interval (0.05 s), within the producer's
        assert len(sent) == 1 and first.keyframes_caused == {None: 1}
        # Two asking within the interval: one request goes up when it ends, caused by both.
        first.subscriber_wants_keyframe()
        second.subscriber_wants_keyframe()
        await asyncio.sleep(0.15)
        assert len(sent) == 2
        assert first.keyframes_caused == {None: 2} and second.keyframes_caused == {None: 1}
        # A subscriber that asked for none caused none, and nobody is counted twice for one
        # request however often it asked.
        assert silent.keyframes_caused == {}
        assert producer.keyframe_requests == len(sent)
    finally:
        await pc.close()


class _Budgeted:
    """A consumer as the producer sees it when it asks what to request upstream."""

    def __init__(self, producer: Producer, budget: float | None, wanted: int) -> None:
        self.selection = LayerSelection(producer, LayerPolicy())
        self.selection.budget_bps = budget
        self.selection.wanted_spatial = wanted
        self.feed: Any = RecordingFeed()


def _asked(*spatials: int) -> int:
    """What the producer asks for these simulcast layers (the publisher sends l, m and h):
    each at its measured rate with headroom, the publisher's top layer (h) never below its
    nominal rate."""
    return int(sum(
        max(total(s, 2) * REMB_HEADROOM, NOMINAL_LAYER_BPS[s]) if s == 2 else total(s, 2) * REMB_HEADROOM
        for s in spatials
    ))


def test_the_publisher_is_asked_for_what_the_best_placed_subscriber_needs(producer: Producer) -> None:
    producer.consumers = {_Budgeted(producer, 250_000, 0), _Budgeted(producer, 3_000_000, 1)}  # type: ignore[assignment]
    # Simulcast: layers l and m in full (h nobody wants: the browser drops it), with room.
    assert producer.downstream_limit() == _asked(0, 1)
    producer.consumers.add(_Budgeted(producer, 3_000_000, 2))  # type: ignore[arg-type]
    assert producer.downstream_limit() == _asked(0, 1, 2)
    # The top layer paused (for want of bitrate) and wanted again: room at its nominal rate.
    for t in range(3):
        producer.layers.bps.pop((2, t))
    assert producer.downstream_limit() == int((total(0, 2) + total(1, 2)) * REMB_HEADROOM) + NOMINAL_LAYER_BPS[2]
    # An encoder that undershoots (a still picture) is not asked for less and less: a
    # layer measuring a third of its nominal rate is still asked for all of it.
    producer.layers.bps.update({(2, 0): 200_000.0, (2, 1): 100_000.0, (2, 2): 100_000.0})
    assert producer.layers.rate(2, 2) * REMB_HEADROOM < NOMINAL_LAYER_BPS[2]
    assert producer.downstream_limit() == int((total(0, 2) + total(1, 2)) * REMB_HEADROOM) + NOMINAL_LAYER_BPS[2]
    # A lower layer the publisher does not send (its picture too small) costs nothing:
    # no room is made that would let it turn a layer nobody wants back on.
    # Nor does a layer below the publisher's top get a nominal floor: measured m is below
    # its nominal here, and the room would let the publisher turn h back on.
    producer.layers.bps = {k: float(v) for k, v in RATES.items() if k[0] != 0}
    producer.consumers = {_Budgeted(producer, 3_000_000, 1)}  # type: ignore[assignment]
    assert total(1, 2) * REMB_HEADROOM < NOMINAL_LAYER_BPS[1]
    assert producer.downstream_limit() == int(total(1, 2) * REMB_HEADROOM)
    producer.layers.bps = {k: float(v) for k, v in RATES.items()}
    # One layer (temporal layers at most): the largest budget, not the smallest.
    # A subscriber without an estimate still only needs the layers its tile wants.
    producer.consumers = {_Budgeted(producer, None, 0)}  # type: ignore[assignment]
    assert producer.downstream_limit() == _asked(0)
    producer.consumers = {_Budgeted(producer, 250_000, 0), _Budgeted(producer, 3_000_000, 1)}  # type: ignore[assignment]
    producer.tap.simulcast = None
    assert producer.downstream_limit() == 3_000_000
    producer.consumers.add(_Budgeted(producer, None, 2))  # type: ignore[arg-type]
    assert producer.downstream_limit() is None  # someone without an estimate: no cap
    producer.consumers = set()


async def test_a_subscriber_that_keeps_losing_keyframes_moves_a_layer_down_instead(producer: Producer) -> None:
    sent: list[int | None] = []

    async def pli(layer: int | None = None) -> None:
        sent.append(layer)

    producer.tap.request_keyframe = pli  # type: ignore[method-assign]
    policy = LayerPolicy(keyframe_failures_to_step_down=3, keyframe_failure_window_s=10.0, step_down_hold_s=20.0)
    consumer = Consumer(producer, RecordingFeed(), mid="1", policy=policy)  # type: ignore[arg-type]
    assert consumer.selection is not None
    consumer.selection.choose(None, time.monotonic())
    consumer.current_spatial = 2  # forwarding the top layer
    top_keyframe = RtpPacket(payload_type=97, sequence_number=1, timestamp=0, ssrc=5, payload=b"\x10\x00" + bytes(40))
    await producer._on_rtp(top_keyframe, 2)
    consumer.subscriber_wants_keyframe()
    await asyncio.sleep(0.01)
    assert sent == [2]  # the first goes to the layer it watches
    for _ in range(2):  # keyframes came, and it could not complete them
        await producer._on_rtp(top_keyframe, 2)
        consumer.subscriber_wants_keyframe()
    await asyncio.sleep(0.01)
    assert sent == [2], "no more keyframes of the top layer for everyone"
    assert consumer.selection.target_spatial == 1 and consumer.selection.cap_spatial == 1
    # The cap holds: however good the link looks, it stays below the top for the hold time.
    consumer.selection.choose(None, time.monotonic() + 5)
    assert consumer.selection.target_spatial == 1 and consumer.selection.wanted_spatial <= 1
    consumer.selection.choose(None, time.monotonic() + 21)
    assert consumer.selection.cap_spatial is None
    consumer.close()


class _Vp8Feed(RecordingFeed):
    def payload_type_for(self, mime_type: str) -> int | None:
        return 100 if mime_type.lower() == "video/vp8" else None


def _vp8(seq: int, timestamp: int, picture_id: int, start: bool, keyframe: bool = False, tid: int = 0) -> RtpPacket:
    """A layered VP8 packet: PictureID (15 bits), TL0PICIDX, TID with the sync flag."""
    descriptor = bytes((0x90 if start else 0x80, 0xE0, 0x80 | picture_id >> 8, picture_id & 0xFF, 0, tid << 6 | 0x20))
    body = (b"\x00\x00\x00\x9d\x01\x2a\x80\x02\xe0\x01" if keyframe else b"\x01\x00\x00") + bytes(30)
    return RtpPacket(payload_type=97, sequence_number=seq, timestamp=timestamp, ssrc=5, payload=descriptor + body)


def _vp8_consumer(producer: Producer) -> tuple[Consumer, _Vp8Feed]:
    """A consumer of `producer` on a recording VP8 feed; its keyframe requests go nowhere."""

    async def no_pli(layer: int | None = None) -> None:
        pass

    producer.tap.request_keyframe = no_pli  # type: ignore[method-assign]
    feed = _Vp8Feed()
    return Consumer(producer, feed, mid="1"), feed  # type: ignore[arg-type]


async def test_a_switch_keyframe_whose_first_packet_came_late_still_goes_out_whole(producer: Producer) -> None:
    consumer, feed = _vp8_consumer(producer)
    # A reordering link: the keyframe's second and third packets overtake its first, and a
    # delta frame's packets arrive interleaved with the keyframe's last.
    keyframe = [_vp8(100, 9000, 7, start=True, keyframe=True), _vp8(101, 9000, 7, False), _vp8(102, 9000, 7, False),
                _vp8(103, 9000, 7, False)]
    delta = [_vp8(104, 12000, 8, start=True, tid=2), _vp8(105, 12000, 8, False, tid=2)]
    for packet in (keyframe[1], keyframe[2], keyframe[0], delta[0], keyframe[3], delta[1]):
        await producer._on_rtp(packet, 2)
    assert consumer.current_spatial == 2
    timestamps = [ts for _, _, ts in feed.sent]
    sequence = [seq for _, seq, _ in feed.sent]
    assert len(feed.sent) == 6, feed.sent
    # The keyframe's first three in order, then as they came; nothing lost, nothing renumbered twice.
    assert timestamps[:3] == [timestamps[0]] * 3 and sequence[:3] == [sequence[0] + i for i in range(3)]
    assert sorted(sequence) == [sequence[0] + i for i in range(6)]
    assert timestamps[3] == timestamps[5] != timestamps[0] and timestamps[4] == timestamps[0]
    consumer.close()


async def test_a_frame_keeps_its_decision_for_its_late_packets(producer: Producer) -> None:
    consumer, feed = _vp8_consumer(producer)
    assert consumer.selection is not None
    await producer._on_rtp(_vp8(100, 0, 1, start=True, keyframe=True), 2)
    await producer._on_rtp(_vp8(101, 3000, 2, True, tid=2), 2)  # frame 2 (TID 2): forwarded
    consumer.selection.target_temporal = 0  # the link got worse: base layer only from now on
    # Frame 3 (TID 2) is dropped; frame 2's late second packet must still go, or the
    # subscriber holds a frame it can never complete.
    for packet in (_vp8(103, 6000, 3, True, tid=2), _vp8(102, 3000, 2, False, tid=2), _vp8(104, 6000, 3, False, tid=2)):
        await producer._on_rtp(packet, 2)
    assert [ts - feed.sent[0][2] for _, _, ts in feed.sent] == [0, 3000, 3000], feed.sent
    consumer.close()
