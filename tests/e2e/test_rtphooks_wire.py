"""SenderFeed's direct path to the socket (server.rtc.rtphooks.DirectWire) between two real
aiortc peers on loopback: what arrives, what aiortc still sees (stats, RTCP), NACK repair."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aioice.turn import TurnTransport
from aiortc.rtp import RtpPacket

from server import _srtpsend
from server.rtc.rtphooks import PacketStamp, ReceiverTap, SenderFeed
from tests.support import eventually
from tests.turn_server import TurnServer

Pair = tuple[SenderFeed, ReceiverTap, list[RtpPacket]]


@pytest.fixture(scope="module")
def turn() -> Iterator[TurnServer]:
    with TurnServer() as server:
        yield server


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[str], Awaitable[Pair]]]:
    pcs: list[RTCPeerConnection] = []

    async def _connect(kind: str, sender_config: RTCConfiguration | None = None) -> Pair:
        offerer = RTCPeerConnection(sender_config or RTCConfiguration(iceServers=[]))
        answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pcs.extend([offerer, answerer])
        feed = SenderFeed(offerer.addTransceiver(kind, direction="sendonly").sender, kind)
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        # Before the answer: the tap must replace the receiver before aiortc starts it.
        tap = ReceiverTap(answerer.getTransceivers()[0].receiver, kind)
        received: list[RtpPacket] = []

        async def on_rtp(packet: RtpPacket, layer: int = 0) -> None:
            received.append(packet)

        tap.on_rtp = on_rtp
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await eventually(lambda: feed.ready and tap.codecs != {}, what="both ends connected")
        return feed, tap, received

    yield _connect
    for pc in pcs:
        await pc.close()


def _count_aiortc_sends(feed: SenderFeed) -> list[bytes]:
    """Records what still goes through aiortc's own (coroutine) send path."""
    dtls = feed.sender.transport
    original = dtls._send_rtp
    through_aiortc: list[bytes] = []

    async def recording(data: bytes) -> None:
        through_aiortc.append(data)
        await original(data)

    dtls._send_rtp = recording  # type: ignore[method-assign]
    return through_aiortc


async def test_packets_go_straight_to_the_socket_complete_and_in_order(connect: Any) -> None:
    feed, tap, received = await connect("audio")
    through_aiortc = _count_aiortc_sends(feed)
    pt = feed.payload_type_for("audio/opus")
    assert pt is not None
    for i in range(50):
        feed.send_now(pt, 1 if i == 0 else 0, 1000 + i, 960 * i, bytes([i]) * 40, PacketStamp((True, 30 + i % 10)))
    await eventually(lambda: len(received) == 50, what="50 packets")
    assert [p.sequence_number for p in received] == list(range(1000, 1050))
    assert [p.payload for p in received] == [bytes([i]) * 40 for i in range(50)]
    assert [p.timestamp for p in received] == [960 * i for i in range(50)]
    assert received[0].marker == 1 and all(p.marker == 0 for p in received[1:])
    assert all(p.ssrc == feed.ssrc for p in received)
    assert [p.extensions.audio_level for p in received] == [(True, 30 + i % 10) for i in range(50)]
    assert all(p.extensions.mid == feed.mid for p in received)
    assert feed._wire.direct
    # No RTP media went through aiortc's send coroutines (only RTCP may).
    assert not [d for d in through_aiortc if not 192 <= d[1] <= 223]
    # aiortc's statistics (and so its sender reports) still count every packet.
    stats = await feed.sender.getStats()
    outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
    assert outbound.packetsSent == 50
    assert outbound.bytesSent == 50 * 40
    transport_stats = next(s for s in feed.sender.transport._get_stats().values() if s.type == "transport")
    assert transport_stats.packetsSent >= 50


async def test_video_carries_abs_send_time_and_a_lost_packet_is_repaired_over_rtx(connect: Any) -> None:
    feed, tap, received = await connect("video")
    pt = feed.payload_type_for("video/vp8")
    assert pt is not None and feed._rtx_payload_type is not None
    # Lose seq 2010 on the wire, once: the receiving socket's protocol never sees it (the
    # sender's copy leaves from C straight to the socket). SRTP leaves the RTP header clear.
    inbound = tap.receiver.transport.transport._connection._nominated[1].protocol
    lost: list[int] = []

    def lossy(data: bytes, addr: Any) -> None:
        if not lost and not 192 <= data[1] <= 223 and int.from_bytes(data[2:4], "big") == 2010:
            lost.append(2010)
            return
        type(inbound).datagram_received(inbound, data, addr)

    inbound.datagram_received = lossy
    try:
        for i in range(30):
            feed.send_now(pt, 0, 2000 + i, 3000 * i, b"\x90\x80" + bytes([i]) * 100, PacketStamp())
            await asyncio.sleep(0.002)
        await eventually(lambda: 2010 in [p.sequence_number for p in received], what="seq 2010 repaired")
    finally:
        del inbound.datagram_received
    assert lost == [2010]
    assert feed.retransmits == 1
    assert sorted(p.sequence_number for p in received) == list(range(2000, 2030))
    repaired = next(p for p in received if p.sequence_number == 2010)
    assert repaired.payload == b"\x90\x80" + bytes([10]) * 100
    assert all(p.extensions.abs_send_time is not None for p in received if p.sequence_number != 2010)


