"""`verzilvering-kiosk run`: the appliance. Wires the state machine (appliance.py) to the
world: pairing over HTTP, the device WebSocket, rooms, the screen, the speaker.

Everything runs on one asyncio loop. The state machine decides; this module only carries
out its actions and feeds it events:

    pairing ─▶ DeviceClient ─▶ Appliance.device_* ─▶ actions ─▶ RoomConnection / Speaker / Send
                                     ▲                               │
    Display taps, tick() ────────────┘◀──── room events ─────────────┘
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp

from server.tasks import TaskOwner

from .appliance import (
    MAX_NOTES,
    Action,
    Appliance,
    JoinRoom,
    LeaveRoom,
    Mode,
    Note,
    PlaySound,
    RefreshDirectory,
    RunSelftest,
    Send,
    SetVolume,
    Unpair,
)
from .backoff import Backoff
from .clock import Clock, SystemClock
from .device import DeviceClient, DeviceRevoked
from .pairing import PairingError, PairingExpired, pairing_url, poll_pairing, request_pairing
from .room import RoomConnection, Sources
from .selftest import run_selftest
from .speaker import Speaker
from .state import DEFAULT_STATE_DIR, Credential, StateDir

logger = logging.getLogger(__name__)

MAX_PHOTO_BYTES = 4 * 1024 * 1024


@dataclass
class KioskConfig:
    server: str
    state_dir: Path = DEFAULT_STATE_DIR
    video: str | None = "/dev/video0"
    audio: str | None = "default"
    language: str | None = None
    fullscreen: bool = True
    # The 1024×600 kiosk screens the project targets (with --windowed on a desktop).
    window_size: tuple[int, int] = (1024, 600)
    dpi: float = 96.0
    display: bool = True
    sound: bool = True
    self_view: bool = True
    video_size: tuple[int, int] = (640, 480)
    fps: int = 25
    tick_s: float = 0.2
    pairing_poll_s: float = 2.0
    watchdog_s: float = 10.0
    device_heartbeat_s: float = 10.0
    room_heartbeat_s: float = 5.0
    device_backoff_cap_s: float = 15.0
    room_backoff_cap_s: float = 4.0


# Notes worth keeping over a restart: a missed call (and a call back button), not passing news.
KEPT_NOTES = ("missed_call", "missed_call_busy")


def kept_notes(notes: list[Note]) -> list[dict[str, Any]]:
    return [
        {"key": n.key, "params": dict(n.params), "contact_id": n.contact_id} for n in notes if n.key in KEPT_NOTES
    ]


def restore_notes(stored: list[dict[str, Any]]) -> list[Note]:
    notes = []
    for entry in stored[:MAX_NOTES]:
        key, params, contact_id = entry.get("key"), entry.get("params"), entry.get("contact_id")
        if key in KEPT_NOTES and isinstance(params, dict) and (contact_id is None or isinstance(contact_id, str)):
            notes.append(Note(key, {str(k): str(v) for k, v in params.items()}, contact_id))
    return notes


class KioskApp:
    def __init__(self, config: KioskConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.server = config.server.rstrip("/")
        self.clock = clock or SystemClock()
        self.state = StateDir(config.state_dir)
        preferences = self.state.load_preferences()
        volume = preferences.get("volume")
        self.model = Appliance(self.clock, language=config.language, **({"volume": volume} if isinstance(volume, int) else {}))
        self.model.notes = restore_notes(self.state.load_notes())
        self._saved_notes = kept_notes(self.model.notes)
        self.credential: Credential | None = None
        self.device: DeviceClient | None = None
        self.room: RoomConnection | None = None
        self.display: Any = None
        self.renderer: Any = None
        self.wall: Any = None
        self.layout: Any = None
        self.photos: dict[str, Any] = {}
        self.selftest_results: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.sounds: list[str] = []
        self._photo_urls: dict[str, str] = {}
        # What the app's actions start (sends, photo loads, self-tests, a room's stop).
        self._tasks = TaskOwner("kiosk-app")
        self._stopping = asyncio.Event()
        self._unpaired = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        if config.display:
            # Only with a display: kiosk_client/screen.py and video.py load pygame (SDL).
            from .screen import Display, Renderer
            from .video import VideoWall

            self.display = Display(config.window_size, fullscreen=config.fullscreen)
            self.renderer = Renderer(dpi=config.dpi, photos=lambda contact: self.photos.get(contact.id))
            self.wall = VideoWall()
        # After the screen: without one the kiosk stops at once, without trying the sound.
        self.speaker = Speaker(enabled=config.sound)

    # --- running ------------------------------------------------------------------------

    async def run(self) -> None:
        self._http = aiohttp.ClientSession()
        workers = TaskOwner("kiosk-workers")
        tasks = [workers.spawn(self._supervise(), name="kiosk-supervise"), workers.spawn(self._ticker(), name="kiosk-ticker")]
        if self.display is not None:
            tasks.append(workers.spawn(self._draw(), name="kiosk-draw"))
        try:
            stop = workers.spawn(self._stopping.wait(), name="kiosk-stop")
            done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await workers.close()
            await self._shutdown()

    def request_stop(self) -> None:
        self._stopping.set()

    async def _shutdown(self) -> None:
        if self.room is not None:
            room, self.room = self.room, None
            await room.stop()
        if self.device is not None:
            await self.device.close()
        await self._tasks.close()
        if self._http is not None:
            await self._http.close()
        self.speaker.close()
        if self.wall is not None:
            self.wall.close()
        if self.display is not None:
            self.display.close()

    async def _supervise(self) -> None:
        self.credential = self.state.load_credential()
        self.execute(self.model.start(paired=self.credential is not None))
        while not self._stopping.is_set():
            if self.credential is None:
                self.credential = await self._pair()
            self._unpaired.clear()
            self.device = DeviceClient(
                self.server,
                self.credential,
                on_welcome=self._device_welcome,
                on_message=lambda message: self.execute(self.model.device_message(message)),
                on_offline=lambda: self.execute(self.model.device_offline()),
                heartbeat_s=self.config.device_heartbeat_s,
                backoff=Backoff(base=1.0, cap=self.config.device_backoff_cap_s),
            )
            waiters = TaskOwner("kiosk-device")
            try:
                running = waiters.spawn(_revoked(self.device), name="kiosk-device")
                unpaired = waiters.spawn(self._unpaired.wait(), name="kiosk-unpaired")
                await asyncio.wait([running, unpaired], return_when=asyncio.FIRST_COMPLETED)
                unpaired.cancel()
                if running.done() and running.exception() is not None:
                    raise running.exception()  # type: ignore[misc]
                if running.done() and running.result():
                    logger.warning("this kiosk's credential was revoked or refused; pairing again")
                    self.execute(self.model.revoked())
                else:
                    await self.device.close()
                    await asyncio.gather(running, return_exceptions=True)
            finally:
                await waiters.close()
            self.device = None

    async def _pair(self) -> Credential:
        """Shows codes until a coordinator confirms one; returns the stored credential."""
        assert self._http is not None
        backoff = Backoff(base=1.0, cap=self.config.device_backoff_cap_s)
        while True:
            try:
                ticket = await request_pairing(self._http, self.server)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, PairingError, ValueError) as exc:
                logger.info("pairing service unreachable: %s", exc)
                self.execute(self.model.pairing_problem())
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            logger.info("not paired: showing a pairing code for %.0f s", ticket.expires_in_s)
            self.execute(self.model.pairing_code(ticket.code, pairing_url(self.server, ticket.code), ticket.expires_in_s))
            while True:
                await asyncio.sleep(self.config.pairing_poll_s)
                try:
                    credential = await poll_pairing(self._http, self.server, ticket)
                except PairingExpired:
                    break
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, PairingError, ValueError) as exc:
                    logger.info("pairing status unreachable: %s", exc)
                    self.model.pairing.problem = True
                    continue
                self.model.pairing.problem = False
                if credential is not None:
                    logger.info("paired as %s", credential.kiosk_id)
                    self.state.save_credential(credential)
                    self.execute(self.model.paired(credential.kiosk_id))
                    return credential

    def _device_welcome(self, welcome: dict[str, Any]) -> None:
        replacement = welcome.get("credential")
        if isinstance(replacement, str) and self.credential is not None and replacement != self.credential.credential:
            # A refreshed credential (see the protocol proposal in docs/protocol.md).
            self.credential = Credential(self.credential.kiosk_id, replacement, self.server)
            self.state.save_credential(self.credential)
            if self.device is not None:
                self.device.credential = self.credential
        logger.info("connected to %s as %s", self.server, welcome.get("kiosk_id"))
        self.execute(self.model.device_online(welcome))
        if self.display is not None:
            self._tasks.spawn(self._load_photos(), name="kiosk-photos")

    async def _ticker(self) -> None:
        while True:
            self.execute(self.model.tick())
            await asyncio.sleep(self.config.tick_s)

    # --- actions ------------------------------------------------------------------------

    def execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.sent.append(action.message)
                self._tasks.spawn(self._send(action.message), name="kiosk-send")
            elif isinstance(action, JoinRoom):
                self._join_room(action)
            elif isinstance(action, LeaveRoom):
                self._leave_room()
            elif isinstance(action, PlaySound):
                self.sounds.append(action.name)
                self.speaker.play(action.name)
            elif isinstance(action, SetVolume):
                self.speaker.set_volume(action.level)
                preferences = self.state.load_preferences()
                if preferences.get("volume") != action.level:
                    preferences["volume"] = action.level
                    self.state.save_preferences(preferences)
            elif isinstance(action, RefreshDirectory):
                if self.device is not None:
                    self._tasks.spawn(self.device.refresh(), name="kiosk-directory-refresh")
            elif isinstance(action, RunSelftest):
                self._tasks.spawn(self._selftest(), name="kiosk-selftest")
            elif isinstance(action, Unpair):
                self.state.wipe_credential()
                self.credential = None
                self._unpaired.set()
        notes = kept_notes(self.model.notes)
        if notes != self._saved_notes:
            try:
                self.state.save_notes(notes)
                self._saved_notes = notes
            except OSError:
                logger.warning("could not keep the missed-call notes on disk", exc_info=True)

    async def _send(self, message: dict[str, Any]) -> None:
        if self.device is None or not await self.device.send(message):
            logger.info("offline: %s not sent", message.get("type"))

    def press(self, button: str) -> None:
        """A finger on a button (the display calls this; tests may too)."""
        self.execute(self.model.tap(button))

    def _join_room(self, action: JoinRoom) -> None:
        self._leave_room()
        sources = Sources(
            self.config.video,
            self.config.audio,
            width=self.config.video_size[0],
            height=self.config.video_size[1],
            fps=self.config.fps,
            self_view=self.config.self_view and self.display is not None,
        )
        room: RoomConnection

        def on_event(event: str, **data: Any) -> None:
            self._room_event(room, event, data)

        room = RoomConnection(
            self.server,
            action.token,
            sources=sources,
            on_event=on_event,
            on_frame=self._on_frame,
            watchdog_s=self.config.watchdog_s,
            heartbeat_s=self.config.room_heartbeat_s,
            backoff=Backoff(base=0.5, cap=self.config.room_backoff_cap_s),
        )
        self.room = room
        room.start()

    def _leave_room(self) -> None:
        room, self.room = self.room, None
        if room is not None:
            self._tasks.spawn(room.stop(), name="kiosk-room-stop")
        if self.wall is not None:
            self.wall.clear()
        self.speaker.clear_voices()

    def _room_event(self, room: RoomConnection, event: str, data: dict[str, Any]) -> None:
        if room is not self.room:
            return  # a room already left
        if event == "participant_left":
            pid = data.get("participant_id", "")
            if self.wall is not None:
                self.wall.forget(pid)
            self.speaker.remove(pid)
        if event == "reconnecting" and self.wall is not None:
            self.wall.forget("self")  # the camera is closed until the room is back
        if event == "ended":
            self.room = None
            if self.wall is not None:
                self.wall.clear()
            self.speaker.clear_voices()
        self.execute(self.model.room_event(event, **data))

    def _on_frame(self, participant_id: str, kind: str, frame: Any) -> None:
        if kind == "audio":
            self.speaker.feed(participant_id, frame)
        elif self.wall is not None:
            self.wall.put(participant_id, frame)

    async def _selftest(self) -> None:
        ice_servers = None
        if self.device is not None and self.device.welcome:
            ice_servers = list(self.device.welcome.get("ice_servers") or [])
        result = await run_selftest(
            server=self.server,
            video=self.config.video,
            audio=self.config.audio,
            ice_servers=ice_servers,
            speaker=self.speaker if self.speaker.available else None,
            media_in_use=self.room is not None,
            kiosk_id=self.credential.kiosk_id if self.credential else None,
        )
        self.selftest_results.append(result)
        await self._send({"type": "selftest_result", "result": result})

    # --- the screen ---------------------------------------------------------------------

    async def _draw(self) -> None:
        assert self.display is not None
        while True:
            for button in self.display.presses():
                self.press(button)
            if self.display.quit_requested:
                self.request_stop()
                return
            self.render()
            in_call = self.model.mode is Mode.IN_CALL
            await asyncio.sleep(1 / 15 if in_call else 1 / 4)

    def render(self) -> Any:
        """Draws the current state now (also for screenshots)."""
        assert self.display is not None and self.renderer is not None
        if self.wall is not None:
            self.wall.update()
        # Paging on the family screen follows what fits on this screen.
        self.model.family_page_size = self.renderer.family_page_size(self.display.size)
        self.layout = self.renderer.render(self.display.surface, self.model, self.wall)
        if self.room is not None and self.wall is not None:
            self.room.show_layout(self.wall.tiles())
        self.display.show(self.layout)
        return self.layout

    def screenshot(self, path: Path | str) -> Any:
        layout = self.render()
        self.display.save(path)
        return layout

    async def _load_photos(self) -> None:
        """Family photos for the home screen; initials are shown until (or unless) they load."""
        assert self._http is not None
        import pygame

        for contact in self.model.contacts:
            if not contact.photo_url or self._photo_urls.get(contact.id) == contact.photo_url:
                continue
            url = urljoin(self.server + "/", contact.photo_url)
            try:
                async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                    if response.status != 200:
                        continue
                    data = await response.content.read(MAX_PHOTO_BYTES + 1)
                if len(data) > MAX_PHOTO_BYTES:
                    continue
                image = await asyncio.get_running_loop().run_in_executor(None, lambda d=data: pygame.image.load(io.BytesIO(d)))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, pygame.error, ValueError) as exc:
                logger.info("photo of %s not loaded: %s", contact.id, exc)
                continue
            self.photos[contact.id] = image
            self._photo_urls[contact.id] = contact.photo_url


async def _revoked(device: DeviceClient) -> bool:
    """Runs the device channel until it is closed; True when its credential was refused
    (an outcome, not a failure: the kiosk pairs again)."""
    try:
        await device.run()
    except DeviceRevoked:
        return True
    return False
