"""A test-side simulcast publisher: aiortc for ICE/DTLS/SRTP, our own RTP on one SSRC per layer.

aiortc cannot send simulcast, so this answers the server's offer with `a=simulcast:send`
and the rid extensions, keeps aiortc's own video sender idle, and sends each layer
(encoded live by aiortc's VP8 encoder at its own size) on its own SSRC carrying the
rtp-stream-id extension, straight into the DTLS transport. PLIs for a layer's SSRC reach
that layer's encoder (a stand-in sender registered in aiortc's RTCP router).
"""

from __future__ import annotations

import asyncio
import fractions
import random
from typing import Any

import av
import numpy
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    wrap_rtx,
)

from kiosk_client.simulcastsend import answer_with_simulcast
from server.rtc.simulcast import MID_URI, REPAIRED_RID_URI, RID_URI, SCALE_DOWN

from .conftest import WsClient

RID_ID, REPAIRED_RID_ID, MID_ID, ABS_SEND_TIME_ID = 4, 5, 1, 3
EXTENSION_IDS = {RID_URI: RID_ID, REPAIRED_RID_URI: REPAIRED_RID_ID}
FPS = 15


class _Idle(MediaStreamTrack):
    kind = "video"

    async def recv(self) -> Any:
        await asyncio.Event().wait()


class _Layer:
    def __init__(self, rid: str, width: int, height: int) -> None:
        self.rid = rid
        self.width, self.height = width, height
        self.ssrc = random.randrange(1, 1 << 32)
        self.rtx_ssrc = random.randrange(1, 1 << 32)
        self.rtx_sequence = 0
        # Sent packets by sequence number, for NACKs (the last few hundred).
        self.history: dict[int, RtpPacket] = {}
        self.nacked: list[int] = []
        self.rtx_sent = 0
        self.drop_next = False
        self.receiver_reports = 0
        self.repair: Any = None  # set by the publisher: sends one RTX packet
        self.encoder = Vp8Encoder()
        self.sequence = random.randrange(1 << 16)
        self.keyframe_wanted = True
        self.plis = 0
        self.packets = 0
        self.keyframes = 0

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            self.plis += 1
            self.keyframe_wanted = True
        elif isinstance(packet, RtcpRrPacket):
            self.receiver_reports += 1
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            for seq in packet.lost:
                self.nacked.append(seq)
                original = self.history.get(seq)
                if original is not None and self.repair is not None:
                    await self.repair(self, original)


