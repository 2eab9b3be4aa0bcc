"""Producer: one published track, as it arrives from its publisher."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

from aiortc.rtp import RtpPacket

from ..rtc.rtphooks import PacketStamp, ReceiverTap
from ..rtc.rtppayload import is_vp8_keyframe_start
from ..tasks import TaskOwner
from .vp8rewriter import parse_descriptor

if TYPE_CHECKING:
    from .consumer import Consumer

logger = logging.getLogger(__name__)

# What a simulcast layer is assumed to need before it has been measured (l, m, h): it
# is what the REMB asks a publisher to make room for when a subscriber wants that layer.
NOMINAL_LAYER_BPS = {0: 150_000, 1: 400_000, 2: 1_200_000}
# A wanted layer is asked for this much more than it measures, so its encoder may grow.
REMB_HEADROOM = 1.15


# Bitrates are measured over windows this long; a layer silent for LAYER_GONE_S is gone
# (its publisher paused it, or stopped sending it).
RATE_WINDOW_S = 1.0
LAYER_GONE_S = 1.5


class LayerRates:
    """What arrives per (spatial, temporal) layer: bitrate over the last window, and when
    each spatial layer was last seen and at what picture size."""

    def __init__(self) -> None:
        self._bytes: dict[tuple[int, int], int] = {}
        # From the first packet: a window that began before it would be measured short.
        self._window_start: float | None = None
        self.bps: dict[tuple[int, int], float] = {}
        self.last_seen: dict[int, float] = {}
        self.size: dict[int, tuple[int, int]] = {}
        self.temporal_layers = 1

    def add(self, spatial: int, temporal: int, size: int, now: float) -> None:
        key = (spatial, temporal)
        self._bytes[key] = self._bytes.get(key, 0) + size
        self.last_seen[spatial] = now
        if temporal >= self.temporal_layers:
            self.temporal_layers = temporal + 1
        if self._window_start is None:
            self._window_start = now
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW_S:
            self.bps = {k: v * 8 / elapsed for k, v in self._bytes.items()}
            self._bytes = {}
            self._window_start = now

    def available(self, now: float) -> list[int]:
        """Spatial layers arriving now, smallest first."""
        return sorted(s for s, seen in self.last_seen.items() if now - seen < LAYER_GONE_S)

    def rate(self, spatial: int, temporal: int) -> float:
        """Bits per second of one spatial layer up to and including `temporal`."""
        return sum(self.bps.get((spatial, t), 0.0) for t in range(temporal + 1))


class Producer:
    def __init__(
        self,
        participant_id: str,
        kind: str,
        tap: ReceiverTap,
        keyframe_request_interval_s: float,
    ) -> None:
        self.id = f"{kind[0]}-{uuid.uuid4().hex[:12]}"
        self.participant_id = participant_id
        self.kind = kind
        self.tap = tap
        self.consumers: set[Consumer] = set()
        self.closed = False
        # A muted producer's packets stop at the server: nobody receives them.
        self.paused = False
        # Last-N audio: only audible producers are forwarded; hosts always are.
        self.audible = True
        self.always_audible = False
        # Smoothed 127 - dBov from the publisher's RFC 6464 levels (0 = silence).
        self.loudness = 0.0
        self.packets = 0
        self.keyframe_requests = 0
        self._keyframe_interval = keyframe_request_interval_s
        # Per spatial layer (None: every layer at once, for single-layer publishers).
        self._last_keyframe_request: dict[int | None, float] = {}
        self._pending_keyframe: dict[int | None, asyncio.TimerHandle] = {}
        # Who asked, per layer, since its last request went out: each is told it caused one.
        self._keyframe_askers: dict[int | None, set[Consumer]] = {}
        self._tasks = TaskOwner("producer")
        # Layered: VP8 with simulcast or temporal layers; its consumers select layers.
        self.layered = False
        self.layers = LayerRates()
        # Keyframes that arrived, per spatial layer (VP8 only): whether a subscriber asking
        # again was sent one meanwhile.
        self.keyframes_seen: dict[int, int] = {}
        self._vp8: bool | None = None
        tap.on_rtp = self._on_rtp
        tap.downstream_limit = self.downstream_limit

    @property
    def mime_type(self) -> str | None:
        codec = self.tap.primary_codec
        return codec.mimeType if codec else None

    def set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        if not paused:
            for consumer in self.consumers:
                consumer.resync()
            self.request_keyframe()

    def downstream_limit(self) -> int | None:
        """The most the publisher is asked to send (REMB): what the best-placed subscriber needs.

        Simulcast: every layer up to the highest one a subscriber wants (its tile's, or one
        above the layer it gets while its link leaves room to probe), so layers nobody wants
        stay off — Chromium and Firefox drop the simulcast layers the bitrate does not
        reach, from the top. One layer (temporal layers at most): the largest budget a
        subscriber has; the others take lower temporal layers. None: no cap (no subscriber,
        or one without a budget yet).
        """
        selections = [c.selection for c in self.consumers if c.selection is not None]
        if not selections:
            return None
        if self.tap.simulcast is not None:
            top = max(s.wanted_spatial for s in selections)
            temporal = self.layers.temporal_layers - 1
            # The layers up to it as they measure, with room to grow; one not arriving costs
            # nothing (a picture too small for the publisher to send it), unless it is the
            # top one wanted (paused for want of bitrate): room at its nominal rate. The
            # publisher's highest layer, when wanted, is never asked below its nominal rate:
            # asking it only for what arrives spirals down with an encoder that undershoots
            # its target (a still picture: each REMB lowers the target, the next measurement
            # is lower again; a kiosk's top layer sat at half its rate). A layer below the
            # publisher's highest gets no such floor: the room would turn the higher one on.
            answered = self.tap.simulcast.spatial_layers
            total = sum(self.layers.rate(spatial, temporal) * REMB_HEADROOM for spatial in answered if spatial <= top)
            if top in answered and (top == max(answered) or not self.layers.rate(top, temporal)):
                total = total - self.layers.rate(top, temporal) * REMB_HEADROOM + max(
                    self.layers.rate(top, temporal) * REMB_HEADROOM, NOMINAL_LAYER_BPS[top]
                )
            return int(total)
        budgets = [s.budget_bps for s in selections]
        if any(b is None for b in budgets):
            return None
        return int(max(budgets))  # type: ignore[type-var]

    def set_audible(self, audible: bool) -> None:
        if audible and not self.audible:
            for consumer in self.consumers:
                consumer.resync()
        self.audible = audible

    async def _on_rtp(self, packet: RtpPacket, spatial: int = 0) -> None:
        self.packets += 1
        level = packet.extensions.audio_level
        if level is not None:
            self.loudness = 0.8 * self.loudness + 0.2 * (127 - level[1])
        if self.paused or not self.audible:
            return
        # Time and level bytes once per incoming packet, shared by every subscriber's copy.
        stamp = PacketStamp(level)
        if self._vp8 is None and self.kind == "video":
            self._vp8 = (self.mime_type or "").lower() == "video/vp8"
        payload = packet.payload
        # Only layered streams need their descriptor read: simulcast, or the T bit set (a
        # byte test per packet, so a plain stream costs no parsing).
        if self._vp8 and (
            self.layered
            or self.tap.simulcast is not None
            or (len(payload) > 1 and payload[0] & 0x80 and payload[1] & 0x20)
        ):
            descriptor = parse_descriptor(payload)
            if descriptor is None:
                return
            stamp.spatial = spatial
            stamp.vp8 = descriptor
            if descriptor.keyframe:
                self.keyframes_seen[spatial] = self.keyframes_seen.get(spatial, 0) + 1
                if descriptor.width:
                    self.layers.size[spatial] = (descriptor.width, descriptor.height)
            self.layers.add(spatial, descriptor.tid or 0, len(packet.payload), stamp.monotonic)
            if not self.layered and (descriptor.tid is not None or self.tap.simulcast is not None):
                self.layered = True
                for consumer in self.consumers:
                    consumer.resync()
        elif self._vp8 and len(payload) > 1 and payload[0] & 0x17 == 0x10 and is_vp8_keyframe_start(payload):
            # A plain stream's keyframe: the start of partition 0 (one byte test) checked in full.
            self.keyframes_seen[0] = self.keyframes_seen.get(0, 0) + 1
        for consumer in tuple(self.consumers):
            try:
                consumer.forward(packet, stamp)
            except Exception:
                # One broken subscriber must not stop the others' media.
                logger.exception("consumer %s failed; closing it", consumer.id)
                consumer.close()

    def request_keyframe(self, layer: int | None = None, asker: Consumer | None = None) -> None:
        """Asks the publisher for a keyframe (of one simulcast layer, or of its only one);
        requests within the interval are coalesced, per layer. The consumer it is asked for,
        if any, is counted as a cause of the request that goes upstream."""
        if self.kind != "video" or self.closed:
            return
        if self.tap.simulcast is None:
            layer = None
        if asker is not None:
            self._keyframe_askers.setdefault(layer, set()).add(asker)
        now = time.monotonic()
        wait = self._last_keyframe_request.get(layer, 0.0) + self._keyframe_interval - now
        if wait <= 0:
            self._send_keyframe_request(layer)
        elif layer not in self._pending_keyframe:
            self._pending_keyframe[layer] = asyncio.get_running_loop().call_later(
                wait, self._send_keyframe_request, layer
            )

    def _send_keyframe_request(self, layer: int | None) -> None:
        self._pending_keyframe.pop(layer, None)
        if self.closed:
            return
        self._last_keyframe_request[layer] = time.monotonic()
        self.keyframe_requests += 1
        for asker in self._keyframe_askers.pop(layer, ()):
            asker.keyframes_caused[layer] = asker.keyframes_caused.get(layer, 0) + 1
        self._tasks.spawn(self._request_keyframe(layer), name="keyframe-request")

    async def _request_keyframe(self, layer: int | None) -> None:
        try:
            await self.tap.request_keyframe(layer)
        except ConnectionError:
            pass  # the publisher's transport is going: nobody left to ask

    def close(self) -> None:
        self.closed = True
        self.tap.on_rtp = None
        for handle in self._pending_keyframe.values():
            handle.cancel()
        self._pending_keyframe.clear()
        self._keyframe_askers.clear()
        self._tasks.cancel()
        for consumer in tuple(self.consumers):
            consumer.close()
