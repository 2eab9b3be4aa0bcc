"""Consumer: one producer's track forwarded to one subscriber, packet by packet.

The consumer owns the subscriber-facing SSRC, sequence numbers and timestamps, so the
subscriber's decoder sees one continuous stream whatever happens upstream.
"""

from __future__ import annotations

import logging
import random
import time
import uuid

from aiortc.rtp import RtpPacket

from .producer import Producer
from .rtphooks import SenderFeed
from .rtppayload import is_keyframe_start

logger = logging.getLogger(__name__)


class Consumer:
    def __init__(self, producer: Producer, feed: SenderFeed, mid: str | None) -> None:
        self.id = f"c-{uuid.uuid4().hex[:12]}"
        self.producer = producer
        self.feed = feed
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
        feed.on_keyframe_request = producer.request_keyframe
        producer.consumers.add(self)

    async def forward(self, packet: RtpPacket) -> None:
        if self.closed:
            return
        payload_type = self._payload_type
        if payload_type is None:
            if not self.feed.ready or self.producer.mime_type is None:
                return
            payload_type = self._payload_type = self.feed.payload_type_for(self.producer.mime_type)
            if payload_type is None:
                return
        if self._waiting_for_keyframe:
            if not is_keyframe_start(self.producer.mime_type or "", packet.payload):
                self.producer.request_keyframe()
                return
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
        sequence_number = (packet.sequence_number + self._seq_offset) & 0xFFFF
        timestamp = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        try:
            await self.feed.send(
                payload_type, packet.marker, sequence_number, timestamp, packet.payload,
                packet.extensions.audio_level,
            )
        except ConnectionError:
            return
        self.packets += 1
        self.bytes += len(packet.payload)
        self._last_seq = sequence_number
        self._last_ts = timestamp
        self._last_sent_at = time.monotonic()

    def resync(self) -> None:
        """After a gap upstream, video restarts at the next keyframe."""
        self._rebase = True
        if self.kind == "video":
            self._waiting_for_keyframe = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.feed.on_keyframe_request = None
        self.producer.consumers.discard(self)
