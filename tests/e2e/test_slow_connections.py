"""Slow and idle connections against a real server process (issue 11 item 7): slow headers,
slow bodies, idle keep-alive, the cap on unauthenticated connections, accept errors at
the open-files limit. The figures at scale are `python -m bench.abuse`.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from bench.hostile import open_idle, peer_closed, text_frame, websocket_handshake
from bench.server_process import ServerProcess


def _trickle(sock: socket.socket, chunks: list[bytes], every_s: float, stop: threading.Event) -> None:
    for chunk in chunks:
        if stop.wait(every_s):
            return
        try:
            sock.sendall(chunk)
        except OSError:
            return


def _healthz(server: ServerProcess) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as reply:
        assert reply.status == 200
        json.load(reply)
    return time.monotonic() - started


def test_slow_headers_and_slow_bodies_are_closed(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, http_header_timeout_s=2.0, http_body_timeout_s=3.0) as server:
        stop = threading.Event()
        header_socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        body_socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        threads = []
        for sock in header_socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            lines = [f"X-Slow-{i}: 1\r\n".encode() for i in range(100)]
            threads.append(threading.Thread(target=_trickle, args=(sock, lines, 0.5, stop), daemon=True))
        for sock in body_socks:
            sock.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n")
            threads.append(threading.Thread(target=_trickle, args=(sock, [b"x"] * 1000, 0.5, stop), daemon=True))
        for thread in threads:
            thread.start()
        try:
            time.sleep(6.0)
            # Everyone else is still served meanwhile.
            _healthz(server)
            still_open = [s for s in header_socks + body_socks if not peer_closed(s)]
        finally:
            stop.set()
            for sock in header_socks + body_socks:
                sock.close()
        assert still_open == []
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        dropped = re.search(r'verzilvering_connections_dropped_total\{reason="timed_out"\} (\d+)', metrics)
        assert dropped is not None and int(dropped.group(1)) >= 10, metrics
        assert "Traceback" not in server.log_text()


def test_idle_keepalive_is_closed_after_the_keepalive_timeout(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, http_keepalive_timeout_s=1.0) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert b" 200 " in sock.recv(65536).split(b"\r\n", 1)[0]
        time.sleep(2.5)
        assert peer_closed(sock)
        sock.close()


def test_unauthenticated_connections_are_capped_and_healthz_still_answers(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, max_unauthenticated_connections=30, max_connections_per_address=20) as server:
        time.sleep(0.5)
        baseline = server.open_sockets()
        # 25 from one address: that address's own oldest are pushed out beyond 20.
        one_address = [open_idle(server.port) for _ in range(25)]
        # 3 x 15 from other loopback addresses: the node's cap of 30 pushes out the oldest.
        others = [open_idle(server.port, source=f"127.0.0.{2 + i // 15}") for i in range(45)]
        time.sleep(0.5)
        held = server.open_sockets() - baseline
        assert held <= 30, held
        latencies = [_healthz(server) for _ in range(20)]
        assert max(latencies) < 1.0, latencies
        # The earliest idle connections were the ones pushed out.
        assert peer_closed(one_address[0]) and peer_closed(others[0])
        # A signed-in WebSocket does not count: 35 hello'd sockets all stay.
        signed_in = []
        for i in range(35):
            sock = websocket_handshake(server.port)
            hello = {"type": "hello", "v": 1, "token": server.token(name=f"P{i}", participant_id=f"p-{i}")}
            sock.sendall(text_frame(json.dumps(hello).encode()))
            signed_in.append(sock)
        time.sleep(1.0)
        assert not any(peer_closed(sock) for sock in signed_in)
        for sock in [s for s in one_address + others if s is not None] + signed_in:
            sock.close()
        assert "Traceback" not in server.log_text()


def test_accept_errors_at_the_open_files_limit_are_logged_once_per_interval(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, open_files=80, accept_error_log_interval_s=3.0) as server:
        signed_in = []
        # Signed-in WebSockets until the server can accept no more.
        for i in range(100):
            try:
                sock = websocket_handshake(server.port)
                sock.settimeout(2)
            except OSError:
                break
            hello = {"type": "hello", "v": 1, "token": server.token(name=f"P{i}", participant_id=f"p-{i}")}
            sock.sendall(text_frame(json.dumps(hello).encode()))
            signed_in.append(sock)
        assert len(signed_in) < 100
        # Knocking on a full node for a while.
        knocks = [open_idle(server.port) for _ in range(5)]
        time.sleep(7.0)
        log = server.log_text()
        for sock in signed_in + [k for k in knocks if k is not None]:
            sock.close()
    reports = [line for line in log.splitlines() if "out of system resource" in line]
    assert reports
    at = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in reports]
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(at, at[1:])]
    assert all(gap >= 2.9 for gap in gaps), gaps
    counts = [int(re.search(r"(\d+) time\(s\) since the last report", line).group(1)) for line in reports]  # type: ignore[union-attr]
    assert sum(counts) > len(reports), counts
    assert "Traceback" not in log
