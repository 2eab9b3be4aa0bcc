"""Being in one room, and staying there: the kiosk's self-healing wrapper around CallClient.

aiortc has no ICE restart, so when the media path is lost the kiosk builds everything again
— a fresh signalling session and a fresh peer connection — and joins the same room with
the same token. Reasons to rebuild:

- the signalling session could not be resumed (`connection_lost`; the socket itself is
  watched with WebSocket heartbeats, so a silently cut network is noticed within seconds),
  or the server said `reconnect` (its node drains, or the room's node is gone);
- the peer connection failed or closed, or the server said `removed` `media_failed`;
- the watchdog: others are publishing, yet nothing was decoded for `watchdog_s` seconds
  (a hung decoder or a one-way dead path that ICE consent has not noticed yet).

Between attempts: exponential backoff with jitter, capped at a few seconds so the kiosk is
back soon after the network is. Reasons that end the stay instead: `kicked` (also a
`banned` refusal: a host keeps the senior out), `ended` (also `activity_ended`), `denied`,
`replaced`, `room_full`, `forbidden`, `token` (token refused, expired or revoked — the
owner fetches a new one), or `stop()`. A refused token never loops reconnecting.

Privacy: camera and microphone are opened only after `joined` — that is, after admission
(a locked room's lobby never sees them) — and closed again when the attempt ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaPlayer, MediaRelay
from aiortc.mediastreams import MediaStreamError

from server.tasks import TaskOwner

from .appliance import Participant
from .backoff import Backoff
from .call import CallClient
from .media import open_audio, open_video
from .signaling import NETWORK_ERRORS, SignalingError

logger = logging.getLogger(__name__)

TERMINAL = {"kicked", "ended", "denied", "replaced", "room_full", "forbidden", "token", "stopped"}
# Error codes (at hello or join) that end the stay, and as what.
REFUSALS = {
    "token_invalid": "token",
    "token_expired": "token",
    "token_wrong_room": "token",
    "token_revoked": "token",
    "unsupported_version": "token",
    "banned": "kicked",
    "activity_ended": "ended",
    "room_full": "room_full",
    "forbidden": "forbidden",
}
JOIN_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 20.0
SETTLE_GRACE_S = 15.0


class Sources:
    """Camera and microphone for one stay in a room, opened on admission, closed after."""

    def __init__(self, video: str | None, audio: str | None, *, width: int = 640, height: int = 480, fps: int = 25, self_view: bool = True) -> None:
        self.video_source = video
        self.audio_source = audio
        self.width, self.height, self.fps = width, height, fps
        self.self_view = self_view
        self.errors: list[str] = []

    def open(self) -> "OpenSources":
        opened = OpenSources()
        if self.video_source:
            try:
                opened.video_player = open_video(self.video_source, self.width, self.height, self.fps)
                if opened.video_player.video is not None:
                    relay = MediaRelay()
                    opened.video = relay.subscribe(opened.video_player.video, buffered=False)
                    if self.self_view:
                        opened.self_view = relay.subscribe(opened.video_player.video, buffered=False)
            except Exception as exc:
                logger.warning("camera %s could not be opened: %s", self.video_source, exc)
                self.errors.append(f"camera: {exc}")
        if self.audio_source:
            try:
                opened.audio_player = open_audio(self.audio_source)
                opened.audio = opened.audio_player.audio
            except Exception as exc:
                logger.warning("microphone %s could not be opened: %s", self.audio_source, exc)
                self.errors.append(f"microphone: {exc}")
        return opened


@dataclass
class OpenSources:
    video_player: MediaPlayer | None = None
    audio_player: MediaPlayer | None = None
    video: MediaStreamTrack | None = None
    audio: MediaStreamTrack | None = None
    self_view: MediaStreamTrack | None = None

    def close(self) -> None:
        for track in (self.video, self.self_view, self.audio):
            if track is not None:
                track.stop()
        for player in (self.video_player, self.audio_player):
            for track in (player.video, player.audio) if player is not None else ():
                if track is not None:
                    track.stop()


@dataclass
class RemoteTrack:
    participant_id: str
    kind: str
    muted: bool


@dataclass(eq=False)
class RoomConnection:
    server: str | list[str]
    token: str
    _: KW_ONLY
    sources: Sources
    on_event: Callable[..., None]
    on_frame: Callable[[str, str, Any], None] | None = None
    watchdog_s: float = 10.0
    heartbeat_s: float = 5.0
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.5, cap=4.0))

    def __post_init__(self) -> None:
        self.client: CallClient | None = None
        self.opened: OpenSources | None = None
        self.room: str | None = None
        self.self_id: str | None = None
        self.participants: dict[str, Participant] = {}
        self.tracks: dict[str, RemoteTrack] = {}
        self.attempts = 0
        self.rebuilds: list[str] = []  # why each rebuild happened
        self.joined_count = 0
        self.frames_received = 0
        self.last_frame_at: float | None = None
        self.outcome: str | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._stopping = asyncio.Event()
        # The room's loop, the self view, layout sends and old calls' closes; stop() ends them.
        self._tasks = TaskOwner("kiosk-room")
        self._task: asyncio.Task[None] | None = None
        # Old calls still closing, left SETTLE_GRACE_S to say goodbye when the room stops.
        self._closing: set[asyncio.Task[None]] = set()
        self._self_view_task: asyncio.Task[None] | None = None
        # The tile sizes last told to the server, and the message on its way.
        self._layout_sent: dict[str, tuple[int, int]] | None = None
        self._layout_task: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = self._tasks.spawn(self._run(), name="kiosk-room")

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def stop(self) -> None:
        """Leaves the room (telling the server) and closes camera and microphone."""
        self._stopping.set()
        self._inbox.put_nowait({"type": "_stop"})
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
            except asyncio.TimeoutError:
                self._task.cancel()
        if self._closing:
            await asyncio.wait(self._closing, timeout=SETTLE_GRACE_S)
        await self._tasks.close()

    async def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.attempts += 1
                connected_since = time.monotonic()
                outcome = await self._attempt()
                if self._stopping.is_set():
                    outcome = "stopped"
                if outcome in TERMINAL:
                    self.outcome = outcome
                    if outcome != "stopped":
                        self.on_event("ended", reason=outcome)
                    return
                self.rebuilds.append(outcome)
                logger.info("room %s: rebuilding after %s", self.room, outcome)
                self.on_event("reconnecting")
                if time.monotonic() - connected_since > 60:
                    self.backoff.reset()
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=self.backoff.next())
                except asyncio.TimeoutError:
                    pass
        except Exception:
            logger.exception("room connection failed")
            self.outcome = "crashed"
            self.on_event("ended", reason="crashed")

    # --- one attempt --------------------------------------------------------------------

    def _client_event(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("pong", "offer", "answer"):
            return
        self._track_room(message)
        self._inbox.put_nowait(message)

    def _frame(self, participant_id: str, kind: str, frame: Any) -> None:
        self.frames_received += 1
        self.last_frame_at = time.monotonic()
        if self.on_frame is not None:
            self.on_frame(participant_id, kind, frame)

    async def _attempt(self) -> str:
        self._inbox = asyncio.Queue()
        self.tracks.clear()
        client = CallClient(
            self.server,
            self.token,
            on_event=self._client_event,
            on_frame=self._frame,
            # CallClient installs the tuned low-latency receive path (rtpreceiver.py) itself.
            heartbeat=self.heartbeat_s,
        )
        self.client = client
        self._layout_sent = None  # a new session hears the layout again
        self.on_event("connecting")
        try:
            try:
                await asyncio.wait_for(client.connect(), timeout=CONNECT_TIMEOUT_S)
            except SignalingError as exc:
                self.on_event("connect_failed", error=exc)
                return REFUSALS.get(exc.code, "network")
            except NETWORK_ERRORS as exc:
                self.on_event("connect_failed", error=exc)
                return "network"
            self.room = client.room
            outcome = await self._until_admitted()
            if outcome is not None:
                return outcome
            self._admitted(client)
            await client.publish()
            return await self._monitor(client)
        except (ConnectionError, aiohttp.ClientError, OSError):
            return "network"
        finally:
            self._release(client)

    async def _until_admitted(self) -> str | None:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        in_lobby = False
        while True:
            timeout = None if in_lobby else max(0.0, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(self._inbox.get(), timeout=timeout)
            except asyncio.TimeoutError:
                return "network"
            kind = message.get("type")
            if kind == "joined":
                return None
            if kind == "lobby":
                in_lobby = True
                self.on_event("lobby")
                continue
            outcome = self._ending(message)
            if outcome is not None:
                return outcome

    def _ending(self, message: dict[str, Any]) -> str | None:
        kind = message.get("type")
        if kind == "_stop":
            return "stopped"
        if kind == "denied":
            return "denied"
        if kind == "removed":
            reason = message.get("reason")
            if reason == "revoked":
                return "token"
            return "media" if reason == "media_failed" else str(reason or "kicked")
        if kind == "connection_lost":
            return "network"
        if kind == "reconnect":
            # The session's node is going (draining) or gone: a resume cannot succeed,
            # so build again now rather than after a refused resume.
            return "network"
        if kind == "left":
            return "stopped"
        if kind == "error":
            return REFUSALS.get(str(message.get("code")))
        return None

    def show_layout(self, tiles: dict[str, tuple[int, int]]) -> None:
        """Tells the server the size each participant's picture is shown at, when it changed,
        so it forwards a layer that fits (a tile needs far less than the main picture)."""
        client = self.client
        if client is None or not client.joined.is_set() or tiles == self._layout_sent:
            return
        if self._layout_task is not None and not self._layout_task.done():
            return  # the next frame drawn tries again
        message = {
            "type": "layout",
            "tiles": [{"participant_id": pid, "width": w, "height": h} for pid, (w, h) in sorted(tiles.items())],
        }
        self._layout_task = self._tasks.spawn(self._send_layout(client, message, dict(tiles)), name="kiosk-layout")

    async def _send_layout(self, client: CallClient, message: dict[str, Any], tiles: dict[str, tuple[int, int]]) -> None:
        try:
            await client.signaling.send(message)
        except NETWORK_ERRORS:
            return  # a closed socket: the room reconnects and the layout is sent again
        self._layout_sent = tiles

    def _admitted(self, client: CallClient) -> None:
        self.joined_count += 1
        self.opened = self.sources.open()
        client.attach_media(self.opened.video, self.opened.audio)
        if self.opened.self_view is not None and self.on_frame is not None:
            self._self_view_task = self._tasks.spawn(self._show_self(self.opened.self_view), name="kiosk-self-view")
        self.on_event("joined", self_id=self.self_id, participants=list(self.participants.values()))

    async def _show_self(self, track: MediaStreamTrack) -> None:
        assert self.on_frame is not None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.on_frame("self", "video", frame)

    async def _monitor(self, client: CallClient) -> str:
        published_at = time.monotonic()
        expecting_since: float | None = None
        while True:
            try:
                message = await asyncio.wait_for(self._inbox.get(), timeout=0.5)
            except asyncio.TimeoutError:
                message = None
            if message is not None:
                outcome = self._ending(message)
                if outcome is not None:
                    return outcome
                continue
            now = time.monotonic()
            pc = client.pc
            if pc is not None and pc.connectionState in ("failed", "closed"):
                return "media"
            if pc is None or pc.connectionState != "connected":
                if now - published_at > JOIN_TIMEOUT_S:
                    return "media"
                continue
            expecting = any(t.participant_id != self.self_id and not t.muted for t in self.tracks.values())
            if not expecting:
                expecting_since = None
                continue
            if expecting_since is None:
                expecting_since = now
            progress = max(expecting_since, published_at, self.last_frame_at or 0.0)
            if now - progress > self.watchdog_s:
                logger.warning("room %s: nothing decoded for %.0f s; rebuilding", self.room, now - progress)
                return "watchdog"

    def _release(self, client: CallClient) -> None:
        if self._self_view_task is not None:
            self._self_view_task.cancel()
            self._self_view_task = None
        if self._layout_task is not None:
            self._layout_task.cancel()
            self._layout_task = None
        opened, self.opened = self.opened, None
        if opened is not None:
            opened.close()
        task = self._tasks.spawn(self._close_client(client), name="kiosk-call-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_client(self, client: CallClient) -> None:
        try:
            await asyncio.wait_for(client.close(), timeout=SETTLE_GRACE_S)
        except Exception as exc:  # a dead network makes a polite goodbye impossible
            logger.debug("closing the old call: %s", exc)
            if client.pc is not None:
                await client.pc.close()

    # --- room state, forwarded to the kiosk ---------------------------------------------

    def _track_room(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "joined":
            self.self_id = message.get("self_id")
            self.participants = {
                p["participant_id"]: _participant(p) for p in message.get("participants", [])
            }
            self.tracks = {
                t["track_id"]: RemoteTrack(t["participant_id"], t["kind"], bool(t.get("muted")))
                for t in message.get("tracks", [])
            }
        elif kind == "participant_joined":
            participant = _participant(message["participant"])
            self.participants[participant.id] = participant
            self.on_event("participant_joined", participant=participant)
        elif kind == "participant_updated":
            participant = _participant(message["participant"])
            self.participants[participant.id] = participant
            self.on_event("participant_updated", participant=participant)
        elif kind == "participant_left":
            pid = message.get("participant_id", "")
            if pid == self.self_id:
                # An earlier session of ours, replaced by this one: we are still here.
                return
            self.participants.pop(pid, None)
            self.tracks = {k: t for k, t in self.tracks.items() if t.participant_id != pid}
            self.on_event("participant_left", participant_id=pid)
        elif kind == "track_published":
            t = message["track"]
            self.tracks[t["track_id"]] = RemoteTrack(t["participant_id"], t["kind"], bool(t.get("muted")))
        elif kind == "track_unpublished":
            self.tracks.pop(message.get("track_id", ""), None)
        elif kind == "mute_changed":
            for t in self.tracks.values():
                if t.participant_id == message.get("participant_id") and t.kind == message.get("kind"):
                    t.muted = bool(message.get("muted"))


def _participant(data: dict[str, Any]) -> Participant:
    return Participant(
        id=str(data.get("participant_id", "")),
        name=str(data.get("name", "")),
        role=str(data.get("role", "")),
        connected=bool(data.get("connected", True)),
    )