async def test_a_closed_transport_refuses_with_connection_error(connect: Any) -> None:
    feed, tap, received = await connect("audio")
    pt = feed.payload_type_for("audio/opus")
    assert pt is not None
    feed.send_now(pt, 0, 1, 960, b"x" * 10, PacketStamp())
    await feed.sender.transport.stop()
    # aiortc marks the transport closed when its receive task has ended.
    await eventually(lambda: feed.sender.transport.state == "closed", what="DTLS closed")
    with pytest.raises(ConnectionError):
        feed.send_now(pt, 0, 2, 1920, b"x" * 10, PacketStamp())


async def test_a_copy_the_socket_refuses_is_counted_lost_and_the_next_one_goes_out(connect: Any) -> None:
    feed, tap, received = await connect("audio")
    pt = feed.payload_type_for("audio/opus")
    assert pt is not None
    feed.send_now(pt, 0, 4000, 0, b"a" * 20, PacketStamp())
    await eventually(lambda: len(received) == 1, what="the first packet")
    wire = feed._wire
    address = wire._address
    # An IPv6 destination on the pair's IPv4 socket: the kernel refuses the sendto, as it
    # would with a full send buffer. Nothing raises; the copy is counted lost, not sent.
    wire._address = _srtpsend.pack_address("::1", 9)
    dtls = feed.sender.transport
    sent_before = dtls._RTCDtlsTransport__tx_packets
    feed.send_now(pt, 0, 4001, 960, b"b" * 20, PacketStamp())
    assert feed.refused == 1
    assert dtls._RTCDtlsTransport__tx_packets == sent_before
    wire._address = address
    feed.send_now(pt, 0, 4002, 1920, b"c" * 20, PacketStamp())
    await eventually(lambda: len(received) == 2, what="the packet after the refused one")
    assert [p.sequence_number for p in received] == [4000, 4002]
    assert dtls._RTCDtlsTransport__tx_packets >= sent_before + 1  # (+ any RTCP sent meanwhile)
    assert feed.refused == 1


async def test_a_relayed_pair_goes_through_turn_complete_and_in_order(connect: Any, turn: TurnServer) -> None:
    # The sender may only use its TURN allocation (a real coturn on loopback): its pair's
    # transport is aioice's TurnTransport, which has no socket of its own.
    relay_only = RTCConfiguration(
        iceServers=[RTCIceServer(turn.url, turn.username, turn.password)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )
    feed, tap, received = await connect("audio", relay_only)
    pt = feed.payload_type_for("audio/opus")
    assert pt is not None
    for i in range(30):
        feed.send_now(pt, 0, 5000 + i, 960 * i, bytes([i]) * 30, PacketStamp((False, 40)))
    await eventually(lambda: len(received) == 30, what="30 packets through TURN")
    assert isinstance(feed._wire._transport, TurnTransport)
    assert [p.sequence_number for p in received] == list(range(5000, 5030))
    assert [p.payload for p in received] == [bytes([i]) * 30 for i in range(30)]
    assert feed.refused == 0


async def test_a_burst_is_read_in_a_few_loop_passes_not_one_datagram_per_pass(connect: Any) -> None:
    feed, tap, received = await connect("audio")
    pt = feed.payload_type_for("audio/opus")
    assert pt is not None
    # Both ends' ICE sockets drain (the tap's side was set up when its receiver started).
    receiving_socket = tap.receiver.transport.transport._connection._protocols[0].transport
    assert receiving_socket._vz_draining
    # 100 packets land in the receiver's socket at once (loopback delivers inside sendto).
    for i in range(100):
        feed.send_now(pt, 0, 3000 + i, 960 * i, bytes([i]) * 40, PacketStamp())
    # asyncio alone reads one datagram per socket per pass: 100 passes. Drained: the reader
    # callback takes the whole burst, the DTLS task handles it on the next pass.
    for _ in range(4):
        await asyncio.sleep(0)
    assert [p.sequence_number for p in received] == list(range(3000, 3100))
