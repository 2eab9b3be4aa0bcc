"""Consumer: one producer's track forwarded to one subscriber, packet by packet.

The consumer owns the subscriber-facing SSRC, sequence numbers and timestamps, so the
subscriber's decoder sees one continuous stream whatever happens upstream. For a layered
producer (VP8 simulcast and/or temporal layers) it also owns its subscriber's layer
choice (`LayerSelection`, mediasoup's SimulcastConsumer policy) and the rewriting that
keeps the switches invisible to the decoder (`Vp8Rewriter`).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, fields

from aiortc.rtp import RtpPacket

from ..config import Settings
from .producer import Producer
from ..rtc.rtphooks import PacketStamp, SenderFeed
from ..rtc.rtppayload import is_keyframe_start
from .vp8rewriter import Vp8Rewriter

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
# VP8's highest temporal layer in use (L1T3).
MAX_TEMPORAL_LAYER = 2
# The lowest temporal layer forwarded of any spatial layer but the lowest (1: 15 fps of 30).
MIN_TEMPORAL_ABOVE_LOWEST = 1
# The longest an upward probe waits after probes that met congestion.
MAX_HOLD_S = 60.0
# Packets of the layer switched to kept while its keyframe's first packet has not come: on a
# link that reorders, the keyframe's later packets may arrive first, and without them the
# subscriber could never complete it. A keyframe of a 2 Mbit/s layer is about 40 packets.
SWITCH_HOLD_PACKETS = 64
# Frames whose forward-or-drop decision is remembered for their late (reordered) packets.
FRAMES_REMEMBERED = 16


@dataclass(frozen=True)
class LayerPolicy:
    """The limits of per-subscriber layer selection: the Settings of the same names
    (server/config.py says what each one means), with the same defaults."""

    layer_up_hold_s: float = Settings.layer_up_hold_s
    layer_switch_timeout_s: float = Settings.layer_switch_timeout_s
    subscriber_keyframe_interval_s: float = Settings.subscriber_keyframe_interval_s
    subscriber_keyframe_max_interval_s: float = Settings.subscriber_keyframe_max_interval_s
    keyframe_failures_to_step_down: int = Settings.keyframe_failures_to_step_down
    keyframe_failure_window_s: float = Settings.keyframe_failure_window_s
    step_down_hold_s: float = Settings.step_down_hold_s

    @classmethod
    def from_settings(cls, settings: Settings) -> LayerPolicy:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


class LayerSelection:
    """Which spatial and temporal layer one consumer forwards.

    Inputs: the budget the subscriber's transport gives this consumer (its bandwidth
    estimate shared out), the size the subscriber shows the tile at, and the subscriber's
    failures to complete keyframes. Downward moves are immediate; upward ones are probes,
    one step at a time after a hold time without congestion.
    """

    def __init__(self, producer: Producer, policy: LayerPolicy) -> None:
        self.producer = producer
        self.policy = policy
        self.target_spatial = 0
        self.target_temporal = 2
        self.chosen = False
        # The highest spatial layer the publisher should send for this subscriber (the REMB).
        self.wanted_spatial = 2
        self.budget_bps: float | None = None
        # The bitrate of the next spatial layer up while the link is probed for it (0: no
        # probe), and whether the probe showed the link carries it.
        self.probe_bps = 0.0
        self.probe_passed = False
        self.tile: tuple[int, int] | None = None
        self.cap_spatial: int | None = None
        self._cap_until = 0.0
        self._last_move = 0.0
        self._last_up = 0.0
        self._hold = policy.layer_up_hold_s

    def _tile_layer(self, layers: list[int]) -> int:
        """The smallest layer at least as tall as the tile (the top one without a layout)."""
        if self.tile is None:
            return layers[-1]
        width, height = self.tile
        if width <= 0 or height <= 0:
            return layers[0]
        top = layers[-1]
        top_size = self.producer.layers.size.get(top)
        for spatial in layers:
            size = self.producer.layers.size.get(spatial)
            if size is None and top_size is not None:
                shift = top - spatial
                size = (top_size[0] >> shift, top_size[1] >> shift)
            if size is not None and size[0] >= width * 0.9 and size[1] >= height * 0.9:
                return spatial
        return top

    def rate(self, spatial: int, temporal: int) -> float:
        return self.producer.layers.rate(spatial, temporal)

    def choose(self, budget_bps: float | None, now: float, congested: bool = False, holding: bool = False) -> float:
        """Picks the target layers; returns their bitrate.

        `budget_bps` is this consumer's share of the link estimate (None: unlimited),
        `congested` says whether the link shows congestion now (heavy loss, or a falling
        REMB) and `holding` whether it shows some loss (no probing up, nothing moves down).
        Without congestion or loss the consumer climbs one step after the hold time: a
        temporal step at once on the lowest spatial layer (its full frame rate is the floor),
        on a higher one once the budget covers it; a spatial step once the estimate shows
        room for it, which the transport's padding (`probe_bps`) makes it show if the link
        has it.
        Congestion soon after a step, or during a probe, doubles the hold (up to MAX_HOLD_S).
        """
        self.budget_bps = budget_bps
        rates = self.producer.layers
        layers = rates.available(now)
        if not layers:
            return 0.0
        most = self._tile_layer(layers)
        # The tile's layer among all three, sent or not (a paused one may be wanted back).
        tile_most = self._tile_layer(sorted({0, 1, 2} | set(layers)))
        if self.cap_spatial is not None:
            if now >= self._cap_until:
                self.cap_spatial = None
            else:
                most = min(most, max(self.cap_spatial, layers[0]))
                tile_most = min(tile_most, most)
        # Until a higher temporal layer has been seen, aim at the highest there may be: a
        # frame's TID never exceeds it, and a first choice made at the first packet would
        # otherwise hold the stream at the base layer.
        top_temporal = MAX_TEMPORAL_LAYER if not rates.bps else rates.temporal_layers - 1
        # Above the lowest spatial layer, no less than 15 fps: a sharper picture at 7.5 fps is
        # choppy (a chair-gym class is movement), and its keyframes are as large as at 30.
        lowest_rate = min(MIN_TEMPORAL_ABOVE_LOWEST, top_temporal)
        candidates = [
            (s, t) for s in layers if s <= most for t in range(top_temporal + 1) if s == layers[0] or t >= lowest_rate
        ]
        fit = candidates[0]
        for candidate in candidates:
            if budget_bps is None or self.rate(*candidate) <= budget_bps:
                fit = candidate
        current = (self.target_spatial, self.target_temporal)
        if (congested or holding) and self.probe_bps:
            self.probe_failed(now)
        # The lowest layer's full frame rate is the floor every subscriber gets back to after
        # the base hold: the longer holds that failed probes earn are for the steps above it.
        floor_step = current[0] == candidates[0][0] and current[1] < top_temporal
        up_hold = self.policy.layer_up_hold_s if floor_step else self._hold
        if not self.chosen:
            # The top, unless the link is congested: a REMB below it does not forbid it (see
            # above), most links carry it, and a weak one shows congestion within a second.
            self._move(fit if congested else candidates[-1], now)
        elif current > candidates[-1] or current not in candidates:
            # The tile shrank, a cap came, or the layer went away: at once.
            self._move(max(c for c in candidates if c <= current) if candidates[0] <= current else candidates[0], now)
        elif congested and fit < current:
            if now - self._last_up < self._hold:
                self._hold = min(self._hold * 2, MAX_HOLD_S)
            self._move(fit, now)
        elif not congested and not holding and current < candidates[-1] and now - self._last_move >= up_hold:
            # Temporal layers first, as many as the budget covers; then the next spatial layer
            # at full frame rate.
            if floor_step:
                step = (current[0], top_temporal)
            elif current[1] < top_temporal:
                step = max(
                    [(current[0], t) for t in range(current[1] + 1, top_temporal + 1)
                     if budget_bps is None or self.rate(current[0], t) <= budget_bps],
                    default=current,
                )
            else:
                step = next(c for c in reversed(candidates) if c[0] == min(s for s, _ in candidates if s > current[0]))
            fits = budget_bps is None or self.rate(*step) <= budget_bps or step[0] == current[0]
            if step == current:
                pass  # not even the next frame rate fits yet: the estimate grows with what is received
            elif fits or self.probe_passed:
                self._move(step, now)
                self._last_up = now
                self.probe_bps = 0.0
                self.probe_passed = False
            else:
                # A spatial layer the estimate has not shown room for (a REMB stays within
                # about 1.5 times what is received, grows a few per cent a second, and the
                # next layer may be ten times the current): the transport pads the link up
                # to it first (`probe_bps`), and the move comes once that went without loss.
                self.probe_bps = self.rate(*step)
        elif now - self._last_move >= 2 * self._hold:
            self._hold = self.policy.layer_up_hold_s
        # What the publisher should send for this subscriber: the layer forwarded, and the
        # next one up while the link leaves room to probe for it.
        self.wanted_spatial = min(tile_most, self.target_spatial + (0 if congested or holding else 1))
        return self.rate(self.target_spatial, self.target_temporal)

    def probe_failed(self, now: float) -> None:
        """The probe met loss or a falling estimate: give it up, and wait longer for the next."""
        self.probe_bps = 0.0
        self.probe_passed = False
        self._hold = min(self._hold * 2, MAX_HOLD_S)
        self._last_move = now

    def _move(self, layer: tuple[int, int], now: float) -> None:
        if self.chosen and layer != (self.target_spatial, self.target_temporal):
            self._last_move = now
        self.target_spatial, self.target_temporal = layer
        self.chosen = True

    def step_down(self, current_spatial: int, now: float) -> bool:
        """The subscriber keeps failing to complete keyframes: one spatial layer down, for a while."""
        lower = [s for s in self.producer.layers.available(now) if s < current_spatial]
        if not lower:
            return False
        self.cap_spatial = lower[-1]
        self._cap_until = now + self.policy.step_down_hold_s
        self.target_spatial, self._last_move = lower[-1], now
        return True


class Consumer:
    def __init__(
        self, producer: Producer, feed: SenderFeed, mid: str | None, policy: LayerPolicy | None = None
    ) -> None:
        self.id = f"c-{uuid.uuid4().hex[:12]}"
        self.producer = producer
        self.feed = feed
        # Bound once: forward() runs once per packet and subscriber, and a consumer's
        # feed never changes.
        self._send_now = feed.send_now
        self.mid = mid
        self.kind = producer.kind
        self.closed = False
        self.packets = 0
        self.bytes = 0
        # A decoder cannot start on a delta frame: hold video back until a keyframe.
        self._waiting_for_keyframe = producer.kind == "video"
        self._seq_offset: int | None = None
        self._ts_offset: int | None = None
        self._last_seq: int | None = None
        self._last_ts = 0
        self._last_sent_at = 0.0
        self._rebase = False
        self._payload_type: int | None = None
        # True once offsets and payload type are known and no keyframe or rebase is
        # pending: forward() then skips straight to the rewrite.
        self._steady = False
        self.policy = policy or LayerPolicy()
        self.selection = LayerSelection(producer, self.policy) if producer.kind == "video" else None
        # Layered forwarding: what is forwarded now (None: waiting for a first keyframe).
        self._rewriter: Vp8Rewriter | None = None
        self.current_spatial: int | None = None
        self.current_temporal = 0
        # Forward (True) or drop, per frame (RTP timestamp), decided at its first packet.
        self._frames: OrderedDict[int, bool] = OrderedDict()
        self._switch_started = 0.0
        self._held: deque[tuple[RtpPacket, PacketStamp]] = deque(maxlen=SWITCH_HOLD_PACKETS)
        self._replay: list[tuple[RtpPacket, PacketStamp]] = []
        # The subscriber's own keyframe requests: when the last went upstream, and recent ones.
        self._last_subscriber_keyframe = -1e9
        # The producer's keyframe count when the subscriber's last request went upstream,
        # and the subscriber's recent failures to complete a keyframe it was sent.
        self._keyframes_at_request = producer.keyframes_seen.get(0, 0)
        self._keyframe_failures: deque[float] = deque(maxlen=64)
        self._failure_counted_at = self._keyframes_at_request
        self.keyframe_requests_dropped = 0
        # Keyframe requests that went to the publisher with this consumer among those asking,
        # per simulcast layer (None: a single-layer publisher).
        self.keyframes_caused: dict[int | None, int] = {}
        self.layer_switches = 0
        feed.on_keyframe_request = self.subscriber_wants_keyframe
        producer.consumers.add(self)

    def subscriber_wants_keyframe(self) -> None:
        """The subscriber asked for a keyframe (PLI/FIR): budgeted per subscriber.

        One subscriber that keeps losing keyframes must not force keyframes on everyone. A
        request repeated before any keyframe came is a duplicate: it goes upstream again
        only after `subscriber_keyframe_interval_s` (the first may have been lost). A
        request after a keyframe did come is a failure — the subscriber could not complete
        it: each failure within `keyframe_failure_window_s` of the previous doubles the
        wait, up to `subscriber_keyframe_max_interval_s`, while others watch the same layer
        (alone on it, the wait stays the base one), and with a lower simulcast layer to go
        to, `keyframe_failures_to_step_down` of them move it there instead.
        """
        if self.closed:
            return
        now = time.monotonic()
        layer = self.current_spatial
        if layer is None and self.selection is not None and self.producer.layered:
            layer = self.selection.target_spatial
        delivered = self.producer.keyframes_seen.get(layer or 0, 0)
        wait = self.policy.subscriber_keyframe_interval_s
        if delivered != self._keyframes_at_request:
            failures = self._keyframe_failures
            if failures and now - failures[-1] > self.policy.keyframe_failure_window_s:
                failures.clear()
            if delivered != self._failure_counted_at:
                # One failure per keyframe it was sent, however often it asks meanwhile.
                self._failure_counted_at = delivered
                failures.append(now)
            if (
                self.selection is not None
                and self.current_spatial is not None
                and len(failures) >= self.policy.keyframe_failures_to_step_down
                and self.selection.step_down(self.current_spatial, now)
            ):
                failures.clear()
                # The lower layer's keyframe is asked for by the switch itself.
                self._keyframes_at_request = delivered
                return
            if self._layer_shared(layer):
                wait = min(wait * 2 ** max(0, len(failures) - 1), self.policy.subscriber_keyframe_max_interval_s)
        if now - self._last_subscriber_keyframe < wait:
            self.keyframe_requests_dropped += 1
            return
        self._last_subscriber_keyframe = now
        self._keyframes_at_request = delivered
        self.producer.request_keyframe(layer, asker=self)

    def _layer_shared(self, layer: int | None) -> bool:
        """Whether another subscriber watches the layer a keyframe would be asked of: alone
        on it, a keyframe costs nobody else, and backing off would only freeze this one."""
        for other in self.producer.consumers:
            if other is self or other.kind != "video":
                continue
            if not self.producer.layered or other.current_spatial == layer:
                return True
        return False

    def forward(self, packet: RtpPacket, stamp: PacketStamp) -> None:
        """Sends the subscriber its copy of one packet, now (no coroutine: see SenderFeed.send_now)."""
        if self._steady:
            # The common case, kept short: it runs once per packet and subscriber.
            sequence_number = (packet.sequence_number + self._seq_offset) & 0xFFFF
            timestamp = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
            payload_type = self._payload_type
            payload = packet.payload
        elif self.producer.layered:
            layered = self._prepare_layered(packet, stamp)
            if layered is None:
                return
            payload_type, sequence_number, timestamp, payload = layered
        else:
            prepared = self._prepare(packet)
            if prepared is None:
                return
            payload_type, sequence_number, timestamp = prepared
            payload = packet.payload
        try:
            self._send_now(payload_type, packet.marker, sequence_number, timestamp, payload, stamp)  # type: ignore[arg-type]
        except ConnectionError:
            self._replay = []
            return
        self.packets += 1
        self.bytes += len(payload)
        self._last_seq = sequence_number
        self._last_ts = timestamp
        self._last_sent_at = stamp.monotonic
        if self._replay:
            # A switch's keyframe began with this packet: its parts that came early follow.
            replay, self._replay = self._replay, []
            for held_packet, held_stamp in replay:
                self.forward(held_packet, held_stamp)

    def _negotiated_payload_type(self) -> int | None:
        """The subscriber's payload type for the producer's codec; None while closed or not yet known."""
        if self.closed:
            return None
        if self._payload_type is None and self.feed.ready and self.producer.mime_type is not None:
            self._payload_type = self.feed.payload_type_for(self.producer.mime_type)
        return self._payload_type

    def _prepare(self, packet: RtpPacket) -> tuple[int, int, int] | None:
        """The first packets, keyframe waits and rebases: everything but steady forwarding."""
        payload_type = self._negotiated_payload_type()
        if payload_type is None:
            return None
        if self._waiting_for_keyframe:
            if not is_keyframe_start(self.producer.mime_type or "", packet.payload):
                self.producer.request_keyframe(asker=self)
                return None
            self._waiting_for_keyframe = False
        if self._seq_offset is None or self._ts_offset is None:
            self._seq_offset = (random.randrange(1 << 15) - packet.sequence_number) & 0xFFFF
            self._ts_offset = (random.randrange(1 << 32) - packet.timestamp) & 0xFFFFFFFF
        elif self._rebase and self._last_seq is not None:
            # Continue right after the last packet sent, so the subscriber sees no loss
            # to wait for, and advance time by what really elapsed.
            clock_rate = self.producer.tap.primary_codec.clockRate  # type: ignore[union-attr]
            elapsed = max(1, int((time.monotonic() - self._last_sent_at) * clock_rate))
            self._seq_offset = (self._last_seq + 1 - packet.sequence_number) & 0xFFFF
            self._ts_offset = (self._last_ts + elapsed - packet.timestamp) & 0xFFFFFFFF
        self._rebase = False
        self._steady = True
        return (
            payload_type,
            (packet.sequence_number + self._seq_offset) & 0xFFFF,
            (packet.timestamp + self._ts_offset) & 0xFFFFFFFF,
        )

    def _prepare_layered(self, packet: RtpPacket, stamp: PacketStamp) -> tuple[int, int, int, bytes] | None:
        """For a VP8 simulcast / temporal-layer producer: whether this packet is in the layers
        forwarded, and if so its payload type, sequence number, timestamp and payload."""
        descriptor = stamp.vp8
        payload_type = self._negotiated_payload_type()
        if payload_type is None:
            return None
        selection = self.selection
        if selection is None or descriptor is None:
            return None
        if not selection.chosen:
            selection.choose(selection.budget_bps, stamp.monotonic)
        spatial = stamp.spatial
        rewriter = self._rewriter
        if rewriter is None or self.current_spatial != selection.target_spatial:
            target = selection.target_spatial
            if spatial == target and descriptor.keyframe:
                if rewriter is None:
                    rewriter = self._rewriter = Vp8Rewriter(
                        (self._last_seq + 1) & 0xFFFF if self._last_seq is not None else random.randrange(1 << 15),
                        self._last_ts if self._last_seq is not None else random.randrange(1 << 32),
                    )
                elapsed = int((stamp.monotonic - self._last_sent_at) * VIDEO_CLOCK_RATE) if self._last_seq is not None else 0
                rewriter.switch(packet.sequence_number, packet.timestamp, descriptor, elapsed)
                if self.current_spatial is not None:
                    self.layer_switches += 1
                self.current_spatial = spatial
                self.current_temporal = selection.target_temporal
                # Keyframe failures are counted per layer: what the subscriber could not
                # complete on the last one says little about this one, and its counts differ.
                self._keyframe_failures.clear()
                self._keyframes_at_request = self._failure_counted_at = self.producer.keyframes_seen.get(spatial, 0)
                self._frames.clear()
                self._switch_started = 0.0
                self._replay = sorted(
                    (held for held in self._held
                     if held[0].timestamp == packet.timestamp and held[1].spatial == spatial
                     and 0 < (held[0].sequence_number - packet.sequence_number) & 0xFFFF < 0x8000),
                    key=lambda held: (held[0].sequence_number - packet.sequence_number) & 0xFFFF,
                )
                self._held.clear()
            elif spatial == target:
                self._held.append((packet, stamp))
                if not self._switch_started:
                    self._switch_started = stamp.monotonic
                elif (
                    self.current_spatial is not None
                    and stamp.monotonic - self._switch_started > self.policy.layer_switch_timeout_s
                ):
                    # The target's keyframe never came: stay where we are.
                    selection.target_spatial = self.current_spatial
                    self._switch_started = 0.0
                    self._held.clear()
                self.producer.request_keyframe(target, asker=self)
        if spatial != self.current_spatial or rewriter is None:
            return None
        forwarded = self._frames.get(packet.timestamp)
        if forwarded is None:
            # A new frame: decide once for all its packets, however they are ordered. Down
            # at once; up only where the frame depends on nothing above the base layer
            # (layer sync) or at a keyframe.
            tid = descriptor.tid or 0
            target_temporal = selection.target_temporal
            if target_temporal < self.current_temporal:
                self.current_temporal = target_temporal
            if descriptor.keyframe:
                self.current_temporal = target_temporal
            elif self.current_temporal < tid <= target_temporal and descriptor.layer_sync:
                self.current_temporal = tid
            forwarded = self._frames[packet.timestamp] = tid <= self.current_temporal
            if len(self._frames) > FRAMES_REMEMBERED:
                self._frames.popitem(last=False)
            if not forwarded:
                rewriter.drop_frame(descriptor)
        if not forwarded:
            rewriter.drop(packet.sequence_number)
            return None
        rewritten = rewriter.rewrite(packet.sequence_number, packet.timestamp, packet.payload, descriptor)
        if rewritten is None:
            return None
        sequence_number, timestamp, payload = rewritten
        return payload_type, sequence_number, timestamp, payload

    def resync(self) -> None:
        """After a gap upstream, video restarts at the next keyframe."""
        self._rebase = True
        self._steady = False
        if self.kind == "video":
            self._waiting_for_keyframe = True
            # Layered: the next keyframe of the target layer continues the stream.
            self.current_spatial = None
            self._held.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._steady = False
        self.feed.on_keyframe_request = None
        self.producer.consumers.discard(self)
