"""A call through the Verzilvering SFU: signalling, one peer connection, and what arrived."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamError

from server.tasks import TaskOwner

from .opus import opus_offer
from .publishing import PublishControl, ScaledVideoTrack
from .rtpreceiver import install_tuned_receiver
from .signaling import SignalingClient, answer_offers

logger = logging.getLogger(__name__)


def _advanced(first_pts: int | None, last_pts: int | None) -> bool:
    """Whether a track's timestamps moved on: frames arrived and they were not all the same one."""
    return first_pts is not None and last_pts is not None and last_pts > first_pts


@dataclass
class RemoteMedia:
    """What one remote participant's media looked like on arrival."""

    name: str
    video_frames: int = 0
    video_width: int = 0
    video_height: int = 0
    video_first_pts: int | None = None
    video_last_pts: int | None = None
    audio_frames: int = 0
    audio_first_pts: int | None = None
    audio_last_pts: int | None = None
    first_video_frame_ms: float | None = None
    first_audio_frame_ms: float | None = None
    last_video_frame_ms: float | None = None
    # The longest wait between two video frames: how long the picture froze at worst.
    longest_video_gap_ms: float = 0.0

    @property
    def video_advancing(self) -> bool:
        return _advanced(self.video_first_pts, self.video_last_pts)

    @property
    def audio_advancing(self) -> bool:
        return _advanced(self.audio_first_pts, self.audio_last_pts)

    def record(self, kind: str, frame: Any, elapsed_ms: float) -> None:
        """Counts one decoded frame; `elapsed_ms` since the track was offered."""
        if kind == "video":
            self.video_frames += 1
            self.video_width, self.video_height = frame.width, frame.height
            if self.video_first_pts is None:
                self.video_first_pts = frame.pts
                self.first_video_frame_ms = round(elapsed_ms, 1)
            self.video_last_pts = frame.pts
            if self.last_video_frame_ms is not None:
                self.longest_video_gap_ms = max(self.longest_video_gap_ms, round(elapsed_ms - self.last_video_frame_ms, 1))
            self.last_video_frame_ms = round(elapsed_ms, 1)
        else:
            self.audio_frames += 1
            if self.audio_first_pts is None:
                self.audio_first_pts = frame.pts
                self.first_audio_frame_ms = round(elapsed_ms, 1)
            self.audio_last_pts = frame.pts

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["video_advancing"] = self.video_advancing
        data["audio_advancing"] = self.audio_advancing
        return data


