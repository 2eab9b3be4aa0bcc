"""WebRtcTransport: one participant's peer connection with the SFU.

The server is always the offerer. Publishing uses recvonly transceivers the server adds
on request; each consumed producer gets its own sendonly transceiver. One negotiation is
in flight at a time; changes made meanwhile are collected into the next offer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription

from .consumer import Consumer, LayerPolicy
from .linkestimate import CONGESTION_MEMORY_S, LOSS_HIGH, LOSS_LOW, REMB_DROP, LinkEstimate, LossReport, Remb
from .totals import MediaTotals
from .producer import Producer
from ..rtc.rtphooks import ReceiverTap, SenderFeed
from ..rtc.simulcast import answered_simulcast, offer_simulcast
from ..tasks import TaskOwner

logger = logging.getLogger(__name__)

KINDS = ("audio", "video")
# One codec per kind keeps every leg of a room on the same codec: nothing to transcode.
CODEC_PREFERENCES = {"audio": ("audio/opus",), "video": ("video/vp8", "video/rtx")}

OfferSender = Callable[[dict[str, Any]], None]


class NegotiationError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# The digests aiortc can check a DTLS certificate against, and their sizes in bytes.
FINGERPRINT_DIGEST_BYTES = {"sha-256": 32, "sha-384": 48, "sha-512": 64}


def check_fingerprints(sdp: str) -> None:
    """Refuses an answer whose media lack a well-formed DTLS fingerprint.

    aiortc takes such an answer, then fails an assertion in a background task (missing) or
    the DTLS handshake (garbage): the client would hear nothing but silence. An SDP that
    does not parse at all is left to setRemoteDescription (`negotiation_failed`).
    """
    try:
        description = SessionDescription.parse(sdp)
    except Exception:
        return
    for media in description.media:
        if media.port == 0:
            continue
        fingerprints = media.dtls.fingerprints if media.dtls is not None else []
        if not fingerprints:
            raise NegotiationError("bad_fingerprint", f"The answer's {media.kind} section has no a=fingerprint.")
        for fingerprint in fingerprints:
            size = FINGERPRINT_DIGEST_BYTES.get(fingerprint.algorithm.lower())
            if size is None or not re.fullmatch(rf"[0-9A-Fa-f]{{2}}(:[0-9A-Fa-f]{{2}}){{{size - 1}}}", fingerprint.value):
                raise NegotiationError(
                    "bad_fingerprint",
                    f"The answer's {media.kind} section has a malformed a=fingerprint"
                    " (sha-256, sha-384 or sha-512 as colon-separated hex bytes).",
                )


def rtc_configuration(ice_servers: tuple[dict[str, Any], ...]) -> RTCConfiguration:
    # Always an explicit list: aiortc falls back to a public STUN server on None.
    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in ice_servers
    ]
    # max-bundle: with aiortc's default (balanced), a transceiver added while an offer is
    # outstanding keeps a transport that the answer's BUNDLE then discards.
    return RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def _set_codec_preferences(transceiver: RTCRtpTransceiver, kind: str) -> None:
    wanted = CODEC_PREFERENCES[kind]
    codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() in wanted]
    codecs.sort(key=lambda c: wanted.index(c.mimeType.lower()))
    transceiver.setCodecPreferences(codecs)


OPUS_FEC = "useinbandfec=1"


def opus_sdp(sdp: str, music_bitrate_bps: int = 0) -> str:
    """Opus parameters in the offer: in-band FEC always, and for music (a bitrate given)
    stereo, that bitrate and no DTX.

    useinbandfec=1 tells a publisher its listeners decode Opus's in-band FEC (browsers and
    our kiosks do), so it sends each packet's speech again, coarsely, in the next: one lost
    packet then costs a little quality instead of a concealed gap. Only the SDP the client
    sees changes; the SFU forwards whatever arrives.
    """
    lines = sdp.split("\r\n")
    opus = {
        line.split(":", 1)[1].split(" ", 1)[0]
        for line in lines
        if line.startswith("a=rtpmap:") and " opus/48000" in line.lower()
    }
    wanted = [OPUS_FEC]
    if music_bitrate_bps:
        wanted += ["stereo=1", "sprop-stereo=1", f"maxaveragebitrate={music_bitrate_bps}", "usedtx=0"]
    parameters = ";".join(wanted)
    out = []
    for line in lines:
        if line.startswith("a=fmtp:") and line[len("a=fmtp:"):].split(" ", 1)[0] in opus:
            present = {p.split("=", 1)[0] for p in line.split(" ", 1)[1].split(";")} if " " in line else set()
            added = [p for p in wanted if p.split("=", 1)[0] not in present]
            line = ";".join([line, *added]) if added else line
        out.append(line)
        if line.startswith("a=rtpmap:") and line.split(":", 1)[1].split(" ", 1)[0] in opus:
            pt = line.split(":", 1)[1].split(" ", 1)[0]
            if not any(l.startswith(f"a=fmtp:{pt} ") for l in lines):
                out.append(f"a=fmtp:{pt} {parameters}")
    return "\r\n".join(out)


@dataclass
class PublishSlot:
    transceiver: RTCRtpTransceiver
    tap: ReceiverTap
    wanted: bool = True
    producer: Producer | None = None


@dataclass
class ConsumerSlot:
    transceiver: RTCRtpTransceiver
    consumer: Consumer
    offered: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# Bandwidth probing towards a consumer's next spatial layer: padding starts at this share
# of what the link carries now and doubles a level while neither the subscriber's REMB
# falls nor its reports show loss or a longer round trip, until it adds what the layer step
# needs. A weak link shows it at the first or second small level; a good one reaches a
# layer ten times the current in about six.
PROBE_START = 0.25
PROBE_TICK_S = 0.02
# A round trip this much longer than at the probe's start: the padding is filling a queue.
PROBE_DELAY_RISE_S = 0.025
# A receiver report speaks for a probe level once that level has run this long (it counts the
# loss since the previous report) and its round trip was measured with a sender report sent
# this far into the level (one sent at its start crossed a queue the level had not built yet:
# a link a third over its cap builds 70 ms of queue in a quarter second).
PROBE_LEVEL_REPORT_S = 0.5
PROBE_LEVEL_QUEUE_S = 0.25
# After a failed probe, loss in reports received this soon after the padding stopped is the
# padding's (the report counts the interval before it, and the queue drains meanwhile).
PROBE_AFTERMATH_S = 1.5
# The share of a congested subscriber's video budget its retransmissions may take.
RETRANSMIT_SHARE = 0.25
# After a failed probe, how long congestion is put down to the padding (unless loss is
# heavy): longer than the estimate remembers congestion, so the memory runs out first.
PROBE_GRACE_S = 2 * CONGESTION_MEMORY_S


def _lowest(consumer: Consumer) -> tuple[int, int]:
    layers = consumer.producer.layers.available(time.monotonic())
    return (layers[0] if layers else 0, 0)


class WebRtcTransport:
    def __init__(
        self,
        participant_id: str,
        ice_servers: tuple[dict[str, Any], ...],
        send_offer: OfferSender,
        keyframe_request_interval_s: float,
        negotiation_timeout_s: float = 15.0,
        on_failed: Callable[[], None] | None = None,
        layer_policy: LayerPolicy | None = None,
        allocation_interval_s: float = 1.0,
    ) -> None:
        self.participant_id = participant_id
        self.layer_policy = layer_policy or LayerPolicy()
        # This subscriber's downlink, shared out among its video consumers every interval.
        self.estimate = LinkEstimate()
        self.video_budget_bps: float | None = None
        self._allocation_interval = allocation_interval_s
        self._allocator: asyncio.Task[None] | None = None
        # Probe padding being sent (bit/s) and the consumer whose RTX history supplies it.
        self.padding_bps = 0.0
        self._probe_consumer: Consumer | None = None
        self._probe_grace_until = 0.0
        self._probe_stopped_at = 0.0
        # Padding bytes sent: the link carried them beside the media (the loss cap counts both).
        self._padding_bytes = self._padding_bytes_then = 0
        # The highest padding level the link carried without harm in the current probe, and
        # after a failed one what repairs may use during the grace: that much room was free
        # beside the media (the failing level's was not: repairs at its rate keep the queue
        # full, and the loss going, for seconds after the padding stops).
        self._probe_good_bps = 0.0
        self._probe_repair_bps = 0.0
        # When the current probe began and its padding last changed level, and the
        # subscriber's REMB then.
        self._probe_started = self._probe_level_at = 0.0
        self._probe_remb: int | None = None
        self._probe_rtt: float | None = None
        # What the probed consumer's layer step adds to what it is sent now.
        self._probe_needed = 0.0
        self._prober: asyncio.Task[None] | None = None
        self._sent_bytes = 0
        self._audio_bytes = 0
        self._sent_at = time.monotonic()
        # Tile sizes the subscriber shows, by publishing participant (the `layout` message).
        self.layout: dict[str, tuple[int, int]] | None = None
        # The peer connection (and its DTLS certificate) is made on first use: the first
        # transceiver (publish or consume) or the first offer. A participant who joins
        # and has nothing to send or receive yet costs no peer connection (≈ 6 % of a
        # node's CPU per join, and several KiB per idle kiosk, when made at join).
        self._pc: RTCPeerConnection | None = None
        self._ice_servers = ice_servers
        self.publish_slots: dict[str, PublishSlot] = {}
        self.consumer_slots: dict[str, ConsumerSlot] = {}
        self.negotiation_id = 0
        self.closed = False
        # Music mode: the Opus bitrate offered to clients, or 0 for speech defaults.
        self.music_bitrate_bps = 0
        # Counts of producers and consumers that ended while the transport lived on.
        self.retired = MediaTotals()
        self._send_offer = send_offer
        self._keyframe_interval = keyframe_request_interval_s
        self._in_flight: int | None = None
        self._pending_offer: dict[str, Any] | None = None
        self._dirty = False
        self._lock = asyncio.Lock()
        # Negotiations, the layer allocation loop and senders stopping; close() ends them.
        self._tasks = TaskOwner("transport")
        self._task: asyncio.Task[None] | None = None
        # Senders stopping: close() lets them finish before the peer connection closes.
        self._sender_stops: set[asyncio.Task[None]] = set()
        self._retired: list[RTCRtpTransceiver] = []
        self._on_failed = on_failed
        # Set once the peer connection failed or closed on its own; told once.
        self.broken = False
        self._connected = asyncio.Event()
        self._settled = asyncio.Event()
        self._answered = False
        self._negotiation_timeout = negotiation_timeout_s

    @property
    def pc(self) -> RTCPeerConnection:
        if self._pc is None:
            if self.closed:
                raise RuntimeError("transport is closed")
            self._pc = RTCPeerConnection(rtc_configuration(self._ice_servers))
            self._pc.on("connectionstatechange", self._connection_state_changed)
        return self._pc

    @property
    def has_peer_connection(self) -> bool:
        return self._pc is not None

    def _connection_state_changed(self) -> None:
        state = self.pc.connectionState
        if state in ("connected", "failed", "closed"):
            self._settled.set()
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed") and not self.closed:
            # "closed" without our close(): aiortc closes on its own when the remote side
            # does (DTLS close_notify). Either way nothing can be sent or negotiated on it.
            self._break()

    def _break(self) -> None:
        if self.broken:
            return
        self.broken = True
        if self._on_failed is not None:
            self._on_failed()

    # --- publishing ------------------------------------------------------------------

    def set_publishing(self, kind: str, wanted: bool) -> Producer | None:
        """Marks a kind as wanted or not; returns the producer that stopped, if any."""
        slot = self.publish_slots.get(kind)
        stopped: Producer | None = None
        if wanted:
            if slot is None:
                transceiver = self.pc.addTransceiver(kind, direction="recvonly")
                _set_codec_preferences(transceiver, kind)
                slot = self.publish_slots[kind] = PublishSlot(
                    transceiver, ReceiverTap(transceiver.receiver, kind)
                )
            elif not slot.wanted:
                slot.wanted = True
                slot.transceiver.direction = "recvonly"
            else:
                return None
        else:
            if slot is None or not slot.wanted:
                return None
            slot.wanted = False
            slot.transceiver.direction = "inactive"
            if slot.producer is not None:
                stopped = slot.producer
                slot.producer = None
                stopped.close()
                self.retired.add_producer(stopped)
        self.request_negotiation()
        return stopped

    def totals(self) -> MediaTotals:
        """What this transport's producers and consumers counted, closed ones included."""
        totals = MediaTotals()
        totals.update(self.retired)
        for producer in self.producers:
            totals.add_producer(producer)
        for slot in self.consumer_slots.values():
            totals.add_consumer(slot.consumer)
        return totals

    @property
    def producers(self) -> list[Producer]:
        return [s.producer for s in self.publish_slots.values() if s.producer is not None]

    # --- consuming -------------------------------------------------------------------

    def consume(self, producer: Producer) -> Consumer | None:
        """Forwards the producer to this participant; None when the transport is broken
        or closed (its owner is told through on_failed and ends it)."""
        existing = self.consumer_slots.get(producer.id)
        if existing is not None:
            return existing.consumer
        if self.closed or self.broken:
            return None
        if self._pc is not None and self._pc.connectionState == "closed":
            self._break()
            return None
        transceiver = self.pc.addTransceiver(producer.kind, direction="sendonly")
        _set_codec_preferences(transceiver, producer.kind)
        feed = SenderFeed(transceiver.sender, producer.kind)
        consumer = Consumer(producer, feed, mid=None, policy=self.layer_policy)
        if consumer.selection is not None and self.layout is not None:
            consumer.selection.tile = self.layout.get(producer.participant_id, (0, 0))
        self.consumer_slots[producer.id] = ConsumerSlot(transceiver, consumer)
        if producer.kind == "video" and self._allocator is None:
            self._allocator = self._tasks.spawn(self._allocate_periodically(), name="layer-allocation")
        self.request_negotiation()
        return consumer

    # --- per-subscriber layer selection ------------------------------------------------

    def set_layout(self, tiles: dict[str, tuple[int, int]]) -> None:
        """The tile sizes this subscriber shows; a video not listed is not shown (smallest layer)."""
        self.layout = dict(tiles)
        for slot in self.consumer_slots.values():
            selection = slot.consumer.selection
            if selection is not None:
                selection.tile = self.layout.get(slot.consumer.producer.participant_id, (0, 0))
        self.allocate()

    async def _allocate_periodically(self) -> None:
        while not self.closed:
            await asyncio.sleep(self._allocation_interval)
            try:
                self.allocate()
            except Exception:
                logger.exception("layer allocation for %s failed", self.participant_id)

    def allocate(self) -> None:
        """Updates the link estimate and shares it out among the video consumers.

        Audio is subtracted first (it is on the same link, and a REMB does not count it);
        every consumer is then sure of its lowest layer, and the rest goes to the largest
        tiles first, as mediasoup's transport shares its estimate among its consumers.
        """
        now = time.monotonic()
        consumers = [slot.consumer for slot in self.consumer_slots.values()]
        sent = sum(c.bytes for c in consumers)
        audio = sum(c.bytes for c in consumers if c.kind == "audio")
        elapsed = max(1e-3, now - self._sent_at)
        sent_bps = max(0, sent - self._sent_bytes) * 8 / elapsed
        audio_bps = max(0, audio - self._audio_bytes) * 8 / elapsed
        self._sent_bytes, self._audio_bytes, self._sent_at = sent, audio, now
        rembs = [Remb(c.feed.remb_bps, c.feed.remb_ssrcs, c.feed.remb_at) for c in consumers if c.feed.remb_bps]
        losses = [LossReport(c.feed.fraction_lost, c.feed.report_at) for c in consumers if c.feed.report_at]
        padded_bps = (self._padding_bytes - self._padding_bytes_then) * 8 / elapsed
        self._padding_bytes_then = self._padding_bytes
        available = self.estimate.update(rembs, losses, sent_bps + padded_bps, now, audio_bps)
        video = [c for c in consumers if c.selection is not None]
        if available is None:
            self.video_budget_bps = None
            for consumer in video:
                consumer.selection.choose(None, now)  # type: ignore[union-attr]
            return
        budget = self.video_budget_bps = max(0.0, available - audio_bps)

        def area(consumer: Consumer) -> float:
            tile = consumer.selection.tile  # type: ignore[union-attr]
            return float("inf") if tile is None else tile[0] * tile[1]

        base = {c: c.selection.rate(*_lowest(c)) for c in video}  # type: ignore[union-attr]
        remaining = budget - sum(base.values())
        congested, holding = self.estimate.congested, self.estimate.holding
        probe_aftermath = now < self._probe_grace_until and (
            self.estimate.loss <= LOSS_HIGH or self.estimate.loss_at < self._probe_stopped_at + PROBE_AFTERMATH_S
        )
        if congested and (self.padding_bps or probe_aftermath):
            # Congestion while probing, a REMB still falling shortly after and the loss the
            # reports of the probe's last moments count are the padding's doing: the probe
            # fails (the padding stops) and the layers stay. Only heavy loss after that moves
            # them down.
            if self.padding_bps:
                self._probe_failed(now)
            congested, holding = False, True
        for consumer in sorted(video, key=area, reverse=True):
            got = consumer.selection.choose(  # type: ignore[union-attr]
                max(0.0, remaining) + base[consumer], now, congested, holding
            )
            remaining -= got - base[consumer]
            # On a congested link retransmissions get a share of the consumer's budget, no
            # more: unanswered, a loss costs a keyframe; answered without limit, the repairs
            # keep the queue full and the loss going (seen for ten seconds after a probe).
            # Some loss (2-10 %) is repaired in full: a browser waits for every repair.
            # After a failed probe too, whatever the estimate says: its queue is still draining.
            consumer.feed.retransmit_rate_bps = (
                self._repair_limit(consumer, now)
                if self.estimate.congested or now < self._probe_grace_until
                else None
            )
        self._plan_probe(video, sent_bps)

    def _plan_probe(self, video: list[Consumer], sent_bps: float) -> None:
        """Starts the probe padding for the consumer that waits for the largest layer step.

        Each level is held until a receiver report sent while it ran shows it did no harm
        (`_probe_hurts` and `_advance_probe` watch every report): reports come about once a
        second, and doubling blind overshoots a weak link by the whole step before its first
        report says so.
        """
        # Only once a layer flows and a receiver report has measured the link: the padding
        # starts at a share of what the link carries, and its harm shows against that report.
        probing = [
            c for c in video
            if c.selection.probe_bps and c.current_spatial is not None and c.feed.round_trip_s is not None  # type: ignore[union-attr]
        ]
        if not probing or self.estimate.congested or self.estimate.holding:
            self.padding_bps = 0.0
            self._probe_consumer = None
            return

        def extra(consumer: Consumer) -> float:
            selection = consumer.selection
            return selection.probe_bps - selection.rate(selection.target_spatial, selection.target_temporal)  # type: ignore[union-attr]

        consumer = max(probing, key=extra)
        self._probe_needed = extra(consumer)
        if consumer is not self._probe_consumer:
            now = time.monotonic()
            self._probe_consumer = consumer
            self.padding_bps = min(self._probe_needed, PROBE_START * max(sent_bps, 1.0))
            self._probe_started = self._probe_level_at = now
            self._probe_good_bps = 0.0
            self._probe_remb = consumer.feed.remb_bps
            self._probe_rtt = consumer.feed.round_trip_s
        if self.padding_bps and self._prober is None:
            self._prober = self._tasks.spawn(self._pad(), name="probe-padding")

    def _advance_probe(self, consumer: Consumer, now: float) -> None:
        """The next level once a receiver report has spoken for this one (checked as each
        report comes, where waiting for the next allocation would add up to a second a level)."""
        feed = consumer.feed
        if (
            feed.report_at < self._probe_level_at + PROBE_LEVEL_REPORT_S
            or feed.round_trip_sent_at < self._probe_level_at + PROBE_LEVEL_QUEUE_S
        ):
            return
        if self.padding_bps >= self._probe_needed:
            # The link carried the whole step without loss or a queue: take it.
            consumer.selection.probe_passed = True  # type: ignore[union-attr]
            self.padding_bps = 0.0
            self._probe_consumer = None
        else:
            self._probe_good_bps = self.padding_bps
            self.padding_bps = min(self._probe_needed, 2 * self.padding_bps)
            self._probe_level_at = now

    def _probe_hurts(self, feed: SenderFeed) -> bool:
        """A longer round trip, a REMB that fell or a receiver report with loss since the
        probe began: checked at every report, where waiting for the next allocation would
        keep the padding up for the rest of it. The round trip comes first: a link's queue
        fills before it drops anything."""
        rtt = feed.round_trip_s
        if rtt is not None:
            # Against the shortest round trip since the probe began: a queue is building.
            if self._probe_rtt is not None and rtt > self._probe_rtt + PROBE_DELAY_RISE_S:
                return True
            self._probe_rtt = min(rtt, self._probe_rtt if self._probe_rtt is not None else rtt)
        remb = feed.remb_bps
        if remb is not None:
            # Against the highest REMB since the probe began: the padding itself raises it.
            if self._probe_remb is not None and remb < REMB_DROP * self._probe_remb:
                return True
            self._probe_remb = max(remb, self._probe_remb or 0)
        return feed.report_at > self._probe_started and feed.fraction_lost > LOSS_LOW

    def _probe_failed(self, now: float) -> None:
        """The padding met harm: a grace in which congestion is put down to it and its room
        goes to repairing what it cost (a lost packet left unrepaired costs a keyframe)."""
        self._probe_grace_until = now + PROBE_GRACE_S
        self._probe_stopped_at = now
        self._probe_repair_bps = self._probe_good_bps
        if self._probe_consumer is not None:
            self._probe_consumer.feed.retransmit_rate_bps = self._repair_limit(self._probe_consumer, now)

    def _repair_limit(self, consumer: Consumer, now: float) -> float | None:
        """What one consumer's retransmissions may use while the link is congested or a failed
        probe's queue drains: a share of its budget, or the room the probe found if more
        (None: no budget to go by)."""
        budget = consumer.selection.budget_bps if consumer.selection is not None else None
        if budget is None:
            return None
        repair = self._probe_repair_bps if now < self._probe_grace_until else 0.0
        return max(RETRANSMIT_SHARE * budget, repair)

    async def _pad(self) -> None:
        """Sends the probe padding, paced every PROBE_TICK_S; stops it at the first sign of harm."""
        due = 0.0
        while not self.closed:
            await asyncio.sleep(PROBE_TICK_S)
            consumer = self._probe_consumer
            if consumer is None or not self.padding_bps:
                due = 0.0
                continue
            if self._probe_hurts(consumer.feed):
                self._probe_failed(time.monotonic())
                self.padding_bps = 0.0
                self._probe_consumer = None
                consumer.selection.probe_failed(time.monotonic())  # type: ignore[union-attr]
                continue
            self._advance_probe(consumer, time.monotonic())
            if not self.padding_bps:
                continue
            due += self.padding_bps * PROBE_TICK_S / 8
            try:
                sent = await consumer.feed.send_probe(int(due))
                due -= sent
                self._padding_bytes += sent
            except Exception:
                logger.exception("probe padding for %s failed", self.participant_id)
                self.padding_bps = 0.0
            # What one packet overshot is owed; what could not be sent is not saved up.
            due = min(due, self.padding_bps * PROBE_TICK_S / 8)

    def stop_consuming(self, producer_id: str) -> None:
        slot = self.consumer_slots.pop(producer_id, None)
        if slot is None:
            return
        slot.consumer.close()
        self.retired.add_consumer(slot.consumer)
        # aiortc cannot remove an m-line; an inactive one stays in later offers. Its
        # sender stops once the client has agreed (an answer to an older offer could
        # otherwise start it again).
        slot.transceiver.direction = "inactive"
        self._retired.append(slot.transceiver)
        self.request_negotiation()

    def _stop_sender(self, sender: RTCRtpSender) -> None:
        task = self._tasks.spawn(sender.stop(), name="sender-stop")
        self._sender_stops.add(task)
        task.add_done_callback(self._sender_stops.discard)

    # --- negotiation -----------------------------------------------------------------

    def set_music(self, bitrate_bps: int) -> None:
        if bitrate_bps != self.music_bitrate_bps:
            self.music_bitrate_bps = bitrate_bps
            self.request_negotiation()

    def request_negotiation(self) -> None:
        if self.closed:
            return
        self._dirty = True
        if self._in_flight is None and (self._task is None or self._task.done()):
            self._task = self._tasks.spawn(self._negotiate(), name="negotiation")

    async def _negotiate(self) -> None:
        if self._answered and not self._connected.is_set():
            # aiortc starts its transports in a task per applied description; two such
            # tasks racing through the DTLS handshake leave receivers unstarted. Offer
            # again only once the first connection is up.
            try:
                await asyncio.wait_for(self._connected.wait(), self._negotiation_timeout)
            except asyncio.TimeoutError:
                pass
        async with self._lock:
            if self.closed or self._in_flight is not None or not self._dirty:
                return
            self._dirty = False
            offer = await self.pc.createOffer()
            await self.pc.setLocalDescription(offer)
            if self.closed:
                return
            self.negotiation_id += 1
            self._in_flight = self.negotiation_id
            publish = {
                kind: slot.transceiver.mid
                for kind, slot in self.publish_slots.items()
                if slot.wanted
            }
            consumers = []
            for slot in self.consumer_slots.values():
                slot.offered = True
                slot.consumer.mid = slot.transceiver.mid
                consumers.append(
                    {
                        "mid": slot.transceiver.mid,
                        "track_id": slot.consumer.producer.id,
                        "participant_id": slot.consumer.producer.participant_id,
                        "kind": slot.consumer.kind,
                    }
                )
            sdp = self.pc.localDescription.sdp
            if "video" in publish:
                sdp = offer_simulcast(sdp, publish["video"])
            sdp = opus_sdp(sdp, self.music_bitrate_bps)
            self._pending_offer = {
                "sdp": sdp,
                "negotiation_id": self.negotiation_id,
                "publish": publish,
                "consumers": consumers,
            }
            self._send_offer(dict(self._pending_offer))

    @property
    def pending_offer(self) -> dict[str, Any] | None:
        """The offer still waiting for its answer, if any."""
        return dict(self._pending_offer) if self._in_flight is not None and self._pending_offer else None

    async def apply_answer(self, sdp: str, negotiation_id: int) -> list[Producer]:
        """Applies the client's answer; returns producers that started with it."""
        async with self._lock:
            if self._in_flight is None or negotiation_id != self._in_flight:
                raise NegotiationError(
                    "stale_negotiation",
                    f"No offer {negotiation_id} is waiting for an answer.",
                )
            # Before anything changes: the offer stays in flight for a corrected answer.
            check_fingerprints(sdp)
            video = self.publish_slots.get("video")
            if video is not None and video.producer is None and video.transceiver.mid is not None:
                # Read before aiortc starts the receiver: the tap needs the layer names then.
                video.tap.simulcast = answered_simulcast(sdp, video.transceiver.mid)
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            except Exception as exc:
                # The offer stays local; re-offer so the client can try again.
                logger.info("answer for %s refused: %s", self.participant_id, exc)
                self._in_flight = None
                self._dirty = True
                asyncio.get_running_loop().call_soon(self.request_negotiation)
                raise NegotiationError(
                    "negotiation_failed", "The answer could not be applied; a new offer follows."
                ) from None
            self._in_flight = None
            self._answered = True
            for transceiver in [t for t in self._retired if t.currentDirection == "inactive"]:
                self._retired.remove(transceiver)
                # The RTCP BYE the stop sends tells the subscriber the stream ended.
                self._stop_sender(transceiver.sender)
            started: list[Producer] = []
            for kind, slot in self.publish_slots.items():
                if slot.wanted and slot.producer is None and slot.transceiver.currentDirection in (
                    "recvonly",
                    "sendrecv",
                ):
                    slot.producer = Producer(
                        self.participant_id, kind, slot.tap, self._keyframe_interval
                    )
                    started.append(slot.producer)
        if self._dirty:
            self.request_negotiation()
        return started

    async def close(self) -> list[Producer]:
        """Closes the peer connection; returns the producers that ended with it."""
        if self.closed:
            return []
        self.closed = True
        ended = self.producers
        for slot in self.publish_slots.values():
            if slot.producer is not None:
                slot.producer.close()
                slot.producer = None
        for slot in self.consumer_slots.values():
            slot.consumer.close()
        self.consumer_slots.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for task in (self._allocator, self._prober):
            if task is not None:
                task.cancel()
        if self._sender_stops:
            await asyncio.gather(*self._sender_stops, return_exceptions=True)
        await self._tasks.close()
        if self._answered and not self._settled.is_set():
            # Closing while aiortc is still connecting lets its connect task start ICE
            # consent checks and RTCP after the close, which then never end.
            try:
                await asyncio.wait_for(self._settled.wait(), self._negotiation_timeout)
            except asyncio.TimeoutError:
                pass
        if self._pc is not None:
            await self._pc.close()
        return ended
