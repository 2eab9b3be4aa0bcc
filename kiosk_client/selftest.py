"""`verzilvering-kiosk selftest`: is this kiosk ready for a call?

Checks the camera, the microphone, the speaker, echo cancellation, the server and the
TURN relay, and reports in plain Dutch or English plus a JSON result (the same object the
kiosk sends as `selftest_result` when a coordinator asks for it remotely).

Each check has a status:
  ok             works
  warning        works, but something is off (a dark picture, a silent microphone)
  failed         does not work
  not_available  cannot be checked on this device (no sound system tools, ...)
  skipped        nothing to check (no TURN configured, camera switched off on purpose)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import aiohttp
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamTrack

from .media import open_audio, open_video
from .signaling import ws_url
from .speaker import SOUNDS, Speaker

logger = logging.getLogger(__name__)

RESULT_VERSION = 1
CHECKS = ("camera", "microphone", "speaker", "echo_cancel", "server", "turn")
TITLES = {
    "nl": {
        "camera": "Camera",
        "microphone": "Microfoon",
        "speaker": "Luidspreker",
        "echo_cancel": "Echo-onderdrukking",
        "server": "Verbinding met Verzilvering",
        "turn": "Reserveroute voor beeld en geluid (TURN)",
    },
    "en": {
        "camera": "Camera",
        "microphone": "Microphone",
        "speaker": "Speaker",
        "echo_cancel": "Echo cancellation",
        "server": "Connection to Verzilvering",
        "turn": "Backup route for sound and picture (TURN)",
    },
}
STATUS_WORDS = {
    "nl": {"ok": "in orde", "warning": "let op", "failed": "werkt niet", "not_available": "niet te controleren", "skipped": "overgeslagen"},
    "en": {"ok": "fine", "warning": "attention", "failed": "not working", "not_available": "cannot be checked", "skipped": "skipped"},
}

Runner = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Check:
    status: str
    nl: str
    en: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "message": {"nl": self.nl, "en": self.en}, "details": self.details}


# --- camera and microphone ---------------------------------------------------------------


@dataclass(frozen=True)
class SourceWords:
    """What a camera's or microphone's check says, each (nl, en)."""

    switched_off: tuple[str, str]
    not_found: tuple[str, str]
    silent: tuple[str, str]  # no track, or nothing within the timeout
    doubtful: tuple[str, str]  # it works, but what it gives looks wrong
    works: tuple[str, str]


CAMERA_WORDS = SourceWords(
    ("De camera staat uit.", "The camera is switched off."),
    ("De camera is niet gevonden of wordt door iets anders gebruikt.",
     "The camera was not found or is in use by something else."),
    ("De camera geeft geen beeld.", "The camera gives no picture."),
    ("De camera geeft een bijna zwart beeld. Zit er iets voor de lens?",
     "The camera picture is almost black. Is something covering the lens?"),
    ("De camera werkt.", "The camera works."),
)
MICROPHONE_WORDS = SourceWords(
    ("De microfoon staat uit.", "The microphone is switched off."),
    ("De microfoon is niet gevonden.", "The microphone was not found."),
    ("De microfoon geeft geen geluid door.", "The microphone passes no sound."),
    ("De microfoon werkt, maar hoort helemaal niets. Staat hij uit of is hij afgedekt?",
     "The microphone works but hears nothing at all. Is it muted or covered?"),
    ("De microfoon werkt.", "The microphone works."),
)


async def _check_source(
    source: str | None,
    open_player: Callable[[str], MediaPlayer],
    kind: str,
    words: SourceWords,
    measure: Callable[[MediaStreamTrack], Awaitable[tuple[dict[str, Any], bool]]],
) -> Check:
    """Opens a camera or microphone (`kind` "video" or "audio"); `measure` returns what it
    found (details) and whether that looks right. The track is always stopped."""
    if not source or source == "none":
        return Check("skipped", *words.switched_off)
    try:
        player = open_player(source)
    except Exception as exc:
        return Check("failed", *words.not_found, {"source": source, "error": str(exc)})
    track = getattr(player, kind)
    try:
        if track is None:
            return Check("failed", *words.silent, {"source": source})
        details, looks_right = await measure(track)
    except asyncio.TimeoutError:
        return Check("failed", *words.silent, {"source": source})
    finally:
        if track is not None:
            track.stop()
    details = {"source": source, **details}
    return Check("ok", *words.works, details) if looks_right else Check("warning", *words.doubtful, details)


async def check_camera(source: str | None, timeout: float = 8.0) -> Check:
    async def measure(track: MediaStreamTrack) -> tuple[dict[str, Any], bool]:
        frame = await asyncio.wait_for(track.recv(), timeout)
        brightness = float(frame.to_ndarray(format="gray").mean())
        # Almost black: something covers the lens.
        return {"width": frame.width, "height": frame.height, "brightness": round(brightness, 1)}, brightness >= 12

    return await _check_source(source, open_video, "video", CAMERA_WORDS, measure)


async def check_microphone(source: str | None, seconds: float = 1.0, timeout: float = 8.0) -> Check:
    async def measure(track: MediaStreamTrack) -> tuple[dict[str, Any], bool]:
        seconds_heard = 0.0
        energy = 0.0
        values = 0
        deadline = time.monotonic() + timeout
        while seconds_heard < seconds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError
            frame = await asyncio.wait_for(track.recv(), remaining)
            fmt = frame.format.name
            scale = 1.0 if fmt.startswith(("flt", "dbl")) else 2.0 ** (8 * frame.format.bytes - 1)
            data = frame.to_ndarray().astype("float64") / scale
            seconds_heard += frame.samples / (frame.sample_rate or 48000)
            energy += float((data**2).sum())
            values += data.size
        rms = math.sqrt(energy / max(1, values))
        level_db = round(20 * math.log10(rms), 1) if rms > 0 else -120.0
        # Below -70 dBFS it hears nothing at all: muted or covered.
        return {"level_dbfs": level_db, "seconds": seconds}, level_db >= -70

    return await _check_source(source, open_audio, "audio", MICROPHONE_WORDS, measure)


# --- speaker -------------------------------------------------------------------------------


async def check_speaker(speaker: Any | None = None, timeout: float = 4.0) -> Check:
    """Plays a short three-note tune; the sound system must take all of it."""
    own = speaker is None
    if own:
        speaker = Speaker()
    try:
        if not speaker.available:
            return Check("failed", "Er is geen luidspreker gevonden.", "No speaker was found.", {"error": speaker.error})
        before = speaker.samples_played
        needed = len(SOUNDS["test"])
        speaker.play("test")
        deadline = time.monotonic() + timeout
        while speaker.samples_played - before < needed:
            if time.monotonic() > deadline:
                return Check("failed", "De luidspreker speelt niets af.", "The speaker does not play anything.",
                             {"samples_played": speaker.samples_played - before})
            await asyncio.sleep(0.05)
        return Check("ok", "De luidspreker heeft een toon afgespeeld.", "The speaker played a tone.",
                     {"samples_played": speaker.samples_played - before})
    finally:
        if own:
            speaker.close()


# --- echo cancellation ---------------------------------------------------------------------

ECHO_MARKERS = ("echo-cancel", "echo_cancel", "echocancel", "aec")


def _run(runner: Runner, args: list[str]) -> tuple[int, str]:
    try:
        done = runner(args, capture_output=True, text=True, timeout=5)
        return done.returncode, done.stdout or ""
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, str(exc)


def check_echo_cancel(runner: Runner = subprocess.run, which: Callable[[str], str | None] = shutil.which) -> Check:
    """Looks for the echo canceller of deploy/audio/ in PulseAudio or PipeWire."""
    pactl, pw_cli = which("pactl"), which("pw-cli")
    if pactl is None and pw_cli is None:
        return Check("not_available",
                     "Niet te controleren: het geluidssysteem (PipeWire of PulseAudio) is niet geïnstalleerd.",
                     "Cannot be checked: the sound system (PipeWire or PulseAudio) is not installed.",
                     {"tools": []})
    details: dict[str, Any] = {"tools": [t for t, p in (("pactl", pactl), ("pw-cli", pw_cli)) if p]}
    names: list[str] = []
    default_source = ""
    reachable = False
    if pactl:
        for args in (["pactl", "list", "short", "modules"], ["pactl", "list", "short", "sources"], ["pactl", "list", "short", "sinks"]):
            code, out = _run(runner, args)
            if code == 0:
                reachable = True
                names += [line for line in out.splitlines() if line.strip()]
        code, out = _run(runner, ["pactl", "get-default-source"])
        if code == 0:
            reachable = True
            default_source = out.strip()
    if pw_cli:
        code, out = _run(runner, ["pw-cli", "ls", "Node"])
        if code == 0 and out.strip():
            reachable = True
            names += [line for line in out.splitlines() if "node.name" in line or "node.description" in line]
    found = sorted({line.strip() for line in names if any(m in line.lower() for m in ECHO_MARKERS)})
    details.update({"found": found[:10], "default_source": default_source})
    if not reachable:
        return Check("not_available",
                     "Niet te controleren: het geluidssysteem draait niet.",
                     "Cannot be checked: the sound system is not running.", details)
    if not found:
        return Check("failed",
                     "Echo-onderdrukking staat uit: de anderen horen zichzelf terug. Zie deploy/audio/.",
                     "Echo cancellation is off: the others will hear themselves back. See deploy/audio/.", details)
    if default_source and not any(m in default_source.lower() for m in ECHO_MARKERS):
        return Check("warning",
                     "Echo-onderdrukking is er wel, maar de kiosk gebruikt de gewone microfoon.",
                     "Echo cancellation is there, but the kiosk uses the plain microphone.", details)
    return Check("ok", "Echo-onderdrukking staat aan.", "Echo cancellation is on.", details)


# --- the network ---------------------------------------------------------------------------


async def check_server(server: str | None, timeout: float = 5.0) -> Check:
    if not server:
        return Check("skipped", "Er is geen server ingesteld.", "No server is configured.")
    url = f"{server.rstrip('/')}/healthz"
    try:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                body = await response.json(content_type=None) if response.status == 200 else {}
                elapsed = round((time.monotonic() - started) * 1000)
        if response.status != 200:
            return Check("failed", "Verzilvering is bereikbaar maar geeft een storing.",
                         "Verzilvering can be reached but reports a fault.", {"server": server, "http_status": response.status})
        return Check("ok", "Verzilvering is bereikbaar.", "Verzilvering can be reached.",
                     {"server": server, "ms": elapsed, "version": body.get("version")})
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        return Check("failed", "Verzilvering is niet bereikbaar. Werkt het internet?",
                     "Verzilvering cannot be reached. Is the internet working?", {"server": server, "error": str(exc) or type(exc).__name__})


def _turn_targets(ice_servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    for entry in ice_servers:
        urls = entry.get("urls")
        for url in [urls] if isinstance(urls, str) else urls or []:
            if not isinstance(url, str) or not url.startswith(("turn:", "turns:")):
                continue
            scheme, rest = url.split(":", 1)
            parsed = urlparse(f"//{rest}")
            query = dict(part.split("=", 1) for part in parsed.query.split("&") if "=" in part)
            secure = scheme == "turns"
            targets.append(
                {
                    "url": url,
                    "host": parsed.hostname,
                    "port": parsed.port or (443 if secure else 3478),
                    "transport": query.get("transport", "tcp" if secure else "udp"),
                    "secure": secure,
                    "username": entry.get("username"),
                    "credential": entry.get("credential"),
                }
            )
    return targets


async def check_turn(ice_servers: list[dict[str, Any]] | None, timeout: float = 5.0) -> Check:
    """Asks each TURN server for a relay allocation (what a call behind a strict firewall needs)."""
    if ice_servers is None:
        return Check("skipped", "Niet gecontroleerd: de kiosk is nog niet gekoppeld of niet verbonden.",
                     "Not checked: the kiosk is not paired or not connected yet.")
    targets = _turn_targets(ice_servers)
    if not targets:
        return Check("skipped", "Er is geen reserveroute ingesteld (geen TURN).", "No backup route is configured (no TURN).")
    from aioice.turn import create_turn_endpoint

    results = []
    for target in targets:
        try:
            transport, _ = await asyncio.wait_for(
                create_turn_endpoint(
                    asyncio.DatagramProtocol,
                    server_addr=(target["host"], target["port"]),
                    username=target["username"],
                    password=target["credential"],
                    ssl=target["secure"],
                    transport=target["transport"],
                ),
                timeout,
            )
            relayed = transport.get_extra_info("sockname")
            transport.close()
            results.append({"url": target["url"], "ok": True, "relayed": list(relayed) if relayed else None})
        except Exception as exc:
            results.append({"url": target["url"], "ok": False, "error": str(exc) or type(exc).__name__})
    if any(r["ok"] for r in results):
        return Check("ok", "De reserveroute voor beeld en geluid werkt.", "The backup route for sound and picture works.", {"servers": results})
    return Check("failed",
                 "De reserveroute voor beeld en geluid is niet bereikbaar. Achter sommige routers lukt bellen dan niet.",
                 "The backup route for sound and picture cannot be reached. Behind some routers calls will then fail.",
                 {"servers": results})


async def fetch_ice_servers(server: str, kiosk_id: str, credential: str, timeout: float = 8.0) -> list[dict[str, Any]] | None:
    """Says hello as the device once, for the ICE servers in `device_welcome`."""
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(ws_url(server), timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
                await ws.send_json({"type": "hello", "v": 1, "device": {"kiosk_id": kiosk_id, "credential": credential}})
                msg = await ws.receive_json(timeout=timeout)
                if msg.get("type") == "device_welcome":
                    return list(msg.get("ice_servers") or [])
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, TypeError):
        pass
    return None


# --- all of it -----------------------------------------------------------------------------


async def run_selftest(
    *,
    server: str | None,
    video: str | None,
    audio: str | None,
    ice_servers: list[dict[str, Any]] | None,
    speaker: Any | None = None,
    media_in_use: bool = False,
    runner: Runner = subprocess.run,
    kiosk_id: str | None = None,
) -> dict[str, Any]:
    """All checks; with `media_in_use` (a call is running) camera and microphone are not
    reopened — the call itself shows they work."""
    if media_in_use:
        camera = Check("ok", "De camera is nu in gebruik voor een gesprek.", "The camera is in use for a call right now.", {"in_use": True})
        microphone = Check("ok", "De microfoon is nu in gebruik voor een gesprek.", "The microphone is in use for a call right now.", {"in_use": True})
    else:
        camera = await check_camera(video)
        microphone = await check_microphone(audio)
    speaker_check = await check_speaker(speaker)
    echo = await asyncio.get_running_loop().run_in_executor(None, check_echo_cancel, runner)
    server_check = await check_server(server)
    turn = await check_turn(ice_servers)
    checks = {
        "camera": camera,
        "microphone": microphone,
        "speaker": speaker_check,
        "echo_cancel": echo,
        "server": server_check,
        "turn": turn,
    }
    return {
        "version": RESULT_VERSION,
        "kiosk_id": kiosk_id,
        "checked_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "ok": not any(c.status == "failed" for c in checks.values()),
        "checks": {name: check.to_dict() for name, check in checks.items()},
    }


def report_text(result: dict[str, Any], language: str = "nl") -> str:
    language = language if language in TITLES else "nl"
    lines = ["Verzilvering — controle van de kiosk" if language == "nl" else "Verzilvering — kiosk check", ""]
    for name in CHECKS:
        check = result["checks"].get(name)
        if check is None:
            continue
        mark = {"ok": "✔", "warning": "!", "failed": "✘"}.get(check["status"], "–")
        lines.append(f"{mark} {TITLES[language][name]}: {STATUS_WORDS[language][check['status']]}")
        lines.append(f"    {check['message'][language]}")
    lines.append("")
    if result["ok"]:
        lines.append("Alles wat nodig is werkt." if language == "nl" else "Everything needed works.")
    else:
        lines.append("Er werkt iets niet. Zie hierboven." if language == "nl" else "Something does not work. See above.")
    return "\n".join(lines)
