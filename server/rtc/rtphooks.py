"""The SFU's hooks into aiortc (server/rtc is the only code that reaches into its internals).

aiortc has no API for encoded media on the receive side and none for sending RTP that
was packetized elsewhere. An SFU needs both: it must forward the publisher's packets
untouched, without decoding. These hooks were written against aiortc 1.16.0 (the version
pinned in pyproject.toml and checked by server/rtc/pin.py); `tests/test_rtphooks_pin.py`
fails loudly if the internals they touch move.

- `ReceiverTap` takes over an `RTCRtpReceiver` before it starts (server/rtc/receiver.py's
  `ReceiverTakeover`, which the kiosk's tuned receiver shares): no decoder thread and no
  jitter buffer; every RTP packet goes straight to a callback. Receiver reports, NACKs and
  REMB towards the publisher still flow, through aiortc's own RTCP code.
- `SenderFeed` turns an `RTCRtpSender` into a pipe for ready-made RTP packets: it parks
  the sender's encoder loop on a silent track and sends packets itself, keeping the
  counters aiortc's sender reports read and a history for NACKs.
- `DirectWire` is how `SenderFeed` sends: SRTP-protect with the DTLS transport's session,
  then the selected ICE pair's datagram transport, in one synchronous call (aioice and
  aiortc's send coroutines bypassed; RTCP and retransmissions still use aiortc's path).
  `tests/test_rtphooks_pin.py` also pins the aioice internals this reads.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from asyncio.selector_events import _SelectorDatagramTransport
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import (
    RTCP_PSFB_APP,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    HeaderExtensionsMap,
    unpack_remb_fci,
    wrap_rtx,
)
from aiortc.utils import uint16_add
from pylibsrtp import Session as SrtpSession
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from .. import _srtpsend
from .nackgenerator import NackGenerator
from .receiver import ReceiverTakeover
from .simulcast import REPAIRED_RID_URI, RID_URI, SPATIAL_INDEX, SimulcastAnswer
from ..tasks import TaskOwner

# Packets kept per consumer for retransmission on NACK: ~1.3 s of 500 kbps video, room to
# spare for a receiver's retries. Fixed, not a setting (docs/operations.md): more only
# costs memory per subscriber.
SEND_HISTORY_SIZE = 512
# What a limited retransmission rate still lets through at once: two full packets.
RETRANSMIT_BURST_BYTES = 2400
# A packet retransmitted is not sent again within a round trip (nor this soon when the round
# trip is shorter or unknown), as libwebrtc's packet history does: the earlier copy may still
# be on its way. Chromium asks again on its own clock and aiortc with every new gap; answered
# each time, copies of one lost packet crowd into the queue that lost it.
RETRANSMIT_MIN_INTERVAL_S = 0.02
# Nor a packet sent longer ago than this or three round trips: its frame is given up (a
# keyframe replaces it). Answered, such NACKs kept a 250 kbit/s link's queue full for six
# seconds: a thousand copies in a second and a half, when a limit on repairs lifted.
RETRANSMIT_MAX_AGE_S = 1.0
# An enum member read through its class costs a metaclass lookup; DirectWire compares per copy.
_DTLS_CONNECTED = DtlsState.CONNECTED
# libsrtp's srtp_protect, which server/_srtpsend.c calls per forwarded copy.
_SRTP_PROTECT = int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect")))
# Bound once: DirectWire.send calls one of them per forwarded copy.
_protect = _srtpsend.protect
_protect_sendto = _srtpsend.protect_sendto
# Datagrams read from one ICE socket per event-loop pass (Settings.ice_read_batch).
ICE_READ_BATCH = 64

logger = logging.getLogger(__name__)

# (packet, spatial layer): 0 for a single-layer publisher, else simulcast.SPATIAL_INDEX of its rid.
RtpHandler = Callable[[RtpPacket, int], Awaitable[None]]

_HEADER = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
# Seconds between the NTP epoch (1900) and the Unix epoch (1970).
NTP_EPOCH_OFFSET_S = 2208988800
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


def set_ice_read_batch(datagrams: int) -> None:
    """How many datagrams one ICE socket may deliver per event-loop pass (process-wide)."""
    global ICE_READ_BATCH
    ICE_READ_BATCH = max(1, datagrams)


def drain_ice_sockets(dtls: RTCDtlsTransport) -> None:
    """Makes the ICE sockets under a DTLS transport read every waiting datagram per pass.

    asyncio's datagram transport reads ONE datagram per socket per event-loop pass. A
    publisher's socket carries 70-110 packets/s, so one slow pass (a big fan-out, a
    renegotiation, a CPU shared with other processes) lets its kernel queue grow: seconds
    of latency, then drops, and ICE consent answers wait or drop with the media until aioice
    gives the connection up (measured in BENCHMARKS.md, 2026-11-26 second pass). Reading up
    to ICE_READ_BATCH datagrams per readiness callback removes that ceiling. Idempotent;
    sockets that are not asyncio selector datagram transports (TURN) are left alone.
    """
    try:
        protocols = dtls.transport._connection._protocols
    except AttributeError:
        return
    for protocol in protocols:
        transport = getattr(protocol, "transport", None)
        if not isinstance(transport, _SelectorDatagramTransport) or getattr(transport, "_vz_draining", False):
            continue
        if transport._conn_lost or transport._sock is None:
            continue
        loop = transport._loop
        loop._remove_reader(transport._sock_fd)
        loop._add_reader(transport._sock_fd, _read_waiting_datagrams, transport)
        transport._vz_draining = True  # type: ignore[attr-defined]


def _read_waiting_datagrams(transport: Any) -> None:
    # asyncio's _SelectorDatagramTransport._read_ready, in a bounded loop.
    sock, protocol = transport._sock, transport._protocol
    for _ in range(ICE_READ_BATCH):
        if transport._conn_lost:
            return
        try:
            data, addr = sock.recvfrom(transport.max_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            protocol.error_received(exc)
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            transport._fatal_error(exc, "Fatal read error on datagram transport")
            return
        protocol.datagram_received(data, addr)


class ReceiverTap(ReceiverTakeover):
    """Receives a publisher's RTP on an aiortc receiver without decoding it.

    A simulcast publisher sends each layer on its own SSRC, none of them signalled: aiortc
    routes them here by payload type, and the tap names each SSRC's layer on first sight
    from its rtp-stream-id (RTX SSRCs from repaired-rtp-stream-id). NACKs and keyframe
    requests go per layer SSRC; aiortc's receiver reports cover every SSRC that arrived.
    """

    def __init__(self, receiver: RTCRtpReceiver, kind: str) -> None:
        super().__init__(receiver, kind)
        self.on_rtp: RtpHandler | None = None
        # The lowest bitrate the subscribers' REMBs allow; the publisher is never asked to
        # send more than its slowest subscriber can take.
        self.downstream_limit: Callable[[], int | None] | None = None
        # Set from the answer before the receiver starts; None: one layer.
        self.simulcast: SimulcastAnswer | None = None
        # Spatial layer -> its media SSRC, and back.
        self.layer_ssrcs: dict[int, int] = {}
        self._ssrc_layers: dict[int, int] = {}
        # Per media SSRC (each simulcast layer has its own sequence numbers).
        self._nacks: dict[int, NackGenerator] = {}

    @property
    def primary_codec(self) -> RTCRtpCodecParameters | None:
        for codec in self.codecs.values():
            if not is_rtx(codec):
                return codec
        return None

    def _stopping(self) -> None:
        for generator in self._nacks.values():
            generator.close()

    def _remb_limit(self) -> int | None:
        return self.downstream_limit() if self.downstream_limit else None

    def _starting(self, parameters: RTCRtpReceiveParameters) -> None:
        if self.simulcast is not None:
            # aiortc drops extensions it does not offer itself; the transport's parser
            # needs these ids to read each packet's layer name.
            if self.simulcast.rid_extension_id:
                parameters.headerExtensions.append(
                    RTCRtpHeaderExtensionParameters(id=self.simulcast.rid_extension_id, uri=RID_URI)
                )
            if self.simulcast.repaired_rid_extension_id:
                parameters.headerExtensions.append(
                    RTCRtpHeaderExtensionParameters(id=self.simulcast.repaired_rid_extension_id, uri=REPAIRED_RID_URI)
                )
        drain_ice_sockets(self.receiver.transport)

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        codec = self.codecs.get(packet.payload_type)
        if codec is None:
            return
        remb = self._remb(packet, arrival_time_ms)
        if remb is not None:
            await self._send_rtcp(remb)
        retransmission = is_rtx(codec)
        unwrapped = self._count_and_unwrap(packet, codec, retransmission)
        if unwrapped is None:
            return
        packet = unwrapped

        layer = self._ssrc_layers.get(packet.ssrc)
        if layer is None:
            layer = self._learn_layer(packet)
            if layer is None:
                return
        self.media_ssrc = packet.ssrc
        if self.kind == "video" and not self._stopped:
            generator = self._nacks.get(packet.ssrc)
            if generator is None:
                generator = self._nacks[packet.ssrc] = NackGenerator(packet.ssrc, self._send_rtcp_nack)
            await generator.packet(packet.sequence_number, retransmission)

        # Padding-only packets carry no media; forwarding them only costs bandwidth.
        if not packet.payload:
            return
        if self.on_rtp is not None:
            await self.on_rtp(packet, layer)

    def _learn_layer(self, packet: RtpPacket) -> int | None:
        """Names a new media SSRC's layer; None when it cannot be placed (yet)."""
        if self.simulcast is None:
            layer = 0
        else:
            rid = packet.extensions.rtp_stream_id
            if rid is None or rid not in self.simulcast.rids:
                return None
            layer = SPATIAL_INDEX[rid]
        old = self.layer_ssrcs.get(layer)
        if old is not None:
            # The publisher restarted this layer on a new SSRC.
            self._ssrc_layers.pop(old, None)
            replaced = self._nacks.pop(old, None)
            if replaced is not None:
                replaced.close()
        self.layer_ssrcs[layer] = packet.ssrc
        self._ssrc_layers[packet.ssrc] = layer
        return layer

    def _learn_rtx(self, packet: RtpPacket) -> int | None:
        rid = packet.extensions.repaired_rtp_stream_id
        if rid is None or self.simulcast is None or rid not in self.simulcast.rids:
            return None
        media = self.layer_ssrcs.get(SPATIAL_INDEX[rid])
        if media is not None:
            # At most one RTX SSRC per layer: a replaced one is forgotten.
            for rtx, original in list(self._rtx_ssrc.items()):
                if original == media:
                    del self._rtx_ssrc[rtx]
            self._rtx_ssrc[packet.ssrc] = media
        return media

    @property
    def nack_requests(self) -> int:
        """Sequence numbers asked for again towards the publisher, over all its layers (first requests and retries)."""
        return sum(generator.tracker.requests for generator in self._nacks.values())

    @property
    def nack_reordered(self) -> int:
        """Packets that came late but within the reorder allowance: NACKs not sent."""
        return sum(generator.tracker.reordered for generator in self._nacks.values())

    @property
    def packets_lost(self) -> int:
        streams = self.receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        return sum(max(0, stats.packets_lost) for stats in streams.values() if stats.max_seq is not None)

    async def request_keyframe(self, layer: int | None = None) -> None:
        """A PLI for one spatial layer's SSRC, or for every layer's when `layer` is None."""
        if layer is None:
            ssrcs = list(self.layer_ssrcs.values())
        else:
            ssrc = self.layer_ssrcs.get(layer)
            ssrcs = [] if ssrc is None else [ssrc]
        for ssrc in ssrcs:
            await self.receiver._send_rtcp_pli(ssrc)


