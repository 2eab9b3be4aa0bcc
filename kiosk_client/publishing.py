"""How the kiosk publishes: resolution and bitrate as the server asks, without keyframe storms.

aiortc's own VP8 encoder rebuilds itself — and so sends a keyframe — on every REMB that
moves the target by more than 10 % (PyAV cannot retarget an open libvpx encoder). The
kiosk's video senders therefore get `kiosk_client.vp8encoder.Vp8Encoder`, which retargets
libvpx in place: a bitrate change costs no keyframe, so REMB is followed closely, in both
directions, as soon as it arrives. Only estimates within a small deadband of the current
target are ignored, so report-to-report wiggles do not reconfigure the encoder on every
RTCP packet. The server's `publish_quality` caps both bitrate and picture height (a
senior's tile needs far less than the host's main picture).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import Callable
from typing import Any

import aiortc.codecs.vpx as vpx
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av import VideoFrame

from server.rtc.sender import encoder_of, negotiated_codecs, on_remb, use_encoder

from .libvpx import LibvpxError
from .opus import SPEECH_BITRATE_BPS, OfferedRateOpusEncoder, OpusOffer
from .simulcastsend import LowLayer, answer_with_simulcast, offered_extension_ids
from .vp8encoder import Vp8Encoder

# A tile at 240 lines looks fine at 150 kbps; aiortc's floor (250 kbps) is for 480 lines.
vpx.MIN_BITRATE = 100_000

# An estimate within 5 % of the current target is noise between reports, not news.
DEADBAND = 0.05

logger = logging.getLogger(__name__)


class BitrateGovernor:
    """The encoder target: the receivers' estimate (REMB) within a deadband, under the server's ceiling."""

    def __init__(self, ceiling: int = vpx.MAX_BITRATE) -> None:
        self.ceiling = ceiling
        self.target = min(vpx.DEFAULT_BITRATE, ceiling)

    def propose(self, estimate: int) -> int | None:
        """The new encoder target for a receiver estimate, or None to keep the current one."""
        wanted = max(vpx.MIN_BITRATE, min(estimate, self.ceiling))
        if abs(wanted - self.target) <= DEADBAND * self.target:
            return None
        self.target = wanted
        return wanted

    def cap(self, ceiling: int) -> int | None:
        self.ceiling = max(vpx.MIN_BITRATE, ceiling)
        if self.target > self.ceiling:
            self.target = self.ceiling
            return self.target
        return None


class ScaledVideoTrack(MediaStreamTrack):
    """The camera, scaled down to the height the server asks for (scaling off the loop)."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack, max_height: int | None = None) -> None:
        super().__init__()
        self.source = source
        self.max_height = max_height
        # Sees every frame sent (the simulcast low layer encodes the same pictures).
        self.on_frame: Callable[[VideoFrame], None] | None = None

    async def recv(self) -> VideoFrame:
        frame = await self.source.recv()
        limit = self.max_height
        if limit and frame.height > limit:
            width = max(2, round(frame.width * limit / frame.height / 2) * 2)
            scaled = await asyncio.get_running_loop().run_in_executor(
                None, lambda: frame.reformat(width=width, height=limit)
            )
            scaled.pts, scaled.time_base = frame.pts, frame.time_base or fractions.Fraction(1, 90000)
            frame = scaled
        if self.on_frame is not None:
            self.on_frame(frame)
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


class PublishControl:
    """Gives a call's video senders our VP8 encoder, and applies the governor and the server's quality requests."""

    def __init__(self, track: ScaledVideoTrack | None) -> None:
        self.track = track
        self.governor = BitrateGovernor()
        self._senders: list[RTCRtpSender] = []
        self._audio_senders: list[RTCRtpSender] = []
        self._opus_bitrate_bps = SPEECH_BITRATE_BPS
        self.low_layer: LowLayer | None = None

    def hook_sender(self, sender: RTCRtpSender, opus: OpusOffer | None = None) -> None:
        """Our encoders for a sender: VP8 retargeted in place; Opus with in-band FEC when the
        server's offer says the listeners decode it, at the bitrate each offer asks for (a
        voice's, or music's: `opus.opus_offer`)."""
        if sender.kind == "audio" and opus is not None and opus.fec:
            self._opus_bitrate_bps = opus.bitrate_bps
            encoder = encoder_of(sender)
            if isinstance(encoder, OfferedRateOpusEncoder):
                encoder.bitrate_bps = opus.bitrate_bps
        if sender in self._senders or sender in self._audio_senders:
            return
        if sender.kind == "audio":
            if opus is not None and opus.fec:
                self._audio_senders.append(sender)
                use_encoder(sender, self._new_encoder)
            return
        self._senders.append(sender)
        use_encoder(sender, self._new_encoder)
        on_remb(sender, self._remb_heard)

    def _new_encoder(self, codec: RTCRtpCodecParameters) -> Encoder:
        encoder: Encoder | None = None
        if codec.mimeType.lower() == "audio/opus":
            return OfferedRateOpusEncoder(self._opus_bitrate_bps)
        if codec.mimeType.lower() == "video/vp8":
            try:
                encoder = Vp8Encoder()
            except LibvpxError:
                # A PyAV built against another libvpx: video with keyframes per change
                # beats no video at all.
                logger.warning("kiosk VP8 encoder unavailable; using aiortc's", exc_info=True)
        if encoder is None:
            encoder = get_encoder(codec)
        if hasattr(encoder, "target_bitrate"):
            encoder.target_bitrate = self.governor.target
        return encoder

    def _remb_heard(self, bitrate: int) -> None:
        if self.governor.propose(bitrate) is not None:
            self._apply()

    def _apply(self) -> None:
        # A sender without an encoder yet gets the target when its encoder is made.
        for sender in self._senders:
            encoder = encoder_of(sender)
            if encoder is not None and hasattr(encoder, "target_bitrate"):
                encoder.target_bitrate = self.governor.target

    def simulcast_answer(self, offer_sdp: str, answer_sdp: str, transceiver: Any) -> str:
        """The answer, sending simulcast h and l when the offer asks for it on our video m-line."""
        ids = offered_extension_ids(offer_sdp, transceiver.mid) if transceiver.mid else None
        if ids is None or self.track is None:
            return answer_sdp
        if self.low_layer is not None and self.low_layer.sender is not transceiver.sender:
            # A new peer connection (the room reconnected): the old layer's transport is gone.
            self.low_layer.stop()
            self.low_layer = None
        if self.low_layer is None:
            self.low_layer = LowLayer(transceiver.sender, transceiver.mid, ids, negotiated_codecs(transceiver))
            self.low_layer.name_high_layer()
            self.track.on_frame = self.low_layer.offer_frame
            self.low_layer.start()
        return answer_with_simulcast(answer_sdp, transceiver.mid, ids)

    def close(self) -> None:
        if self.low_layer is not None:
            self.low_layer.stop()
            if self.track is not None:
                self.track.on_frame = None

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
