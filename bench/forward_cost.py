"""CPU per forwarded packet of the SFU's fan-out path, in one process, on a busy machine.

    python -m bench.forward_cost [--consumers 100] [--packets 3000] [--repeat 3]

Builds one `server.sfu.producer.Producer` and N `server.sfu.consumer.Consumer`s, each consumer's
`SenderFeed` on its own real aiortc peer connection (ICE, DTLS, SRTP over loopback) to a
receiving peer whose receiver is a `ReceiverTap` without a callback (SRTP check, stats, no
decoding). It then feeds the producer VP8-sized packets (1100 B, 61 per s of video) as fast
as the loop allows and measures the *thread CPU time* of the fan-out calls only
(`time.thread_time`), so time spent waiting for a CPU (the machine is shared) does not
count. The figure covers what the server does per packet and subscriber: the consumer's
rewrite, header packing, SRTP, the send path to the socket, and the kernel's `sendto`
(on loopback that includes delivery to the receiving socket).

`--compare-with DIR` imports another tree's `server/` package as well (e.g. an older commit
extracted with `git archive`) and alternates rounds between the two, so both see the same
machine load; the median of the per-round ratios is the A/B figure. Works with any tree whose
modules sit in `server/rtc` and `server/sfu` or (before those layers) flat in `server/`, and whose
`Producer._on_rtp` is a coroutine and whose `Consumer` / `SenderFeed` take the same
constructor arguments.

`--layered` runs a second fan-out from this tree beside the plain one, fed the same packets
with an RFC 7741 descriptor carrying VP8 temporal layers (L1T3: PictureID, TL0PICIDX, TID),
so its consumers take the layered path (layer selection, `Vp8Rewriter`); rounds alternate,
and `layered_over_plain_median` is the cost of that path against the plain one.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from server.rtc import rtphooks
from server.rtc.ice import restrict_host_addresses
from server.rtc.rtphooks import ReceiverTap
from server.sfu import consumer, producer

PAYLOAD_BYTES = 1100


THIS_TREE = SimpleNamespace(
    code=Path(__file__).resolve().parent.parent, rtphooks=rtphooks, producer=producer, consumer=consumer
)


def load_tree(directory: Path, name: str) -> SimpleNamespace:
    """Imports another tree's `server` package under another name (its modules import each
    other relatively), so two versions of the forwarding code run side by side."""
    init = directory / "server" / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    layered = (init.parent / "rtc").is_dir()
    modules = {
        module: importlib.import_module(f"{name}.{where if layered else ''}{module}")
        for module, where in (("rtphooks", "rtc."), ("producer", "sfu."), ("consumer", "sfu."))
    }
    return SimpleNamespace(code=directory, **modules)


async def _pair(feed_cls: Any, kind: str) -> tuple[RTCPeerConnection, RTCPeerConnection, Any]:
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    feed = feed_cls(offerer.addTransceiver(kind, direction="sendonly").sender, kind)
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    ReceiverTap(answerer.getTransceivers()[0].receiver, kind)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)
    return offerer, answerer, feed


TEMPORAL_PATTERN = (0, 2, 1, 2)


def layered_payload(body: bytes, frame: int, keyframe: bool) -> bytes:
    """`body` (starting with a VP8 payload header byte) behind an L1T3 payload descriptor."""
    tid = TEMPORAL_PATTERN[frame % 4]
    pid = frame & 0x7FFF
    tl0 = (frame // 4) & 0xFF
    sync = 0x20 if tid and frame % 4 == 1 else 0
    header = bytes((0x90, 0xE0, 0x80 | (pid >> 8), pid & 0xFF, tl0, (tid << 6) | sync))
    return header + (bytes((body[1] & 0xFE,)) if keyframe else bytes((body[1] | 0x01,))) + body[2:]


class Fanout:
    """One producer and its consumers, built from one tree's classes."""

    def __init__(self, label: str, package: SimpleNamespace, layered: bool = False) -> None:
        self.label = label
        self.package = package
        self.layered = layered
        self.pcs: list[RTCPeerConnection] = []
        self.answerers: list[RTCPeerConnection] = []
        self.feeds: list[Any] = []
        self.seq = 0
        self.ts = 0
        self.per_packet_us: list[float] = []

    async def build(self, consumers: int) -> None:
        source = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.append(source)
        tap = self.package.rtphooks.ReceiverTap(source.addTransceiver("video", direction="recvonly").receiver, "video")
        tap.codecs[96] = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
        self.producer = self.package.producer.Producer("p-bench", "video", tap, keyframe_request_interval_s=0.25)
        for _ in range(consumers):
            offerer, answerer, feed = await _pair(self.package.rtphooks.SenderFeed, "video")
            self.pcs += [offerer, answerer]
            self.answerers.append(answerer)
            self.feeds.append(feed)
            self.package.consumer.Consumer(self.producer, feed, mid=None)
        deadline = time.monotonic() + 30
        while not all(f.ready for f in self.feeds):
            if time.monotonic() > deadline:
                raise RuntimeError("peer connections did not come up")
            await asyncio.sleep(0.05)

    async def round(self, packets: int, key: bytes, delta: bytes) -> float:
        """Forwards `packets` packets; returns thread CPU us per forwarded packet."""
        cpu = 0.0
        for i in range(packets):
            payload = key if self.seq == 0 else delta
            if self.layered:
                # Four packets per frame, as the plain stream; only a frame's first has S=1.
                frame = self.seq // 4
                payload = layered_payload(payload, frame, self.seq == 0)
                if self.seq % 4:
                    payload = bytes((0x80,)) + payload[1:]
            packet = RtpPacket(payload_type=96, marker=int(i % 4 == 3), sequence_number=self.seq & 0xFFFF,
                               timestamp=self.ts & 0xFFFFFFFF, ssrc=1234, payload=payload)
            self.seq += 1
            self.ts += 3000 if i % 4 == 3 else 0
            started = time.thread_time()
            await self.producer._on_rtp(packet)
            cpu += time.thread_time() - started
            # Let every receiver read its datagram before the next packet (asyncio reads one
            # datagram per socket per loop pass; their CPU is not counted). A flood would
            # overflow their sockets and starve ICE consent checks.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        return cpu / (packets * len(self.feeds)) * 1e6

    def counts(self) -> tuple[int, int]:
        sent = sum(f.sender._RTCRtpSender__packet_count for f in self.feeds)
        received = sum(
            stats.packets_received
            for pc in self.answerers
            for t in pc.getTransceivers()
            for stats in t.receiver._RTCRtpReceiver__remote_streams.values()
        )
        return sent, received

    async def close(self) -> None:
        self.producer.close()
        for pc in self.pcs:
            await pc.close()


