"""The aiortc version server/rtc was written against, and where its internals must be.

Every hook in server/rtc reaches into aiortc 1.16.0 (pinned in pyproject.toml): the SFU at
start-up (`server/app.py`) and a kiosk peer connection (`take_over_receivers`) refuse another
version; `tests/test_rtphooks_pin.py` fails loudly when an internal moves (`missing_internals`
lists the receiver's, the test adds the sender's, aioice's and pylibsrtp's).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import aiortc
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RemoteStreamTrack

AIORTC_VERSION = "1.16.0"


def check_aiortc_version() -> None:
    if aiortc.__version__ != AIORTC_VERSION:
        raise RuntimeError(
            f"server/rtc was written for aiortc {AIORTC_VERSION}, "
            f"found {aiortc.__version__}; re-check the hooks before upgrading"
        )


_RECEIVER_METHODS = (
    "receive",
    "stop",
    "_handle_rtp_packet",
    "_handle_rtcp_packet",
    "_handle_disconnect",
    "_run_rtcp",
    "_send_rtcp",
    "_send_rtcp_nack",
    "_send_rtcp_pli",
)
_RECEIVER_STATE = (
    "_enabled",
    "_track",
    "_RTCRtpReceiver__started",
    "_RTCRtpReceiver__rtcp_task",
    "_RTCRtpReceiver__rtcp_ssrc",
    "_RTCRtpReceiver__active_ssrc",
    "_RTCRtpReceiver__remote_streams",
    "_RTCRtpReceiver__remote_bitrate_estimator",
)
# Source lines whose behaviour the receiver takeover relies on or mirrors.
_SOURCE_MARKERS: tuple[tuple[Callable[..., Any], str], ...] = (
    (RTCPeerConnection.setRemoteDescription, "self.__createTransceiver("),
    (RTCPeerConnection.addTransceiver, "self.__createTransceiver("),
    (RTCPeerConnection._RTCPeerConnection__connect, "await transceiver.receiver.receive("),  # type: ignore[attr-defined]
    (RTCDtlsTransport._handle_rtp_data, "receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)"),
    (RTCRtpReceiver.receive, "self.__rtcp_task = asyncio.ensure_future(self._run_rtcp())"),
    (RTCRtpReceiver.stop, "self.__rtcp_task.cancel()"),
    (RTCRtpReceiver._run_rtcp, "self.__remote_streams.items()"),
    (RTCRtpReceiver._handle_rtp_packet, "self.__remote_bitrate_estimator.add("),
    (RTCRtpReceiver._send_rtcp_nack, "packet.lost = lost"),
)


async def missing_internals() -> list[str]:
    """Every aiortc internal the receiver takeover relies on that is not where it was in 1.16.0."""
    problems: list[str] = []
    if aiortc.__version__ != AIORTC_VERSION:
        problems.append(f"aiortc version {aiortc.__version__} != {AIORTC_VERSION}")
    if not hasattr(RTCPeerConnection, "_RTCPeerConnection__createTransceiver"):
        problems.append("RTCPeerConnection.__createTransceiver")
    for name in _RECEIVER_METHODS:
        if not callable(getattr(RTCRtpReceiver, name, None)):
            problems.append(f"RTCRtpReceiver.{name}")
    if list(inspect.signature(RTCRtpReceiver._handle_rtp_packet).parameters) != ["self", "packet", "arrival_time_ms"]:
        problems.append("RTCRtpReceiver._handle_rtp_packet(packet, arrival_time_ms) signature")
    for function, marker in _SOURCE_MARKERS:
        if marker not in inspect.getsource(function):
            problems.append(f"{function.__qualname__} no longer contains {marker!r}")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        receiver = pc.addTransceiver("video").receiver
        for name in _RECEIVER_STATE:
            if not hasattr(receiver, name):
                problems.append(f"RTCRtpReceiver instance attribute {name}")
    finally:
        await pc.close()
    if not isinstance(getattr(RemoteStreamTrack(kind="video"), "_queue", None), asyncio.Queue):
        problems.append("RemoteStreamTrack._queue is no longer an asyncio.Queue")
    return problems
