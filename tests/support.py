"""Helpers that test modules of more than one layer share (test modules never import each other)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiortc import VideoStreamTrack
from av import VideoFrame

from bench.vp8_retarget import pattern_frame
from kiosk_client.call import CallClient, RemoteMedia
from kiosk_client.media import open_audio
from server.directory import Directory
from server.pairing import confirm_pairing
from server.store import Store

from tests.conftest import RunningServer


async def eventually(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.05)


def media_from(client: CallClient, other: CallClient) -> RemoteMedia | None:
    assert other.self_id is not None
    return client.remote.get(other.self_id)


async def paired_kiosk(
    http: aiohttp.ClientSession, base_url: str, store: Store, directory: Directory, senior_id: str
) -> dict[str, str]:
    """A kiosk starts pairing over HTTP and a coordinator confirms its code: the kiosk's device credential."""
    async with http.post(base_url + "/api/kiosk/pair") as r:
        assert r.status == 201
        started = await r.json()
    await confirm_pairing(store, directory, started["code"], senior_id, actor="test")
    async with http.get(
        f"{base_url}/api/kiosk/pair/{started['pairing_id']}", headers={"X-Pairing-Secret": started["secret"]}
    ) as r:
        assert r.status == 200
        return await r.json()


class PatternTrack(VideoStreamTrack):
    """A camera-like 640x480 picture at 30 fps that fits in 200 kbps (bench.vp8_retarget)."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = pattern_frame(pts // 3000)
        frame.pts, frame.time_base = pts, time_base
        return frame


class RecordingFeed:
    """Stands in for SenderFeed (whose real sending is covered by the call tests)."""

    ready = True
    ssrc = 4242
    remb_bps = None
    retransmits = 0
    on_keyframe_request = None

    def __init__(self) -> None:
        self.sent: list[tuple[int, int, int]] = []

    def payload_type_for(self, mime_type: str) -> int | None:
        return 111 if mime_type.lower() == "audio/opus" else None

    def send_now(self, payload_type: int, marker: int, seq: int, ts: int, payload: bytes, stamp: Any) -> None:
        self.sent.append((payload_type, seq, ts))


@contextlib.asynccontextmanager
async def pattern_publisher_and_viewer(
    server: RunningServer, *, role: str = "host", names: tuple[str, str] = ("Kiosk", "Viewer"), video_frames: int = 30
) -> AsyncIterator[tuple[CallClient, CallClient]]:
    """In room-1, a publisher of PatternTrack and a tone (a host by default: the main picture's
    bitrate) and a viewer, once the viewer has decoded more than `video_frames` of its frames."""
    publisher = CallClient(server.url, server.token(role=role, name=names[0]), video=PatternTrack(), audio=open_audio("tone").audio)
    viewer = CallClient(server.url, server.token(name=names[1]))
    try:
        await publisher.start()
        await viewer.start()
        await eventually(lambda: (m := media_from(viewer, publisher)) is not None and m.video_frames > video_frames, what="video")
        yield publisher, viewer
    finally:
        await viewer.close()
        await publisher.close()


# --- what a server tells a kiosk (kiosk_client/appliance.py's inputs) ----------------------------

START = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.timezone.utc)  # a Tuesday, 10:00 in Almere


def welcome(auto_join: bool = True, language: str = "nl", start: dt.datetime = START) -> dict:
    return {
        "type": "device_welcome",
        "kiosk_id": "kiosk-1",
        "senior": {"id": "s-1", "name": "Mevrouw Jansen", "language": language, "auto_join": auto_join},
        "contacts": [
            {"id": "c-sanne", "name": "Sanne de Vries", "trusted": True, "auto_answer": True, "photo_url": ""},
            {"id": "c-kees", "name": "Kees", "trusted": True, "auto_answer": False, "photo_url": ""},
            {"id": "c-piet", "name": "Buurman Piet", "trusted": False, "auto_answer": False, "photo_url": ""},
        ],
        "activities": [
            {"id": "a-gym", "title": "Stoelgym", "next_start": start.astimezone(dt.timezone(dt.timedelta(hours=1))).isoformat(), "duration_min": 45}
        ],
        "ping_interval_ms": 10000,
        "ice_servers": [],
    }


def incoming(contact_id: str = "c-sanne", call_id: str = "call-1", ring_ms: int = 30000) -> dict:
    contacts = {c["id"]: c for c in welcome()["contacts"]}
    return {"type": "incoming_call", "call_id": call_id, "contact": contacts[contact_id], "ring_timeout_ms": ring_ms}


def big_family(**kwargs: object) -> dict:
    """A senior with seven trusted contacts (the coordinator put Emma and Lotte first) and
    a neighbour who is not trusted."""
    message = welcome(**kwargs)  # type: ignore[arg-type]
    names = ["Sanne de Vries", "Kees", "Anna", "Bram", "Daan", "Emma", "Lotte"]
    positions = {"Emma": 1, "Lotte": 2}
    message["contacts"] = [
        {"id": f"c-{name.split()[0].lower()}", "name": name, "trusted": True, "auto_answer": name == "Sanne de Vries",
         "photo_url": "", "position": positions.get(name, 10)}
        for name in names
    ] + [{"id": "c-piet", "name": "Buurman Piet", "trusted": False, "auto_answer": False, "photo_url": "", "position": 0}]
    return message


async def scrape_metrics(url: str) -> tuple[str, dict[str, float]]:
    """A server's /metrics: the text, and each verzilvering_ sample by name (labels included)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
    return text, {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("verzilvering_")
    }


@contextlib.asynccontextmanager
async def listening_client(url: str, token: str) -> AsyncIterator[CallClient]:
    """A kiosk CallClient that publishes nothing, started, and closed after use."""
    client = CallClient(url, token, video=None, audio=None)
    await client.start()
    try:
        yield client
    finally:
        await client.close()