class SimulcastPublisher:
    def __init__(self, ws: WsClient, rids: tuple[str, ...] = ("h", "m", "l"), width: int = 320, height: int = 240) -> None:
        self.ws = ws
        self.rids = rids
        self.layers = {rid: _Layer(rid, width // SCALE_DOWN[rid], height // SCALE_DOWN[rid]) for rid in rids}
        self.pc = RTCPeerConnection()
        self.paused: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._signalling: asyncio.Task[None] | None = None
        self.negotiated = asyncio.Event()

    async def start(self) -> None:
        await self.ws.send({"type": "publish", "audio": False, "video": True})
        self._signalling = asyncio.ensure_future(self._answer_offers())

    async def _answer_offers(self) -> None:
        while True:
            offer = await self.ws.expect("offer", timeout=3600)
            await self.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            mid = offer["publish"].get("video")
            for transceiver in self.pc.getTransceivers():
                if transceiver.mid == mid:
                    transceiver.direction = "sendonly"
                    if transceiver.sender.track is None:
                        transceiver.sender.replaceTrack(_Idle())
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
            sdp = answer_with_simulcast(self.pc.localDescription.sdp, mid, EXTENSION_IDS, self.rids)
            await self.ws.send({"type": "answer", "sdp": sdp, "negotiation_id": offer["negotiation_id"]})
            if self._task is None and mid is not None:
                self._task = asyncio.ensure_future(self._send_layers(mid))

    async def _send_layers(self, mid: str) -> None:
        transceiver = next(t for t in self.pc.getTransceivers() if t.mid == mid)
        dtls = transceiver.sender.transport
        while dtls.state != "connected":
            await asyncio.sleep(0.02)
        params = RTCRtpParameters(headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=MID_ID, uri=MID_URI),
            RTCRtpHeaderExtensionParameters(id=RID_ID, uri=RID_URI),
            RTCRtpHeaderExtensionParameters(id=ABS_SEND_TIME_ID, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
        ])
        params.headerExtensions.append(RTCRtpHeaderExtensionParameters(id=REPAIRED_RID_ID, uri=REPAIRED_RID_URI))
        extensions = HeaderExtensionsMap()
        extensions.configure(params)
        payload_type = next(c.payloadType for c in transceiver._codecs if c.mimeType.lower() == "video/vp8")
        rtx_payload_type = next(
            c.payloadType for c in transceiver._codecs
            if c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") == payload_type
        )

        async def repair(layer: _Layer, original: RtpPacket) -> None:
            # RTX on the layer's own RTX SSRC, named by repaired-rtp-stream-id (RFC 8852).
            rtx = wrap_rtx(original, payload_type=rtx_payload_type, sequence_number=layer.rtx_sequence, ssrc=layer.rtx_ssrc)
            rtx.extensions.repaired_rtp_stream_id = layer.rid
            layer.rtx_sequence = (layer.rtx_sequence + 1) & 0xFFFF
            layer.rtx_sent += 1
            await dtls._send_rtp(rtx.serialize(extensions))

        for layer in self.layers.values():
            layer.repair = repair
            dtls._rtp_router.register_sender(layer, layer.ssrc)
        loop = asyncio.get_running_loop()
        start = loop.time()
        frame_index = 0
        while True:
            frame_index += 1
            await asyncio.sleep(max(0.0, start + frame_index / FPS - loop.time()))
            for layer in self.layers.values():
                if layer.rid in self.paused:
                    continue
                frame = _frame(layer.width, layer.height, frame_index)
                payloads, timestamp = layer.encoder.encode(frame, force_keyframe=layer.keyframe_wanted)
                if layer.keyframe_wanted:
                    layer.keyframes += 1
                layer.keyframe_wanted = False
                for i, payload in enumerate(payloads):
                    packet = RtpPacket(
                        payload_type=payload_type, marker=int(i == len(payloads) - 1),
                        sequence_number=layer.sequence, timestamp=timestamp, ssrc=layer.ssrc, payload=payload,
                    )
                    packet.extensions.mid = mid
                    if layer.packets < 50:
                        packet.extensions.rtp_stream_id = layer.rid
                    packet.extensions.abs_send_time = (int(loop.time() * (1 << 18))) & 0xFFFFFF
                    layer.sequence = (layer.sequence + 1) & 0xFFFF
                    layer.packets += 1
                    layer.history[packet.sequence_number] = packet
                    layer.history.pop((packet.sequence_number - 512) & 0xFFFF, None)
                    if layer.drop_next:
                        layer.drop_next = False  # lost on the way: only a NACK brings it back
                        continue
                    try:
                        await dtls._send_rtp(packet.serialize(extensions))
                    except ConnectionError:
                        return

    async def close(self) -> None:
        for task in (self._task, self._signalling):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.pc.close()


def _frame(width: int, height: int, index: int) -> av.VideoFrame:
    # A moving gradient: every frame differs, so every frame costs bits.
    x = numpy.arange(width, dtype=numpy.uint16)[None, :]
    y = numpy.arange(height, dtype=numpy.uint16)[:, None]
    image = numpy.zeros((height, width, 3), dtype=numpy.uint8)
    image[..., 0] = ((x + index * 4) % 256).astype(numpy.uint8)
    image[..., 1] = ((y + index * 2) % 256).astype(numpy.uint8)
    image[..., 2] = ((x + y + index) % 256).astype(numpy.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts = index * (90000 // FPS)
    frame.time_base = fractions.Fraction(1, 90000)
    return frame
