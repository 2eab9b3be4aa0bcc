"""The one takeover of an aiortc receiver, shared by the SFU's `ReceiverTap`
(server/rtc/rtphooks.py) and the kiosk's `TunedReceiver` (kiosk_client/rtpreceiver.py).

aiortc 1.16 has no API for handling a receiver's RTP oneself. `ReceiverTakeover` slides in
before the receiver starts by shadowing the methods aiortc's peer connection and DTLS
transport call (instance attributes, no subclassing), and keeps what aiortc still does for
the receiver working: RTCP (receiver reports read the statistics kept here, NACK, PLI and
REMB go out through aiortc's own code), RTX unwrapping and the end of the track. Subclasses
decide what happens to each packet; they never touch the receiver's private state
themselves. The internals read here are pinned by `server/rtc/pin.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, clock
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RTCP_PSFB_APP, AnyRtcpPacket, RtcpByePacket, RtcpPsfbPacket, RtpPacket, pack_remb_fci, unwrap_rtx

from .pin import check_aiortc_version


class ReceiverTakeover:
    """Takes over one `RTCRtpReceiver` before `receive()` starts it; subclasses override
    `_handle_rtp_packet` (every SRTP-decrypted packet) and the hooks below."""

    def __init__(self, receiver: RTCRtpReceiver, kind: str) -> None:
        self.receiver = receiver
        self.kind = kind
        self.codecs: dict[int, RTCRtpCodecParameters] = {}
        self.media_ssrc: int | None = None
        # RTX SSRC -> the media SSRC it repairs.
        self._rtx_ssrc: dict[int, int] = {}
        self._started = False
        self._stopped = False
        # aiortc's methods, still called after ours.
        self._aiortc_stop = receiver.stop
        self._aiortc_handle_rtcp = receiver._handle_rtcp_packet
        self._aiortc_handle_disconnect = receiver._handle_disconnect
        # aiortc's RTCP senders, bound once: `_remb`'s packets go out through the first.
        self._send_rtcp = receiver._send_rtcp
        self._send_rtcp_nack = receiver._send_rtcp_nack
        # Instance attributes shadow the methods aiortc's peer connection and DTLS
        # transport call, which is how the takeover slides in without subclassing.
        receiver.receive = self._receive  # type: ignore[method-assign]
        receiver.stop = self._stop  # type: ignore[method-assign]
        receiver._handle_rtp_packet = self._handle_rtp_packet  # type: ignore[method-assign]
        receiver._handle_rtcp_packet = self._handle_rtcp_packet  # type: ignore[method-assign]
        receiver._handle_disconnect = self._handle_disconnect  # type: ignore[method-assign]

    # -- hooks for subclasses --------------------------------------------------------------

    def _starting(self, parameters: RTCRtpReceiveParameters) -> None:
        """Just before the receiver registers with its transport (codecs and RTX known)."""

    def _stopping(self) -> None:
        """`stop()` was called: the receiver ends on our side."""

    def _peer_ended(self) -> None:
        """The sender said BYE, or the transport went away (the receiver is not stopped)."""

    def _remb_limit(self) -> int | None:
        """A ceiling on the REMB sent to the sender (None: the estimate as it is)."""
        return None

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------

    async def _receive(self, parameters: RTCRtpReceiveParameters) -> None:
        # aiortc's connect task can reach a receiver after close() stopped it; starting
        # it then would leave its RTCP task running for good.
        if self._started or self._stopped:
            return
        r = self.receiver
        for codec in parameters.codecs:
            if codec.payloadType is not None:
                self.codecs[codec.payloadType] = codec
        for encoding in parameters.encodings:
            if encoding.rtx:
                self._rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
        self._starting(parameters)
        r.transport._register_rtp_receiver(r, parameters)
        r._RTCRtpReceiver__rtcp_task = asyncio.ensure_future(r._run_rtcp())  # type: ignore[attr-defined]
        r._RTCRtpReceiver__started = True  # type: ignore[attr-defined]
        self._started = True

    async def _stop(self) -> None:
        self._stopped = True
        self._stopping()
        await self._aiortc_stop()

    def _handle_disconnect(self) -> None:
        self._peer_ended()
        self._aiortc_handle_disconnect()

    async def _handle_rtcp_packet(self, packet: AnyRtcpPacket) -> None:
        await self._aiortc_handle_rtcp(packet)
        if isinstance(packet, RtcpByePacket):
            self._peer_ended()

    # -- what aiortc's own receive path did -------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False once the transceiver no longer receives (aiortc's `_enabled`)."""
        return self.receiver._enabled

    def _mark_active(self, ssrc: int) -> None:
        """For getSynchronizationSources(), as aiortc's own path does per packet."""
        self.receiver._RTCRtpReceiver__active_ssrc[ssrc] = clock.current_datetime()  # type: ignore[attr-defined]

    def _remb(self, packet: RtpPacket, arrival_time_ms: int) -> RtcpPsfbPacket | None:
        """Feeds aiortc's bandwidth estimator (video); the REMB to send now (through
        `_send_rtcp`), under `_remb_limit`, or None. Not a coroutine: it runs per packet."""
        if packet.extensions.abs_send_time is None:
            return None
        r = self.receiver
        estimator = r._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
        if estimator is None:
            return None
        remb = estimator.add(
            abs_send_time=packet.extensions.abs_send_time,
            arrival_time_ms=arrival_time_ms,
            payload_size=len(packet.payload) + packet.padding_size,
            ssrc=packet.ssrc,
        )
        rtcp_ssrc = r._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
        if remb is None or rtcp_ssrc is None:
            return None
        bitrate, ssrcs = remb
        limit = self._remb_limit()
        if limit is not None:
            bitrate = min(bitrate, limit)
        return RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, ssrcs))

    def _count_and_unwrap(self, packet: RtpPacket, codec: RTCRtpCodecParameters, retransmission: bool) -> RtpPacket | None:
        """Counts the packet in aiortc's receiver statistics (its receiver reports and
        getStats() read them); an RTX packet comes back as the media packet it carries, or
        None when its media SSRC or payload type is unknown (or it is RTX padding)."""
        streams = self.receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stats.add(packet)
        if not retransmission:
            return packet
        original_ssrc = self._rtx_ssrc.get(packet.ssrc)
        if original_ssrc is None:
            original_ssrc = self._learn_rtx(packet)
        apt = codec.parameters.get("apt")
        if original_ssrc is None or len(packet.payload) < 2 or apt not in self.codecs:
            return None
        return unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)

    def _learn_rtx(self, packet: RtpPacket) -> int | None:
        """The media SSRC of an RTX SSRC nobody signalled (None: unknown)."""
        return None

    async def _request_keyframe(self, ssrc: int) -> None:
        """A PLI for `ssrc`, through aiortc's RTCP path."""
        await self.receiver._send_rtcp_pli(ssrc)

    def _track_queue(self) -> asyncio.Queue[Any] | None:
        """The receiver's track's frame queue, which `RemoteStreamTrack.recv` reads."""
        track = self.receiver.track
        return None if track is None else track._queue  # type: ignore[attr-defined]


def take_over_receivers(pc: RTCPeerConnection, take_over: Callable[[RTCRtpReceiver, str], Any]) -> None:
    """Calls `take_over(receiver, kind)` for every receiver `pc` has or will have, before it
    starts. Call it right after creating `pc`.

    aiortc creates transceivers in `addTrack`, `addTransceiver` and `setRemoteDescription`,
    all through the private `__createTransceiver`; receivers start later, in `__connect`.
    Wrapping the factory therefore reaches each receiver before its `receive()`.
    """
    check_aiortc_version()
    for transceiver in pc.getTransceivers():
        take_over(transceiver.receiver, transceiver.kind)
    create = pc._RTCPeerConnection__createTransceiver  # type: ignore[attr-defined]

    def create_taken_over(*args: Any, **kwargs: Any) -> Any:
        transceiver = create(*args, **kwargs)
        take_over(transceiver.receiver, transceiver.kind)
        return transceiver

    pc._RTCPeerConnection__createTransceiver = create_taken_over  # type: ignore[attr-defined]


def receiver_started(receiver: RTCRtpReceiver) -> bool:
    return bool(receiver._RTCRtpReceiver__started)  # type: ignore[attr-defined]
