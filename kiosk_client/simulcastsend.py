"""The kiosk's second spatial layer: simulcast `h` (its picture) and `l` (¼ size) when the server offers it.

aiortc cannot send simulcast. When the server's offer asks for it (`a=simulcast:recv` on
the video m-line the kiosk publishes on), the kiosk answers `a=simulcast:send h;l` with the
rid header extensions (RFC 8851/8852/8853), keeps aiortc's own video sender for `h` (our
VP8 encoder, REMB, keyframe requests and RTX as before) and names its packets with the
rtp-stream-id extension as they leave, and runs a second encoder for `l` at a quarter of the
width and height, sent on its own SSRC straight into the DTLS transport, with its own RTX,
NACK history and keyframe requests (a stand-in registered in aiortc's RTCP router). The `l`
layer is what a subscriber on a thin line (a 250 kbit/s home link) can still take at full
frame rate; its encoder costs +42 % of the kiosk's encode CPU (BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    wrap_rtx,
)
from av import VideoFrame

from server.tasks import TaskOwner
from server.rtc.sender import rewrite_outgoing_rtp, route_rtcp_to, send_rtp, sender_ssrcs

from .vp8encoder import Vp8Encoder

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
RIDS = ("h", "l")
LOW_SCALE = 4
# What the ¼-size layer aims at: 160x120 (from 640x480) at 30 fps looks fine at this rate and
# leaves a 250 kbit/s line room for Opus.
LOW_BITRATE = 100_000
# Below this the picture is a tile already (the server asks seniors for 240 lines in a class):
# a quarter of it would be too small to show, so the low layer waits for a bigger picture.
MIN_HIGH_HEIGHT = 480
HISTORY = 512
# The rid goes on every packet: cheap (4 bytes), and a server that restarts never misses it.


def offered_extension_ids(offer_sdp: str, mid: str) -> dict[str, int] | None:
    """The offer's extension ids on video m-line `mid` if it asks for simulcast with rids h and l."""
    section: list[str] = []
    found: list[str] | None = None
    for line in offer_sdp.split("\r\n") + ["m="]:
        if line.startswith("m="):
            if section and section[0].startswith("m=video") and f"a=mid:{mid}" in section:
                found = section
            section = []
        section.append(line)
    if found is None:
        return None
    recv = [l for l in found if l.startswith("a=simulcast:recv ")]
    if not recv or not set(RIDS) <= set(recv[0].split(" ", 1)[1].replace(",", ";").split(";")):
        return None
    ids: dict[str, int] = {}
    for line in found:
        if line.startswith("a=extmap:") and " " in line:
            head, uri = line[len("a=extmap:"):].split(" ", 1)
            ids[uri.strip()] = int(head.split("/")[0])
    if not {MID_URI, RID_URI, REPAIRED_RID_URI} <= set(ids):
        return None
    return ids


def answer_with_simulcast(answer_sdp: str, mid: str, ids: dict[str, int], rids: Sequence[str] = RIDS) -> str:
    """The answer's video m-line `mid` sending `rids` (the kiosk's: h and l), named by the
    offer's extension ids."""
    out: list[str] = []
    in_section = False
    for line in answer_sdp.split("\r\n"):
        if line.startswith("m="):
            in_section = False
        if line == f"a=mid:{mid}":
            in_section = True
            out.append(line)
            out += [f"a=extmap:{ids[RID_URI]} {RID_URI}", f"a=extmap:{ids[REPAIRED_RID_URI]} {REPAIRED_RID_URI}"]
            out += [f"a=rid:{rid} send" for rid in rids] + [f"a=simulcast:send {';'.join(rids)}"]
            continue
        if in_section and line.startswith("a=extmap:") and (RID_URI in line or REPAIRED_RID_URI in line):
            continue
        if in_section and line.startswith("a=ssrc"):
            continue  # layers by rid, no SSRCs signalled (as browsers do)
        out.append(line)
    return "\r\n".join(out)


