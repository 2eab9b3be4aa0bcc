"""Fails loudly when the aiortc internals that server/rtc relies on move: the one pin test of
the SFU's hooks (server/rtc/rtphooks.py) and the receiver takeover they share with the kiosk
(server/rtc/receiver.py, kiosk_client/rtpreceiver.py)."""

from __future__ import annotations

import asyncio
import inspect
from asyncio.selector_events import _SelectorDatagramTransport

import aioice.ice
import pylibsrtp
import pylibsrtp._binding
import aiortc
from aioice.ice import CandidatePair, StunProtocol
from aioice.turn import TurnTransport
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver

from server import _srtpsend
from server.rtc.pin import AIORTC_VERSION, check_aiortc_version, missing_internals
from server.rtc.rtphooks import ReceiverTap, SenderFeed


def test_aiortc_version_is_the_one_the_hooks_were_written_for() -> None:
    assert aiortc.__version__ == AIORTC_VERSION
    check_aiortc_version()


async def test_the_receiver_takeover_finds_aiortc_internals_where_it_expects_them() -> None:
    """If this fails, aiortc moved something server/rtc/receiver.py reaches into: re-read
    RTCRtpReceiver and RTCPeerConnection before touching the pin."""
    assert await missing_internals() == []


async def test_private_attributes_and_methods_exist() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        sender = pc.addTransceiver("video", direction="sendonly").sender
        for name in (
            "_RTCRtpReceiver__remote_streams",
            "_RTCRtpReceiver__remote_bitrate_estimator",
            "_RTCRtpReceiver__rtcp_ssrc",
            "_RTCRtpReceiver__rtcp_task",
            "_RTCRtpReceiver__started",
            "_RTCRtpReceiver__decoder_thread",
        ):
            assert hasattr(receiver, name), name
        for name in ("_run_rtcp", "_send_rtcp", "_send_rtcp_nack", "_send_rtcp_pli", "_handle_rtp_packet", "receive", "stop"):
            assert callable(getattr(RTCRtpReceiver, name)), name
        for name in (
            "_RTCRtpSender__ntp_timestamp",
            "_RTCRtpSender__rtp_timestamp",
            "_RTCRtpSender__octet_count",
            "_RTCRtpSender__packet_count",
            "_RTCRtpSender__transport",
            "_RTCRtpSender__encoder",
            "_ssrc",
            "_rtx_ssrc",
        ):
            assert hasattr(sender, name), name
        for name in ("_send_keyframe", "_retransmit", "_handle_rtcp_packet", "_next_encoded_frame", "send", "stop"):
            assert callable(getattr(RTCRtpSender, name)), name
        assert hasattr(receiver.transport, "_register_rtp_receiver")
        assert hasattr(receiver.transport, "_send_rtp")
        # server/rtc/sender.py's route_rtcp_to: a registered stand-in gets its SSRC's RTCP.
        assert callable(receiver.transport._rtp_router.register_sender)
        assert "await recipient._handle_rtcp_packet(packet)" in inspect.getsource(RTCDtlsTransport._handle_rtcp_data)

        # DirectWire (the forwarding path straight to the socket) reads these.
        dtls = sender.transport
        for name in ("_state", "_tx_srtp", "_RTCDtlsTransport__tx_bytes", "_RTCDtlsTransport__tx_packets"):
            assert hasattr(dtls, name), name
        assert DtlsState.CONNECTED.name == "CONNECTED"
        assert isinstance(dtls.transport._connection._nominated, dict)
        assert isinstance(CandidatePair.remote_addr, property)
        assert "transport" in StunProtocol.__annotations__
        assert callable(TurnTransport.sendto)
        source = inspect.getsource(aioice.ice.Connection.sendto)
        assert "self._nominated.get(component)" in source and "send_data(data, active_pair.remote_addr)" in source
        assert "self.transport.sendto(data, addr)" in inspect.getsource(StunProtocol.send_data)
        assert "self._tx_srtp.protect(data)" in inspect.getsource(RTCDtlsTransport._send_rtp)
        assert sender._RTCRtpSender__transport is sender.transport  # type: ignore[attr-defined]

        # server/_srtpsend.c calls libsrtp 2's srtp_protect on the session pylibsrtp wraps,
        # with pylibsrtp's buffer and trailer limits.
        assert pylibsrtp.__version__ == "1.0.0"
        assert pylibsrtp._binding.ffi.getctype(pylibsrtp._binding.ffi.typeof(pylibsrtp._binding.lib.srtp_protect)) == (
            "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
        )
        assert pylibsrtp._binding.ffi.sizeof("srtp_err_status_t") == 4
        protect = inspect.getsource(pylibsrtp.Session.protect)
        assert "lib.srtp_protect, SRTP_MAX_TRAILER_LEN" in protect
        process = inspect.getsource(pylibsrtp.Session._Session__process)  # type: ignore[attr-defined]
        assert "func(self._srtp[0], self._cdata, len_p)" in process
        assert 'ffi.new("char[]", 1500)' in inspect.getsource(pylibsrtp.Session.__init__)
        assert _srtpsend.SRTP_MAX_TRAILER_BYTES == pylibsrtp.SRTP_MAX_TRAILER_LEN
        assert _srtpsend.MAX_PLAIN_BYTES == 1500 - pylibsrtp.SRTP_MAX_TRAILER_LEN
        assert callable(pylibsrtp._srtp_assert)
        # The socket DirectWire writes to is the asyncio transport's, and it checks _closing.
        assert "self._closing = True" in inspect.getsource(asyncio.selector_events._SelectorTransport.close)

        # drain_ice_sockets re-registers asyncio's datagram reader with a bounded loop.
        read_ready = inspect.getsource(_SelectorDatagramTransport._read_ready)
        assert "self._sock.recvfrom(self.max_size)" in read_ready
        assert "self._protocol.datagram_received(data, addr)" in read_ready
        assert "self._sock_fd, self._read_ready" in inspect.getsource(_SelectorDatagramTransport.__init__)
        loop = asyncio.get_running_loop()
        assert callable(loop._add_reader) and callable(loop._remove_reader)  # type: ignore[attr-defined]
        assert isinstance(dtls.transport._connection._protocols, list)

        # The hooks install as instance attributes that aiortc then calls.
        tap = ReceiverTap(receiver, "video")
        feed = SenderFeed(sender, "video")
        assert receiver._handle_rtp_packet == tap._handle_rtp_packet
        assert sender._retransmit == feed._retransmit
        # The round trip per receiver report is read from the sender's last SR.
        assert hasattr(sender, "_RTCRtpSender__lsr") and hasattr(sender, "_RTCRtpSender__lsr_time")
    finally:
        await pc.close()


