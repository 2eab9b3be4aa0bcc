"""Router: a room's media on this node — its transports and the producers they publish."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .consumer import LayerPolicy
from .totals import MediaTotals
from .producer import Producer
from .speakers import SpeakerSelector
from .transport import OfferSender, WebRtcTransport

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class MediaOptions:
    """How every room's media runs on a node (from its settings): the Sfu carries them and
    hands them to each Router it makes."""

    ice_servers: tuple[dict[str, Any], ...]
    keyframe_request_interval_s: float
    last_n_audio: int = 3
    speaker_interval_s: float = 0.3
    layer_policy: LayerPolicy = field(default_factory=LayerPolicy)
    allocation_interval_s: float = 1.0
    negotiation_timeout_s: float = 15.0


class Router:
    def __init__(self, room: str, options: MediaOptions) -> None:
        self.room = room
        self._options = options
        self.transports: dict[str, WebRtcTransport] = {}
        self.subscribers: set[str] = set()
        self.speakers = SpeakerSelector(lambda: self.producers, options.last_n_audio, options.speaker_interval_s)
        # Large activities forward a participant's video only to those who show it: everyone
        # sees the host and the spotlit participant; only hosts see every senior's tile.
        # Up to `tiles_to_everyone_up_to` participants, everyone sees everyone. The room
        # (server/room.py) sets these rules through `configure`; until then, and outside
        # activities, everyone sees everyone.
        self.activity = False
        self.tiles_to_everyone_up_to = 0
        self.moderators: set[str] = set()
        self.spotlight: str | None = None

    def configure(self, *, activity: bool, tiles_to_everyone_up_to: int, spotlight: str | None) -> None:
        """The room's video rules, set when its media starts on this node."""
        self.activity = activity
        self.tiles_to_everyone_up_to = tiles_to_everyone_up_to
        self.spotlight = spotlight

    def create_transport(
        self,
        participant_id: str,
        *,
        subscribe: bool,
        send_offer: OfferSender,
        on_failed: Callable[[], None] | None = None,
        moderator: bool = False,
    ) -> WebRtcTransport:
        if participant_id in self.transports:
            raise ValueError(f"participant {participant_id} already has a transport")
        options = self._options
        transport = WebRtcTransport(
            participant_id,
            options.ice_servers,
            send_offer,
            options.keyframe_request_interval_s,
            on_failed=on_failed,
            layer_policy=options.layer_policy,
            allocation_interval_s=options.allocation_interval_s,
            negotiation_timeout_s=options.negotiation_timeout_s,
        )
        selective = self.selective_video
        self.transports[participant_id] = transport
        if moderator:
            self.moderators.add(participant_id)
        if selective != self.selective_video:
            self.rebalance()
        if subscribe:
            self.subscribers.add(participant_id)
            for producer in self.producers:
                if self.wants(participant_id, producer):
                    self._consume(transport, producer)
        return transport

    def _consume(self, transport: WebRtcTransport, producer: Producer) -> None:
        """One subscriber's transport that cannot take a consumer (its peer connection
        broke meanwhile) must never stop the producer reaching the others."""
        try:
            transport.consume(producer)
        except Exception:
            logger.exception("%s cannot consume %s", transport.participant_id, producer.id)

    @property
    def selective_video(self) -> bool:
        return self.activity and len(self.transports) > self.tiles_to_everyone_up_to

    def wants(self, subscriber: str, producer: Producer) -> bool:
        if subscriber == producer.participant_id:
            return False
        if producer.kind == "audio" or not self.selective_video or subscriber in self.moderators:
            return True
        return producer.participant_id in self.moderators or producer.participant_id == self.spotlight

    def set_spotlight(self, participant_id: str | None) -> None:
        self.spotlight = participant_id
        self.rebalance()

    def rebalance(self) -> None:
        """Makes every subscriber's video consumers match `wants`."""
        for subscriber in self.subscribers:
            transport = self.transports[subscriber]
            for producer in self.producers:
                if producer.kind != "video":
                    continue
                if self.wants(subscriber, producer):
                    self._consume(transport, producer)
                else:
                    transport.stop_consuming(producer.id)

    @property
    def producers(self) -> list[Producer]:
        return [p for t in self.transports.values() for p in t.producers]

    def get_producer(self, producer_id: str) -> Producer | None:
        return next((p for p in self.producers if p.id == producer_id), None)

    def producer_started(self, producer: Producer) -> None:
        if producer.kind == "audio":
            self.speakers.start()
            # Heard from the start; the next selection round decides whether it stays so.
            producer.audible = True
        for participant_id in self.subscribers:
            if self.wants(participant_id, producer):
                self._consume(self.transports[participant_id], producer)

    def producer_stopped(self, producer: Producer) -> None:
        for transport in self.transports.values():
            transport.stop_consuming(producer.id)

    async def close_transport(self, participant_id: str) -> list[Producer]:
        selective = self.selective_video
        transport = self.transports.pop(participant_id, None)
        self.subscribers.discard(participant_id)
        self.moderators.discard(participant_id)
        if transport is None:
            return []
        ended = await transport.close()
        for producer in ended:
            self.producer_stopped(producer)
        if selective != self.selective_video:
            self.rebalance()
        return ended

    @property
    def empty(self) -> bool:
        return not self.transports

    def stats(self) -> dict[str, int]:
        consumers = sum(len(t.consumer_slots) for t in self.transports.values())
        return {"transports": len(self.transports), "producers": len(self.producers), "consumers": consumers}


@dataclass(eq=False)
class Sfu(MediaOptions):
    """All routers on this node, one per room with media here, and the options they run by."""

    routers: dict[str, Router] = field(default_factory=dict, init=False)
    totals: MediaTotals = field(default_factory=MediaTotals, init=False)
    # Told (room, participant id) when a room's active speaker changes.
    on_active_speaker: Callable[[str, str | None], None] | None = field(default=None, init=False)

    def router(self, room: str) -> Router:
        router = self.routers.get(room)
        if router is None:
            router = self.routers[room] = Router(room, self)
            router.speakers.on_active_speaker = lambda speaker: self._speaker_changed(room, speaker)
        return router

    def _speaker_changed(self, room: str, speaker: str | None) -> None:
        if self.on_active_speaker is not None:
            self.on_active_speaker(room, speaker)

    async def close_transport(self, room: str, participant_id: str) -> list[Producer]:
        router = self.routers.get(room)
        if router is None:
            return []
        transport = router.transports.get(participant_id)
        if transport is not None:
            self._account(transport)
        ended = await router.close_transport(participant_id)
        # Several sessions of one room can end at once (the host ends the activity).
        if router.empty and self.routers.get(room) is router:
            router.speakers.stop()
            del self.routers[room]
        return ended

    def _account(self, transport: WebRtcTransport) -> None:
        """Keeps what a closing transport counted, for the metrics' running totals."""
        self.totals.update(transport.totals())

    async def close(self) -> None:
        for room in list(self.routers):
            router = self.routers[room]
            for participant_id in list(router.transports):
                await self.close_transport(room, participant_id)

    def stats(self) -> dict[str, int]:
        totals = {"routers": len(self.routers), "transports": 0, "producers": 0, "consumers": 0}
        for router in self.routers.values():
            for key, value in router.stats().items():
                totals[key] += value
        return totals