class PacketStamp:
    """What every forwarded copy of one incoming packet shares, computed once per packet
    rather than once per subscriber: the send time (abs-send-time, the NTP time aiortc's
    sender reports pair with the RTP timestamp) and the RFC 6464 audio level byte.

    Copies sent later in one fan-out carry the same abs-send-time; the few milliseconds a
    fan-out takes then look like network delay to the subscriber's bandwidth estimator,
    constant per subscriber (its place in the loop), so its delay gradient is unaffected.
    """

    __slots__ = ("monotonic", "abs_send_time", "ntp_timestamp", "level_byte", "spatial", "vp8")

    def __init__(self, audio_level: tuple[bool, int] | None = None) -> None:
        self.monotonic = time.monotonic()
        # Set by the producer for layered video: the packet's spatial layer and its parsed
        # VP8 payload descriptor (a server.sfu.vp8rewriter.Vp8Descriptor), parsed once for all copies.
        self.spatial = 0
        self.vp8: Any = None
        ntp = time.time() + NTP_EPOCH_OFFSET_S
        # abs-send-time is 6.18 fixed-point seconds, 24 bits.
        self.abs_send_time = (int(ntp * (1 << 18)) & 0xFFFFFF).to_bytes(3, "big")
        self.ntp_timestamp = int(ntp * (1 << 32))
        self.level_byte = -1 if audio_level is None else (0x80 if audio_level[0] else 0) | (audio_level[1] & 0x7F)


