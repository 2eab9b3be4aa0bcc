"""Signalling at scale: join latency across two nodes, memory per idle kiosk, Redis cost per join.

    python -m bench.signalling            # 1,000 joins / 100 rooms / 2 nodes; 10,000 idle kiosks (~12 min)
    python -m bench.signalling --quick    # 400 joins / 40 rooms; 1,000 idle kiosks (< 1 min)

Everything runs on 127.0.0.1: a private `redis-server` on a free port in a temp dir
(bench/redis_server.py `RedisServer`; never the shared one on 6379, never flushed: each
phase uses its own key prefix), server nodes as `python -m server.cli serve --redis-url
...` subprocesses (as bench/server_process.py's `Node` starts them), and load generators as
`python -m bench.sigload` subprocesses (bench/sigload.py: protocol-level aiohttp
WebSocket clients, no media, see there). This process only orchestrates and reads /proc.

1. Joins. N participants (default 1,000) over R rooms (100; 10 per room, under the room
   limit of 30), on two nodes n1 and n2 sharing the Redis. Participant i joins room
   i mod R through node (i + i div R) mod 2, so every room gets joiners through both nodes
   and the first joiners of the rooms alternate between nodes; whichever node does not own
   a room relays its clients' frames to the owner over Redis pub/sub. Each participant:
   connect, `hello`, wait for `welcome`, `join`, wait for `joined` (no `publish`). At most
   C (50) are in flight, split over W (2) load processes; joined participants stay
   connected and ping like kiosks. Figures:
   - join latency = `join` sent -> `joined` received, at the client (the figure the target
     is about); also hello -> welcome and connect -> joined. Split into local (the socket's
     node owns the room) and relayed, and into the first join of a room vs the others.
   - joins/s = completed joins / (first connect -> last `joined`).
   - CPU (100 % = one core) of each node, redis-server, the load processes and this
     process over the phase, and `other` (everything else on the machine: other people's
     jobs make every figure noisier), plus the load processes' event-loop lag p99 (how late
     a 10 ms sleep wakes up: above ~5 ms the load generator adds its own latency).
   - Placement: which node the rooms landed on (read from Redis afterwards).
   The full run then repeats the pattern with 1, 5, 10 and 25 in flight (fresh rooms; the
   same two nodes), to show where p99 crosses the target. With --profile-seconds, py-spy
   samples both nodes (--nonblocking, wall clock) during a repeat of the phase and prints
   time by layer; the profiled repeat's latencies are not reported.

2. Redis commands per join. On the same two nodes, after phase 1's clients left: batches
   of joins into fresh rooms, each batch shorter than the ping interval (no pings in it),
   with the private Redis under MONITOR, so every command is counted with its origin (a
   node's connection, or `lua` for calls made inside the store's Lua scripts; EVALSHA is
   named by script). The nodes' background traffic (heartbeats, liveness checks) is
   measured over a quiet window just before each batch and subtracted pro rata. INFO
   commandstats gives the same total as a cross-check. Batches:
   - mixed: R2 rooms x 10 joins, the phase-1 pattern (headline figure);
   - first join into a room / a later join, each through the owner and relayed;
   - leave: the mixed batch's participants leave.

3. Idle kiosks: resident memory per connection. One node alone (own prefix, still with
   Redis), K load processes (4). Kiosks connect, `hello`, `join` (10 per room; kiosk i
   joins room i mod rooms, so no two joins into one room overlap, unless --idle-order
   room-major) and then only ping every `ping_interval_ms`. VmRSS of the server
   (/proc/<pid>/status) after a warm-up (50 joins and leaves), then at 25/50/75/100 % of
   the target, then after holding every connection for more than a ping interval (so every
   socket has pinged and got its pong). Per connection = (RSS after hold - RSS at warm-up)
   / connections; the slope of RSS over the ramp is printed as a check. RLIMIT_NOFILE is
   raised to the hard limit in this process, in the load processes and (preexec_fn) in
   the server; if the target is not reached the largest count measured is reported with
   what stopped it. A join refused with `unavailable` is retried (at most 3 times, as a
   kiosk would) and counted. The full run measures twice: (a) 10,000 kiosks that offer
   permessage-deflate, as aiohttp (kiosk_client) and browsers do (the server declines it
   since b4830e6); (b) 2,500 (--idle-plain) without deflate. The last run then makes
   --fill-buffers sockets send 260 pings each (8/s, under the rate limit): before 9f1348a
   that filled each session's resume buffer (256 messages, pongs included); now pongs are
   not kept, and what it shows is the RSS high-water mark of such a burst. The servers' garbage-collector pauses are logged by
   bench/sigprobe (sitecustomize on the servers' PYTHONPATH; the server code is untouched).
   --tracemalloc (diagnostic) runs the node under tracemalloc and prints which source
   lines hold the memory per connection.

The run prints each phase's figures, the exact command, and one JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import random
import re
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from .machine import describe, machine_busy_s, process_cpu_s
from .processes import free_port, send_command, wait_or_kill
from .redis_server import RedisServer
from .sigload import pct, raise_nofile

logger = logging.getLogger("bench.signalling")

REPO = Path(__file__).resolve().parent.parent
TARGET_JOIN_P99_MS = 20.0
TARGET_KIB_PER_IDLE = 30.0
# Above this much CPU used by processes outside the bench (100 = one core), say so.
BUSY_OTHER_PCT = 25.0
# Before a Redis batch: wait (at most QUIET_TIMEOUT_S) until the nodes' traffic is
# down to heartbeats (about 8 commands/s per node).
QUIET_COMMANDS_PER_S = 40.0
QUIET_TIMEOUT_S = 60.0
# The idle node counts as settled after a ramp when its CPU over 2 s is below this.
SETTLED_CPU_PCT = 70.0
# A server or load process above this RSS stops the idle ramp (the machine has 24 GiB).
RSS_LIMIT_KIB = 8 * 1024 * 1024


@dataclass(frozen=True)
class Plan:
    participants: int
    rooms: int
    concurrency: int
    workers: int
    batch_rooms: int
    idle: int
    idle_workers: int
    idle_per_room: int
    idle_concurrency: int
    hold_s: float
    fill_buffers: int
    # Idle kiosks of the second run (no deflate); 0 = that run is skipped.
    idle_plain: int


FULL = Plan(1000, 100, 50, 2, 30, 10_000, 4, 10, 50, 14.0, 500, 2_500)
QUICK = Plan(400, 40, 50, 2, 10, 1_000, 2, 10, 50, 3.0, 0, 0)


# --- /proc ---------------------------------------------------------------------------------


def proc_status_kib(pid: int, key: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def proc_nofile(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    except OSError:
        pass
    return "?"


class CpuWindow:
    """CPU % (100 = one core) of named process groups over a window, and of everything else."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {**groups, "bench": [os.getpid()]}
        self.t0 = time.monotonic()
        self.busy0 = machine_busy_s()
        self.cpu0 = {name: sum(process_cpu_s(p) for p in pids) for name, pids in self.groups.items()}

    def result(self) -> dict[str, float]:
        dt = max(1e-3, time.monotonic() - self.t0)
        out = {
            name: round((sum(process_cpu_s(p) for p in pids) - self.cpu0[name]) / dt * 100, 1)
            for name, pids in self.groups.items()
        }
        ours = sum(out.values())
        out["other"] = round(max(0.0, (machine_busy_s() - self.busy0) / dt * 100 - ours), 1)
        out["window_s"] = round(dt, 2)
        return out


def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items() if k != "window_s") + f" (over {cpu['window_s']:.1f} s)"


def machine() -> dict[str, Any]:
    redis_version = ""
    with contextlib.suppress(Exception):
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5).stdout.split()[2]
    return {
        **describe(),
        "aiohttp": aiohttp.__version__,
        "redis_py": __import__("redis").__version__,
        "redis_server": redis_version.removeprefix("v="),
        "loadavg": os.getloadavg()[0],
    }


# --- processes -----------------------------------------------------------------------------


def _raise_nofile_in_child() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Node:
    """One `python -m server.cli serve` process (as `verzilvering serve`)."""

    def __init__(self, name: str, redis_url: str, prefix: str, secret: str, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = self.url + "/ws"
        self.log = workdir / f"{name}.log"
        env = dict(os.environ)
        env.update(
            VERZILVERING_TOKEN_SECRET=secret,
            VERZILVERING_REDIS_PREFIX=prefix,
            VERZILVERING_MEDIA_ADDRESSES='["127.0.0.1"]',
            VERZILVERING_DRAIN_TIMEOUT_S="5",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
        )
        # bench/sigprobe/sitecustomize.py: GC pauses (always) and tracemalloc (when asked).
        self.gc_log = workdir / f"{name}.gc.json"
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "bench" / "sigprobe"), env["PYTHONPATH"]])
        env["VZ_SIG_GC_LOG"] = str(self.gc_log)
        env.update(extra_env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--data-dir", str(workdir / name),
             "--redis-url", redis_url, "--node-id", name],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO,
            preexec_fn=_raise_nofile_in_child,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_healthy(self, http: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with http.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"node {self.name} did not start:\n{self.log_tail()}")

    async def metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        out: dict[str, float] = {}
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            async with http.get(self.url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                for line in (await r.text()).splitlines():
                    if line.startswith("verzilvering_join_seconds"):
                        name, _, value = line.rpartition(" ")
                        out[name] = float(value)
        return out

    def gc_stats(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.gc_log.read_text())
        return {}

    def log_findings(self) -> str:
        """Counts of the server log lines that matter under load (the log is INFO level)."""
        patterns = {
            "redis pool exhausted (Too many connections)": "MaxConnectionsError: Too many connections",
            "writer tasks died (Connection._write)": "coro=<Connection._write()",
            "store marked unreachable by the heartbeat loop": "store unreachable",
            "sessions whose leave hit an unavailable store": "store unavailable while",
            "requests failed in aiohttp": "Error handling request",
        }
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        found = {label: text.count(needle) for label, needle in patterns.items()}
        return ", ".join(f"{label}: {n}" for label, n in found.items() if n)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)


