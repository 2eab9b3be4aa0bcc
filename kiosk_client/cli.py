"""The `verzilvering-kiosk` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from .call import CallClient
from .media import open_audio, open_video


def _restrict_media_addresses() -> None:
    # Same switch as the server's `media_addresses` setting, e.g. to keep tests on loopback.
    raw = os.environ.get("VERZILVERING_MEDIA_ADDRESSES")
    if raw:
        from server.rtphooks import restrict_host_addresses

        restrict_host_addresses(list(json.loads(raw)))


def main(argv: list[str] | None = None) -> int:
    _restrict_media_addresses()
    parser = argparse.ArgumentParser(prog="verzilvering-kiosk", description="Verzilvering kiosk")
    sub = parser.add_subparsers(dest="command", required=True)
    join = sub.add_parser("join", help="join a room, publish camera and microphone, report what arrives")
    join.add_argument("--server", required=True, help="e.g. http://127.0.0.1:8080")
    join.add_argument("--token", required=True)
    join.add_argument("--video", default="testsrc", help="'testsrc', a camera device, or 'none'")
    join.add_argument("--audio", default="tone", help="'tone', an ALSA device, or 'none'")
    join.add_argument("--duration", type=float, default=0, help="seconds to stay (0: until Ctrl-C)")
    join.add_argument("--report", type=Path, help="write a JSON report of received media here")
    join.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_join(args))
    except KeyboardInterrupt:
        return 0


async def _join(args: argparse.Namespace) -> int:
    video = open_video(args.video) if args.video != "none" else None
    audio = open_audio(args.audio) if args.audio != "none" else None
    client = CallClient(
        args.server,
        args.token,
        video=video.video if video else None,
        audio=audio.audio if audio else None,
    )
    try:
        await client.start()
    except Exception as exc:
        print(f"verzilvering-kiosk: could not join: {exc}", file=sys.stderr)
        await client.close()
        return 1
    print(f"joined {client.room} as {client.self_id}", flush=True)
    try:
        if args.duration > 0:
            await asyncio.wait([asyncio.ensure_future(client.removed.wait())], timeout=args.duration)
        else:
            await client.removed.wait()
    finally:
        report = client.report()
        await client.close()
        if args.report:
            args.report.write_text(json.dumps(report, indent=2))
        for pid, media in report["participants"].items():
            print(
                f"{media['name'] or pid}: video {media['video_frames']} frames "
                f"{media['video_width']}x{media['video_height']}, audio {media['audio_frames']} frames, "
                f"first video frame after {media['first_video_frame_ms']} ms",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
