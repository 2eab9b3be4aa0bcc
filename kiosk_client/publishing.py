"""How the kiosk publishes: resolution and bitrate as the server asks, without keyframe storms.

aiortc rebuilds its VP8 encoder — and so sends a keyframe — on every REMB that moves the
target by more than 10 %; PyAV cannot retarget libvpx in place. So REMB goes through a
governor here: a drop of a quarter or more (congestion) applies at once; a rise applies
only after a quiet spell; small wiggles never do. The server's `publish_quality` caps both
bitrate and picture height (a senior's tile needs far less than the host's main picture).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import aiortc.codecs.vpx as vpx
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci
from av import VideoFrame

# A tile at 240 lines looks fine at 150 kbps; aiortc's floor (250 kbps) is for 480 lines.
vpx.MIN_BITRATE = 100_000

SIGNIFICANT_CHANGE = 0.25
RAISE_AFTER_S = 10.0


class BitrateGovernor:
    def __init__(self, ceiling: int = vpx.MAX_BITRATE) -> None:
        self.ceiling = ceiling
        self.target = min(vpx.DEFAULT_BITRATE, ceiling)
        self._changed_at = 0.0

    def propose(self, estimate: int, now: float | None = None) -> int | None:
        """The new encoder target for a receiver estimate, or None to keep the current one."""
        now = time.monotonic() if now is None else now
        wanted = max(vpx.MIN_BITRATE, min(estimate, self.ceiling))
        change = (wanted - self.target) / self.target
        if change <= -SIGNIFICANT_CHANGE or (change >= SIGNIFICANT_CHANGE and now - self._changed_at >= RAISE_AFTER_S):
            self.target = wanted
            self._changed_at = now
            return wanted
        return None

    def cap(self, ceiling: int, now: float | None = None) -> int | None:
        self.ceiling = max(vpx.MIN_BITRATE, ceiling)
        if self.target > self.ceiling:
            self.target = self.ceiling
            self._changed_at = time.monotonic() if now is None else now
            return self.target
        return None


class ScaledVideoTrack(MediaStreamTrack):
    """The camera, scaled down to the height the server asks for (scaling off the loop)."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack, max_height: int | None = None) -> None:
        super().__init__()
        self.source = source
        self.max_height = max_height

    async def recv(self) -> VideoFrame:
        frame = await self.source.recv()
        limit = self.max_height
        if limit and frame.height > limit:
            width = max(2, round(frame.width * limit / frame.height / 2) * 2)
            scaled = await asyncio.get_running_loop().run_in_executor(
                None, lambda: frame.reformat(width=width, height=limit)
            )
            scaled.pts, scaled.time_base = frame.pts, frame.time_base or fractions.Fraction(1, 90000)
            return scaled
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


class PublishControl:
    """Applies the governor and the server's quality requests to a call's video sender."""

    def __init__(self, track: ScaledVideoTrack | None) -> None:
        self.track = track
        self.governor = BitrateGovernor()
        self._senders: list[RTCRtpSender] = []
        self._pending: asyncio.Task[None] | None = None

    def hook_sender(self, sender: RTCRtpSender) -> None:
        if sender.kind != "video" or sender in self._senders:
            return
        self._senders.append(sender)
        original = sender._handle_rtcp_packet

        async def handle(packet: Any) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:
                    return
                if sender._ssrc in ssrcs:
                    target = self.governor.propose(bitrate)
                    if target is not None:
                        self._apply()
                return
            await original(packet)

        sender._handle_rtcp_packet = handle  # type: ignore[method-assign]
        self._apply()

    def _apply(self) -> None:
        waiting = False
        for sender in self._senders:
            encoder = sender._RTCRtpSender__encoder  # type: ignore[attr-defined]
            if encoder is not None and hasattr(encoder, "target_bitrate"):
                encoder.target_bitrate = self.governor.target
            else:
                waiting = True
        if waiting and (self._pending is None or self._pending.done()):
            # aiortc creates the encoder with the first frame; set the target then.
            self._pending = asyncio.ensure_future(self._apply_later())

    async def _apply_later(self) -> None:
        for _ in range(40):
            await asyncio.sleep(0.25)
            if all(s._RTCRtpSender__encoder is not None for s in self._senders):  # type: ignore[attr-defined]
                self._apply()
                return

    def quality(self, video: dict[str, Any]) -> None:
        """The server's `publish_quality.video`: {max_bitrate_bps, max_height}."""
        if self.track is not None:
            self.track.max_height = video.get("max_height")
        ceiling = video.get("max_bitrate_bps")
        if isinstance(ceiling, int):
            self.governor.cap(ceiling)
            # Asked for more (spotlit): take it now; REMB lowers it again if the path is full.
            self.governor.target = self.governor.ceiling
            self._apply()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
