"""The `verzilvering-kiosk` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from server.tasks import TaskOwner
from server.rtc.ice import restrict_host_addresses

from .call import RemoteMedia
from .room import RoomConnection, Sources
from .runner import KioskApp, KioskConfig
from .selftest import fetch_ice_servers, report_text, run_selftest
from .signaling import SignalingError
from .speaker import silence_alsa_errors
from .state import DEFAULT_STATE_DIR, StateDir

# `join`: how long the first join may take before the command gives up (later losses are
# healed without limit, as on the appliance).
JOIN_TIMEOUT_S = 30.0


def _restrict_media_addresses() -> None:
    # Same switch as the server's `media_addresses` setting, e.g. to keep tests on loopback.
    raw = os.environ.get("VERZILVERING_MEDIA_ADDRESSES")
    if raw:
        restrict_host_addresses(list(json.loads(raw)))


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_WINDOW = "1024x600"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verzilvering-kiosk", description="Verzilvering kiosk")
    sub = parser.add_subparsers(dest="command", required=True)
    join = sub.add_parser("join", help="join a room, publish camera and microphone, report what arrives")
    join.add_argument(
        "--server", required=True, action="append",
        help="the server's address, e.g. http://127.0.0.1:8080; repeat for several nodes (tried in order when one is down)",
    )
    join.add_argument("--token", required=True, help="a join token (verzilvering token, or the one serve --demo prints)")
    join.add_argument("--video", default="testsrc", help="'testsrc', a camera device, or 'none' (default testsrc)")
    join.add_argument("--audio", default="tone", help="'tone', an ALSA device, or 'none' (default tone)")
    join.add_argument("--duration", type=float, default=0, help="seconds to stay (default 0: until Ctrl-C)")
    join.add_argument("--report", type=Path, help="write a JSON report of received media here")
    _log_level(join, "WARNING")

    run = sub.add_parser("run", help="the appliance: pairing, home screen, activities, family calls")
    run.add_argument("--server", default=os.environ.get("VERZILVERING_KIOSK_SERVER"),
                     help="the server's address, e.g. https://verzilvering.example.nl (default: VERZILVERING_KIOSK_SERVER)")
    run.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                     help=f"where the device credential is kept, 0600 (default {DEFAULT_STATE_DIR})")
    run.add_argument("--video", default="/dev/video0", help="'testsrc', a camera device, or 'none' (default /dev/video0)")
    run.add_argument("--audio", default="default", help="'tone', an ALSA device, or 'none' (default: the system's)")
    run.add_argument("--language", choices=("nl", "en"), help="default: the senior's language from the server, else nl")
    screen = run.add_mutually_exclusive_group()
    screen.add_argument("--fullscreen", dest="fullscreen", action="store_true", default=True, help="the whole screen (default)")
    screen.add_argument("--windowed", dest="fullscreen", action="store_false", help="a window, for trying it on a desktop")
    run.add_argument("--size", default=DEFAULT_WINDOW, help=f"window size with --windowed, WIDTHxHEIGHT (default {DEFAULT_WINDOW}, the kiosk screens' size)")
    run.add_argument("--dpi", type=float, default=96.0, help="the screen's pixel density, for 15 mm touch targets (default 96)")
    run.add_argument("--no-self-view", dest="self_view", action="store_false", help="do not show the kiosk's own camera")
    _log_level(run, "WARNING")

    selftest = sub.add_parser("selftest", help="check camera, microphone, speaker, echo cancellation, server and TURN")
    selftest.add_argument("--server", default=os.environ.get("VERZILVERING_KIOSK_SERVER"),
                          help="the server's address (default: VERZILVERING_KIOSK_SERVER, else the paired server)")
    selftest.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=f"default {DEFAULT_STATE_DIR}")
    selftest.add_argument("--video", default="/dev/video0", help="'testsrc', a camera device, or 'none' (default /dev/video0)")
    selftest.add_argument("--audio", default="default", help="'tone', an ALSA device, or 'none' (default: the system's)")
    selftest.add_argument("--language", choices=("nl", "en"), default="nl", help="default nl")
    selftest.add_argument("--json", dest="json_path", help="write the JSON result to this file ('-': standard output)")
    _log_level(selftest, "ERROR")
    return parser


def _log_level(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--log-level", default=default, type=str.upper, choices=LOG_LEVELS,
                        help=f"how much the log says (default {default})")


def main(argv: list[str] | None = None) -> int:
    _restrict_media_addresses()
    silence_alsa_errors()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "server", None):
        servers = args.server if isinstance(args.server, list) else [args.server]
        problem = next(filter(None, map(server_url_problem, servers)), None)
        if problem:
            print(f"verzilvering-kiosk {args.command}: {problem}", file=sys.stderr)
            return 2
    if args.command == "run":
        return _run(args)
    if args.command == "selftest":
        return asyncio.run(_selftest(args))
    try:
        return asyncio.run(_join(args))
    except KeyboardInterrupt:
        return 0


def server_url_problem(server: str) -> str | None:
    """What is wrong with a --server address, in words, or None."""
    url = urlsplit(server)
    if url.scheme not in ("http", "https") or not url.hostname:
        return f"--server {server} needs to start with http:// or https://, e.g. http://127.0.0.1:8080"
    return None


def explain_join_error(exc: BaseException, server: str) -> str:
    """Why a join failed and what to do, in one line (instead of aiohttp's own words)."""
    if isinstance(exc, SignalingError):
        if exc.code in ("token_invalid", "token_expired", "token_wrong_room"):
            return (
                f"the server refused the token ({exc.code}); make a new one with `verzilvering token` "
                "using the server's --data-dir, or copy the one `verzilvering serve --demo` printed"
            )
        return f"the server refused to let this kiosk in ({exc})"
    ssl_error = isinstance(exc, (ssl.SSLError, aiohttp.ClientSSLError))
    if ssl_error and "WRONG_VERSION_NUMBER" in str(exc):
        return f"{server} does not speak https; try http:// instead"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the certificate of {server} is not trusted by this machine; fix the certificate or the address"
    if ssl_error:
        return f"a secure connection to {server} failed ({exc}); check the address and the server's certificate"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return (
            f"{server} answered, but not as a Verzilvering server (HTTP {exc.status} at /ws); "
            "check the address and port"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot reach {server}; is `verzilvering serve` running there, and are the address and port right?"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"{server} did not answer in time; check the address and the network"
    if isinstance(exc, ConnectionError):
        return f"the connection to {server} was closed before the kiosk could join ({exc}); try again"
    return f"could not join through {server}: {exc}"


def window_size(args: argparse.Namespace) -> tuple[int, int]:
    width, height = (int(x) for x in args.size.lower().split("x"))
    return width, height


def _source(value: str) -> str | None:
    return None if value == "none" else value


def _run(args: argparse.Namespace) -> int:
    if not args.server:
        print("verzilvering-kiosk run: --server (or VERZILVERING_KIOSK_SERVER) is needed", file=sys.stderr)
        return 2
    try:
        width, height = window_size(args)
    except ValueError:
        print(f"verzilvering-kiosk run: --size is WIDTHxHEIGHT, e.g. {DEFAULT_WINDOW}", file=sys.stderr)
        return 2
    config = KioskConfig(
        server=args.server,
        state_dir=args.state_dir,
        video=_source(args.video),
        audio=_source(args.audio),
        language=args.language,
        fullscreen=args.fullscreen,
        window_size=(width, height),
        dpi=args.dpi,
        self_view=args.self_view,
    )

    # Here, not at the top: kiosk_client/screen.py loads pygame (SDL), which `join` and
    # `selftest` never need.
    from .screen import NoScreen

    try:
        asyncio.run(_run_app(KioskApp, config))
    except NoScreen as exc:
        print(
            f"verzilvering-kiosk run: no screen to show the kiosk on ({exc}); run it on the kiosk's "
            "console (deploy/systemd/verzilvering-kiosk.service) or in a desktop session",
            file=sys.stderr,
        )
        return 1
    return 0


async def _run_app(kiosk_app: Any, config: Any) -> None:
    import signal

    app = kiosk_app(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    await app.run()


async def _selftest(args: argparse.Namespace) -> int:
    credential = StateDir(args.state_dir).load_credential()
    server = args.server or (credential.server if credential else None)
    ice_servers = None
    if server and credential is not None:
        ice_servers = await fetch_ice_servers(server, credential.kiosk_id, credential.credential)
    result = await run_selftest(
        server=server,
        video=_source(args.video),
        audio=_source(args.audio),
        ice_servers=ice_servers,
        kiosk_id=credential.kiosk_id if credential else None,
    )
    print(report_text(result, args.language), flush=True)
    if args.json_path == "-":
        print(json.dumps(result, indent=2), flush=True)
    elif args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


async def _join(args: argparse.Namespace) -> int:
    """Stays in the room the way the appliance does (kiosk_client/room.py): a lost session
    or media path is resumed or rebuilt unattended; the report covers every attempt."""
    remote: dict[str, RemoteMedia] = {}
    started = time.monotonic()
    joined = asyncio.Event()
    ended = asyncio.Event()
    # Before the first join, a server that cannot be reached or refuses the token is a
    # mistake in the command to explain, not an outage to wait out.
    first_failure: list[BaseException] = []
    room: RoomConnection

    def on_event(event: str, **data: Any) -> None:
        if event == "joined" and not joined.is_set():
            joined.set()
            print(f"joined {room.room} as {room.self_id}", flush=True)
        elif event == "connect_failed" and not joined.is_set() and not first_failure:
            first_failure.append(data["error"])
            ended.set()
        elif event == "reconnecting":
            print("connection lost; joining again", file=sys.stderr, flush=True)
        elif event == "ended":
            ended.set()

    def on_frame(participant_id: str, kind: str, frame: Any) -> None:
        media = remote.get(participant_id)
        if media is None:
            known = room.participants.get(participant_id)
            media = remote[participant_id] = RemoteMedia(name=known.name if known else "")
        media.record(kind, frame, (time.monotonic() - started) * 1000)

    room = RoomConnection(
        args.server,
        args.token,
        sources=Sources(_source(args.video), _source(args.audio), self_view=False),
        on_event=on_event,
        on_frame=on_frame,
    )
    room.start()
    waiters = TaskOwner("kiosk-join")
    waiting = [waiters.spawn(joined.wait(), name="kiosk-joined"), waiters.spawn(ended.wait(), name="kiosk-ended")]
    await asyncio.wait(waiting, timeout=JOIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    await waiters.close()
    if not joined.is_set():
        if first_failure:
            reason = explain_join_error(first_failure[0], ", ".join(args.server))
        else:
            reason = f"no answer from {', '.join(args.server)} within {JOIN_TIMEOUT_S:.0f} s; check the address"
        print(f"verzilvering-kiosk join: {reason}", file=sys.stderr)
        await room.stop()
        return 1
    try:
        try:
            await asyncio.wait_for(ended.wait(), args.duration if args.duration > 0 else None)
        except asyncio.TimeoutError:
            pass  # the asked-for duration is over
    finally:
        await room.stop()
        report = {
            "self_id": room.self_id,
            "room": room.room,
            "rebuilds": room.rebuilds,
            "participants": {pid: media.to_dict() for pid, media in remote.items()},
        }
        if args.report:
            args.report.write_text(json.dumps(report, indent=2))
        for pid, media in remote.items():
            print(
                f"{media.name or pid}: video {media.video_frames} frames "
                f"{media.video_width}x{media.video_height}, audio {media.audio_frames} frames, "
                f"first video frame after {media.first_video_frame_ms} ms",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
