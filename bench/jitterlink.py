"""A jittering, reordering link in user space: every datagram an aiortc peer receives is held
for 30 ± 10 ms (uniform), so packets sent close together overtake each other.

This kernel has no `sch_netem`, so the delay is made where the datagrams enter aiortc: the
ICE connection's `data_received` (what aioice calls for every non-STUN datagram: DTLS, SRTP,
SRTCP) is replaced by one that delivers each datagram later on the event loop. Nothing is
lost, only late and out of order, which is what a busy home Wi-Fi does. STUN (ICE checks and
consent) is untouched, so the connection itself stays up.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aiortc import RTCPeerConnection


def _connections(pc: RTCPeerConnection) -> list[Any]:
    found = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport or transceiver.sender.transport
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        if connection is not None and connection not in found:
            found.append(connection)
    return found


def delay_incoming(pc: RTCPeerConnection, mean_s: float = 0.03, spread_s: float = 0.01, seed: int | None = None) -> int:
    """Delays the datagrams `pc` receives by mean ± spread seconds, each drawn on its own;
    returns how many ICE connections got the delay (idempotent per connection)."""
    rng = random.Random(seed)
    hooked = 0
    for connection in _connections(pc):
        if getattr(connection, "_vz_jitter", False):
            continue
        deliver = connection.data_received
        loop = asyncio.get_running_loop()

        def delayed(data: bytes, component: int, deliver: Any = deliver) -> None:
            loop.call_later(max(0.0, rng.uniform(mean_s - spread_s, mean_s + spread_s)), deliver, data, component)

        connection.data_received = delayed
        connection._vz_jitter = True
        hooked += 1
    return hooked
