"""What one node keeps per session after many pings (tracemalloc, in process).

    python -m bench.sigretain     # 50 sessions, 300 pings each; prints growth per socket

A check for the ping-burst step of bench.signalling: RSS there is a high-water mark; this
counts the Python objects still held after the burst (and each session's resume buffer).
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import tracemalloc
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
from server.app import create_app, ISSUER_KEY, SIGNALING_KEY
from tests.conftest import make_settings

SOCKETS = 50
PINGS = 300


async def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    app = create_app(make_settings(tmp, messages_per_second=1000.0, message_burst=1000))
    srv = TestServer(app, host="127.0.0.1"); await srv.start_server()
    url = str(srv.make_url("/ws")); issuer = app[ISSUER_KEY]
    async with aiohttp.ClientSession() as http:
        socks = []
        for i in range(SOCKETS):
            ws = await http.ws_connect(url)
            await ws.send_json({"type":"hello","v":1,"token":issuer.issue(role="senior", room=f"r{i%5}", name="x", participant_id=f"p{i}")})
            await ws.receive_json()
            await ws.send_json({"type":"join","room":f"r{i%5}"})
            while (await ws.receive_json())["type"] != "joined": pass
            socks.append(ws)
        async def pings(ws: aiohttp.ClientWebSocketResponse, n: int) -> None:
            for k in range(n):
                await ws.send_json({"type":"ping","ts":k})
                while (await ws.receive_json())["type"] != "pong": pass
        await asyncio.gather(*(pings(ws, 20) for ws in socks))
        gc.collect(); tracemalloc.start(); s1 = tracemalloc.take_snapshot()
        await asyncio.gather(*(pings(ws, PINGS) for ws in socks))
        await asyncio.sleep(0.5); gc.collect()
        s2 = tracemalloc.take_snapshot()
        diff = s2.compare_to(s1, "lineno")
        total = sum(d.size_diff for d in diff)
        print(f"net growth per socket after {PINGS} pings: {total / SOCKETS / 1024:.1f} KiB")
        for d in diff[:6]: print(d)
        sig = app[SIGNALING_KEY]
        print("buffered", [s.buffered for s in list(sig.sessions.values())[:3]])
        for ws in socks: await ws.close()
    await srv.close()
if __name__ == "__main__":
    asyncio.run(main())