class CallClient:
    def __init__(
        self,
        server: str | list[str],
        token: str,
        *,
        video: MediaStreamTrack | None = None,
        audio: MediaStreamTrack | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_frame: Callable[[str, str, Any], None] | None = None,
        configure_pc: Callable[[RTCPeerConnection], None] | None = None,
        heartbeat: float | None = None,
        tuned_receiver: bool = True,
    ) -> None:
        """`on_event` sees every server message; `on_frame(participant_id, kind, frame)` every
        decoded frame; `configure_pc` each new peer connection before it is used;
        `heartbeat` (seconds) detects a dead signalling socket (None: rely on TCP);
        `tuned_receiver` False keeps aiortc's stock receive path (benchmarks compare both)."""
        self.tuned_receiver = tuned_receiver
        self.signaling = SignalingClient(server, token, self._on_message, heartbeat=heartbeat)
        # Scaled to whatever height the server asks for this participant's tile.
        self.video = ScaledVideoTrack(video) if video is not None else None
        self.publishing = PublishControl(self.video)
        self.audio = audio
        self.on_event = on_event
        self.on_frame = on_frame
        self.configure_pc = configure_pc
        self.pc: RTCPeerConnection | None = None
        self.self_id: str | None = None
        self.room: str | None = None
        self.names: dict[str, str] = {}
        self.remote: dict[str, RemoteMedia] = {}
        self.events: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.joined = asyncio.Event()
        self.removed = asyncio.Event()
        self._mids: dict[str, dict[str, Any]] = {}
        self._offered_at: dict[str, float] = {}
        # The negotiation loop and one task per received track, ended by close().
        self._tasks = TaskOwner("kiosk-call")
        self._offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._negotiator: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()

    async def start(self) -> None:
        await self.connect()
        await asyncio.wait_for(self.joined.wait(), timeout=10)
        await self.publish()

    async def connect(self) -> None:
        """Says hello and asks to join; `joined` (or `lobby`) follows as a message."""
        welcome = await self.signaling.connect()
        self.room = welcome["room"]
        self._negotiator = self._tasks.spawn(self._negotiate(), name="kiosk-negotiate")
        await self.signaling.send({"type": "join", "room": self.room})

    def attach_media(self, video: MediaStreamTrack | None, audio: MediaStreamTrack | None) -> None:
        """Sets camera and microphone after construction and before `publish` — the kiosk
        opens them only once admitted to the room."""
        self.video = ScaledVideoTrack(video) if video is not None else None
        self.publishing = PublishControl(self.video)
        self.audio = audio

    async def publish(self) -> None:
        """Publishes whichever of `video` and `audio` is set."""
        if self.video is not None or self.audio is not None:
            await self.signaling.send(
                {"type": "publish", "audio": self.audio is not None, "video": self.video is not None}
            )

    def _new_peer_connection(self) -> RTCPeerConnection:
        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in self.signaling.welcome.get("ice_servers", [])
        ]
        # An explicit list, even when empty: aiortc's default is a public STUN server.
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        # Frames leave the jitter buffer when complete, not when the next one starts.
        if self.tuned_receiver:
            install_tuned_receiver(pc)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._connection_state_changed)
        if self.configure_pc is not None:
            self.configure_pc(pc)
        return pc

    def _connection_state_changed(self) -> None:
        if self.pc is not None and self.pc.connectionState in ("connected", "failed", "closed"):
            self._settled.set()

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "joined":
            self.self_id = message["self_id"]
            for p in message["participants"]:
                self.names[p["participant_id"]] = p["name"]
            self.joined.set()
        elif kind == "participant_joined":
            self.names[message["participant"]["participant_id"]] = message["participant"]["name"]
        elif kind == "offer":
            self._offers.put_nowait(message)
        elif kind == "publish_quality":
            self.publishing.quality(message.get("video", {}))
        elif kind == "error":
            logger.warning("server error %s: %s", message.get("code"), message.get("message"))
            self.errors.append(message)
        elif kind == "removed":
            self.removed.set()
        if kind not in ("pong",):
            self.events.append(message)
        if self.on_event is not None:
            self.on_event(message)

    async def _negotiate(self) -> None:
        await answer_offers(self._offers, self._answer, self._negotiation_failed)

    def _negotiation_failed(self, offer: dict[str, Any], exc: Exception) -> None:
        if isinstance(exc, InvalidStateError):
            # The call is being closed (or rebuilt) under this negotiation.
            logger.debug("negotiation %s: peer connection closed", offer.get("negotiation_id"))
        else:
            logger.error("negotiation %s failed", offer.get("negotiation_id"), exc_info=exc)

    async def _answer(self, offer: dict[str, Any]) -> None:
        if self.pc is None:
            self.pc = self._new_peer_connection()
        pc = self.pc
        now = time.monotonic()
        current = {c["mid"] for c in offer["consumers"]}
        ended = [mid for mid in self._mids if mid not in current]
        for consumer in offer["consumers"]:
            if consumer["mid"] not in self._mids:
                self._offered_at[consumer["mid"]] = now
            self._mids[consumer["mid"]] = consumer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        opus = opus_offer(offer["sdp"])
        for kind, mid in offer["publish"].items():
            track = self.video if kind == "video" else self.audio
            transceiver = next((t for t in pc.getTransceivers() if t.mid == mid), None)
            if transceiver is None or track is None:
                continue
            if transceiver.sender.track is not track:
                transceiver.sender.replaceTrack(track)
            self.publishing.hook_sender(transceiver.sender, opus)
            transceiver.direction = "sendonly"
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        sdp = pc.localDescription.sdp
        video_mid = offer["publish"].get("video")
        video = next((t for t in pc.getTransceivers() if t.mid == video_mid), None) if video_mid else None
        if video is not None and self.video is not None:
            sdp = self.publishing.simulcast_answer(offer["sdp"], sdp, video)
        await self.signaling.send({"type": "answer", "sdp": sdp, "negotiation_id": offer["negotiation_id"]})
        # A consumer missing from the offer has ended: free its receiver now rather than
        # when the call ends, so a long activity with many comings and goings stays lean.
        for mid in ended:
            del self._mids[mid]
            transceiver = next((t for t in pc.getTransceivers() if t.mid == mid), None)
            if transceiver is not None:
                await transceiver.receiver.stop()

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.pc is not None
        transceiver = next((t for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        consumer = self._mids.get(transceiver.mid) if transceiver and transceiver.mid else None
        if consumer is None:
            logger.warning("track on an unknown transceiver")
            return
        self._tasks.spawn(
            self._consume(track, consumer, self._offered_at.get(consumer["mid"], time.monotonic())), name="kiosk-consume"
        )

    async def _consume(self, track: MediaStreamTrack, consumer: dict[str, Any], since: float) -> None:
        participant_id = consumer["participant_id"]
        media = self.remote.get(participant_id)
        if media is None:
            media = self.remote[participant_id] = RemoteMedia(name=self.names.get(participant_id, ""))
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self.on_frame is not None:
                self.on_frame(participant_id, consumer["kind"], frame)
            media.record(consumer["kind"], frame, (time.monotonic() - since) * 1000)

    def report(self) -> dict[str, Any]:
        return {
            "self_id": self.self_id,
            "room": self.room,
            "participants": {pid: m.to_dict() for pid, m in self.remote.items()},
        }

    async def close(self) -> None:
        if self._negotiator is not None:
            self._negotiator.cancel()
        self.publishing.close()
        await self.signaling.close()
        await self._tasks.close()
        if self.pc is not None:
            if self.pc.remoteDescription is not None and not self._settled.is_set():
                # Closing mid-connect races aiortc's connect task (see server/sfu/transport.py).
                try:
                    await asyncio.wait_for(self._settled.wait(), 10)
                except asyncio.TimeoutError:
                    pass
            await self.pc.close()
