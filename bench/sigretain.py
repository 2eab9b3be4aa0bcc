"""What one node keeps per session after many pings (tracemalloc, in process).

    python -m bench.sigretain     # 50 sessions, 300 pings each; prints growth per socket

A check for the ping-burst step of bench.signalling: RSS there is a high-water mark (it
does not shrink after a peak); this counts the Python objects still held once the burst
is over, and what each session's resume buffer holds.
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import tempfile
import tracemalloc
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.appkeys import ISSUER_KEY, SIGNALING_KEY
from server.config import Settings

SOCKETS = 50
ROOMS = 5
PINGS = 300
# Pings before measuring, so first-use allocations (caches, buffers) are not counted.
WARM_UP_PINGS = 20


async def _until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> None:
    while (await ws.receive_json())["type"] != kind:
        pass


async def _pings(ws: aiohttp.ClientWebSocketResponse, count: int) -> None:
    for k in range(count):
        await ws.send_json({"type": "ping", "ts": k})
        await _until(ws, "pong")


async def main() -> None:
    # The rate limit would refuse a burst; everything else is as configured by default.
    settings = Settings(data_dir=Path(tempfile.mkdtemp()) / "data", token_secret=secrets.token_hex(32),
                        messages_per_second=1000.0, message_burst=1000)
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/ws"))
    issuer = app[ISSUER_KEY]
    try:
        async with aiohttp.ClientSession() as http:
            sockets = []
            for i in range(SOCKETS):
                ws = await http.ws_connect(url)
                room = f"r{i % ROOMS}"
                token = issuer.issue(role="senior", room=room, name=f"K{i}", participant_id=f"p{i}")
                await ws.send_json({"type": "hello", "v": 1, "token": token})
                await _until(ws, "welcome")
                await ws.send_json({"type": "join", "room": room})
                await _until(ws, "joined")
                sockets.append(ws)
            await asyncio.gather(*(_pings(ws, WARM_UP_PINGS) for ws in sockets))
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            await asyncio.gather(*(_pings(ws, PINGS) for ws in sockets))
            await asyncio.sleep(0.5)
            gc.collect()
            diff = tracemalloc.take_snapshot().compare_to(before, "lineno")
            total = sum(d.size_diff for d in diff)
            print(f"net growth per socket after {PINGS} pings: {total / SOCKETS / 1024:.1f} KiB")
            for line in diff[:6]:
                print(f"  {line}")
            sessions = list(app[SIGNALING_KEY].sessions.values())
            print("resume buffer (messages, characters) of the first sessions:", [s.buffered for s in sessions[:3]])
            for ws in sockets:
                await ws.close()
    finally:
        await server.close()


if __name__ == "__main__":
    asyncio.run(main())