class LoadWorker:
    """One `python -m bench.sigload` process, JSON lines over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    @classmethod
    async def start(cls, name: str, secret: str, workdir: Path) -> "LoadWorker":
        env = dict(os.environ, VZ_BENCH_SECRET=secret)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.sigload",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=open(workdir / f"{name}.log", "wb"), env=env, cwd=REPO, limit=256 * 1024 * 1024,
            preexec_fn=_raise_nofile_in_child,
        )
        worker = cls(proc, name)
        ready = await worker._read(timeout=30)
        if not ready.get("ready"):
            raise RuntimeError(f"load worker {name} did not start: {ready}")
        return worker

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"load worker {self.name} exited (rc {self.proc.returncode})")
        return json.loads(line)

    async def request(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        await send_command(self.proc, cmd)
        return await self._read(timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.request({"cmd": "exit"}, timeout=10)
            await wait_or_kill(self.proc, 10)


async def all_workers(workers: list[LoadWorker], cmds: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(w.request(c, timeout) for w, c in zip(workers, cmds))))


# --- joins ---------------------------------------------------------------------------------


@dataclass
class JoinRun:
    """Samples of one batch: index -> (node index, room, t_start, t_open, t_welcome, t_join_sent, t_joined)."""

    samples: dict[int, tuple[int, str, float, float, float, float, float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    lag_p99_ms: list[float | None] = field(default_factory=list)
    elapsed_s: float = 0.0


def spread_clients(
    first: int, n: int, rooms: list[str], nodes: list[Node], node_of: Any, tag: str
) -> list[tuple[int, str, str, str]]:
    """(global index, ws url, room, participant id) for participants first..first+n-1."""
    out = []
    for k in range(n):
        i = first + k
        room = rooms[k % len(rooms)]
        node = node_of(k, len(rooms))
        out.append((i, nodes[node].ws_url, room, f"p-{tag}-{i}"))
    return out


async def run_joins(
    workers: list[LoadWorker], clients: list[tuple[int, str, str, str]], node_urls: list[str], *,
    tag: str, concurrency: int, timeout_s: float, ping: bool = True, compress: bool = True, retries: int = 0,
) -> JoinRun:
    per_worker: list[list[tuple[int, str, str, str]]] = [[] for _ in workers]
    for k, client in enumerate(clients):
        per_worker[k % len(workers)].append(client)
    cmds = []
    share = [concurrency // len(workers) + (1 if w < concurrency % len(workers) else 0) for w in range(len(workers))]
    for w, chunk in enumerate(per_worker):
        cmds.append({
            "cmd": "join", "tag": tag, "clients": [[url, room, pid] for _, url, room, pid in chunk],
            "concurrency": max(1, share[w]), "timeout_s": timeout_s, "ping": ping, "compress": compress,
            "retries": retries,
        })
    replies = await all_workers(workers, cmds, timeout=timeout_s + 30)
    run = JoinRun()
    for chunk, reply in zip(per_worker, replies):
        for local_index, *times in reply["samples"]:
            i, url, room, _ = chunk[int(local_index)]
            run.samples[i] = (node_urls.index(url), room, *times)  # type: ignore[assignment]
        run.errors.update(reply["errors"])
        run.retried.update(reply.get("retried", {}))
        run.lag_p99_ms.append(reply["lag_p99_ms"])
        run.elapsed_s = max(run.elapsed_s, reply["elapsed_s"])
    return run


def dist(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": _r(pct(values, 50)),
        "p90": _r(pct(values, 90)),
        "p99": _r(pct(values, 99)),
        "max": _r(max(values) if values else None),
    }


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def summarize_joins(run: JoinRun, owners: dict[str, str], node_names: list[str]) -> dict[str, Any]:
    s = run.samples
    join_ms = {i: (v[6] - v[5]) * 1000 for i, v in s.items()}
    hello_ms = {i: (v[4] - v[3]) * 1000 for i, v in s.items()}
    connect_ms = {i: (v[3] - v[2]) * 1000 for i, v in s.items()}
    total_ms = {i: (v[6] - v[2]) * 1000 for i, v in s.items()}
    relayed = {i for i, v in s.items() if owners.get(v[1]) != node_names[v[0]]}
    first_of_room: dict[str, int] = {}
    for i, v in sorted(s.items(), key=lambda kv: kv[1][5]):
        first_of_room.setdefault(v[1], i)
    firsts = set(first_of_room.values())
    span = (max(v[6] for v in s.values()) - min(v[2] for v in s.values())) if s else 0.0
    rows = {
        "join": dist(list(join_ms.values())),
        "join local": dist([x for i, x in join_ms.items() if i not in relayed]),
        "join relayed": dist([x for i, x in join_ms.items() if i in relayed]),
        "join first in room": dist([x for i, x in join_ms.items() if i in firsts]),
        "join later": dist([x for i, x in join_ms.items() if i not in firsts]),
        "hello local": dist([x for i, x in hello_ms.items() if i not in relayed]),
        "hello relayed": dist([x for i, x in hello_ms.items() if i in relayed]),
        "ws connect": dist(list(connect_ms.values())),
        "connect->joined": dist(list(total_ms.values())),
    }
    return {
        "rows": rows,
        "ok": len(s),
        "failed": sum(run.errors.values()),
        "errors": dict(run.errors),
        "relayed": len(relayed),
        "span_s": round(span, 3),
        "joins_per_s": round(len(s) / span, 1) if span > 0 else None,
        "lag_p99_ms": run.lag_p99_ms,
        # Join latency in completion order, to show drift over the run (deciles).
        "join_p50_by_decile": _deciles(s, join_ms),
    }


def _deciles(s: dict[int, tuple[Any, ...]], values: dict[int, float]) -> list[float | None]:
    order = [i for i, _ in sorted(s.items(), key=lambda kv: kv[1][5])]
    n = len(order)
    if n < 10:
        return []
    return [_r(pct([values[i] for i in order[d * n // 10 : (d + 1) * n // 10]], 50), 1) for d in range(10)]


def print_join_table(summary: dict[str, Any]) -> None:
    print(f"  {'ms':<20} {'n':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for name, d in summary["rows"].items():
        cells = " ".join(f"{'-' if d[q] is None else format(d[q], '.1f'):>8}" for q in ("p50", "p90", "p99", "max"))
        print(f"  {name:<20} {d['n']:>6} {cells}")


async def room_owners(r: aioredis.Redis, prefix: str) -> dict[str, str]:
    return await r.hgetall(f"{prefix}room_node")


# --- Redis accounting -----------------------------------------------------------------------


def script_names() -> dict[str, str]:
    """sha1 -> name of the store's Lua scripts (EVALSHA shows only the sha)."""
    from server.store import redis as store_redis

    return {
        hashlib.sha1(value.encode()).hexdigest(): name.strip("_").lower()
        for name, value in vars(store_redis).items()
        if isinstance(value, str) and "redis.call" in value
    }


class RedisMonitor:
    """Counts every command the private Redis executes (MONITOR), by origin and name."""

    IGNORE = {"INFO", "MONITOR", "CLIENT", "HELLO"}

    def __init__(self, url: str) -> None:
        self.client = aioredis.Redis.from_url(url, decode_responses=True)
        self.counts: Counter[tuple[str, str]] = Counter()
        self._scripts = script_names()
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        await asyncio.wait_for(self._started.wait(), 5)
        await asyncio.sleep(0.05)

    async def _run(self) -> None:
        async with self.client.monitor() as m:
            self._started.set()
            async for c in m.listen():
                words = c["command"].split(" ", 2)
                name = words[0].upper()
                if name in self.IGNORE:
                    continue
                if name in ("EVALSHA", "EVAL") and len(words) > 1:
                    name = f"EVALSHA {self._scripts.get(words[1], words[1][:8])}"
                self.counts[("lua" if c["client_type"] == "lua" else "client", name)] += 1

    def take(self) -> Counter[tuple[str, str]]:
        out, self.counts = self.counts, Counter()
        return out

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.aclose()


async def commandstats(r: aioredis.Redis) -> Counter[str]:
    stats = await r.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_monitor")})


@dataclass
class RedisBatch:
    name: str
    joins: int
    per_join: dict[tuple[str, str], float]
    total_per_join: float
    client_per_join: float
    commandstats_per_join: float
    background_per_s: float
    seconds: float


