"""Producer: one published track, as it arrives from its publisher."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

from aiortc.rtp import RtpPacket

from .rtphooks import PacketStamp, ReceiverTap

if TYPE_CHECKING:
    from .consumer import Consumer

logger = logging.getLogger(__name__)


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
        self._last_keyframe_request = 0.0
        self._pending_keyframe: asyncio.TimerHandle | None = None
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
        """The smallest bitrate any subscriber reported it can take (REMB), if any did."""
        reported = [c.feed.remb_bps for c in self.consumers if c.feed.remb_bps]
        return min(reported) if reported else None

    def set_audible(self, audible: bool) -> None:
        if audible and not self.audible:
            for consumer in self.consumers:
                consumer.resync()
        self.audible = audible

    async def _on_rtp(self, packet: RtpPacket) -> None:
        self.packets += 1
        level = packet.extensions.audio_level
        if level is not None:
            self.loudness = 0.8 * self.loudness + 0.2 * (127 - level[1])
        if self.paused or not self.audible:
            return
        # Time and level bytes once per incoming packet, shared by every subscriber's copy.
        stamp = PacketStamp(level)
        for consumer in tuple(self.consumers):
            try:
                consumer.forward(packet, stamp)
            except Exception:
                # One broken subscriber must not stop the others' media.
                logger.exception("consumer %s failed; closing it", consumer.id)
                consumer.close()

    def request_keyframe(self) -> None:
        """Asks the publisher for a keyframe; requests within the interval are coalesced."""
        if self.kind != "video" or self.closed:
            return
        now = time.monotonic()
        wait = self._last_keyframe_request + self._keyframe_interval - now
        if wait <= 0:
            self._send_keyframe_request()
        elif self._pending_keyframe is None:
            self._pending_keyframe = asyncio.get_running_loop().call_later(
                wait, self._send_keyframe_request
            )

    def _send_keyframe_request(self) -> None:
        self._pending_keyframe = None
        if self.closed:
            return
        self._last_keyframe_request = time.monotonic()
        self.keyframe_requests += 1
        task = asyncio.ensure_future(self.tap.request_keyframe())
        task.add_done_callback(_log_failure)

    def close(self) -> None:
        self.closed = True
        self.tap.on_rtp = None
        if self._pending_keyframe is not None:
            self._pending_keyframe.cancel()
            self._pending_keyframe = None
        for consumer in tuple(self.consumers):
            consumer.close()


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if not isinstance(exc, ConnectionError):
            logger.warning("keyframe request failed: %r", exc)