async def run(consumers: int, packets: int, repeat: int, compare_with: Path | None, layered: bool = False) -> dict[str, Any]:
    restrict_host_addresses(["127.0.0.1"])
    fanouts = [Fanout("this", THIS_TREE)]
    if compare_with is not None:
        fanouts.append(Fanout("other", load_tree(compare_with, "server_ab")))
    if layered:
        fanouts.append(Fanout("layered", THIS_TREE, layered=True))
    # A keyframe start first (consumers wait for one), then delta frames.
    key = b"\x10\x00" + os.urandom(PAYLOAD_BYTES - 2)
    delta = b"\x10\x01" + os.urandom(PAYLOAD_BYTES - 2)
    try:
        for f in fanouts:
            await f.build(consumers)
        for f in fanouts:  # warm-up: keyframe wait, caches
            await f.round(packets, key, delta)
        for r in range(repeat):
            # Alternate which tree goes first, so both see the same machine, round by round.
            for f in fanouts if r % 2 == 0 else fanouts[::-1]:
                f.per_packet_us.append(await f.round(packets, key, delta))
        out: dict[str, Any] = {"bench": "forward_cost", "consumers": consumers, "packets_per_round": packets,
                               "rounds": repeat}
        for f in fanouts:
            sent, received = f.counts()
            out[f.label] = {
                "code": str(f.package.code),
                "us_per_forwarded_packet": round(statistics.median(f.per_packet_us), 2),
                "rounds_us": [round(x, 2) for x in f.per_packet_us],
                "sent": sent,
                "received": received,
                "expected": consumers * packets * (repeat + 1),
            }
        if compare_with is not None:
            ratios = [a / b for a, b in zip(fanouts[0].per_packet_us, fanouts[1].per_packet_us)]
            out["ratio_this_over_other_median"] = round(statistics.median(ratios), 3)
        if layered:
            sent, _ = fanouts[-1].counts()
            if not fanouts[-1].producer.layered or sent != out["layered"]["expected"]:
                # Not layered, or some temporal layers held back: not the same work as plain.
                print(json.dumps(out))
                raise SystemExit("the layered fan-out did not forward every packet on the layered path: "
                                 "measured the wrong thing")
            ratios = [a / b for a, b in zip(fanouts[-1].per_packet_us, fanouts[0].per_packet_us)]
            out["layered_over_plain_median"] = round(statistics.median(ratios), 3)
        out["loadavg"] = open("/proc/loadavg").read().split()[:3]
        return out
    finally:
        for f in fanouts:
            await f.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--consumers", type=int, default=100)
    parser.add_argument("--packets", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare-with", type=Path, metavar="DIR",
                        help="another tree (e.g. `git archive <commit>` extracted): its server/ runs side by side, "
                             "rounds alternating, for an A/B ratio on a shared machine")
    parser.add_argument("--layered", action="store_true",
                        help="also a fan-out of VP8 with temporal layers (the layered path), rounds alternating")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.consumers, args.packets, args.repeat, args.compare_with, args.layered))))


if __name__ == "__main__":
    main()