async def measured_batch(
    name: str, monitor: RedisMonitor, r: aioredis.Redis, action: Any, count_of: Any, bg_s: float
) -> RedisBatch:
    """Runs `action()` under MONITOR; subtracts the background rate measured just before."""
    # Earlier work (e.g. leaves the owner is still processing) must not leak into the batch.
    quiet_deadline = time.monotonic() + QUIET_TIMEOUT_S
    while time.monotonic() < quiet_deadline:
        monitor.take()
        await asyncio.sleep(0.5)
        if sum(monitor.take().values()) / 0.5 < QUIET_COMMANDS_PER_S:
            break
    else:
        print(f"  (Redis not quiet before batch {name!r} after {QUIET_TIMEOUT_S:.0f} s: background subtraction is rough)")
    monitor.take()
    t0 = time.monotonic()
    await asyncio.sleep(bg_s)
    background = monitor.take()
    bg_dt = time.monotonic() - t0
    stats0 = await commandstats(r)
    t1 = time.monotonic()
    result = await action()
    # Work the nodes still do for this batch (fan-out, queued relayed frames) belongs to it:
    # the window ends once the traffic is back to the background rate.
    counts: Counter[tuple[str, str]] = Counter()
    tail_deadline = time.monotonic() + QUIET_TIMEOUT_S
    await asyncio.sleep(0.2)
    while time.monotonic() < tail_deadline:
        part = monitor.take()
        counts.update(part)
        t_part = time.monotonic()
        await asyncio.sleep(0.5)
        tail = monitor.take()
        counts.update(tail)
        if sum(tail.values()) / max(1e-3, time.monotonic() - t_part) < QUIET_COMMANDS_PER_S:
            break
    dt = time.monotonic() - t1
    stats1 = await commandstats(r)
    n = count_of(result)
    per: dict[tuple[str, str], float] = {}
    for key in set(counts) | set(background):
        value = counts.get(key, 0) - background.get(key, 0) * dt / bg_dt
        if abs(value) >= 0.5:
            per[key] = value / max(1, n)
    stats_total = sum((stats1 - stats0).values()) - sum(background.values()) * dt / bg_dt
    return RedisBatch(
        name=name,
        joins=n,
        per_join=per,
        total_per_join=round(sum(per.values()), 2),
        client_per_join=round(sum(v for (origin, _), v in per.items() if origin == "client"), 2),
        commandstats_per_join=round(stats_total / max(1, n), 2),
        background_per_s=round(sum(background.values()) / bg_dt, 1),
        seconds=round(dt, 2),
    )


def print_redis_batches(batches: list[RedisBatch]) -> None:
    print(f"  {'batch':<28} {'n':>5} {'all':>6} {'client':>7} {'in Lua':>7} {'(cmdstats)':>10}  per operation, by command (client; lua)")
    for b in batches:
        client = sorted(((k[1], v) for k, v in b.per_join.items() if k[0] == "client" and abs(v) >= 0.05), key=lambda kv: -kv[1])
        lua = sorted(((k[1], v) for k, v in b.per_join.items() if k[0] == "lua" and abs(v) >= 0.05), key=lambda kv: -kv[1])
        detail = " ".join(f"{name.lower()} {v:.2f}" for name, v in client)
        if lua:
            detail += "; lua: " + " ".join(f"{name.lower()} {v:.2f}" for name, v in lua)
        print(f"  {b.name:<28} {b.joins:>5} {b.total_per_join:>6.1f} {b.client_per_join:>7.1f} "
              f"{b.total_per_join - b.client_per_join:>7.1f} {b.commandstats_per_join:>10.1f}  {detail}")
    if batches:
        print(f"  (background traffic of the nodes, subtracted: {batches[0].background_per_s:.0f} commands/s)")


# --- profiling ------------------------------------------------------------------------------


# Inclusive-time layers: a sample counts for a layer when any frame of its stack matches.
PROFILE_LAYERS = (
    ("relayed frames, owner side (Cluster._process)", r"^Cluster\._process "),
    ("join (SignalingService._join)", r"^SignalingService\._join "),
    ("hello (SignalingService._hello)", r"^SignalingService\._hello "),
    ("  placement lookup (Cluster.owner_for)", r"^Cluster\.owner_for "),
    ("  token check (TokenIssuer.verify, PyJWT)", r"^TokenIssuer\.verify "),
    ("  RTCPeerConnection per joiner (WebRtcTransport.__init__)", r"^WebRtcTransport\.__init__ "),
    ("  of which the DTLS certificate (generateCertificate)", r"^RTCCertificate\.generateCertificate "),
    ("room event fan-out (SignalingService._deliver)", r"^SignalingService\._deliver "),
    ("Redis commands (redis-py execute_command / pipelines / scripts)", r"^(Redis\.execute_command|Pipeline\.execute|AsyncScript\.__call__) "),
    ("Redis pub/sub reader (RedisStore._read_events)", r"^RedisStore\._read_events "),
    ("WebSocket sends (Connection._write)", r"^Connection\._write "),
    ("  permessage-deflate (zlib)", r"^ZLib(Compressor|Decompressor)\."),
    ("JSON encode/decode", r"^(JSONEncoder|JSONDecoder)\.|^(dumps|loads) \(json"),
    ("per-connection watchdogs (SignalingService._watch)", r"^SignalingService\._watch "),
    ("presence refresh on every ping (RedisStore.touch_presence)", r"^RedisStore\.touch_presence "),
    ("node heartbeat loop (Cluster._maintain)", r"^Cluster\._maintain "),
    ("  Sfu.stats (load figure: walks every router and transport)", r"^Sfu\.stats "),
    ("replay buffer + sequencing (Session.send)", r"^Session\.send "),
    ("socket writes (transport.write: send syscalls)", r"^_SelectorSocketTransport\.write "),
    ("waiting in epoll (idle)", r"^EpollSelector\.select "),
)


def summarize_pyspy(path: Path, top: int = 15) -> list[str]:
    """Own (leaf) time per function and inclusive time per layer, from py-spy's raw output."""
    own: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    compiled = [(label, re.compile(rx)) for label, rx in PROFILE_LAYERS]
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ["(no profile written)"]
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # "function (path/file.py:line)", outermost first; keep "function (file.py)".
        frames = [re.sub(r" \((?:.*/)?([^/]+?)(?::\d+)?\)$", r" (\1)", f) for f in stack.split(";") if f]
        if not frames or any("(sitecustomize.py)" in f for f in frames):
            continue  # bench/sigprobe's own thread, not the server's
        total += count
        own[frames[-1]] += count
        for label, rx in compiled:
            if any(rx.search(f) for f in frames):
                layers[label] += count
    if not total:
        return ["(no samples)"]
    out = [f"{total} samples of the main thread (py-spy --nonblocking --idle, 250 Hz: wall clock); inclusive time by layer:"]
    out += [f"    {100 * layers[label] / total:5.1f} %  {label}" for label, _ in PROFILE_LAYERS]
    out.append("  own time (leaf function), top:")
    out += [f"    {100 * c / total:5.1f} %  {name}" for name, c in own.most_common(top)]
    return out


async def pyspy_record(pid: int, seconds: float, out: Path) -> asyncio.subprocess.Process | None:
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    return await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(max(1, int(round(seconds)))), "--rate", "250",
        "--format", "raw", "--output", str(out), "--nonblocking", "--idle",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )


# --- phases ----------------------------------------------------------------------------------


