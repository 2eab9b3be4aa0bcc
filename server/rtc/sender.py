"""Hooks into an aiortc sender that still encodes (the kiosk's publishing): which encoder it
uses, who hears the receivers' REMB, and the kiosk's simulcast `l` layer sent beside it on
the same DTLS transport (kiosk_client/simulcastsend.py). The SFU's senders, which only
forward, are server/rtc/rtphooks.py's `SenderFeed`. Pinned by tests/test_rtphooks_pin.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs.base import Encoder
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci


def use_encoder(sender: RTCRtpSender, make: Callable[[RTCRtpCodecParameters], Encoder]) -> None:
    """The sender encodes with `make(codec)` instead of aiortc's own encoder for `codec`.

    aiortc creates a sender's encoder with its first frame, in `_next_encoded_frame`
    (`get_encoder(codec)` when none is set); setting ours just before keeps aiortc's loop,
    including encoding in its executor. The negotiated codec decides.
    """
    next_encoded_frame = sender._next_encoded_frame

    async def with_our_encoder(codec: RTCRtpCodecParameters) -> Any:
        if sender._RTCRtpSender__encoder is None:  # type: ignore[attr-defined]
            sender._RTCRtpSender__encoder = make(codec)  # type: ignore[attr-defined]
        return await next_encoded_frame(codec)

    sender._next_encoded_frame = with_our_encoder  # type: ignore[method-assign]


def encoder_of(sender: RTCRtpSender) -> Encoder | None:
    """The sender's encoder; None until its first frame."""
    return sender._RTCRtpSender__encoder  # type: ignore[attr-defined, no-any-return]


def on_remb(sender: RTCRtpSender, heard: Callable[[int], None]) -> None:
    """`heard(bitrate)` for every REMB that covers the sender's SSRC; REMBs do not reach
    aiortc's own handler (whose encoder retargeting they would trigger), other RTCP does."""
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if sender._ssrc in ssrcs:
                heard(bitrate)
            return
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs negotiated on the transceiver (aiortc keeps them private)."""
    return transceiver._codecs  # type: ignore[no-any-return]


# -- a second sender beside aiortc's (the kiosk's simulcast `l` layer) ------------------------


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """The sender's media and RTX SSRCs."""
    return sender._ssrc, sender._rtx_ssrc


def rewrite_outgoing_rtp(dtls: RTCDtlsTransport, rewrite: Callable[[bytes], bytes]) -> None:
    """Every RTP packet the DTLS transport sends passes through `rewrite` first (RTCP does not)."""
    send_rtp = dtls._send_rtp

    async def rewritten(data: bytes) -> None:
        if len(data) >= 12 and not 192 <= data[1] <= 223:
            data = rewrite(data)
        await send_rtp(data)

    dtls._send_rtp = rewritten  # type: ignore[method-assign]


def route_rtcp_to(dtls: RTCDtlsTransport, ssrc: int, handler: Any) -> None:
    """aiortc's RTCP router hands `handler._handle_rtcp_packet` what names `ssrc` (PLI, NACK)."""
    dtls._rtp_router.register_sender(handler, ssrc)


async def send_rtp(dtls: RTCDtlsTransport, data: bytes) -> None:
    """Sends one ready-made RTP packet through the DTLS transport (SRTP, then ICE)."""
    await dtls._send_rtp(data)
