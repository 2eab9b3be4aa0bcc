"""What a hostile client can do to one node (issue 11): flood, slowloris, idle sockets, login race.

    python -m bench.abuse                # full: 20 s flood, 300 slowloris connections
    python -m bench.abuse --quick        # 10 s flood, 100 slowloris connections (~2 min)
    python -m bench.abuse --baseline-tree /work/wt/flood-base   # also measure that checkout

Every phase runs `verzilvering serve` as a separate process (bench/server_process.py) on
127.0.0.1 with the default settings and an embedded store, and attacks it from raw
sockets in this process (bench/hostile.py):

1. Flood: 2 WebSockets that never say hello send 1-byte text frames as fast as the socket
   takes them and never read. `flood_rss_growth_mb` = the server's peak VmRSS during the
   flood minus VmRSS before it; `flood_sockets_closed_s` = seconds from the flood's start
   until the server had dropped both (a send failed), null if one was still open at the end.
2. Slowloris: N connections from 10 loopback addresses (127.0.0.2-11, so no per-address
   cap decides it), half sending one header line every 5 s, half a complete POST header and
   then one body byte every 5 s. `slowloris_open_after_30s` = how many the server still
   held open 30 s after they started.
3. Idle sockets: the server runs with a soft open-files limit of 1024 (what a process gets
   outside systemd); this process raises its own limit and opens 2,000 TCP connections
   (non-blocking, from 20 loopback addresses) that never send a byte, then times 100
   sequential GET /healthz (timeout 1 s, counted as 1,000 ms when it passes; the phase stops
   after 10 failures). `healthz_p99_ms_under_2000_idle` = their p99.
4. Login race: an account made with `verzilvering admin create-user --password-stdin`
   before the server starts; 40 concurrent POST /login for it, 39 with a wrong password
   sent first and the right one last. With 5 failures allowed, the right one must be
   refused; `concurrent_login_bypasses` = logins that succeeded anyway.

With --baseline-tree, phases run against that checkout first (its own build_ext done)
and ratios are printed; the final JSON line has this tree's figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from bench.hostile import Flooder, peer_closed, websocket_handshake
from bench.machine import describe
from bench.server_process import ROOT, ServerProcess

IDLE_SOCKETS = 2000
SERVER_OPEN_FILES = 1024
USERNAME = "coordinator-bench"
PASSWORD = "correct horse battery staple 11"


def flood(root: Path, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp), root=root) as server:
        time.sleep(1.0)
        before = server.rss_mb()
        flooders = [Flooder(websocket_handshake(server.port)) for _ in range(2)]
        for flooder in flooders:
            flooder.start()
        peak = before
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            peak = max(peak, server.rss_mb())
            time.sleep(0.2)
        for flooder in flooders:
            flooder.stop()
        gone = [f.gone_after for f in flooders]
        frames = sum(f.frames_sent for f in flooders)
    closed = max(gone) if all(g is not None for g in gone) else None  # type: ignore[type-var]
    return {
        "rss_before_mb": round(before, 1), "rss_peak_mb": round(peak, 1),
        "flood_rss_growth_mb": round(peak - before, 1),
        "flood_sockets_closed_s": round(closed, 2) if closed is not None else None,
        "frames_sent": frames, "hello_timeout_s": 10.0,
    }


def slowloris(root: Path, count: int, observe_s: float = 30.0, every_s: float = 5.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp), root=root) as server:
        socks: list[socket.socket] = []
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=(f"127.0.0.{2 + i % 10}", 0))
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            else:
                sock.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                             b"Content-Length: 100000\r\n\r\n")
            sock.setblocking(False)
            socks.append(sock)
        started = time.monotonic()
        alive = [True] * count
        tick = 0
        while time.monotonic() - started < observe_s:
            time.sleep(every_s - (time.monotonic() - started) % every_s)
            tick += 1
            for i, sock in enumerate(socks):
                if not alive[i]:
                    continue
                try:
                    sock.send(f"X-Slow-{tick}: 1\r\n".encode() if i % 2 else b"x")
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    alive[i] = False
        still_open = sum(1 for i, sock in enumerate(socks) if alive[i] and not peer_closed(sock))
        held = server.open_sockets()
        for sock in socks:
            sock.close()
    return {"connections": count, "slowloris_open_after_30s": still_open, "server_sockets_at_30s": held}


def _raise_open_files(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def idle_healthz(root: Path, requests: int = 100, timeout_s: float = 1.0) -> dict[str, Any]:
    limit = _raise_open_files(IDLE_SOCKETS + 500)
    if limit < IDLE_SOCKETS + 100:
        raise SystemExit(f"cannot hold {IDLE_SOCKETS} sockets: open-files limit {limit}")
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(
        Path(tmp), root=root, open_files=SERVER_OPEN_FILES
    ) as server:
        socks = []
        for i in range(IDLE_SOCKETS):
            sock = socket.socket()
            sock.bind((f"127.0.0.{2 + i % 20}", 0))
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.port))
            socks.append(sock)
        time.sleep(2.0)
        held = server.open_sockets()
        latencies: list[float] = []
        failures = 0
        for _ in range(requests):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(f"{server.url}/healthz", timeout=timeout_s) as reply:
                    reply.read()
                    ok = reply.status == 200
            except (OSError, urllib.error.URLError):
                ok = False
            elapsed = time.monotonic() - started
            if not ok:
                failures += 1
                elapsed = max(elapsed, timeout_s)
            latencies.append(elapsed * 1000)
            if failures >= 10:
                break
        log = server.log_text()
        for sock in socks:
            sock.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)]
    return {
        "idle_sockets": IDLE_SOCKETS, "server_open_files": SERVER_OPEN_FILES, "server_sockets_held": held,
        "healthz_requests": len(latencies), "healthz_failures": failures,
        "healthz_p50_ms": round(latencies[len(latencies) // 2], 1),
        "healthz_p99_ms_under_2000_idle": round(p99, 1),
        "accept_error_log_lines": sum(1 for line in log.splitlines() if "out of system resource" in line),
        "log_bytes": len(log),
    }


async def _login_race(server: ServerProcess) -> tuple[int, list[int]]:
    async def attempt(password: str, delay: float) -> int:
        # unsafe: the server is an IP address, whose cookies aiohttp's default jar drops.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{server.url}/login") as page:
                token = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
            assert token is not None
            await asyncio.sleep(delay)
            async with http.post(
                f"{server.url}/login",
                data={"username": USERNAME, "password": password, "csrf_token": token.group(1)},
                allow_redirects=False,
            ) as reply:
                return reply.status

    # The wrong ones are sent first, the right one a moment later (all still in flight together).
    tasks = [attempt("wrong password %d!" % i, 0.0) for i in range(39)] + [attempt(PASSWORD, 0.05)]
    statuses = await asyncio.gather(*tasks)
    successes = sum(1 for status in statuses if status in (302, 303))
    return successes, list(statuses)


def login_race(root: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        probe = ServerProcess(directory, root=root)
        subprocess.run(
            [sys.executable, "-m", "server.cli", "admin", "create-user", "--username", USERNAME, "--name", "Bench",
             "--role", "coordinator", "--password-stdin", "--data-dir", str(directory / "data")],
            input=PASSWORD + "\n", text=True, check=True, capture_output=True, env=probe.env(), cwd=root,
        )
        with probe as server:
            successes, statuses = asyncio.run(_login_race(server))
    return {"concurrent_login_bypasses": successes, "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))}}


def measure(root: Path, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    print(f"[{root}] flood ...", flush=True)
    results["flood"] = flood(root, 10.0 if quick else 20.0)
    print(f"  {results['flood']}", flush=True)
    print(f"[{root}] slowloris ...", flush=True)
    results["slowloris"] = slowloris(root, 100 if quick else 300)
    print(f"  {results['slowloris']}", flush=True)
    print(f"[{root}] idle sockets + /healthz ...", flush=True)
    results["idle"] = idle_healthz(root)
    print(f"  {results['idle']}", flush=True)
    print(f"[{root}] login race ...", flush=True)
    results["login"] = login_race(root)
    print(f"  {results['login']}", flush=True)
    return results


def headline(results: dict[str, Any]) -> dict[str, Any]:
    return {
        "flood_rss_growth_mb": results["flood"]["flood_rss_growth_mb"],
        "flood_sockets_closed_s": results["flood"]["flood_sockets_closed_s"],
        "slowloris_open_after_30s": results["slowloris"]["slowloris_open_after_30s"],
        "healthz_p99_ms_under_2000_idle": results["idle"]["healthz_p99_ms_under_2000_idle"],
        "concurrent_login_bypasses": results["login"]["concurrent_login_bypasses"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--baseline-tree", type=Path, help="an older checkout to measure first (built in place)")
    args = parser.parse_args()
    print("command:", " ".join(["python -m bench.abuse", *sys.argv[1:]]))
    print("machine:", json.dumps(describe()))
    baseline = None
    if args.baseline_tree is not None:
        baseline = headline(measure(args.baseline_tree.resolve(), args.quick))
        print("baseline:", json.dumps(baseline), flush=True)
    results = measure(ROOT, args.quick)
    figures = headline(results)
    # Sanity: the phases measured what they claim (the attack really ran).
    refused_as_forged = results["login"]["statuses"].get("403", 0)
    if results["flood"]["frames_sent"] < 1000 or results["idle"]["healthz_requests"] < 10 or refused_as_forged:
        print("the attack did not run as intended:", json.dumps(results), file=sys.stderr)
        return 1
    if baseline is not None:
        for name, value in figures.items():
            old = baseline[name]
            ratio = f"{value / old:.3f}" if isinstance(value, (int, float)) and isinstance(old, (int, float)) and old else "-"
            print(f"  {name}: baseline {old} -> now {value} (ratio {ratio})")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
