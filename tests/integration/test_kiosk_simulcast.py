"""The kiosk publishes simulcast to the SFU: its picture (h) and a ¼-size layer (l) from a second encoder."""

from __future__ import annotations

from server.appkeys import SFU_KEY

from tests.conftest import RunningServer
from tests.support import eventually, media_from, pattern_publisher_and_viewer


async def test_a_kiosk_host_sends_h_and_l_and_each_layer_takes_its_own_keyframe_requests(server: RunningServer) -> None:
    # A host: the main picture at 480 lines, big enough for a ¼-size layer.
    async with pattern_publisher_and_viewer(server) as (kiosk, viewer):
        producer = next(p for p in server.app[SFU_KEY].routers["room-1"].producers if p.kind == "video" and p.participant_id == kiosk.self_id)
        tap = producer.tap
        assert tap.simulcast is not None and tap.simulcast.rids == ("h", "l")
        await eventually(lambda: set(tap.layer_ssrcs) == {0, 2}, what="both layers at the SFU")
        low = kiosk.publishing.low_layer
        assert low is not None and low.sent > 0
        assert tap.layer_ssrcs[0] == low.ssrc
        assert low.encoder._config.g_h == 120  # a quarter of 480 lines
        # A keyframe request for the low layer reaches the low layer's encoder only.
        plis = low.plis
        await tap.request_keyframe(layer=0)
        await eventually(lambda: low.plis > plis, what="the PLI at the low layer")
        frames = media_from(viewer, kiosk).video_frames  # type: ignore[union-attr]
        await eventually(lambda: media_from(viewer, kiosk).video_frames > frames + 30, what="video goes on")  # type: ignore[union-attr]
