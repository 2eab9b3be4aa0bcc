"""Clients that never say hello, flood and never read: a real server process must stay bounded;
the hello deadline spares no one who did sign in, relayed ones included.

Issue 11 item 1. The full 20 s flood with figures is `python -m bench.abuse`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import aiohttp

from bench.hostile import PING_FRAME, Flooder, websocket_handshake
from bench.redis_server import RedisServer
from bench.server_process import ServerProcess


def _settled_sockets(server: ServerProcess) -> int:
    """The server's sockets once the start-up health check's connection has gone."""
    time.sleep(0.5)
    return server.open_sockets()


def _wait_for_sockets(server: ServerProcess, count: int, timeout: float) -> float | None:
    """Seconds until the server holds `count` sockets, None if it still holds more at the timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if server.open_sockets() <= count:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def test_flood_without_hello_is_closed_and_memory_stays_bounded(tmp_path: Path) -> None:
    hello_timeout_s = 4.0
    with ServerProcess(tmp_path, hello_timeout_s=hello_timeout_s) as server:
        baseline_sockets = _settled_sockets(server)
        rss_before = server.rss_mb()
        flooders = [Flooder(websocket_handshake(server.port)) for _ in range(2)]
        for flooder in flooders:
            flooder.start()
        rss_peak = rss_before
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            rss_peak = max(rss_peak, server.rss_mb())
            time.sleep(0.2)
        for flooder in flooders:
            flooder.stop()
        log = server.log_text()
        remaining = server.open_sockets() - baseline_sockets
    # Both were closed by the server (a send failed) before the hello deadline + 2 s.
    assert all(f.gone_after is not None and f.gone_after <= hello_timeout_s + 2 for f in flooders), [
        (f.gone_after, f.frames_sent) for f in flooders
    ]
    assert remaining <= 0
    assert rss_peak - rss_before <= 20, (rss_before, rss_peak)
    assert "Traceback" not in log, log


def test_hello_timeout_closes_a_peer_that_never_reads(tmp_path: Path) -> None:
    hello_timeout_s = 2.0
    with ServerProcess(tmp_path, hello_timeout_s=hello_timeout_s) as server:
        baseline_sockets = _settled_sockets(server)
        # WebSocket pings, never read: the server's pongs fill its send buffer, so its close
        # frame can never be written, let alone answered.
        pinger = Flooder(websocket_handshake(server.port), PING_FRAME)
        pinger.start()
        try:
            gone = _wait_for_sockets(server, baseline_sockets, timeout=hello_timeout_s + 6)
        finally:
            pinger.stop()
        assert gone is not None and gone <= hello_timeout_s + 2, gone
        assert "Traceback" not in server.log_text()


async def test_hello_timeout_spares_a_signed_in_connection_relayed_to_another_node(tmp_path: Path) -> None:
    hello_timeout_s = 2.0
    with RedisServer() as redis:
        shared = {"redis_prefix": f"vztest:{uuid.uuid4().hex}:", "hello_timeout_s": hello_timeout_s}
        (tmp_path / "n1").mkdir()
        (tmp_path / "n2").mkdir()
        with ServerProcess(tmp_path / "n1", redis_url=redis.url, node_id="n1", **shared) as n1, ServerProcess(
            tmp_path / "n2", redis_url=redis.url, node_id="n2", **shared
        ) as n2:
            async with aiohttp.ClientSession() as http:
                sockets = []
                # The same room through both nodes: one of the two is relayed to the other.
                for i, node in enumerate((n1, n2)):
                    ws = await http.ws_connect(node.ws_url)
                    token = node.token(room="gym", name=f"P{i}", participant_id=f"p-{i}")
                    await ws.send_json({"type": "hello", "v": 1, "token": token})
                    await ws.send_json({"type": "join", "room": "gym"})
                    sockets.append(ws)
                for ws in sockets:
                    while (await ws.receive_json(timeout=10))["type"] != "joined":
                        pass
                await asyncio.sleep(hello_timeout_s + 2)
                for ws in sockets:
                    await ws.send_json({"type": "ping", "id": "still"})
                    while True:
                        message = await ws.receive(timeout=5)
                        assert message.type == aiohttp.WSMsgType.TEXT, (message, ws.close_code)
                        if json.loads(message.data).get("type") == "pong":
                            break
                    await ws.close()
