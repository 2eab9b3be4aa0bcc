"""One subscriber as its own process, so it can live in another network namespace.

    ip netns exec NS python -m bench.netclient --server URL --token T --duration 20 \
        [--media-address 10.x.y.2] [--jitter-ms 30 --jitter-spread-ms 10] [--layout W:H]

Joins with a kiosk `CallClient` (the tuned receive path), publishes nothing, and after
`--duration` seconds prints ONE JSON line: when it started joining and when every video
frame of each remote participant was decoded (CLOCK_MONOTONIC seconds, comparable across
processes and namespaces), frame sizes, received bytes over time (video RTP, and everything the transport got), the NACKs and
keyframe requests it sent, and its own CPU time (what decoding cost it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench.jitterlink import delay_incoming
from kiosk_client.call import CallClient
from kiosk_client.rtpreceiver import tuned
from server.rtc.ice import restrict_host_addresses
from server.rtc.rtpseq import LearntDelay


class ByteCounter:
    """RTP bytes (header included) each video receiver of a peer connection got, retransmissions too."""

    def __init__(self) -> None:
        self.video = 0
        self.video_packets = 0
        self._hooked: set[int] = set()

    def hook(self, client: CallClient) -> None:
        for transceiver in client.pc.getTransceivers() if client.pc else []:
            receiver = transceiver.receiver
            if transceiver.kind != "video" or id(receiver) in self._hooked:
                continue
            self._hooked.add(id(receiver))
            handle = receiver._handle_rtp_packet

            async def counting(packet: Any, arrival_time_ms: int, handle: Any = handle) -> None:
                self.video += 12 + len(packet.payload) + packet.padding_size
                self.video_packets += 1
                await handle(packet, arrival_time_ms)

            receiver._handle_rtp_packet = counting  # type: ignore[method-assign]


def _nack_at_once(client: CallClient) -> None:
    """The receive path's NACK policy before the reorder allowance: every gap at once."""
    for transceiver in client.pc.getTransceivers() if client.pc else []:
        hook = tuned(transceiver.receiver)
        if hook is not None and hook.nack is not None and hook.nack.reorder.maximum > 0:
            hook.nack.reorder = LearntDelay(0.0, 0.0)


async def _transport_bytes(client: CallClient) -> int:
    if client.pc is None:
        return 0
    stats = await client.pc.getStats()
    return sum(s.bytesReceived for s in stats.values() if s.type == "transport")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.media_address:
        restrict_host_addresses([args.media_address])
    frames: dict[str, list[float]] = {}
    sizes: dict[str, tuple[int, int]] = {}

    def on_frame(participant_id: str, kind: str, frame: Any) -> None:
        if kind == "video":
            frames.setdefault(participant_id, []).append(time.monotonic())
            sizes[participant_id] = (frame.width, frame.height)

    connected: list[float] = []

    def watch(pc: Any) -> None:
        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState == "connected" and not connected:
                connected.append(time.monotonic())

    client = CallClient(args.server, args.token, on_frame=on_frame, configure_pc=watch)
    cpu_start = time.process_time()
    started = time.monotonic()
    counter = ByteCounter()
    # (monotonic time, video RTP bytes, all bytes the transport received) so far.
    samples: list[tuple[float, int, int]] = []
    try:
        await client.start()
        if args.layout:
            width, height = (int(v) for v in args.layout.split(":"))
            await client.signaling.send({
                "type": "layout",
                "tiles": [{"participant_id": pid, "width": width, "height": height} for pid in client.names if pid != client.self_id],
            })
        jittered = False
        while time.monotonic() - started < args.duration:
            counter.hook(client)
            if args.nack_at_once:
                _nack_at_once(client)
            await asyncio.sleep(min(0.5, max(0.0, args.duration - (time.monotonic() - started))))
            if args.jitter_ms and not jittered and client.pc is not None:
                jittered = delay_incoming(client.pc, args.jitter_ms / 1000, args.jitter_spread_ms / 1000) > 0
            samples.append((time.monotonic(), counter.video, await _transport_bytes(client)))
        hooks = [tuned(t.receiver) for t in client.pc.getTransceivers()] if client.pc else []
        video_hooks = [h for h in hooks if h is not None and h.kind == "video"]
        return {
            "started": started,
            "connected": connected[0] if connected else None,
            "ended": time.monotonic(),
            "frames": frames,
            # Per remote participant: from the offer that brought its video to its first frame.
            "first_frame_ms": {pid: media.first_video_frame_ms for pid, media in client.remote.items()},
            "sizes": sizes,
            "byte_samples": samples,
            "video_packets": counter.video_packets,
            "nack_requests": sum(h.nack.requests for h in video_hooks if h.nack is not None),
            "nack_reordered": sum(h.nack.reordered for h in video_hooks if h.nack is not None),
            "nack_needless": sum(h.nack.needless for h in video_hooks if h.nack is not None),
            "reorder_allowance_ms": max((h.nack.reorder.current * 1000 for h in video_hooks if h.nack is not None), default=0),
            "keyframe_requests": sum(h.stats.keyframe_requests for h in video_hooks),
            "decode_errors": sum(h.stats.decode_errors for h in video_hooks),
            "decoder_dropped": sum(h.stats.decoder_dropped for h in video_hooks),
            "frames_dropped_incomplete": sum(h.assembler.stats.frames_dropped_incomplete for h in video_hooks if h.assembler),
            "jittered": jittered,
            "cpu_s": time.process_time() - cpu_start,
        }
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--media-address", default="")
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--jitter-spread-ms", type=float, default=10.0)
    parser.add_argument("--nack-at-once", action="store_true", help="no reorder allowance (the old NACK policy)")
    parser.add_argument("--layout", default="", help="W:H: tell the server every tile is shown this size")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
