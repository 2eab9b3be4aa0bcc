"""Clients that never say hello, flood and never read: a real server process must stay bounded.

Issue 11 item 1. The full 20 s flood with figures is `python -m bench.abuse`.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.hostile import PING_FRAME, Flooder, websocket_handshake
from tests.server_process import ServerProcess


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
