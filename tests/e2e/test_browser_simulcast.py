"""Simulcast and temporal layers from real browsers, through the SFU, to aiortc and Chromium.

Chromium (Debian's, driven by Playwright with its fake camera) publishes from the call
page; Firefox ESR (Debian's `firefox-esr`) cannot be driven by Playwright (which needs its
own patched Firefox), so it runs headless with a prepared profile (fake camera, no
permission prompt) on the same page, and the test observes what it sends at the server and
at an aiortc subscriber.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser

from kiosk_client.call import CallClient
from server.appkeys import SFU_KEY
from server.rtc.ice import restrict_host_addresses

from tests.browser_helpers import browser, open_call  # noqa: F401  (fixture)
from tests.conftest import LOOPBACK_MEDIA, RunningServer, join
from tests.simulcast_publisher import SimulcastPublisher
from tests.support import eventually, listening_client

ROOM = "simulcast-room"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Probes upward every half second, so a test sees a climb through the layers.
    return {"layer_up_hold_s": 0.5}


class FixedEstimate:
    """A subscriber link estimate held at one figure, congested: what a weak link reports."""

    congested = True
    holding = True

    def __init__(self, bps: float) -> None:
        self.bps = bps
        self.available_bps: float | None = bps
        self.loss = 0.2

    def update(self, *args: Any) -> float:
        return self.bps


def _producer(server: RunningServer, participant_id: str) -> Any:
    router = server.app[SFU_KEY].routers[ROOM]
    return next((p for p in router.producers if p.kind == "video" and p.participant_id == participant_id), None)


@pytest.fixture
async def subscriber(server: RunningServer) -> AsyncIterator[CallClient]:
    async with listening_client(server.url, server.token(role="senior", room=ROOM, name="Sub", participant_id="p-sub")) as client:
        yield client


async def test_chromium_publishes_three_layers_with_temporal_layers_and_switches_cleanly(
    server: RunningServer, browser: Browser, subscriber: CallClient
) -> None:
    token = server.token(role="family", room=ROOM, name="Chromium", participant_id="p-chromium")
    async with asyncio.timeout(90):
        page = await open_call(browser, server.url, token)
        await page.wait_until_connected()
        await eventually(lambda: _producer(server, "p-chromium") is not None, what="the browser's video producer")
        producer = _producer(server, "p-chromium")
        assert producer.tap.simulcast is not None and producer.tap.simulcast.rids == ("h", "m", "l")
        settings = await page.value("window.verzilvering.mediaSettings()")
        assert settings["temporalMode"] == "L1T3", settings
        # Each layer at its share of whatever size publish_quality asks for.
        layers = settings["videoLayers"]
        assert [l["rid"] for l in layers] == ["h", "m", "l"]
        top_scale = layers[0]["scaleResolutionDownBy"]
        assert [l["scaleResolutionDownBy"] / top_scale for l in layers] == [1, 2, 4]
        # Chromium sends as many layers as its picture size allows (640x480: at least two).
        await eventually(lambda: len(producer.layers.available(time.monotonic())) >= 2,
                         timeout=15, what="two simulcast layers arriving")
        await eventually(lambda: producer.layers.temporal_layers == 3, timeout=10, what=f"three temporal layers {producer.layers.bps}")
        media = None
        await eventually(lambda: (m := subscriber.remote.get("p-chromium")) is not None and m.video_frames > 20,
                         timeout=20, what="video at the aiortc subscriber")
        media = subscriber.remote["p-chromium"]
        transport = server.app[SFU_KEY].routers[ROOM].transports["p-sub"]  # type: ignore[attr-defined]
        consumer = next(s.consumer for s in transport.consumer_slots.values() if s.consumer.producer is producer)
        top_height = media.video_height
        layers = producer.layers.available(time.monotonic())
        # A small tile: the smallest layer, decoded without a break.
        transport.set_layout({"p-chromium": (100, 75)})
        await eventually(lambda: consumer.current_spatial == layers[0], timeout=10, what="the smallest layer")
        await eventually(lambda: media.video_height < top_height, timeout=10, what="a smaller picture")
        frames = media.video_frames
        await eventually(lambda: media.video_frames > frames + 20, timeout=10, what="video going on after the switch down")
        # Nobody wants the larger layers now: the REMB makes room for the smallest only, and
        # Chromium stops sending the others.
        await eventually(lambda: producer.layers.available(time.monotonic()) == [layers[0]], timeout=20,
                         what=f"Chromium pausing the layers nobody watches (REMB {producer.downstream_limit()})")
        # A congested link with room for the base temporal layer only: a quarter of the
        # frames, still decoding (no gaps to wait for).
        async def fps() -> float:
            frames, started = media.video_frames, asyncio.get_running_loop().time()
            await asyncio.sleep(3.0)
            return (media.video_frames - frames) / (asyncio.get_running_loop().time() - started)

        full_fps = await fps()
        real_estimate = transport.estimate
        transport.estimate = FixedEstimate(producer.layers.rate(layers[0], 0) * 1.1)
        await eventually(lambda: consumer.current_temporal == 0, timeout=5, what="the base temporal layer")
        await asyncio.sleep(0.5)
        base_fps = await fps()
        assert full_fps / 6 <= base_fps <= full_fps / 2.5, f"{base_fps:.1f} fps on the base temporal layer, {full_fps:.1f} on all"
        assert consumer.current_temporal == 0
        # The link recovers: up again at the next layer-sync frames, on the same spatial layer
        # (so no keyframe was asked for: only a spatial switch asks).
        switches = consumer.layer_switches
        transport.estimate = real_estimate
        await eventually(lambda: consumer.current_temporal == 2, timeout=10, what="all temporal layers again")
        await asyncio.sleep(0.5)
        assert await fps() >= full_fps * 0.8
        assert consumer.layer_switches == switches and consumer.current_spatial == layers[0]
        # Back up to the full picture.
        transport.set_layout({"p-chromium": (640, 480)})
        await eventually(lambda: media.video_height == top_height, timeout=30, what="the full picture again")
        frames = media.video_frames
        await eventually(lambda: media.video_frames > frames + 20, timeout=10, what="video going on after the switch up")
        assert consumer.layer_switches >= 2


FIREFOX_PREFS = """
user_pref("media.navigator.permission.disabled", true);
user_pref("media.navigator.streams.fake", true);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.enabled", false);
// Firefox hides its host candidates behind mDNS names unless told not to.
user_pref("media.peerconnection.ice.obfuscate_host_addresses", false);
"""


def machine_address() -> str:
    """This machine's IPv4 address towards its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))  # TEST-NET-2: only the route is looked up
        return probe.getsockname()[0]