class DirectWire:
    """Writes RTP from an SFU consumer to the subscriber's socket in one synchronous step.

    aiortc's path is `RTCDtlsTransport._send_rtp` -> `RTCIceTransport._send` -> aioice
    `Connection.send` -> `Connection.sendto` -> `StunProtocol.send_data` -> the datagram
    transport's `sendto`: four coroutine layers per packet and subscriber, ~15 % of the
    SFU's CPU. This does the same work (state check, SRTP protect with the DTLS
    transport's own session, the selected pair's socket, the transport's byte counters)
    without them. The selected pair is looked up per packet (one dict get), so a
    re-nomination is followed at once. If aiortc or aioice internals have moved, it falls
    back to aiortc's coroutine path and logs once; tests/test_rtphooks_pin.py fails then.

    The copy itself (header and payload joined, SRTP-protected, sent) is one C call,
    `server._srtpsend.protect_sendto`: libsrtp's `srtp_protect` on the same libsrtp session
    pylibsrtp wraps for aiortc (so the same keys, rollover counter and replay state as
    aiortc's own RTP sends), then `sendto` on the pair's socket. In Python that was a join,
    two buffer copies, pylibsrtp's wrapper and asyncio's transport checks: ~25 % of the
    fan-out's CPU. A socket that refuses (its buffer full) loses the copy, as a full network
    queue would; `refused` counts them. A relayed (TURN) pair has no socket of its own: its
    copy is protected in C and handed to aioice's `TurnTransport.sendto`.
    """

    __slots__ = (
        "_dtls", "_nominated", "_pair", "_addr", "_transport", "_fd", "_address", "_srtp", "_session", "refused", "tasks"
    )

    def __init__(self) -> None:
        self._dtls: RTCDtlsTransport | None = None
        self._nominated: dict[int, Any] | None = None
        self._pair: Any = None
        self._addr: tuple[str, int] | None = None
        # The selected pair's datagram transport, looked up once per pair, not per copy.
        self._transport: Any = None
        # Its socket and the packed remote address; no socket (-1) for a relayed pair.
        self._fd = -1
        self._address = b""
        # The session whose libsrtp handle `_session` is; re-read if DTLS installs another.
        self._srtp: SrtpSession | None = None
        self._session = 0
        self.refused = 0
        # The fallback path's sends (aiortc's coroutines), ended with the sender.
        self.tasks = TaskOwner("rtp-wire")

    @property
    def direct(self) -> bool:
        """Whether packets bypass aiortc's send coroutines (False before the first send)."""
        return self._nominated is not None

    def _bind(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        drain_ice_sockets(dtls)
        self._pair = self._addr = self._transport = None
        self._srtp = None
        try:
            nominated = dtls.transport._connection._nominated
            usable = (
                isinstance(nominated, dict)
                and hasattr(dtls, "_tx_srtp")
                and hasattr(dtls, "_RTCDtlsTransport__tx_bytes")
                and hasattr(dtls, "_RTCDtlsTransport__tx_packets")
            )
        except AttributeError:
            usable = False
        if usable:
            self._nominated = nominated
        else:
            self._nominated = None
            logger.warning("aiortc/aioice internals moved: forwarding through aiortc's slower send path")

    def _bind_pair(self, pair: Any) -> None:
        self._pair = pair
        self._addr = pair.remote_addr
        # A host/srflx pair's asyncio transport or a relayed pair's TurnTransport. A pair's
        # protocol gets its transport once (connection_made), before it can be nominated.
        self._transport = transport = pair.protocol.transport
        sock = transport.get_extra_info("socket") if isinstance(transport, _SelectorDatagramTransport) else None
        if sock is None:
            self._fd, self._address = -1, b""
        else:
            self._fd = sock.fileno()
            self._address = _srtpsend.pack_address(self._addr[0], self._addr[1])

    def send(self, dtls: RTCDtlsTransport, header: bytes, payload: bytes) -> None:
        if dtls is not self._dtls:
            self._bind(dtls)
        nominated = self._nominated
        if nominated is None:
            # Tasks start in creation order and aiortc's path has no await before the
            # socket, so packets still leave in order.
            self.tasks.spawn(_send_via_aiortc(dtls, header + payload), name="rtp-send-fallback")
            return
        if dtls._state is not _DTLS_CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        pair = nominated.get(1)  # bundle + rtcp-mux: everything on component 1
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        if pair is not self._pair:
            self._bind_pair(pair)
        srtp = dtls._tx_srtp
        if srtp is not self._srtp:
            self._session = int(_srtp_ffi.cast("uintptr_t", srtp._srtp[0]))
            self._srtp = srtp
        transport = self._transport
        if self._fd < 0:
            # A relayed pair: aioice's TurnTransport ignores data once it is closed.
            protected = _protect(_SRTP_PROTECT, self._session, header, payload)
            transport.sendto(protected, self._addr)
            sent = len(protected)
        else:
            if transport._closing:
                # Its socket is closed, or about to be: the number may already name another.
                raise ConnectionError("Cannot send data, the ICE socket is closed")
            sent = _protect_sendto(_SRTP_PROTECT, self._session, header, payload, self._fd, self._address)
            if sent < 0:
                # The socket refused: a full buffer loses the copy (asyncio would queue it,
                # adding latency to every later packet); other errors are the ones asyncio
                # hands to the protocol's error_received, which aioice ignores.
                self.refused += 1
                return
        dtls._RTCDtlsTransport__tx_bytes += sent  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]