class LowLayer:
    """The `l` layer: its encoder, SSRCs, history, and the RTCP that reaches it."""

    def __init__(self, sender: RTCRtpSender, mid: str, ids: dict[str, int], codecs: list[Any]) -> None:
        self.sender = sender
        vp8 = next(c.payloadType for c in codecs if c.mimeType.lower() == "video/vp8")
        self.payload_type = vp8
        self.rtx_payload_type = next(
            (c.payloadType for c in codecs if c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") == vp8), None
        )
        self.mid = mid
        self.ssrc = random.randrange(1, 1 << 32)
        self.rtx_ssrc = random.randrange(1, 1 << 32)
        self.encoder = Vp8Encoder(LOW_BITRATE)
        self.keyframe_wanted = True
        self.sent = 0
        self.plis = 0
        self.retransmits = 0
        self._sequence = random.randrange(1 << 16)
        self._rtx_sequence = random.randrange(1 << 16)
        self._timestamp_origin = random.randrange(1 << 32)
        self._history: dict[int, RtpPacket] = {}
        self._frames: asyncio.Queue[VideoFrame] = asyncio.Queue(maxsize=1)
        self._tasks = TaskOwner("kiosk-low-layer")
        self._task: asyncio.Task[None] | None = None
        self._extensions = HeaderExtensionsMap()
        params = RTCRtpParameters(headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=ids[MID_URI], uri=MID_URI),
            RTCRtpHeaderExtensionParameters(id=ids[RID_URI], uri=RID_URI),
            RTCRtpHeaderExtensionParameters(id=ids[REPAIRED_RID_URI], uri=REPAIRED_RID_URI),
        ])
        if ABS_SEND_TIME_URI in ids:
            params.headerExtensions.append(RTCRtpHeaderExtensionParameters(id=ids[ABS_SEND_TIME_URI], uri=ABS_SEND_TIME_URI))
        self._extensions.configure(params)
        self._named = False

    # -- the h layer's packets get their rid on the way out --------------------------------

    def name_high_layer(self) -> None:
        """Wraps the DTLS transport's RTP send: the `h` sender's packets (and its RTX) get their rid."""
        dtls = self.sender.transport
        if self._named or dtls is None:
            return
        self._named = True
        extensions = self._extensions
        media_ssrc, rtx_ssrc = sender_ssrcs(self.sender)

        def named(data: bytes) -> bytes:
            ssrc = int.from_bytes(data[8:12], "big")
            if ssrc in (media_ssrc, rtx_ssrc):
                packet = RtpPacket.parse(data, extensions)
                if ssrc == media_ssrc:
                    packet.extensions.rtp_stream_id = "h"
                else:
                    packet.extensions.repaired_rtp_stream_id = "h"
                data = packet.serialize(extensions)
            return data

        rewrite_outgoing_rtp(dtls, named)

    # -- the l layer -----------------------------------------------------------------------

    def offer_frame(self, frame: VideoFrame) -> None:
        """A camera frame as the `h` sender takes it; the newest waiting one wins.

        Scaled here, on the event loop (≈ 1 ms at 640x480): the `h` encoder reads the same
        frame in an executor thread meanwhile, and two threads working on one PyAV frame
        crashed the process."""
        if self._task is None or self._task.done() or frame.height < MIN_HIGH_HEIGHT:
            return
        width = max(2, frame.width // LOW_SCALE // 2 * 2)
        height = max(2, frame.height // LOW_SCALE // 2 * 2)
        small = frame.reformat(width=width, height=height, format="yuv420p")
        small.pts, small.time_base = frame.pts, frame.time_base
        if self._frames.full():
            self._frames.get_nowait()
        self._frames.put_nowait(small)

    def start(self) -> None:
        if self._task is None:
            self._task = self._tasks.spawn(self._run(), name="kiosk-low-layer")

    def stop(self) -> None:
        self._tasks.cancel()
        self.encoder.close()

    async def _run(self) -> None:
        dtls = self.sender.transport
        while dtls.state != "connected":
            if dtls.state in ("closed", "failed"):
                return
            await asyncio.sleep(0.02)
        route_rtcp_to(dtls, self.ssrc, self)
        loop = asyncio.get_running_loop()
        while True:
            frame = await self._frames.get()
            force = self.keyframe_wanted
            self.keyframe_wanted = False
            payloads, timestamp = await loop.run_in_executor(None, self.encoder.encode, frame, force)
            for i, payload in enumerate(payloads):
                packet = RtpPacket(
                    payload_type=self.payload_type, marker=int(i == len(payloads) - 1),
                    sequence_number=self._sequence, timestamp=(self._timestamp_origin + timestamp) & 0xFFFFFFFF,
                    ssrc=self.ssrc, payload=payload,
                )
                packet.extensions.mid = self.mid
                packet.extensions.rtp_stream_id = "l"
                packet.extensions.abs_send_time = int(loop.time() * (1 << 18)) & 0xFFFFFF
                self._sequence = (self._sequence + 1) & 0xFFFF
                self._history[packet.sequence_number % HISTORY] = packet
                try:
                    await send_rtp(dtls, packet.serialize(self._extensions))
                except ConnectionError:
                    return
                self.sent += 1

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        """aiortc's RTCP router hands us what names our SSRC: PLI and NACK."""
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            self.plis += 1
            self.keyframe_wanted = True
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            for seq in packet.lost:
                await self._retransmit(seq)

    async def _retransmit(self, seq: int) -> None:
        original = self._history.get(seq % HISTORY)
        if original is None or original.sequence_number != seq or self.rtx_payload_type is None:
            return
        rtx = wrap_rtx(original, payload_type=self.rtx_payload_type, sequence_number=self._rtx_sequence, ssrc=self.rtx_ssrc)
        rtx.extensions.repaired_rtp_stream_id = "l"
        rtx.extensions.mid = self.mid
        self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
        self.retransmits += 1
        try:
            await send_rtp(self.sender.transport, rtx.serialize(self._extensions))
        except ConnectionError:
            pass