@pytest.fixture
def firefox_media() -> Iterator[None]:
    """Firefox gathers no loopback candidates, so this test's media (server and subscriber,
    both in this process) uses the machine's own address; set before `subscriber` connects."""
    restrict_host_addresses([machine_address()])
    yield
    restrict_host_addresses(list(LOOPBACK_MEDIA))


async def test_firefox_esr_publishes_simulcast_the_server_forwards(
    server: RunningServer, firefox_media: None, subscriber: CallClient, tmp_path: Path
) -> None:
    profile = tmp_path / "firefox-profile"
    profile.mkdir()
    (profile / "user.js").write_text(FIREFOX_PREFS)
    token = server.token(role="family", room=ROOM, name="Firefox", participant_id="p-firefox")
    firefox = await asyncio.create_subprocess_exec(
        "firefox-esr", "--headless", "--no-remote", "--profile", str(profile), f"{server.url}/call?token={token}",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(90):
            await eventually(lambda: _producer(server, "p-firefox") is not None, timeout=45,
                             what="Firefox's video producer")
            producer = _producer(server, "p-firefox")
            # Firefox's own answer to the server's offer took all three rids and the rid extensions.
            assert producer.tap.simulcast is not None and set(producer.tap.simulcast.rids) == {"h", "m", "l"}
            assert producer.tap.simulcast.rid_extension_id == 4
            # Firefox sends as many layers as its picture size allows, each on its own SSRC.
            await eventually(lambda: len(producer.tap.layer_ssrcs) >= 2, timeout=20, what="two layers from Firefox")
            await eventually(lambda: (m := subscriber.remote.get("p-firefox")) is not None and m.video_frames > 20,
                             timeout=20, what="Firefox's video at the aiortc subscriber")
    finally:
        firefox.terminate()
        await firefox.wait()


async def test_chromium_receives_one_clean_stream_while_layers_switch(
    server: RunningServer, browser: Browser, connect: Any
) -> None:
    ws = await connect()
    await join(ws, server.token(room=ROOM, name="Pub", participant_id="p-pub"), room=ROOM)
    publisher = SimulcastPublisher(ws)
    await publisher.start()
    try:
        token = server.token(role="family", room=ROOM, name="Chromium", participant_id="p-viewer")
        async with asyncio.timeout(90):
            page = await open_call(browser, server.url, token)
            await page.wait_until_connected()
            transport = server.app[SFU_KEY].routers[ROOM].transports["p-viewer"]
            # The page reports its tiles by itself.
            await eventually(lambda: transport.layout is not None and "p-pub" in transport.layout, timeout=20,
                             what="the page's layout message")

            async def video() -> dict[str, Any]:
                return (await page.value("window.verzilvering.stats()")).get("p-pub", {}).get("video", {})

            async def decoding_at(height: int, what: str) -> None:
                await page.wait_for("() => window.verzilvering.stats().then(s => s['p-pub']?.video ?? {})",
                                    until=lambda v: v.get("height") == height, timeout_s=20, what=what)
                before = (await video())["framesDecoded"]
                await page.wait_for("() => window.verzilvering.stats().then(s => s['p-pub']?.video ?? {})",
                                    until=lambda v: v.get("framesDecoded", 0) >= before + 20, timeout_s=10,
                                    what=f"decoding going on at {height} lines")

            transport.set_layout({"p-pub": (320, 240)})
            await decoding_at(240, "the top layer")
            await page.value("window.verzilvering.quality()")  # loss is counted from here
            transport.set_layout({"p-pub": (80, 60)})
            await decoding_at(60, "the smallest layer")
            transport.set_layout({"p-pub": (320, 240)})
            await decoding_at(120, "the middle layer, one probe up")
            await decoding_at(240, "the top layer again")
            # Three switches, and Chromium saw no sequence gap: nothing counted lost.
            quality = (await page.value("window.verzilvering.quality()"))["p-pub"]
            assert quality["lossPct"] == 0, quality
            consumer = next(s.consumer for s in transport.consumer_slots.values() if s.consumer.kind == "video")
            assert consumer.layer_switches >= 3
    finally:
        await publisher.close()