def test_aiortcs_sender_still_creates_its_encoder_where_the_kiosk_hooks_in() -> None:
    # server/rtc/sender.py's use_encoder sets `__encoder` before aiortc's
    # `_next_encoded_frame` would create one, and relies on aiortc encoding in an executor.
    assert aiortc.__version__ == AIORTC_VERSION
    next_frame = inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "if self.__encoder is None:\n            self.__encoder = get_encoder(codec)" in next_frame
    assert "run_in_executor(\n                None, self.__encoder.encode, data, force_keyframe" in next_frame
    assert "payloads, timestamp = self.__encoder.pack(data)" in next_frame
    assert "await self._next_encoded_frame(codec)" in inspect.getsource(RTCRtpSender._run_rtp)
    assert list(inspect.signature(RTCRtpSender._next_encoded_frame).parameters) == ["self", "codec"]
    assert "self.__encoder: Optional[Encoder] = None" in inspect.getsource(RTCRtpSender.__init__)


    # server/rtc/sender.py's negotiated_codecs (the encoder and REMB hooks' attributes are
    # pinned with the other sender internals above).
    assert "self._codecs" in inspect.getsource(RTCRtpTransceiver.__init__)



def test_aiortc_parses_the_simulcast_layer_extensions() -> None:
    """ReceiverTap names each simulcast SSRC's layer from aiortc's parsed rid extensions."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket

    from server.rtc.simulcast import REPAIRED_RID_EXTENSION_ID, REPAIRED_RID_URI, RID_EXTENSION_ID, RID_URI

    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=RID_EXTENSION_ID, uri=RID_URI),
        RTCRtpHeaderExtensionParameters(id=REPAIRED_RID_EXTENSION_ID, uri=REPAIRED_RID_URI),
    ]))
    packet = RtpPacket(payload_type=96, sequence_number=1, timestamp=2, ssrc=3, payload=b"\x90")
    packet.extensions.rtp_stream_id = "h"
    packet.extensions.repaired_rtp_stream_id = "m"
    parsed = RtpPacket.parse(packet.serialize(extensions), extensions)
    assert (parsed.extensions.rtp_stream_id, parsed.extensions.repaired_rtp_stream_id) == ("h", "m")