async def _send_via_aiortc(dtls: RTCDtlsTransport, data: bytes) -> None:
    try:
        await dtls._send_rtp(data)
    except ConnectionError:
        pass  # not connected (yet, or any more): the copy is lost, as on a full socket


class _ParkedTrack(MediaStreamTrack):
    """Keeps aiortc's sender loop asleep: it never yields a frame until stopped."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._stopped = asyncio.Event()

    async def recv(self) -> Any:
        await self._stopped.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


class SenderFeed:
    """Sends ready-made RTP packets through an aiortc sender's DTLS transport."""

    def __init__(self, sender: RTCRtpSender, kind: str) -> None:
        self.sender = sender
        self.kind = kind
        self.payload_types: dict[str, int] = {}
        self.mid: str | None = None
        self.on_keyframe_request: Callable[[], None] | None = None
        self._rtx_payload_type: int | None = None
        self._rtx_sequence_number = 0
        self._extensions_map = HeaderExtensionsMap()
        # Per slot: this copy's header (with extensions) and the payload, which is the
        # producer's bytes object, shared by every subscriber's history rather than copied.
        # By sequence number modulo SEND_HISTORY_SIZE: (header, payload, when sent, when last
        # retransmitted or 0.0).
        self._history: dict[int, tuple[bytes, bytes, float, float]] = {}
        self._mid_element = b""
        self._abs_send_time_id = 0
        self._audio_level_id = 0
        self._ssrc: int = sender._ssrc
        # Header extension templates (see _build_templates); none until configured.
        self._prefix = self._pad = self._prefix_level = self._pad_level = b""
        self._wire = DirectWire()
        self._wire_send = self._wire.send  # bound once: send_now runs per packet and subscriber
        self.retransmits = 0
        # Bandwidth probes: RTX copies of packets already sent (see `send_probe`).
        self.probe_packets = 0
        # Retransmissions into a congested link (set by the transport; None: no limit): each
        # one waits in the queue that lost the original and pushes out more media, whose
        # NACKs bring more retransmissions. Past this rate, NACKs go unanswered.
        self.retransmit_rate_bps: float | None = None
        self.retransmits_refused = 0
        # NACKs for a packet retransmitted less than a round trip ago, or too old to help.
        self.retransmits_skipped = 0
        self._retransmit_tokens = 0.0
        self._tokens_at = 0.0
        self.last_sequence_number: int | None = None
        self._configured = asyncio.Event()
        self._stopped = False
        # The subscriber's latest REMB (how much it can receive), the SSRCs it covers and
        # when it came; the latest receiver report's loss for this sender's SSRC (0..1).
        self.remb_bps: int | None = None
        self.remb_ssrcs: frozenset[int] = frozenset()
        self.remb_at = 0.0
        self.fraction_lost = 0.0
        self.report_at = 0.0
        self.round_trip_s: float | None = None
        # When (monotonic) the sender report that round trip was measured with left: the
        # round trip speaks for the queue as it was then.
        self.round_trip_sent_at = 0.0
        self._aiortc_send = sender.send
        self._aiortc_stop = sender.stop
        self._aiortc_handle_rtcp = sender._handle_rtcp_packet
        sender._handle_rtcp_packet = self._handle_rtcp_packet  # type: ignore[method-assign]
        sender.replaceTrack(_ParkedTrack(kind))
        sender.send = self._send  # type: ignore[method-assign]
        sender.stop = self._stop  # type: ignore[method-assign]
        sender._send_keyframe = self._keyframe_requested  # type: ignore[method-assign]
        sender._retransmit = self._retransmit  # type: ignore[method-assign]

    @property
    def ssrc(self) -> int:
        return self.sender._ssrc

    @property
    def ready(self) -> bool:
        return self._configured.is_set()

    @property
    def refused(self) -> int:
        """Copies the subscriber's socket refused (its send buffer full): lost before the wire."""
        return self._wire.refused

    def payload_type_for(self, mime_type: str) -> int | None:
        return self.payload_types.get(mime_type.lower())

    async def _stop(self) -> None:
        self._stopped = True
        await self._wire.tasks.close()
        await self._aiortc_stop()

    async def _send(self, parameters: RTCRtpSendParameters) -> None:
        # Same race as ReceiverTap._receive: never start after a stop.
        if self._stopped:
            return
        self.mid = parameters.muxId
        for codec in parameters.codecs:
            if is_rtx(codec):
                if codec.parameters.get("apt") == parameters.codecs[0].payloadType:
                    self._rtx_payload_type = codec.payloadType
            else:
                self.payload_types.setdefault(codec.mimeType.lower(), codec.payloadType)
        self._extensions_map.configure(parameters)
        for extension in parameters.headerExtensions:
            if extension.uri == MID_URI and self.mid and 0 < extension.id < 15:
                mid = self.mid.encode()
                self._mid_element = bytes((extension.id << 4 | (len(mid) - 1),)) + mid
            elif extension.uri == ABS_SEND_TIME_URI and 0 < extension.id < 15:
                self._abs_send_time_id = extension.id
            elif extension.uri == AUDIO_LEVEL_URI and 0 < extension.id < 15:
                self._audio_level_id = extension.id
        self._build_templates()
        await self._aiortc_send(parameters)
        self._configured.set()

    async def _handle_rtcp_packet(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if self.sender._ssrc in ssrcs:
                self.remb_bps = bitrate
                self.remb_ssrcs = frozenset(ssrcs)
                self.remb_at = time.monotonic()
            return
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            s = self.sender
            for report in packet.reports:
                if report.ssrc == s._ssrc:
                    self.fraction_lost = report.fraction_lost / 256
                    self.report_at = time.monotonic()
                    # The round trip as of this report (aiortc keeps only a slow average):
                    # a queue building on the subscriber's link shows here first.
                    lsr_time = s._RTCRtpSender__lsr_time  # type: ignore[attr-defined]
                    if report.dlsr and report.lsr == s._RTCRtpSender__lsr and lsr_time is not None:  # type: ignore[attr-defined]
                        since_sent = time.time() - lsr_time
                        self.round_trip_s = since_sent - report.dlsr / 65536
                        self.round_trip_sent_at = self.report_at - since_sent
        await self._aiortc_handle_rtcp(packet)

    def _keyframe_requested(self) -> None:
        if self.on_keyframe_request is not None:
            self.on_keyframe_request()

    async def send(
        self,
        payload_type: int,
        marker: int,
        sequence_number: int,
        timestamp: int,
        payload: bytes,
        audio_level: tuple[bool, int] | None = None,
    ) -> None:
        """Sends one packet now (see `send_now`); kept as a coroutine for callers that await."""
        self.send_now(payload_type, marker, sequence_number, timestamp, payload, PacketStamp(audio_level))

    def send_now(
        self,
        payload_type: int,
        marker: int,
        sequence_number: int,
        timestamp: int,
        payload: bytes,
        stamp: PacketStamp,
    ) -> None:
        """Sends one packet under this sender's SSRC, with our own header extensions.

        Synchronous on purpose: it is called once per packet *and* subscriber, and every
        coroutine layer aiortc and aioice put between here and the socket cost more than
        the header work. The header is packed directly (an aiortc RtpPacket per copy cost
        about as much as the encryption); the time fields come precomputed in `stamp`,
        shared by every copy of one incoming packet. Raises ConnectionError when the
        subscriber's transport is not connected.
        """
        if stamp.level_byte >= 0 and self._audio_level_id:
            prefix, pad = self._prefix_level, self._pad_level
            level = bytes((self._audio_level_id << 4, stamp.level_byte))
        else:
            prefix, pad = self._prefix, self._pad
            level = b""
        if prefix:
            header = b"".join((
                _HEADER.pack(0x90, marker << 7 | payload_type, sequence_number, timestamp, self._ssrc),
                prefix,
                stamp.abs_send_time if self._abs_send_time_id else b"",
                level,
                pad,
            ))
        else:
            header = _HEADER.pack(0x80, marker << 7 | payload_type, sequence_number, timestamp, self._ssrc)
        # The history keeps the header and the shared payload, not the joined packet: one
        # ~1.2 kB packet per subscriber and slot was ~180 MB at 300 subscribers, and each
        # new copy was written into memory last touched 512 packets ago. The joined packet
        # now lives only until the socket has it.
        self._history[sequence_number % SEND_HISTORY_SIZE] = (header, payload, stamp.monotonic, 0.0)
        self.last_sequence_number = sequence_number
        s = self.sender
        # The private attribute behind RTCRtpSender.transport (a property call per copy);
        # read per copy, not cached, because aiortc swaps it when bundling transports.
        self._wire_send(s._RTCRtpSender__transport, header, payload)  # type: ignore[attr-defined]
        # aiortc's sender reports and getStats() read these counters.
        s._RTCRtpSender__ntp_timestamp = stamp.ntp_timestamp  # type: ignore[attr-defined]
        s._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        s._RTCRtpSender__octet_count += len(payload)  # type: ignore[attr-defined]
        s._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]

    def _build_templates(self) -> None:
        """The header extension block around the per-packet bytes, for packets with and
        without an audio level: [BEDE, length] mid, abs-send-time id | time | level | padding."""
        head = self._mid_element
        if self._abs_send_time_id:
            head += bytes((self._abs_send_time_id << 4 | 2,))
        body = len(head) + (3 if self._abs_send_time_id else 0)
        for with_level in (False, True):
            size = body + (2 if with_level and self._audio_level_id else 0)
            pad = -size % 4
            prefix = _EXTENSION_HEADER.pack(0xBEDE, (size + pad) >> 2) + head if size else b""
            if with_level:
                self._prefix_level, self._pad_level = prefix, b"\x00" * pad
            else:
                self._prefix, self._pad = prefix, b"\x00" * pad

    async def send_probe(self, budget_bytes: int) -> int:
        """Padding that probes the subscriber's link: RTX copies of the latest packets sent,
        newest first, up to `budget_bytes`; returns the bytes sent.

        A receiver's REMB never exceeds about 1.5 times what it receives, so a layer ten
        times the current one can only be reached by receiving more first. Copies of packets
        it already has are what libwebrtc pads with: its estimator counts them, its jitter
        buffer drops them as duplicates, and they are few large packets rather than many
        small padding-only ones. Without RTX (copies would enter the media stream) nothing
        is sent.
        """
        last = self.last_sequence_number
        if self._rtx_payload_type is None or last is None:
            return 0
        sent = 0
        for back in range(SEND_HISTORY_SIZE):
            if sent >= budget_bytes:
                break
            sequence_number = (last - back) & 0xFFFF
            size = await self._retransmit(sequence_number, probe=True)
            if size is None:
                break
            sent += size
        return sent

    def _retransmit_allowed(self, size: int, now: float) -> bool:
        """A token bucket at `retransmit_rate_bps`, holding at most half a second of it."""
        rate = self.retransmit_rate_bps
        if rate is None:
            return True
        self._retransmit_tokens = min(
            max(rate / 16, RETRANSMIT_BURST_BYTES), self._retransmit_tokens + rate / 8 * (now - self._tokens_at)
        )
        self._tokens_at = now
        if self._retransmit_tokens < size:
            return False
        self._retransmit_tokens -= size
        return True

    async def _retransmit(self, sequence_number: int, probe: bool = False) -> int | None:
        """Sends a kept packet again (as RTX when negotiated); returns its size, None if not
        kept or (a NACK's) not worth sending: resent within a round trip, too old, or past the
        congested link's budget."""
        slot = sequence_number % SEND_HISTORY_SIZE
        kept = self._history.get(slot)
        if kept is None or int.from_bytes(kept[0][2:4], "big") != sequence_number:
            return None
        header, payload, sent_at, resent_at = kept
        data = header + payload
        if not probe:
            now = time.monotonic()
            round_trip = self.round_trip_s or 0.0
            if (
                now - resent_at < max(RETRANSMIT_MIN_INTERVAL_S, round_trip)
                or now - sent_at > max(RETRANSMIT_MAX_AGE_S, 3 * round_trip)
            ):
                self.retransmits_skipped += 1
                return None
            if not self._retransmit_allowed(len(data), now):
                self.retransmits_refused += 1
                return None
            self._history[slot] = (header, payload, sent_at, now)
        packet = RtpPacket.parse(data, self._extensions_map)
        if packet.extensions.abs_send_time is not None:
            # When it really goes out: an old send time would read as queueing delay to the
            # subscriber's estimator.
            packet.extensions.abs_send_time = int.from_bytes(PacketStamp().abs_send_time, "big")
        if self._rtx_payload_type is not None:
            packet = wrap_rtx(
                packet,
                payload_type=self._rtx_payload_type,
                sequence_number=self._rtx_sequence_number,
                ssrc=self.sender._rtx_ssrc,
            )
            self._rtx_sequence_number = uint16_add(self._rtx_sequence_number, 1)
        try:
            await self.sender.transport._send_rtp(packet.serialize(self._extensions_map))
        except ConnectionError:
            return None
        if probe:
            self.probe_packets += 1
        else:
            self.retransmits += 1
        return len(data)
