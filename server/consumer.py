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
from .rtphooks import PacketStamp, SenderFeed
from .rtppayload import is_keyframe_start

logger = logging.getLogger(__name__)


class Consumer:
    def __init__(self, producer: Producer, feed: SenderFeed, mid: str | None) -> None:
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
        feed.on_keyframe_request = producer.request_keyframe
        producer.consumers.add(self)

    def forward(self, packet: RtpPacket, stamp: PacketStamp) -> None:
        """Sends the subscriber its copy of one packet, now (no coroutine: see SenderFeed.send_now)."""
        if self._steady:
            # The common case, kept short: it runs once per packet and subscriber.
            sequence_number = (packet.sequence_number + self._seq_offset) & 0xFFFF
            timestamp = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
            payload_type = self._payload_type
        else:
            prepared = self._prepare(packet)
            if prepared is None:
                return
            payload_type, sequence_number, timestamp = prepared
        payload = packet.payload
        try:
            self._send_now(payload_type, packet.marker, sequence_number, timestamp, payload, stamp)  # type: ignore[arg-type]
        except ConnectionError:
            return
        self.packets += 1
        self.bytes += len(payload)
        self._last_seq = sequence_number
        self._last_ts = timestamp
        self._last_sent_at = stamp.monotonic

    def _prepare(self, packet: RtpPacket) -> tuple[int, int, int] | None:
        """The first packets, keyframe waits and rebases: everything but steady forwarding."""
        if self.closed:
            return None
        payload_type = self._payload_type
        if payload_type is None:
            if not self.feed.ready or self.producer.mime_type is None:
                return None
            payload_type = self._payload_type = self.feed.payload_type_for(self.producer.mime_type)
            if payload_type is None:
                return None
        if self._waiting_for_keyframe:
            if not is_keyframe_start(self.producer.mime_type or "", packet.payload):
                self.producer.request_keyframe()
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

    def resync(self) -> None:
        """After a gap upstream, video restarts at the next keyframe."""
        self._rebase = True
        self._steady = False
        if self.kind == "video":
            self._waiting_for_keyframe = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._steady = False
        self.feed.on_keyframe_request = None
        self.producer.consumers.discard(self)