def mixed_node(k: int, rooms: int) -> int:
    return (k + k // rooms) % 2


async def phase_joins(args: argparse.Namespace, plan: Plan, ctx: "Ctx") -> dict[str, Any]:
    n, rooms = plan.participants, plan.rooms
    print(f"\n== 1. joins: {n} participants, {rooms} rooms ({n // rooms} per room), 2 nodes (n1, n2) + Redis, "
          f"{plan.workers} load processes, {plan.concurrency} in flight ==", flush=True)
    node_urls = [nd.ws_url for nd in ctx.nodes]
    names = [nd.name for nd in ctx.nodes]
    room_names = [f"bench-a-{r:04d}" for r in range(rooms)]
    clients = spread_clients(0, n, room_names, ctx.nodes, mixed_node, "a")
    metrics0 = [await nd.metrics(ctx.http) for nd in ctx.nodes]
    gc0 = [nd.gc_stats() for nd in ctx.nodes]
    cpu = CpuWindow({"n1": [ctx.nodes[0].pid], "n2": [ctx.nodes[1].pid], "redis": [ctx.redis_pid],
                     "loadgen": [w.pid for w in ctx.workers]})
    run = await run_joins(ctx.workers, clients, node_urls, tag="a", concurrency=plan.concurrency,
                          timeout_s=args.phase_timeout, compress=not args.no_compress)
    cpu_result = cpu.result()
    gc1 = [nd.gc_stats() for nd in ctx.nodes]
    owners = await room_owners(ctx.redis, ctx.prefix)
    summary = summarize_joins(run, owners, names)
    metrics1 = [await nd.metrics(ctx.http) for nd in ctx.nodes]
    placed = Counter(owners.get(r, "?") for r in room_names)
    print(f"  placement: " + ", ".join(f"{k}: {v} rooms" for k, v in sorted(placed.items()))
          + f"  -> {summary['ok'] - summary['relayed']} joins local to the owner, {summary['relayed']} relayed")
    print_join_table(summary)
    print(f"  joins/s: {summary['joins_per_s']} ({summary['ok']} joins in {summary['span_s']} s, first connect -> last joined); "
          f"failed: {summary['failed']} {summary['errors'] or ''}")
    print(f"  join p50 by decile of the run (ms): {summary['join_p50_by_decile']}")
    print(f"  cpu: {fmt_cpu(cpu_result)}; load processes' loop lag p99: {summary['lag_p99_ms']} ms")
    per_join = {k: round(cpu_result[k] / 100 * cpu_result["window_s"] * 1000 / max(1, summary["ok"]), 2)
                for k in ("n1", "n2", "redis", "loadgen")}
    print("  cpu ms per join: " + ", ".join(f"{k} {v}" for k, v in per_join.items())
          + "  (n1 owns the rooms: it serves its own sockets and every relayed join)")
    for nd, a, b in zip(ctx.nodes, gc0, gc1):
        text = gc_window(a, b)
        if text:
            print(f"  garbage collector on {nd.name}: {text}")
    if cpu_result["other"] > BUSY_OTHER_PCT:
        print(f"  OTHER PROCESSES used {cpu_result['other']:.0f} % CPU (of 200 %) during this phase: latencies include "
              "waiting for a core; run again on a quiet machine before quoting them")
    summary["cpu_ms_per_join"] = per_join
    for nd, m0, m1 in zip(ctx.nodes, metrics0, metrics1):
        count = m1.get("verzilvering_join_seconds_count", 0) - m0.get("verzilvering_join_seconds_count", 0)
        total = m1.get("verzilvering_join_seconds_sum", 0) - m0.get("verzilvering_join_seconds_sum", 0)
        le20 = m1.get('verzilvering_join_seconds_bucket{le="0.02"}', 0) - m0.get('verzilvering_join_seconds_bucket{le="0.02"}', 0)
        if count:
            print(f"  server side, {nd.name} (verzilvering_join_seconds, hello -> joined on the owner): {int(count)} joins, "
                  f"mean {1000 * total / count:.1f} ms, {100 * le20 / count:.0f} % within 20 ms")
    # Every participant should hear participant_joined once per later joiner of its room.
    await asyncio.sleep(1.0)
    stats = await all_workers(ctx.workers, [{"cmd": "stats", "coverage": True}] * len(ctx.workers), 30)
    per_room = Counter(v[1] for v in run.samples.values())
    summary["participant_joined"] = announcements(stats, per_room)
    summary["cpu"] = cpu_result
    summary["placement"] = dict(placed)
    return summary


async def phase_sweep(args: argparse.Namespace, plan: Plan, ctx: "Ctx") -> list[dict[str, Any]]:
    """The phase-1 pattern at lower concurrency: where does p99 cross the target?"""
    levels = [int(x) for x in args.sweep.split(",") if x.strip()] if args.sweep is not None else (
        [] if args.quick else [1, 5, 10, 25])
    if not levels:
        return []
    print(f"\n== 1b. same pattern, fewer in flight (fresh rooms, 10 per room; {plan.workers} load processes) ==", flush=True)
    print(f"  {'in flight':>9} {'joins':>6} {'joins/s':>8} {'join p50':>9} {'p99':>7} {'local p50/p99':>14} {'relayed p50/p99':>16} "
          f"{'hello p99 rel.':>15} {'cpu ms/join n1+n2':>18} {'other':>6}")
    out = []
    for level in levels:
        n = max(100, 20 * level)
        rooms = max(1, n // 10)
        room_names = [f"bench-c{level}-{r:04d}" for r in range(rooms)]
        clients = spread_clients(100_000 * (level + 1), n, room_names, ctx.nodes, mixed_node, f"c{level}")
        workers = ctx.workers[: max(1, min(len(ctx.workers), level))]
        cpu = CpuWindow({"nodes": [nd.pid for nd in ctx.nodes]})
        run = await run_joins(workers, clients, [nd.ws_url for nd in ctx.nodes], tag=f"c{level}", concurrency=level,
                              timeout_s=args.phase_timeout, compress=not args.no_compress)
        c = cpu.result()
        summary = summarize_joins(run, await room_owners(ctx.redis, ctx.prefix), [nd.name for nd in ctx.nodes])
        rows = summary["rows"]
        cpu_ms = c["nodes"] / 100 * c["window_s"] * 1000 / max(1, summary["ok"])
        print(f"  {level:>9} {summary['ok']:>6} {summary['joins_per_s'] or 0:>8.0f} {rows['join']['p50']:>9.1f} {rows['join']['p99']:>7.1f} "
              f"{format(rows['join local']['p50'] or 0, '.1f') + '/' + format(rows['join local']['p99'] or 0, '.1f'):>14} "
              f"{format(rows['join relayed']['p50'] or 0, '.1f') + '/' + format(rows['join relayed']['p99'] or 0, '.1f'):>16} "
              f"{rows['hello relayed']['p99'] or 0:>15.1f} "
              f"{cpu_ms:>18.1f} {c['other']:>5.0f}%" + (f"  failed {summary['errors']}" if summary["failed"] else ""), flush=True)
        out.append({"concurrency": level, "joins": summary["ok"], "joins_per_s": summary["joins_per_s"],
                    "join_p50_ms": rows["join"]["p50"], "join_p99_ms": rows["join"]["p99"],
                    "join_p50_local_ms": rows["join local"]["p50"], "join_p50_relayed_ms": rows["join relayed"]["p50"],
                    "join_p99_local_ms": rows["join local"]["p99"], "join_p99_relayed_ms": rows["join relayed"]["p99"],
                    "node_cpu_ms_per_join": round(cpu_ms, 2), "other_cpu_pct": c["other"]})
        await all_workers(workers, [{"cmd": "close", "tag": f"c{level}", "leave": True, "concurrency": 20, "timeout_s": 30}] * len(workers), 60)
    return out


def poisson_offsets(n: int, rate: float, seed: int) -> list[float]:
    """Arrival times (s from the start) of n joins arriving at `rate` per second, Poisson."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


async def phase_open(args: argparse.Namespace, plan: Plan, ctx: "Ctx") -> list[dict[str, Any]]:
    """Open loop: joins arrive at a fixed rate whatever the server does (Poisson arrivals),
    the way kiosks auto-joining an activity arrive. Latency at a given offered rate is the
    figure for the target; phase 1's closed loop measures saturation instead."""
    rates = [float(x) for x in args.open_rates.split(",") if x.strip()]
    if not rates:
        return []
    print(f"\n== 1c. open loop: joins arrive at a fixed rate (Poisson), {plan.participants} participants over "
          f"{plan.rooms} rooms per rate (fewer when the rate x {args.open_max_s:g} s is smaller), 2 nodes, fresh rooms, "
          f"{plan.workers} load processes ==", flush=True)
    print(f"  {'rate/s':>7} {'joins':>6} {'achieved/s':>10} {'join p50':>9} {'p90':>7} {'p99':>7} {'max':>7} "
          f"{'local p99':>9} {'relayed p99':>11} {'conn->joined p99':>16} {'cpu n1+n2':>9} {'other':>6}")
    out = []
    names = [nd.name for nd in ctx.nodes]
    for k, rate in enumerate(rates):
        n = max(10, min(plan.participants, int(rate * args.open_max_s)))
        rooms = max(1, min(plan.rooms, n // 10))
        room_names = [f"bench-o{k}-{r:04d}" for r in range(rooms)]
        clients = spread_clients(1_000_000 * (k + 1), n, room_names, ctx.nodes, mixed_node, f"o{k}")
        offsets = poisson_offsets(n, rate, seed=k + 1)
        per_worker: list[list[int]] = [[] for _ in ctx.workers]
        for j in range(n):
            per_worker[j % len(ctx.workers)].append(j)
        start_at = time.monotonic() + 0.5
        timeout_s = offsets[-1] + 30.0
        cmds = [{
            "cmd": "join", "tag": f"o{k}", "clients": [[clients[j][1], clients[j][2], clients[j][3]] for j in chunk],
            "arrivals": [offsets[j] for j in chunk], "start_at": start_at, "concurrency": 1,
            "timeout_s": timeout_s + 0.5, "compress": not args.no_compress,
        } for chunk in per_worker]
        cpu = CpuWindow({"nodes": [nd.pid for nd in ctx.nodes]})
        replies = await all_workers(ctx.workers, cmds, timeout=timeout_s + 30)
        c = cpu.result()
        run = JoinRun()
        node_urls = [nd.ws_url for nd in ctx.nodes]
        for chunk, reply in zip(per_worker, replies):
            for local_index, *times in reply["samples"]:
                i, url, room, _ = clients[chunk[int(local_index)]]
                run.samples[i] = (node_urls.index(url), room, *times)  # type: ignore[assignment]
            run.errors.update(reply["errors"])
            run.lag_p99_ms.append(reply["lag_p99_ms"])
        summary = summarize_joins(run, await room_owners(ctx.redis, ctx.prefix), names)
        rows = summary["rows"]
        span = offsets[-1]
        achieved = round(n / span, 1) if span > 0 else None
        print(f"  {rate:>7.0f} {summary['ok']:>6} {achieved or 0:>10.1f} {rows['join']['p50'] or 0:>9.1f} "
              f"{rows['join']['p90'] or 0:>7.1f} {rows['join']['p99'] or 0:>7.1f} {rows['join']['max'] or 0:>7.1f} "
              f"{rows['join local']['p99'] or 0:>9.1f} {rows['join relayed']['p99'] or 0:>11.1f} "
              f"{rows['connect->joined']['p99'] or 0:>16.1f} {c['nodes']:>8.0f}% {c['other']:>5.0f}%"
              + (f"  failed {summary['errors']}" if summary["failed"] else ""), flush=True)
        out.append({"rate": rate, "joins": summary["ok"], "failed": summary["failed"], "offered_per_s": achieved,
                    "join_p50_ms": rows["join"]["p50"], "join_p90_ms": rows["join"]["p90"], "join_p99_ms": rows["join"]["p99"],
                    "join_p99_local_ms": rows["join local"]["p99"], "join_p99_relayed_ms": rows["join relayed"]["p99"],
                    "connect_to_joined_p99_ms": rows["connect->joined"]["p99"], "node_cpu_pct": c["nodes"], "other_cpu_pct": c["other"]})
        await all_workers(ctx.workers, [{"cmd": "close", "tag": f"o{k}", "leave": True, "concurrency": 20, "timeout_s": 30}] * len(ctx.workers), 60)
    ok = [x["rate"] for x in out if x["join_p99_ms"] is not None and x["join_p99_ms"] <= TARGET_JOIN_P99_MS and not x["failed"]]
    print(f"  highest offered rate with join p99 <= {TARGET_JOIN_P99_MS:.0f} ms: {max(ok) if ok else 'none'} joins/s "
          f"(a realistic surge: 1,000 kiosks auto-joining one 10:00 activity within a minute = 17 joins/s)")
    return out


async def phase_profile(args: argparse.Namespace, plan: Plan, ctx: "Ctx") -> list[str]:
    if args.profile_seconds <= 0:
        return []
    if shutil.which("py-spy") is None:
        print("\n(py-spy not installed: `pip install py-spy` for the profile)")
        return []
    n, rooms = plan.participants * 2, plan.rooms * 2
    print(f"\n== 1c. profile: py-spy on n1 and n2 for {args.profile_seconds:.0f} s during {n} more joins "
          f"({rooms} fresh rooms, {plan.concurrency} in flight); these joins are not measured ==", flush=True)
    room_names = [f"bench-prof-{r:04d}" for r in range(rooms)]
    clients = spread_clients(200_000, n, room_names, ctx.nodes, mixed_node, "prof")
    outs = [ctx.workdir / f"pyspy-{nd.name}.txt" for nd in ctx.nodes]
    spies = [await pyspy_record(nd.pid, args.profile_seconds, out) for nd, out in zip(ctx.nodes, outs)]
    await asyncio.sleep(0.5)
    run = await run_joins(ctx.workers, clients, [nd.ws_url for nd in ctx.nodes], tag="prof", concurrency=plan.concurrency,
                          timeout_s=args.phase_timeout, compress=not args.no_compress)
    for spy in spies:
        if spy is not None:
            try:
                await asyncio.wait_for(spy.wait(), args.profile_seconds + 30)
            except asyncio.TimeoutError:
                spy.kill()
    lines: list[str] = []
    for nd, out in zip(ctx.nodes, outs):
        lines.append(f"-- {nd.name} --")
        lines += summarize_pyspy(out)
    for line in lines:
        print("  " + line)
    print(f"  ({len(run.samples)} joins ran during the profile; raw stacks in {outs[0].parent} while the run lasts)")
    await all_workers(ctx.workers, [{"cmd": "close", "tag": "prof", "leave": True, "concurrency": 25, "timeout_s": 60}] * len(ctx.workers), 90)
    return lines


async def phase_redis(args: argparse.Namespace, plan: Plan, ctx: "Ctx") -> list[RedisBatch]:
    b = plan.batch_rooms
    print(f"\n== 2. Redis commands per join (MONITOR on the private redis-server; batches into fresh rooms, "
          f"{plan.concurrency} in flight, background subtracted) ==", flush=True)
    monitor = RedisMonitor(ctx.redis_url)
    await monitor.start()
    node_urls = [nd.ws_url for nd in ctx.nodes]
    batches: list[RedisBatch] = []
    compress = not args.no_compress

    def joins(tag: str, clients: list[tuple[int, str, str, str]]) -> Any:
        async def action() -> JoinRun:
            return await run_joins(ctx.workers, clients, node_urls, tag=tag, concurrency=plan.concurrency,
                                   timeout_s=30, compress=compress)
        return action

    def ok(run: JoinRun) -> int:
        if run.errors:
            print(f"  (batch errors: {dict(run.errors)})")
        return len(run.samples)

    try:
        # Headline: the phase-1 pattern.
        mixed_rooms = [f"bench-r-mixed-{r:04d}" for r in range(b)]
        mixed = spread_clients(300_000, b * 10, mixed_rooms, ctx.nodes, mixed_node, "rm")
        batches.append(await measured_batch(f"mixed ({b} rooms x 10)", monitor, ctx.redis, joins("rm", mixed), ok, args.bg_seconds))

        async def leave_all() -> int:
            replies = await all_workers(ctx.workers, [{"cmd": "close", "tag": "rm", "leave": True, "concurrency": 25, "timeout_s": 30}] * len(ctx.workers), 60)
            late = sum(r["closed"] - r["left"] for r in replies)
            if late:
                print(f"  ({late} of the leaving participants got no `left` within {5:.0f} s; their leave still counts)")
            return sum(r["closed"] for r in replies)

        batches.append(await measured_batch("leave (the mixed batch)", monitor, ctx.redis, leave_all, lambda n: n, args.bg_seconds))

        # Breakdown. Rooms are placed on the least-loaded live node; which one that is, is
        # read back from Redis, so "owner"/"relayed" below is what happened, not assumed.
        rooms_1 = [f"bench-r-one-{r:04d}" for r in range(b)]
        first_n1 = spread_clients(310_000, b, rooms_1, ctx.nodes, lambda k, r: 0, "r1")
        first_batch = await measured_batch("first join, via n1", monitor, ctx.redis, joins("r1", first_n1), ok, args.bg_seconds)
        owners = await room_owners(ctx.redis, ctx.prefix)
        on_n1 = sum(owners.get(r) == "n1" for r in rooms_1)
        first_batch.name = "first join, via owner" if on_n1 == b else f"first join via n1 ({on_n1}/{b} own)"
        batches.append(first_batch)
        later_n1 = spread_clients(320_000, b, rooms_1, ctx.nodes, lambda k, r: 0, "r2")
        later_n2 = spread_clients(330_000, b, rooms_1, ctx.nodes, lambda k, r: 1, "r3")
        batches.append(await measured_batch("later join, via owner" if on_n1 == b else "later join, via n1", monitor, ctx.redis, joins("r2", later_n1), ok, args.bg_seconds))
        batches.append(await measured_batch("later join, relayed" if on_n1 == b else "later join, via n2", monitor, ctx.redis, joins("r3", later_n2), ok, args.bg_seconds))
        rooms_2 = [f"bench-r-two-{r:04d}" for r in range(b)]
        first_n2 = spread_clients(340_000, b, rooms_2, ctx.nodes, lambda k, r: 1, "r4")
        first_relayed = await measured_batch("first join, via n2", monitor, ctx.redis, joins("r4", first_n2), ok, args.bg_seconds)
        owners = await room_owners(ctx.redis, ctx.prefix)
        on_n2 = sum(owners.get(r) == "n2" for r in rooms_2)
        first_relayed.name = "first join, relayed" if on_n2 == 0 else f"first join via n2 ({on_n2}/{b} own)"
        batches.append(first_relayed)

        # Steady state: what the held sockets cost per ping (one ping interval, no joins).
        for tag in ("r1", "r2", "r3", "r4"):
            await all_workers(ctx.workers, [{"cmd": "close", "tag": tag, "leave": True, "concurrency": 25, "timeout_s": 30}] * len(ctx.workers), 60)
    finally:
        await monitor.close()
    print_redis_batches(batches)
    return batches


async def phase_idle(args: argparse.Namespace, plan: Plan, ctx: "Ctx", compress: bool, do_fill: bool, label: str) -> dict[str, Any]:
    target = plan.idle
    per_room = plan.idle_per_room
    print(f"\n== 3{label}. idle kiosks on one node: target {target} connections (hello + join, {per_room} per room, then ping every "
          f"interval), {plan.idle_workers} load processes, {plan.idle_concurrency} connecting at a time, "
          f"{'permessage-deflate offered (as aiohttp, kiosk_client and browsers do)' if compress else 'no compression offered (what the server would see with compress=False)'} ==", flush=True)
    prefix = ctx.prefix + f"idle{label}:"
    extra_env = {}
    if args.tracemalloc:
        extra_env = {"VZ_SIG_TRACEMALLOC": str(ctx.workdir)}
    node = Node(f"idle{label}", ctx.redis_url, prefix, ctx.secret, ctx.workdir, extra_env)
    ctx.extra_nodes.append(node)
    await node.wait_healthy(ctx.http)
    workers = [await LoadWorker.start(f"idle{label}-w{i}", ctx.secret, ctx.workdir) for i in range(plan.idle_workers)]
    ctx.extra_workers += workers
    print(f"  RLIMIT_NOFILE (soft/hard): server {proc_nofile(node.pid)}, load processes {proc_nofile(workers[0].pid)}, "
          f"this {'/'.join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE)))}; "
          f"ephemeral ports {Path('/proc/sys/net/ipv4/ip_local_port_range').read_text().split()}")
    rooms_needed = -(-target // per_room)
    room_names = [f"bench-idle-{r:05d}" for r in range(rooms_needed)]
    # Warm-up: code paths and pools that the first joins allocate once are not per-connection.
    warm_rooms = [f"bench-idle-warm-{r}" for r in range(5)]
    warm = spread_clients(0, 50, warm_rooms, [node], lambda k, r: 0, "iw")
    await run_joins(workers, warm, [node.ws_url], tag="iw", concurrency=plan.idle_concurrency, timeout_s=30, compress=compress)
    await all_workers(workers, [{"cmd": "close", "tag": "iw", "leave": True, "concurrency": 25, "timeout_s": 30}] * len(workers), 60)
    await asyncio.sleep(2.0)
    if args.tracemalloc:
        await _tracemalloc_snapshot(node, ctx, "before")
    rss0 = proc_status_kib(node.pid)
    print(f"  server VmRSS after warm-up: {rss0 / 1024:.1f} MiB, fds {proc_fds(node.pid)}", flush=True)
    steps: list[tuple[int, int]] = [(0, rss0)]
    retried: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    joined_rooms: Counter[str] = Counter()
    connected = 0
    limited_by = ""
    started = time.monotonic()
    cpu = CpuWindow({"server": [node.pid], "redis": [ctx.redis_pid], "loadgen": [w.pid for w in workers]})
    fractions = [0.25, 0.5, 0.75, 1.0]
    for frac in fractions:
        want = int(target * frac) - connected
        if want <= 0:
            continue
        if time.monotonic() - started > args.idle_timeout:
            limited_by = f"time budget (--idle-timeout {args.idle_timeout:.0f} s)"
            break
        clients = []
        for k in range(want):
            i = connected + k
            clients.append((i, node.ws_url, room_names[idle_room(i, target, per_room, args.idle_order)], f"p-i-{i}"))
        budget = max(30.0, args.idle_timeout - (time.monotonic() - started))
        run = await run_joins(workers, clients, [node.ws_url], tag="idle", concurrency=plan.idle_concurrency,
                              timeout_s=budget, compress=compress, retries=3)
        retried.update(run.retried)
        connected += len(run.samples)
        joined_rooms.update(v[1] for v in run.samples.values())
        await asyncio.sleep(2.0)
        rss = proc_status_kib(node.pid)
        steps.append((connected, rss))
        rate = len(run.samples) / run.elapsed_s if run.elapsed_s else 0
        print(f"  {connected:>6} connected: VmRSS {rss / 1024:7.1f} MiB (+{(rss - rss0) / max(1, connected):.1f} KiB each), "
              f"server fds {proc_fds(node.pid)}, {rate:.0f} joins/s; join p99 {_r(pct([(v[6] - v[5]) * 1000 for v in run.samples.values()], 99), 1)} ms"
              + (f"; retried {dict(run.retried)}" if run.retried else "")
              + (f"; FAILED {dict(run.errors)}" if run.errors else ""), flush=True)
        if run.errors:
            warnings = [l for l in node.log_tail(400).splitlines() if "WARNING" in l or "ERROR" in l]
            print("  server log (warnings, last 3):\n    " + "\n    ".join(warnings[-3:]))
            failures.update(run.errors)
            # A few refusals (after retries) are reported; many end the ramp.
            if sum(run.errors.values()) > 0.05 * want:
                limited_by = f"errors while connecting: {dict(run.errors)}"
                break
        if rss > RSS_LIMIT_KIB:
            limited_by = "server RSS limit of the bench"
            break
        if node.process.poll() is not None:
            limited_by = "the server exited:\n" + node.log_tail()
            break
    ramp_cpu = cpu.result()
    print(f"  pub/sub backlog after the ramp: {await pubsub_backlog(ctx.redis)}", flush=True)
    # Settle: the server may still be working through events queued during the ramp.
    settle_started = time.monotonic()
    settle_deadline = settle_started + args.settle_timeout
    while time.monotonic() < settle_deadline:
        t0, c0 = time.monotonic(), process_cpu_s(node.pid)
        await asyncio.sleep(2.0)
        busy = (process_cpu_s(node.pid) - c0) / (time.monotonic() - t0) * 100
        if busy < SETTLED_CPU_PCT:
            break
    settle_s = time.monotonic() - settle_started
    print(f"  settled after {settle_s:.0f} s (server below {SETTLED_CPU_PCT:.0f} % of a core over 2 s"
          + ("" if time.monotonic() < settle_deadline else f"; NOT settled within {args.settle_timeout:.0f} s") + ")", flush=True)
    # Hold: every socket pings at least once (first ping one interval after welcome).
    hold_cpu = CpuWindow({"server": [node.pid], "redis": [ctx.redis_pid], "loadgen": [w.pid for w in workers]})
    await all_workers(workers, [{"cmd": "stats"}] * len(workers), 30)  # resets RTT samples
    gc0 = node.gc_stats()
    hold_deadline = time.monotonic() + plan.hold_s
    spy_out = ctx.workdir / f"pyspy-idle{label}.txt"
    spy = None
    if args.profile_seconds > 0 and shutil.which("py-spy"):
        # After the first second of the hold: the last joins' stragglers are done by then.
        await asyncio.sleep(1.0)
        spy = await pyspy_record(node.pid, min(args.profile_seconds, plan.hold_s - 2), spy_out)
    while time.monotonic() < hold_deadline:
        await asyncio.sleep(min(1.0, hold_deadline - time.monotonic()))
    if spy is not None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(spy.wait(), 30)
    rss_hold = proc_status_kib(node.pid)
    hold_cpu_result = hold_cpu.result()
    backlog_after_hold = await pubsub_backlog(ctx.redis)
    gc_hold = gc_window(gc0, node.gc_stats())
    stats = await all_workers(workers, [{"cmd": "stats", "coverage": True}] * len(workers), 30)
    alive = sum(s["sockets"] for s in stats)
    per_conn = (rss_hold - rss0) / connected if connected else None
    slope = _slope(steps)
    print(f"  after holding {plan.hold_s:.0f} s: VmRSS {rss_hold / 1024:.1f} MiB; {alive} sockets open; "
          f"per connection {per_conn:.1f} KiB ((after - warm-up) / {connected}); ramp slope {slope:.1f} KiB/connection")
    rtt50 = [s["rtt_ms"][0] for s in stats if s["rtt_ms"][0] is not None]
    rtt99 = [s["rtt_ms"][1] for s in stats if s["rtt_ms"][1] is not None]
    print(f"  while holding: server CPU {hold_cpu_result['server']:.0f} % of a core, redis {hold_cpu_result['redis']:.0f} %, "
          f"load {hold_cpu_result['loadgen']:.0f} %, other {hold_cpu_result['other']:.0f} %; "
          f"{sum(s['pings'] for s in stats)} pings sent so far; ping->pong RTT p50 {max(rtt50, default=None)} / p99 {max(rtt99, default=None)} ms "
          f"(worst load process); closed by server: {sum(s['closed_by_server'] for s in stats)}")
    print(f"  ramp cpu: {fmt_cpu(ramp_cpu)}")
    print(f"  pub/sub backlog after holding: {backlog_after_hold}")
    if gc_hold:
        print(f"  garbage collector while holding: {gc_hold}")
    if spy is not None:
        print(f"  profile of the server while holding {connected} idle kiosks:")
        for line in summarize_pyspy(spy_out):
            print("    " + line)
    members = joined_rooms
    announced = announcements(stats, members)
    info = await ctx.redis.info("memory")
    fill = None
    if do_fill and plan.fill_buffers and connected >= plan.fill_buffers and not args.tracemalloc:
        fill = await _fill_buffers(plan, node, workers, connected)
    if args.tracemalloc:
        await _tracemalloc_snapshot(node, ctx, "after")
        _tracemalloc_report(ctx, connected)
    if not limited_by and connected < target:
        limited_by = f"connections refused after retries: {dict(failures)}"
    if failures:
        print(f"  joins refused after 3 retries during the ramp: {dict(failures)}; retried: {dict(retried)}")
    if limited_by:
        print(f"  TARGET NOT REACHED: {connected} of {target}; limited by {limited_by}")
    findings = node.log_findings()
    print(f"  server log: {findings or 'nothing notable'}")
    # Close: sockets go (no leave: 10,000 leaves would only time the shutdown), node stops.
    for w in workers:
        await w.stop()
    await node.stop()
    return {
        "connections": connected,
        "target": target,
        "rss0_kib": rss0,
        "rss_after_kib": rss_hold,
        "kib_per_connection": _r(per_conn, 1),
        "kib_per_connection_first_step": _r((steps[1][1] - rss0) / steps[1][0], 1) if len(steps) > 1 and steps[1][0] else None,
        "slope_kib_per_connection": _r(slope, 1),
        "steps": steps,
        "hold_cpu": hold_cpu_result,
        "settle_s": round(settle_s, 1),
        "limited_by": limited_by,
        "retried": dict(retried),
        "failed": dict(failures),
        "participant_joined": announced,
        "log_findings": findings,
        "fill": fill,
        "compress": compress,
        "redis_used_memory_mib": round(info["used_memory"] / 1024**2, 1),
    }


async def pubsub_backlog(r: aioredis.Redis) -> str:
    """What Redis holds for the nodes' pub/sub connections, not yet read by them."""
    try:
        clients = await r.client_list(_type="pubsub")
    except Exception as exc:  # noqa: BLE001 - diagnostic only
        return f"(CLIENT LIST failed: {exc})"
    omem = sum(int(c.get("omem", 0)) for c in clients)
    oll = sum(int(c.get("oll", 0)) for c in clients)
    return f"{omem / 1024**2:.1f} MiB in {oll} reply blocks queued in Redis for {len(clients)} subscriber connection(s)"


def gc_window(before: dict[str, Any], after: dict[str, Any]) -> str:
    """GC pauses between two samples of a node's sigprobe GC log, as text."""
    if not before or not after or after["t"] <= before["t"]:
        return ""
    dt = after["t"] - before["t"]
    parts = []
    for gen in range(3):
        n = after["count"][gen] - before["count"][gen]
        ms = after["total_ms"][gen] - before["total_ms"][gen]
        parts.append(f"gen{gen} {n} x, {ms:.0f} ms")
    total = sum(after["total_ms"][g] - before["total_ms"][g] for g in range(3))
    return (f"{total / dt / 10:.1f} % of the time over {dt:.1f} s (" + ", ".join(parts)
            + f"; longest gen2 pause so far {after['max_ms'][2]:.0f} ms)")


def announcements(stats: list[dict[str, Any]], members: Counter[Any]) -> dict[str, int]:
    """participant_joined delivery: every socket should know of every member of its room
    (its `joined` snapshot plus one participant_joined per later joiner), each once."""
    types: Counter[str] = Counter()
    missing = 0
    for st in stats:
        types.update(st["types"])
        for room, known in st.get("coverage", []):
            missing += max(0, members.get(room, 0) - known)
    received = types["participant_joined"]
    duplicate = types["participant_joined:duplicate"]
    overlap = types["participant_joined:already_in_snapshot"]
    problems = [f"{duplicate} DUPLICATES"] if duplicate else []
    if missing:
        problems.append(f"{missing} MISSING (a member never announced to a socket of its room)")
    print(f"  participant_joined: {received} received, of which {overlap} for someone already in the joiner's "
          f"snapshot (joins that overlapped) and {duplicate} duplicates; {missing} missing: "
          + (", ".join(problems) if problems else "ok"))
    return {"received": received, "already_in_snapshot": overlap, "duplicates": duplicate, "missing": missing}


def idle_room(i: int, target: int, per_room: int, order: str) -> int:
    """Room of idle kiosk i: consecutive kiosks in different rooms (interleaved) or the same (room-major)."""
    rooms = -(-target // per_room)
    return i // per_room if order == "room-major" else i % rooms


async def _fill_buffers(plan: Plan, node: Node, workers: list[LoadWorker], connected: int) -> dict[str, Any]:
    n = plan.fill_buffers
    per = n // len(workers)
    pings, rate = 260, 8.0
    print(f"  filling resume buffers: {per * len(workers)} sockets send {pings} pings each at {rate:.0f}/s "
          f"(pongs are not kept for resume since 9f1348a: what grows here is not session state) ...", flush=True)
    before = proc_status_kib(node.pid)
    replies = await all_workers(workers, [{"cmd": "ping_burst", "tag": "idle", "count": per, "pings": pings, "rate": rate, "timeout_s": 120}] * len(workers), 180)
    await asyncio.sleep(3.0)
    after = proc_status_kib(node.pid)
    sent = sum(r["sent"] for r in replies)
    growth = (after - before) / (per * len(workers))
    print(f"  after {sent} extra pings: VmRSS {after / 1024:.1f} MiB, +{growth:.1f} KiB per socket with a full buffer")
    return {"sockets": per * len(workers), "pings": sent, "kib_per_full_buffer": round(growth, 1)}


def _slope(steps: list[tuple[int, int]]) -> float:
    if len(steps) < 2:
        return float("nan")
    xs = [x for x, _ in steps]
    ys = [y for _, y in steps]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")


async def _tracemalloc_snapshot(node: Node, ctx: "Ctx", label: str) -> None:
    path = ctx.workdir / f"tracemalloc-{label}.snap"
    done = ctx.workdir / "tracemalloc.done"
    done.unlink(missing_ok=True)
    (ctx.workdir / "tracemalloc.next").write_text(str(path))
    node.process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not done.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


def _tracemalloc_report(ctx: "Ctx", connections: int) -> None:
    import tracemalloc

    before = tracemalloc.Snapshot.load(str(ctx.workdir / "tracemalloc-before.snap"))
    after = tracemalloc.Snapshot.load(str(ctx.workdir / "tracemalloc-after.snap"))
    diff = after.compare_to(before, "lineno")
    total = sum(d.size_diff for d in diff)
    print(f"  tracemalloc: Python-visible growth {total / 1024 / max(1, connections):.1f} KiB per connection "
          f"(allocations made through Python's allocators, incl. zlib; not OpenSSL's). Top lines, KiB per connection:")
    for d in diff[:25]:
        tb = d.traceback[0]
        name = tb.filename.replace(str(REPO) + "/", "").split("site-packages/")[-1]
        print(f"    {d.size_diff / 1024 / max(1, connections):7.2f}  {d.count_diff / max(1, connections):6.1f} blocks  {name}:{tb.lineno}")
    by_area: Counter[str] = Counter()
    for d in diff:
        fn = d.traceback[0].filename
        area = fn.split("site-packages/")[-1].split("/")[0] if "site-packages/" in fn else (
            fn.replace(str(REPO) + "/", "").split("/")[0] if fn.startswith(str(REPO)) else Path(fn).parent.name + "/" + Path(fn).name)
        by_area[area] += d.size_diff
    print("  by package / file (KiB per connection): " + ", ".join(
        f"{a} {v / 1024 / max(1, connections):.1f}" for a, v in by_area.most_common(12)))


# --- main ------------------------------------------------------------------------------------


@dataclass
class Ctx:
    workdir: Path
    secret: str
    prefix: str
    redis_url: str
    redis_pid: int
    redis: aioredis.Redis
    http: aiohttp.ClientSession
    nodes: list[Node] = field(default_factory=list)
    workers: list[LoadWorker] = field(default_factory=list)
    extra_nodes: list[Node] = field(default_factory=list)
    extra_workers: list[LoadWorker] = field(default_factory=list)


async def bench(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in ("participants", "rooms", "concurrency", "workers", "idle", "idle_workers", "batch_rooms")
                 if getattr(args, k) is not None}
    if args.hold is not None:
        overrides["hold_s"] = args.hold
    if args.fill_buffers is not None:
        overrides["fill_buffers"] = args.fill_buffers
    if args.idle_plain is not None:
        overrides["idle_plain"] = args.idle_plain
    plan = Plan(**{**plan.__dict__, **overrides})
    phases = set(args.phases.split(","))
    if args.bg_seconds is None:
        args.bg_seconds = 1.0 if args.quick else 1.5
    if args.open_max_s is None:
        args.open_max_s = 1.5 if args.quick else 40.0
    if args.open_rates is None:
        # Quick: the rates around the knee only, to stay near a minute.
        args.open_rates = "50,100,200" if args.quick else "25,50,100,200,400"
    started = time.monotonic()
    command = "python -m bench.signalling" + ("" if len(sys.argv) <= 1 else " " + shlex.join(sys.argv[1:]))
    nofile = raise_nofile()
    print(f"command: {command}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print("machine: " + json.dumps(machine()))
    print(f"plan: {json.dumps(plan.__dict__)}; phases {sorted(phases)}; RLIMIT_NOFILE {nofile}", flush=True)

    result: dict[str, Any] = {"bench": "signalling", "quick": bool(args.quick)}
    joins = None
    batches: list[RedisBatch] = []
    idle_runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-signalling-") as tmp, RedisServer() as redis_server:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        redis_pid = redis_server._process.pid if redis_server._process else 0
        print(f"redis: private redis-server pid {redis_pid} on 127.0.0.1:{redis_server.port} (temp dir, no persistence)")
        secret = secrets.token_urlsafe(48)
        prefix = f"vzbench:{secrets.token_hex(4)}:"
        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        async with aiohttp.ClientSession() as http:
            ctx = Ctx(workdir, secret, prefix, redis_server.url, redis_pid, r, http)
            try:
                if phases & {"joins", "redis"}:
                    ctx.nodes = [Node("n1", ctx.redis_url, prefix, secret, workdir), Node("n2", ctx.redis_url, prefix, secret, workdir)]
                    for nd in ctx.nodes:
                        await nd.wait_healthy(http)
                    ctx.workers = [await LoadWorker.start(f"w{i}", secret, workdir) for i in range(plan.workers)]
                    if "joins" in phases:
                        joins = await asyncio.wait_for(phase_joins(args, plan, ctx), args.phase_timeout + 60)
                        await all_workers(ctx.workers, [{"cmd": "close", "tag": "a", "leave": True, "concurrency": 25, "timeout_s": 60}] * len(ctx.workers), 90)
                        sweep = await asyncio.wait_for(phase_sweep(args, plan, ctx), 4 * args.phase_timeout + 60)
                        if sweep:
                            result["join_p99_ms_by_concurrency"] = {str(x["concurrency"]): x["join_p99_ms"] for x in sweep}
                            result["join_p50_ms_by_concurrency"] = {str(x["concurrency"]): x["join_p50_ms"] for x in sweep}
                        open_loop = await asyncio.wait_for(phase_open(args, plan, ctx), 6 * (args.open_max_s + 60))
                        if open_loop:
                            result["open_loop"] = {str(int(x["rate"])): {k: x[k] for k in ("joins", "failed", "join_p50_ms", "join_p99_ms")}
                                                   for x in open_loop}
                            ok = [x["rate"] for x in open_loop if x["join_p99_ms"] is not None
                                  and x["join_p99_ms"] <= TARGET_JOIN_P99_MS and not x["failed"]]
                            result["open_loop_max_rate_p99_within_target"] = max(ok) if ok else None
                        await asyncio.wait_for(phase_profile(args, plan, ctx), args.phase_timeout + args.profile_seconds + 90)
                    for nd in ctx.nodes:
                        findings = nd.log_findings()
                        print(f"\n  server log of {nd.name} so far: {findings or 'nothing notable'}")
                    if "redis" in phases:
                        batches = await asyncio.wait_for(phase_redis(args, plan, ctx), 300)
                    for w in ctx.workers:
                        await w.stop()
                    for nd in ctx.nodes:
                        await nd.stop()
                if "idle" in phases:
                    # (compress, target): as clients connect today, then without deflate.
                    variants = [("plain", plan.idle)] if args.no_compress else [("deflate", plan.idle)]
                    if not args.no_compress and plan.idle_plain > 0:
                        variants.append(("plain", plan.idle_plain))
                    for k, (variant, target) in enumerate(variants):
                        label = "" if len(variants) == 1 else "ab"[k]
                        idle_runs[variant] = await asyncio.wait_for(
                            phase_idle(args, dataclasses.replace(plan, idle=target), ctx, compress=variant == "deflate",
                                       do_fill=k == len(variants) - 1, label=label),
                            args.idle_timeout + args.settle_timeout + plan.hold_s + 400)
                        await asyncio.sleep(2.0)
            except Exception:
                for nd in ctx.nodes + ctx.extra_nodes:
                    if nd.process.poll() is not None and nd.process.returncode not in (0, None):
                        print(f"--- {nd.name} exited {nd.process.returncode}:\n{nd.log_tail()}")
                raise
            finally:
                for w in ctx.workers + ctx.extra_workers:
                    with contextlib.suppress(Exception):
                        await w.stop()
                for nd in ctx.nodes + ctx.extra_nodes:
                    with contextlib.suppress(Exception):
                        await nd.stop()
                await r.aclose()

    print("\n== summary ==")
    if joins is not None:
        row = joins["rows"]["join"]
        result.update(
            join_p50_ms=row["p50"], join_p99_ms=row["p99"], joins_per_s=joins["joins_per_s"],
            join_p99_local_ms=joins["rows"]["join local"]["p99"], join_p99_relayed_ms=joins["rows"]["join relayed"]["p99"],
            hello_p99_relayed_ms=joins["rows"]["hello relayed"]["p99"],
            connect_to_joined_p99_ms=joins["rows"]["connect->joined"]["p99"],
            joins_ok=joins["ok"], joins_failed=joins["failed"], joins_relayed=joins["relayed"],
            join_cpu_pct=joins["cpu"], join_cpu_ms_per_join=joins["cpu_ms_per_join"],
            participant_joined=joins["participant_joined"], placement=joins["placement"],
            loadgen_lag_p99_ms=max((x for x in joins["lag_p99_ms"] if x is not None), default=None),
        )
        met = row["p99"] is not None and row["p99"] <= TARGET_JOIN_P99_MS
        print(f"  join p99 {row['p99']} ms (p50 {row['p50']}): target <= {TARGET_JOIN_P99_MS:.0f} ms {'MET' if met else 'NOT MET'}; "
              f"{joins['joins_per_s']} joins/s")
    if batches:
        mixed = batches[0]
        result["redis_commands_per_join"] = mixed.total_per_join
        result["redis_client_commands_per_join"] = mixed.client_per_join
        result["redis_commands_per_join_by_batch"] = {b.name: b.total_per_join for b in batches}
        print(f"  Redis commands per join (mixed batch): {mixed.total_per_join} ({mixed.client_per_join} sent by the nodes, "
              f"the rest inside Lua scripts)")
    for variant, idle in idle_runs.items():
        key = "" if variant == next(iter(idle_runs)) else "_no_deflate" if variant == "plain" else "_deflate"
        result[f"rss_kib_per_idle_connection{key}"] = idle["kib_per_connection"]
        result[f"rss_slope_kib_per_idle_connection{key}"] = idle["slope_kib_per_connection"]
        result[f"rss_kib_per_idle_connection_first_step{key}"] = idle["kib_per_connection_first_step"]
        result[f"idle_connections{key}"] = idle["connections"]
        result[f"idle_server_cpu_pct{key}"] = idle["hold_cpu"]["server"]
        result[f"idle_limited_by{key}"] = idle["limited_by"] or None
        result[f"idle_deflate_offered{key}"] = idle["compress"]
        result[f"idle_participant_joined{key}"] = idle["participant_joined"]
        if idle["fill"]:
            result["rss_kib_per_full_resume_buffer"] = idle["fill"]["kib_per_full_buffer"]
        kib = idle["kib_per_connection"]
        met = kib is not None and kib <= TARGET_KIB_PER_IDLE
        print(f"  {kib} KiB per idle connection at {idle['connections']} connections "
              f"({'deflate offered' if idle['compress'] else 'no deflate'}): target <= {TARGET_KIB_PER_IDLE:.0f} KiB "
              f"{'MET' if met else 'NOT MET'}")
    if "open_loop" in result:
        print(f"  open loop (Poisson arrivals), join p99 by offered rate: "
              + ", ".join(f"{r}/s {v['join_p99_ms']} ms" for r, v in result["open_loop"].items())
              + f"; highest rate within {TARGET_JOIN_P99_MS:.0f} ms: {result['open_loop_max_rate_p99_within_target']}")
    print(f"\ntotal {time.monotonic() - started:.0f} s; command: {command}")
    result["command"] = command
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.signalling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="400 joins, 1,000 idle kiosks (< 1 min)")
    parser.add_argument("--phases", default="joins,redis,idle", help="which of joins,redis,idle to run")
    parser.add_argument("--participants", type=int, help="participants in phase 1 (1000)")
    parser.add_argument("--rooms", type=int, help="rooms in phase 1 (100)")
    parser.add_argument("--concurrency", type=int, help="joins in flight (50)")
    parser.add_argument("--workers", type=int, help="load processes for phases 1-2 (2)")
    parser.add_argument("--batch-rooms", type=int, help="rooms per Redis batch (30)")
    parser.add_argument("--idle", type=int, help="idle kiosks to hold on one node (10000)")
    parser.add_argument("--idle-workers", type=int, help="load processes for the idle kiosks (4)")
    parser.add_argument("--hold", type=float, help="seconds to hold every idle kiosk after the ramp (14)")
    parser.add_argument("--fill-buffers", type=int, help="idle sockets that fill their resume buffer with pings (500; 0 = skip)")
    parser.add_argument("--idle-order", choices=("interleaved", "room-major"), default="interleaved",
                        help="idle kiosk i joins room i mod rooms (interleaved: no two joins into one room at once) "
                             "or room i div per-room (room-major: a room's kiosks join together, as at an activity's start)")
    parser.add_argument("--sweep", help="comma-separated lower concurrencies to run after phase 1 (full: 1,5,10,25; quick: none)")
    parser.add_argument("--open-rates",
                        help="open-loop phase: offered join rates per second, Poisson arrivals (full 25,50,100,200,400; "
                             "quick 50,100,200; '' = skip)")
    parser.add_argument("--open-max-s", type=float, default=None,
                        help="open-loop phase: at most rate x this many joins per rate (full 40 s: 1,000 joins from 25/s up; quick 1.5 s)")
    parser.add_argument("--no-compress", action="store_true", help="clients never offer permessage-deflate (all phases)")
    parser.add_argument("--idle-plain", type=int, help="idle kiosks of the second idle run, without deflate (full: 2500; 0 = skip)")
    parser.add_argument("--profile-seconds", type=float, default=0.0, help="py-spy both nodes during a repeat of phase 1")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="diagnostic: run the idle node under tracemalloc (bench/sigprobe) and show where memory goes; "
                             "slows the server, so RSS figures of such a run are not comparable")
    parser.add_argument("--bg-seconds", type=float, help="background measurement before each Redis batch (1.5 s; quick 1 s)")
    parser.add_argument("--phase-timeout", type=float, default=120.0, help="time budget of each join phase")
    parser.add_argument("--idle-timeout", type=float, default=400.0, help="time budget of each idle ramp")
    parser.add_argument("--settle-timeout", type=float, default=120.0, help="longest wait for the idle node to settle after its ramp")
    parser.add_argument("--keep", help="write logs, profiles and snapshots to this directory (kept)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
