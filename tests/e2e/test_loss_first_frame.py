"""A subscriber on a link that loses 5 % of its UDP packets sees a new video within 1 s.

The subscriber runs in its own network namespace (`bench.netns`), where nftables drops 5 %
of UDP packets at random in both directions: RTP, RTCP, ICE and DTLS alike. The server and
the publishers stay on this side of the veth link. The subscriber joins first; then
publishers come one after another, and for each the time runs from the offer that brings
its video to the subscriber's first decoded frame of it: the keyframe request, the
keyframe's packets across the lossy link, NACKs for the lost ones, the decoder.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bench.netns import ImpairedLink
from kiosk_client.call import CallClient
from kiosk_client.media import open_audio
from server.appkeys import SFU_KEY

from tests.e2e.conftest import LinkServer
from tests.support import PatternTrack, eventually

REPO = Path(__file__).resolve().parents[2]
PUBLISHERS = 4
SECONDS_EACH = 2.5
LOSS_PERCENT = 5


async def test_a_new_video_shows_within_a_second_at_5_percent_loss(link: ImpairedLink, link_server: LinkServer) -> None:
    app, url, issue = link_server.app, link_server.url, link_server.token
    link.drop_udp_percent(LOSS_PERCENT)
    proc = await asyncio.create_subprocess_exec(
        *link.command([sys.executable, "-m", "bench.netclient", "--server", url,
                       "--token", issue(role="senior", room="room-1", name="Sub"),
                       "--duration", str(8 + (PUBLISHERS + 1) * SECONDS_EACH), "--media-address", link.ns_address]),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    publishers: list[CallClient] = []
    try:
        def subscriber_connected() -> bool:
            router = app[SFU_KEY].routers.get("room-1")
            return router is not None and any(
                t._pc is not None and t._pc.connectionState == "connected" for t in router.transports.values()
            )

        # The subscriber's peer connection is made with the first video it is offered: the
        # first publisher's first frame also waits for ICE and DTLS (not what is measured).
        for i in range(PUBLISHERS + 1):
            # Hosts: the main picture, so each keyframe is a burst of many packets to lose.
            publisher = CallClient(url, issue(role="host", room="room-1", name=f"Pub{i}"),
                                   video=PatternTrack(), audio=open_audio("tone").audio)
            publishers.append(publisher)
            await publisher.start()
            if i == 0:
                await eventually(subscriber_connected, timeout=15, what="the subscriber's connection")
            await asyncio.sleep(SECONDS_EACH)
            # One publisher at a time: this machine's CPU is not what is measured.
            await publisher.close()
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        report = json.loads(out.decode().strip().splitlines()[-1])
        first_ms = [report["first_frame_ms"].get(p.self_id) for p in publishers[1:]]
        print("first frame ms", first_ms, "join", report["first_frame_ms"].get(publishers[0].self_id))
        assert link.dropped_packets() > 0, "the loss rules dropped nothing: not measuring a lossy link"
        assert all(ms is not None and ms < 1000 for ms in first_ms), first_ms
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for publisher in publishers:
            await publisher.close()  # again for the ones closed already: a no-op
