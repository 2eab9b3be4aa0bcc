"""How many forwarded streams one SFU process carries: ramp consumers until loss or latency fails.

    python -m bench.capacity            # direct floor, fan-out ramp, both activities, profile (~3-7 min)
    python -m bench.capacity --quick    # 10/40/80 subscribers, short windows, activities, profile (< 1 min)

Everything runs on this machine over 127.0.0.1 (signalling) and the machine's own interface
address (ICE host candidates; aioice never offers 127.0.0.1), i.e. over the loopback device.

Processes
    server   `python -m server.cli serve` in its own process, as in production (`--server-dir`
             runs it from another tree, e.g. an export of an older commit, for an A/B). Its CPU
             comes from /proc/<pid>/stat over each window (100 % = one core, also its ceiling:
             one Python process), and the time it was runnable but waiting for a CPU from
             /proc/<pid>/schedstat. bench/serverprobe/sitecustomize.py, put on its PYTHONPATH,
             records its garbage-collector pauses (server code untouched).
    workers  1-2 load generators (`python -m bench.loadgen --worker`, default 2), each with
             its own event loop and GIL. Publishers replay media encoded once at start-up
             (no encoding while running); consumers count and check packets one step after
             SRTP (no jitter buffer, no decoding). See bench/loadgen.py. Their CPU and event
             loop lag are measured too: a worker above 90 % of a core is flagged as saturated
             (`*`), a worker whose loop lags while the machine is short of CPU as `~`.
    this     the orchestrator: starts everything, issues tokens, reads /proc, prints.

The machine may be shared: before each window the bench waits (full runs: up to 30 s,
`--quiet-wait`) for other processes to use < 25 % CPU, reports the CPU they used during the
window ("other"), and measures a failing step once more when the machine was busy.

Scenarios
    fanout   R rooms (default 1), each with one publisher (VP8 640x480@30 ~500 kbps + Opus
             20 ms), and K receive-only subscribers, K growing step by step (late joiners;
             the room limit is raised for this run with VERZILVERING_MAX_PARTICIPANTS_PER_ROOM).
             A step fails when loss > 0.5 % or the p99 of send->receive latency > 20 ms (video
             or audio). The ramp stops at the first failing step or when the time budget ends.
             --video-only: the publishers send no audio, so every forwarded stream is video.
             streams per core = forwarded video streams / (server CPU / 100 %) at the last
             passing step.
    activity-now     the issue's 20-participant activity as production runs it: the room is a
             directory Activity (seeded into the server's data dir before it starts, the way
             the admin pages create one). The host publishes 640x480 video + audio, 19 seniors
             publish 320x240@15 tiles (~150 kbps) + audio (RFC 6464 levels: host loudest, then
             senior-1, senior-2). The server forwards the loudest voices only (last-N audio,
             default 3, the host always heard: 3 x 19 audio streams), the host's video to
             everyone and the tiles to the host only (selective video above
             `tiles_to_everyone_up_to` participants): 19 + 19 video streams.
    activity-adhoc   (not run by default) the same 20 participants in an ad-hoc room, where
             every video goes to everyone: 19 host + 361 tile streams.
    activity-target  (not run by default; superseded by activity-now) the target forwarding (host video to all, last-3 audio, the
             19 tiles only to the host), emulated with today's server: room "stage" has the
             host (video + audio) and 19 seniors, two of whom publish audio (host + 2 = the 3
             voices); room "tiles" has the 19 seniors' tile publishers (tokens without
             `subscribe`) and one receive-only participant standing in for the host's tile
             view. 38 video + 57 audio streams: the per-packet work of the target (the tiles go
             over second peer connections, 40 in all instead of 20).

Latency is "received - sent" per packet on one CLOCK_MONOTONIC: from just before the
publisher's SRTP to just after the consumer's SRTP, so it includes both load generators'
SRTP and event-loop queueing, not just the server. The `direct (no srv)` row (a publisher and
a consumer wired to each other in one load generator) shows that floor. It is reported as the
server-added latency; it is an upper bound of it.

Profile: after the ramp, py-spy (if installed: `pip install py-spy`) samples the server for a
few seconds at the heaviest step still connected; the time per layer (with us per forwarded
packet), the top functions by own and inclusive time, and what would make the big layers
cheaper are printed, and the raw folded stacks are kept. `--profile-seconds 0` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import logging
import os
import platform
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .loadgen import bin_ms, encode_media, save_media
from .machine import describe, machine_busy_s, process_cpu_s
from .processes import free_port, send_command, start_worker, wait_or_kill, worker_messages

logger = logging.getLogger("bench.capacity")

REPO = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")

LOSS_LIMIT_PCT = 0.5
P99_LIMIT_MS = 20.0
WORKER_SATURATED_PCT = 90.0
WORKER_LAG_LIMIT_MS = 20.0
BUSY_OTHER_PCT = 25.0


@dataclass(frozen=True)
class Plan:
    steps: tuple[int, ...]
    warmup_s: float
    window_s: float
    budget_s: float  # for the fan-out ramp
    loop_s: float  # seconds of pre-encoded media
    profile_s: float
    activity_window_s: float
    # How long the activity scenario waits for all its media to flow before measuring anyway
    # (a busy machine can take long; --quick must stay under a minute).
    media_wait_s: float = 60.0


# Full: each window starts 10 s after its joins, once every new consumer's NACK history
# (server.rtc.rtphooks.SEND_HISTORY_SIZE = 512 packets, ~8 s of video) is full, so the window is
# steady state. Quick: 1 s, so its windows include that fill-up (more GC, see BENCHMARKS.md).
FULL = Plan(steps=(10, 25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 400), warmup_s=10.0, window_s=8.0,
            budget_s=270.0, loop_s=10.0, profile_s=8.0, activity_window_s=8.0)
QUICK = Plan(steps=(10, 40, 80), warmup_s=1.0, window_s=3.0, budget_s=30.0, loop_s=4.0, profile_s=3.0,
             activity_window_s=3.0, media_wait_s=12.0)


# --- /proc -------------------------------------------------------------------------------------


def proc_wait_s(pid: int | None) -> float:
    """Seconds the process was runnable but waiting for a CPU (/proc/<pid>/schedstat, field 2)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20
    except OSError:
        return 0.0


def server_code(directory: Path) -> str:
    """Which server code runs: commit and uncommitted changes under server/ and signaling/."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()

    with contextlib.suppress(Exception):
        commit = git("rev-parse", "--short", "HEAD")
        if commit and Path(git("rev-parse", "--show-toplevel")).resolve() == directory.resolve():
            dirty = git("status", "--short", "--", "server", "signaling").splitlines()
            changed = ", ".join(line[3:] for line in dirty)
            return f"{directory} at commit {commit}" + (f" WITH UNCOMMITTED CHANGES in {changed}" if dirty else
                                                       " (server/ and signaling/ clean)")
    marker = directory / "COMMIT"
    if marker.exists():
        return f"{directory}, an export of commit {marker.read_text().strip()}"
    return f"{directory} (not a git checkout)"


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def machine() -> dict[str, Any]:
    import aiortc
    import av

    return {**describe(), "kernel": platform.release(), "aiortc": aiortc.__version__, "av": av.__version__}


# --- processes -----------------------------------------------------------------------------------


async def seed_activities(data_dir: Path, rooms: tuple[str, ...]) -> None:
    """Creates directory Activities (room id = activity id) in a data dir before its server
    starts, through the same store and directory the server opens: a room with an Activity
    is what production runs, with the router's selective video for large activities."""
    from server.directory import Activity, Directory
    from server.store.embedded import EmbeddedStore

    store = EmbeddedStore(data_dir)
    await store.open()
    try:
        directory = Directory(store)
        for room in rooms:
            await directory.put(Activity(id=room, title=f"Bench {room}", capacity=20), actor="bench")
    finally:
        await store.close()


class Server:
    """`python -m server.cli serve` in a subprocess."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str, log_path: Path, gc_path: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.url = url
        self.log_path = log_path
        self.gc_path = gc_path

    # Where `python -m server.cli` runs from (--server-dir): this repo, or e.g. an export of a commit.
    code_dir: Path = REPO

    @classmethod
    async def start(cls, workdir: Path, secret: str, extra_env: dict[str, str],
                    activities: tuple[str, ...] = ()) -> "Server":
        port = free_port()
        data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=workdir))
        if activities:
            await seed_activities(data_dir, activities)
        log_path = workdir / f"server-{port}.log"
        gc_path = workdir / f"server-gc-{port}.json"
        # bench/serverprobe/sitecustomize.py records GC pauses (and applies --server-gc-threshold).
        probe = str(Path(__file__).resolve().parent / "serverprobe")
        pythonpath = os.pathsep.join(x for x in (probe, os.environ.get("PYTHONPATH", "")) if x)
        env = {**os.environ, "VERZILVERING_TOKEN_SECRET": secret, "PYTHONPATH": pythonpath,
               "VZ_BENCH_GC_LOG": str(gc_path), **extra_env}
        with open(log_path, "wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
                "--log-level", "WARNING",
                cwd=cls.code_dir, env=env, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
            )
        self = cls(proc, f"http://127.0.0.1:{port}", log_path, gc_path)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                break
            with contextlib.suppress(Exception):
                await self.health()
                return self
            await asyncio.sleep(0.1)
        raise RuntimeError(f"server did not come up:\n{self.log_tail()}")

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(self.url + "/healthz") as resp:
                resp.raise_for_status()
                return await resp.json()

    async def media(self) -> dict[str, int]:
        with contextlib.suppress(Exception):
            return (await self.health())["media"]
        return {}

    def gc(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.gc_path.read_text())
        return None

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await wait_or_kill(self.proc, 8)


class WorkerHandle:
    """One `python -m bench.loadgen --worker`, driven with JSON lines."""

    _refs = itertools.count(1)

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, media_path: Path, log_path: Path) -> "WorkerHandle":
        self = cls(await start_worker(("bench.loadgen", "--worker", "--media", str(media_path)), log_path))
        msg = await asyncio.wait_for(self._ready, 60)
        if msg.get("event") != "ready":
            raise RuntimeError(f"load generator did not start: {msg}")
        return self

    async def _read(self) -> None:
        async for msg in worker_messages(self.proc):
            if msg.get("event") in ("ready", "error") and not self._ready.done() and msg.get("ref") is None:
                self._ready.set_result(msg)
                continue
            fut = self._waiting.pop(msg.get("ref"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        if not self._ready.done():
            self._ready.set_result({"event": "eof"})
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"load generator {self.pid} exited"))

    async def call(self, msg: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdin is not None
        ref = next(self._refs)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = fut
        await send_command(self.proc, {**msg, "ref": ref})
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.call({"cmd": "close"}, timeout=5)
        await wait_or_kill(self.proc, 10)
        self._reader.cancel()


# --- measuring --------------------------------------------------------------------------------


def _percentile(hist: Counter[int], q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    want = q / 100 * total
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= want:
            return round(bin_ms(b), 2)
    return None


@dataclass
class Window:
    """One measured window: what the server did and what the consumers saw."""

    label: str
    video_streams: int  # forwarded video streams the scenario should have
    audio_streams: int
    seconds: float = 0.0
    started_ns: int = 0
    server_cpu_pct: float = 0.0
    server_wait_pct: float = 0.0  # runnable but not running (waiting for a CPU), % of wall time
    worker_wait_pct: list[float] = field(default_factory=list)
    worker_cpu_pct: list[float] = field(default_factory=list)
    orchestrator_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0
    server_rss_mb: float = 0.0
    server_consumers: int | None = None
    received: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    loss: dict[str, list[int]] = field(default_factory=dict)  # kind -> [expected(ctr), got, expected(seq)]
    hist: dict[str, Counter[int]] = field(default_factory=dict)
    corrupt: int = 0
    worker_lag_p99_ms: list[float | None] = field(default_factory=list)
    worker_lag_max_ms: list[float | None] = field(default_factory=list)
    late: list[tuple[int, int, int]] = field(default_factory=list)  # (received ns, latency ns, worker)
    gc_collections: list[int] | None = None  # per generation, in the window
    gc_ms_per_s: float | None = None
    gc_max_ms: float | None = None
    # (at s, ms, generation, objects collected), pauses > 10 ms
    gc_long_pauses: list[tuple[float, float, int, int | None]] = field(default_factory=list)
    pace_late_p99_ms: list[float | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    not_receiving: int = 0
    server_code: str = ""
    audio_offered: int = 0  # audio consumers the server created (last-N forwards only some)
    audio_flowing: int = 0
    notes: list[str] = field(default_factory=list)

    def episodes(self, gap_ms: float = 50.0) -> list[dict[str, Any]]:
        """Packets later than 20 ms, grouped into episodes (no late packet for `gap_ms`)."""
        out: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for t, lat, worker in sorted(self.late):
            if current is None or t - current["_end"] > gap_ms * 1e6:
                current = {"_start": t, "_end": t, "packets": 0, "max_ms": 0.0, "workers": set()}
                out.append(current)
            current["_end"] = t
            current["packets"] += 1
            current["max_ms"] = max(current["max_ms"], lat / 1e6)
            current["workers"].add(worker)
        return [
            {"at_s": round((e["_start"] - self.started_ns) / 1e9, 2), "span_ms": round((e["_end"] - e["_start"]) / 1e6),
             "packets": e["packets"], "max_ms": round(e["max_ms"], 1), "workers": sorted(e["workers"])}
            for e in out
        ]

    # derived
    def loss_pct(self, kinds: tuple[str, ...] | None = None, by_seq: bool = False) -> float:
        rows = [v for k, v in self.loss.items() if kinds is None or k in kinds]
        expected = sum(r[2] if by_seq else r[0] for r in rows)
        got = sum(r[1] for r in rows)
        return round(max(0.0, 100 * (expected - got) / expected), 3) if expected > 0 else 0.0

    def latency(self, q: float, kinds: tuple[str, ...]) -> float | None:
        merged: Counter[int] = Counter()
        for k in kinds:
            merged.update(self.hist.get(k, Counter()))
        return _percentile(merged, q)

    @property
    def packets_per_s(self) -> float:
        return sum(self.received.values()) / self.seconds if self.seconds else 0.0

    @property
    def us_per_packet(self) -> float | None:
        packets = sum(self.received.values())
        return round(self.server_cpu_pct / 100 * self.seconds / packets * 1e6, 1) if packets else None

    @property
    def streams_per_core(self) -> float | None:
        if self.server_cpu_pct <= 0 or self.not_receiving:
            return None  # idle, or streams stopped: no per-stream cost to speak of
        return round(self.video_streams / (self.server_cpu_pct / 100), 1)

    @property
    def p99_ms(self) -> float | None:
        values = [v for v in (self.latency(99, ("video", "tile")), self.latency(99, ("audio",))) if v is not None]
        return max(values) if values else None

    @property
    def generator_limited(self) -> bool:
        """A load generator used (nearly) a whole core: it, not the server, may be the limit."""
        return any(c >= WORKER_SATURATED_PCT for c in self.worker_cpu_pct)

    @property
    def generator_lagging(self) -> bool:
        """A load generator's event loop woke late: its own load or the machine's."""
        return any((lag or 0) > WORKER_LAG_LIMIT_MS for lag in self.worker_lag_p99_ms)

    @property
    def passed(self) -> bool:
        p99 = self.p99_ms
        return (
            self.loss_pct() <= LOSS_LIMIT_PCT
            and p99 is not None
            and p99 <= P99_LIMIT_MS
            and self.not_receiving == 0
            and self.corrupt == 0
        )

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "video_streams": self.video_streams,
            "audio_streams": self.audio_streams,
            "server_consumers": self.server_consumers,
            "passed": self.passed,
            "loss_pct": self.loss_pct(),
            "loss_video_pct": self.loss_pct(("video", "tile")),
            "loss_audio_pct": self.loss_pct(("audio",)),
            "loss_seq_pct": self.loss_pct(by_seq=True),
            "p50_ms": self.latency(50, ("video", "tile", "audio")),
            "p99_ms": self.p99_ms,
            "video_p50_ms": self.latency(50, ("video", "tile")),
            "video_p99_ms": self.latency(99, ("video", "tile")),
            "audio_p50_ms": self.latency(50, ("audio",)),
            "audio_p99_ms": self.latency(99, ("audio",)),
            "max_ms": self.latency(100, ("video", "tile", "audio")),
            "server_cpu_pct": self.server_cpu_pct,
            "server_wait_pct": self.server_wait_pct,
            "worker_wait_pct": self.worker_wait_pct,
            "streams_per_core": self.streams_per_core,
            "us_per_forwarded_packet": self.us_per_packet,
            "forwarded_packets_per_s": round(self.packets_per_s),
            "worker_cpu_pct": self.worker_cpu_pct,
            "worker_lag_p99_ms": self.worker_lag_p99_ms,
            "pace_late_p99_ms": self.pace_late_p99_ms,
            "other_cpu_pct": self.other_cpu_pct,
            "server_rss_mb": round(self.server_rss_mb),
            "server_gc_collections": self.gc_collections,
            "server_gc_ms_per_s": self.gc_ms_per_s,
            "server_gc_max_ms": self.gc_max_ms,
            "generator_limited": self.generator_limited,
            "generator_lagging": self.generator_lagging,
            "corrupt": self.corrupt,
            "not_receiving": self.not_receiving,
            "errors": self.errors,
            "notes": self.notes,
        }


class Rig:
    """A server, its load generators and the tokens for one scenario."""

    # Server experiments from the command line (bench/serverprobe/sitecustomize.py applies them).
    experiment_env: dict[str, str] = {}

    def __init__(self, workdir: Path, media_path: Path, n_workers: int, server_env: dict[str, str],
                 activities: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.activities = activities
        self.media_path = media_path
        self.n_workers = n_workers
        self.server_env = {**server_env, **self.experiment_env}
        self.secret = secrets.token_urlsafe(48)
        self.server: Server | None = None
        self.workers: list[WorkerHandle] = []
        self.numbers = itertools.count(1)
        self.by_worker: dict[int, list[str]] = {}

    async def __aenter__(self) -> "Rig":
        from signaling.tokens import TokenIssuer

        self.issuer = TokenIssuer(self.secret)
        self.code = server_code(Server.code_dir)
        self.server, *workers = await asyncio.gather(
            Server.start(self.workdir, self.secret, self.server_env, self.activities),
            *(WorkerHandle.start(self.media_path, self.workdir / "loadgen.log") for _ in range(self.n_workers)),
        )
        self.workers = list(workers)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.gather(*(w.close() for w in self.workers), return_exceptions=True)
        if self.server is not None:
            await self.server.stop()

    def spec(self, room: str, name: str, role: str, publish: dict[str, str] | None = None,
             permissions: tuple[str, ...] | None = None, audio_level: int = 30) -> dict[str, Any]:
        assert self.server is not None
        token = self.issuer.issue(role=role, room=room, name=name, permissions=permissions)
        return {"name": name, "server": self.server.url, "token": token, "number": next(self.numbers),
                "publish": publish or {}, "audio_level": audio_level}

    async def join(self, assignments: list[tuple[int, dict[str, Any]]], concurrency: int = 4,
                   timeout: float = 120) -> tuple[list[str], float]:
        """Joins participants, each on the worker given; returns failures and seconds taken."""
        per: dict[int, list[dict[str, Any]]] = {}
        for w, spec in assignments:
            per.setdefault(w, []).append(spec)
        started = time.monotonic()
        replies = await asyncio.gather(*(
            self.workers[w].call({"cmd": "join_many", "participants": specs, "concurrency": concurrency}, timeout)
            for w, specs in per.items()
        ), return_exceptions=True)
        failures: list[str] = []
        for r in replies:
            if isinstance(r, BaseException):
                failures.append(repr(r))
            else:
                failures += r.get("failures", [])
        return failures, time.monotonic() - started

    async def status(self) -> list[dict[str, Any]]:
        replies = await asyncio.gather(*(w.call({"cmd": "status"}) for w in self.workers))
        return [p for r in replies for p in r["participants"]]

    async def wait_media(self, timeout: float, audio_total: int | None = None) -> tuple[bool, list[dict[str, Any]]]:
        """Until every participant receives every video stream it was offered, publishes what it
        asked to, and the audio streams flowing add up to `audio_total` (the server forwards only
        the loudest voices: last-N) or, without it, every offered audio stream flows."""
        deadline = time.monotonic() + timeout
        while True:
            parts = await self.status()
            lagging = [p for p in parts if p["receiving_video"] < p["expected_video"]
                       or p["publishing"] < p["publish_wanted"]
                       or (audio_total is None and p["receiving_audio"] < p["expected_audio"])]
            audio_short = audio_total is not None and sum(p["receiving_audio"] for p in parts) < audio_total
            if not lagging and not audio_short:
                return True, []
            if time.monotonic() > deadline:
                return False, lagging or [{"audio_streams": sum(p["receiving_audio"] for p in parts)}]
            await asyncio.sleep(0.25)

    # Before a window, wait up to this long for other people's jobs to quieten (0: never wait).
    quiet_wait_s: float = 0.0

    async def _wait_quiet(self, pids: list[int]) -> float | None:
        """Waits (bounded) until processes outside the bench use < BUSY_OTHER_PCT CPU over 1 s."""
        if self.quiet_wait_s <= 0:
            return None
        assert self.server is not None
        ours = [self.server.pid, os.getpid(), *pids]
        started = time.monotonic()
        while True:
            b0, o0, t0 = machine_busy_s(), sum(process_cpu_s(p) for p in ours), time.monotonic()
            await asyncio.sleep(1.0)
            other = (machine_busy_s() - b0 - (sum(process_cpu_s(p) for p in ours) - o0)) / (time.monotonic() - t0)
            if other * 100 <= BUSY_OTHER_PCT or time.monotonic() - started >= self.quiet_wait_s:
                return time.monotonic() - started - 1.0

    async def measure(self, label: str, video_streams: int, audio_streams: int, seconds: float,
                      quiet: bool = True, check_streams: bool = True) -> Window:
        assert self.server is not None
        win = Window(label, video_streams, audio_streams)
        win.server_code = self.code
        pids = [w.pid for w in self.workers]

        def cpu() -> tuple[float, list[float], float, float]:
            return process_cpu_s(self.server.pid), [process_cpu_s(p) for p in pids], process_cpu_s(os.getpid()), machine_busy_s()

        def waits() -> tuple[float, list[float]]:
            return proc_wait_s(self.server.pid), [proc_wait_s(p) for p in pids]

        waited = await self._wait_quiet(pids) if quiet else None
        if waited is not None:
            win.notes.append(f"waited {waited:.0f} s for other processes to go below {BUSY_OTHER_PCT:.0f} % CPU"
                             if waited >= 1 else "")
        await asyncio.sleep(0.3)  # the GC probe writes every 0.25 s
        await asyncio.gather(*(w.call({"cmd": "window_start"}) for w in self.workers))
        gc0 = self.server.gc()
        before, wait0 = cpu(), waits()
        t0 = time.monotonic()
        win.started_ns = time.monotonic_ns()
        await asyncio.sleep(seconds)
        after, wait1 = cpu(), waits()
        t1 = time.monotonic()
        await asyncio.sleep(0.3)
        gc1 = self.server.gc()
        replies = await asyncio.gather(*(w.call({"cmd": "window_end"}) for w in self.workers))
        wall = t1 - t0
        win.seconds = wall
        server_s = after[0] - before[0]
        workers_s = [a - b for a, b in zip(after[1], before[1])]
        own_s = after[2] - before[2]
        win.server_cpu_pct = round(100 * server_s / wall, 1)
        win.server_wait_pct = round(100 * (wait1[0] - wait0[0]) / wall, 1)
        win.worker_wait_pct = [round(100 * (b - a) / wall, 1) for a, b in zip(wait0[1], wait1[1])]
        win.worker_cpu_pct = [round(100 * s / wall, 1) for s in workers_s]
        win.orchestrator_cpu_pct = round(100 * own_s / wall, 1)
        win.other_cpu_pct = round(100 * max(0.0, after[3] - before[3] - server_s - sum(workers_s) - own_s) / wall, 1)
        win.server_rss_mb = proc_rss_mb(self.server.pid)
        for i, r in enumerate(replies):
            for k, v in r["received"].items():
                win.received[k] = win.received.get(k, 0) + v
            for k, v in r["sent"].items():
                win.sent[k] = win.sent.get(k, 0) + v
            for k, counts in r["loss"].items():
                acc = win.loss.setdefault(k, [0, 0, 0])
                for j in range(3):
                    acc[j] += counts[j]
            for k, h in r["hist"].items():
                win.hist.setdefault(k, Counter()).update({int(b): c for b, c in h.items()})
            win.corrupt += r["corrupt"]
            win.worker_lag_p99_ms.append(r["lag_p99_ms"])
            win.worker_lag_max_ms.append(r["lag_max_ms"])
            win.late += [(t, lat, i) for t, lat in r["late"]]
            win.pace_late_p99_ms.append(r["pace_late_p99_ms"])
            win.errors += r["errors"]
        if gc0 and gc1:
            win.gc_collections = [b - a for a, b in zip(gc0["count"], gc1["count"])]
            win.gc_ms_per_s = round(sum(gc1["total_ns"]) / 1e6 - sum(gc0["total_ns"]) / 1e6, 1)
            win.gc_ms_per_s = round(win.gc_ms_per_s / wall, 2)
            t0_ns, t1_ns = win.started_ns, win.started_ns + int(wall * 1e9)
            pauses = [took for start, _gen, took, *_ in gc1["recent"] if t0_ns <= start <= t1_ns]
            win.gc_max_ms = round(max(pauses) / 1e6, 1) if pauses else None
            win.gc_long_pauses = [((start - t0_ns) / 1e9, took / 1e6, gen, (rest or [None])[0])
                                  for start, gen, took, *rest in gc1["recent"]
                                  if t0_ns <= start <= t1_ns and took > 10_000_000]
        parts = await self.status()
        audio_flowing = sum(p["receiving_audio"] for p in parts)
        win.audio_offered = sum(p["expected_audio"] for p in parts)
        win.audio_flowing = audio_flowing
        if check_streams:
            win.not_receiving = sum(max(0, p["expected_video"] - p["receiving_video"]) for p in parts) + max(
                0, audio_streams - audio_flowing)
            # A server without last-N forwards more audio than the scenario expects: count what flowed.
            win.audio_streams = max(audio_streams, audio_flowing)
        media = await self.server.media()
        win.server_consumers = media.get("consumers")
        return win


# --- printing ----------------------------------------------------------------------------------


def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}{unit}" if abs(v) >= 100 else f"{v:.1f}{unit}" if abs(v) >= 10 else f"{v:.2f}{unit}"
    return f"{v}{unit}"


HEADER = (f"{'step':<16} {'v/a streams':>11} {'pkt/s':>7} {'loss %':>7} {'seq %':>6} {'video p50/p99':>14} "
          f"{'audio p50/p99':>14} {'max':>6} {'srv cpu':>8} {'us/pkt':>7} {'v/core':>7} {'gen cpu':>12} "
          f"{'gen lag':>8} {'other':>6} {'ok':>4}")


def row(w: Window) -> str:
    s = w.summary()
    video = f"{_f(s['video_p50_ms'])}/{_f(s['video_p99_ms'])}"
    audio = f"{_f(s['audio_p50_ms'])}/{_f(s['audio_p99_ms'])}"
    gen = "+".join(_f(c) for c in s["worker_cpu_pct"]) + "%"
    lag = max((x for x in s["worker_lag_p99_ms"] if x is not None), default=None)
    ok = ("yes" if s["passed"] else "NO") + ("*" if s["generator_limited"] else "~" if s["generator_lagging"] else "")
    return (f"{w.label:<16} {f'{w.video_streams}/{w.audio_streams}':>11} {s['forwarded_packets_per_s']:>7} "
            f"{_f(s['loss_pct']):>7} {_f(s['loss_seq_pct']):>6} {video:>14} {audio:>14} {_f(s['max_ms']):>6} "
            f"{_f(s['server_cpu_pct'], '%'):>8} {_f(s['us_per_forwarded_packet']):>7} {_f(s['streams_per_core']):>7} "
            f"{gen:>12} {_f(lag):>8} {_f(s['other_cpu_pct'], '%'):>6} {ok:>4}")


def row_notes(w: Window) -> list[str]:
    notes = list(w.notes)
    notes = [n for n in notes if n]
    if w.server_code and w.server_code != START_CODE[0]:
        notes.append(f"server code for this scenario: {w.server_code} (it changed during the run)")
    if w.generator_limited:
        notes.append(f"LOAD GENERATOR SATURATED (a worker used >= {WORKER_SATURATED_PCT:.0f} % of a core): "
                     "latency/loss partly measure the generator")
    elif w.generator_lagging:
        notes.append(f"a load generator's loop lag p99 was > {WORKER_LAG_LIMIT_MS:.0f} ms while it used < "
                     f"{WORKER_SATURATED_PCT:.0f} % CPU: the machine was short of CPU (see 'other')")
    if w.other_cpu_pct > BUSY_OTHER_PCT:
        notes.append(f"other processes used {w.other_cpu_pct:.0f} % CPU in this window: tails are noisy")
    notes.append(f"time spent runnable but waiting for a CPU: server {w.server_wait_pct} %, "
                 f"load generators {w.worker_wait_pct} % (of wall time)")
    if w.corrupt:
        notes.append(f"{w.corrupt} packets failed the payload check")
    if w.not_receiving:
        notes.append(f"{w.not_receiving} expected streams had no packet in the last 1.5 s")
    if w.audio_offered and w.audio_offered != w.audio_streams:
        notes.append(f"audio: {w.audio_offered} audio consumers exist, {w.audio_flowing} flowing (last-N; the "
                     f"scenario expects {w.audio_streams})")
    if w.errors:
        notes.append(f"client errors: {w.errors[:5]}")
    episodes = w.episodes()
    if episodes:
        worst = sorted(episodes, key=lambda e: -e["max_ms"])[:4]
        notes.append(f"{len(episodes)} episode(s) of packets > 20 ms late, worst: " + "; ".join(
            f"at {e['at_s']} s, {e['packets']} pkts over {e['span_ms']} ms, max {e['max_ms']} ms, "
            f"workers {e['workers']}" for e in worst))
    if w.gc_collections is not None:
        long = ", ".join(f"{at:.2f} s: gen{gen} {ms:.0f} ms ({freed} freed)" for at, ms, gen, freed in w.gc_long_pauses)
        notes.append(f"server GC in window: collections per generation {w.gc_collections}, "
                     f"{w.gc_ms_per_s} ms/s, longest pause {_f(w.gc_max_ms)} ms"
                     + (f"; pauses > 10 ms at {long}" if long else ""))
    lag_max = max((x for x in w.worker_lag_max_ms if x is not None), default=None)
    if lag_max is not None and lag_max > WORKER_LAG_LIMIT_MS:
        notes.append(f"load generator loop lag max {lag_max} ms (per worker {w.worker_lag_max_ms})")
    if (w.server_consumers is not None and not w.label.startswith("direct")
            and w.server_consumers != w.video_streams + (w.audio_offered or w.audio_streams)):
        notes.append(f"server reports {w.server_consumers} consumers (scenario expects "
                     f"{w.video_streams + (w.audio_offered or w.audio_streams)})")
    return notes


# --- scenarios ---------------------------------------------------------------------------------


START_CODE = [""]  # the server code printed in the header


def _machine_busy(w: Window) -> bool:
    return w.other_cpu_pct > BUSY_OTHER_PCT or w.server_wait_pct > 10.0


@dataclass
class Ctx:
    workdir: Path
    media_path: Path
    plan: Plan
    workers: int
    rooms: int
    started: float
    deadline: float  # whole-run deadline (monotonic)
    retry_busy: bool = True
    direct: bool = True
    watch_s: float = 0.0  # after a failing activity-now window, keep watching this long
    # Fan-out publishers send video only, so every forwarded stream is a ~500 kbps video
    # stream: issue 3's "video streams per core" measured, not extrapolated from pairs.
    video_only: bool = False


async def run_fanout(ctx: Ctx, profile: "Profiler | None", windows_direct: list[Window]
                     ) -> tuple[list[Window], str, dict[str, Any] | None]:
    plan = ctx.plan
    windows: list[Window] = []
    stop_reason = "all steps passed"
    prof: dict[str, Any] | None = None
    env = {"VERZILVERING_MAX_PARTICIPANTS_PER_ROOM": "2000"}
    rooms = [f"cap-{i}" for i in range(ctx.rooms)]
    ramp_deadline = min(ctx.deadline, time.monotonic() + plan.budget_s)
    async with Rig(ctx.workdir, ctx.media_path, ctx.workers, env) as rig:
        assert rig.server is not None
        if ctx.direct:
            # The bench's own floor: publisher -> consumer without the server, in one load generator.
            reply = await rig.workers[0].call({"cmd": "direct_start"}, timeout=30)
            await asyncio.sleep(plan.warmup_s / 2)
            win = await rig.measure("direct (no srv)", 1, 1, plan.window_s, check_streams=False)
            await rig.workers[0].call({"cmd": "direct_stop"}, timeout=30)
            if reply.get("receiving", 0) < 2:
                win.notes.append("the direct pair did not get both streams flowing")
            win.notes.insert(0, "no server: the bench's own send -> receive floor (SRTP both ends, event loops, "
                                "loopback); server CPU here is the idle server")
            windows_direct.append(win)
            print(row(win), flush=True)
            for note in row_notes(win):
                print(f"    {note}", flush=True)
        publish = {"video": "video"} if ctx.video_only else {"video": "video", "audio": "audio"}
        pubs = [(i % ctx.workers, rig.spec(room, f"pub-{room}", "host", publish)) for i, room in enumerate(rooms)]
        audio_per_sub = 0 if ctx.video_only else 1
        failures, _ = await rig.join(pubs)
        if failures:
            raise RuntimeError(f"publisher join failed: {failures}")
        ok, lagging = await rig.wait_media(15)
        if not ok:
            raise RuntimeError(f"publishers not publishing: {lagging}")
        current = 0
        per_step_s: float | None = None
        for k in plan.steps:
            if k <= current:
                continue
            total = k * ctx.rooms
            if per_step_s is not None and time.monotonic() + per_step_s * 1.3 > ramp_deadline:
                stop_reason = f"time budget ({plan.budget_s:.0f} s) ended before {total} subscribers"
                break
            step_started = time.monotonic()
            new = []
            for i in range(current, k):
                for r, room in enumerate(rooms):
                    n = i * ctx.rooms + r
                    new.append((n % ctx.workers, rig.spec(room, f"sub-{room}-{i}", "senior")))
            failures, join_s = await rig.join(new, concurrency=6, timeout=60 + 0.5 * len(new))
            current = k
            ok, lagging = await rig.wait_media(10 + 0.1 * len(new))
            await asyncio.sleep(plan.warmup_s)
            win = await rig.measure(f"{total} subs", total, total * audio_per_sub, plan.window_s)
            if not win.passed and _machine_busy(win) and ctx.retry_busy:
                # The machine is shared: a window spoiled by other people's jobs gets one more try.
                first = win.summary()
                print(row(win) + "  (machine busy: measuring this step again)", flush=True)
                win = await rig.measure(f"{total} subs", total, total * audio_per_sub, plan.window_s)
                win.notes.insert(0, f"second window; the first failed while the machine was busy (other "
                                    f"{first['other_cpu_pct']} %, server waited for a CPU {first['server_wait_pct']} %"
                                    f" of the time): loss {first['loss_pct']} %, p99 {first['p99_ms']} ms")
            win.notes.insert(0, f"joined {len(new)} in {join_s:.1f} s")
            if failures:
                win.notes.append(f"{len(failures)} joins failed: {failures[:3]}")
            if not ok:
                win.notes.append(f"{len(lagging)} participants not receiving all media before the window")
            windows.append(win)
            print(row(win), flush=True)
            for note in row_notes(win):
                print(f"    {note}", flush=True)
            per_step_s = time.monotonic() - step_started
            if not win.passed:
                why = []
                if win.loss_pct() > LOSS_LIMIT_PCT:
                    why.append(f"loss {win.loss_pct():.2f} % > {LOSS_LIMIT_PCT} %")
                if win.p99_ms is None or win.p99_ms > P99_LIMIT_MS:
                    why.append(f"p99 {_f(win.p99_ms)} ms > {P99_LIMIT_MS:.0f} ms")
                if win.not_receiving:
                    why.append(f"{win.not_receiving} streams silent")
                if win.corrupt:
                    why.append("corrupt packets")
                stop_reason = f"step {total} subscribers failed: " + ", ".join(why)
                if win.generator_limited:
                    stop_reason += " (load generator saturated too)"
                break
        if profile is not None and windows and time.monotonic() + profile.seconds + 5 < ctx.deadline:
            print(f"profiling the server for {profile.seconds:.0f} s at {windows[-1].label} ...", flush=True)
            prof = await profile.run(rig.server.pid, windows[-1].label)
    return windows, stop_reason, prof


async def run_activity_now(ctx: Ctx) -> Window:
    """The issue's 20-participant activity as production runs it: a directory Activity."""
    return await _run_activity(ctx, directory=True)


async def run_activity_adhoc(ctx: Ctx) -> Window:
    """The same 20 participants in an ad-hoc room (no Activity): every video to everyone."""
    return await _run_activity(ctx, directory=False)


async def _run_activity(ctx: Ctx, directory: bool) -> Window:
    """20 participants, all publishing video and audio. In a directory Activity with more than
    `tiles_to_everyone_up_to` participants the server forwards the host's video to everyone and
    the seniors' tiles to the host only; in an ad-hoc room every video goes to everyone. Audio
    is last-N (3, the host always heard) in both."""
    room = "activity-now" if directory else "activity-adhoc"
    async with Rig(ctx.workdir, ctx.media_path, ctx.workers, {}, activities=(room,) if directory else ()) as rig:
        # RFC 6464 levels (0 = loudest): the host, then senior-1 and senior-2 are the loudest voices.
        host = rig.spec(room, "host", "host", {"video": "video", "audio": "audio"}, audio_level=10)
        failures, _ = await rig.join([(0, host)])
        seniors = [
            (i % ctx.workers, rig.spec(room, f"senior-{i}", "senior", {"video": "tile", "audio": "audio"},
                                       audio_level=40 + i))
            for i in range(1, 20)
        ]
        f2, join_s = await rig.join(seniors, concurrency=3, timeout=180)
        failures += f2
        # Video, Activity: host -> 19 seniors, 19 tiles -> host. Ad hoc: host -> 19 and 19 tiles -> 19
        # each (18 seniors + host). Audio: host, senior-1, senior-2 -> 19 each.
        video = 19 + 19 if directory else 19 + 19 * 19
        audio = 3 * 19
        ok, lagging = await rig.wait_media(ctx.plan.media_wait_s, audio_total=audio)
        media_at = time.monotonic()
        if directory:
            # Steady state, as the fan-out steps: the joins' renegotiations (20 peer connections,
            # ~40 m-lines each) leave a backlog that is not the activity's running cost.
            await asyncio.sleep(ctx.plan.warmup_s)
            win = await rig.measure(room, video, audio, ctx.plan.activity_window_s)
        else:
            # Measured soon after media flows, without waiting for a quiet machine: an overloaded
            # server's connections die within a minute (watched below).
            await asyncio.sleep(min(ctx.plan.warmup_s, 3.0))
            win = await rig.measure(room, video, audio, ctx.plan.activity_window_s, quiet=False)
        flowing = sum(p["receiving_video"] for p in await rig.status())
        win.notes.insert(0, f"19 seniors joined in {join_s:.1f} s (each join renegotiates everyone); "
                            f"{'directory Activity' if directory else 'ad-hoc room'}: {flowing} video streams flowing "
                            f"after the window (expected {video})")
        if failures:
            win.notes.append(f"{len(failures)} joins failed: {failures[:3]}")
        if not ok:
            win.notes.append(f"{len(lagging)} participants were not receiving everything before the window")
        if not win.passed and ctx.watch_s > 0:
            win.notes.append(await _watch_collapse(rig, media_at, ctx.watch_s))
        return win


async def _watch_collapse(rig: Rig, since: float, seconds: float) -> str:
    """After an overloaded window: does media keep flowing, or do connections die?"""
    deadline = time.monotonic() + seconds
    first_flowing = None
    while True:
        parts = await rig.status()
        flowing = sum(p["receiving"] for p in parts)
        states = Counter(p["pc_state"] for p in parts)
        if first_flowing is None:
            first_flowing = flowing
        errors = Counter(e for p in parts for e in p.get("errors", []))
        if flowing == 0:
            return (f"kept watching: NO stream flowing {time.monotonic() - since:.0f} s after media started "
                    f"(client peer connections: {dict(states)}; client errors: {dict(errors)})")
        if time.monotonic() > deadline:
            return (f"kept watching {seconds:.0f} s more: {flowing} streams still flowing (at the window's end "
                    f"{first_flowing}); client peer connections: {dict(states)}; client errors: {dict(errors)}")
        await asyncio.sleep(2)


async def run_activity_target(ctx: Ctx) -> Window:
    """The target forwarding of a 20-person activity, emulated with today's all-to-all server."""
    async with Rig(ctx.workdir, ctx.media_path, ctx.workers, {}) as rig:
        stage, tiles = "activity-stage", "activity-tiles"
        specs = [(0, rig.spec(stage, "host", "host", {"video": "video", "audio": "audio"}, audio_level=10))]
        for i in range(1, 20):
            publish = {"audio": "audio"} if i <= 2 else {}
            specs.append((i % ctx.workers, rig.spec(stage, f"senior-{i}", "senior", publish, audio_level=20 + i)))
        failures, join_a = await rig.join(specs[:1])
        f2, join_b = await rig.join(specs[1:], concurrency=4, timeout=180)
        failures += f2
        tile_specs = [(1 % ctx.workers, rig.spec(tiles, "host-tile-view", "host"))]
        for i in range(1, 20):
            tile_specs.append((i % ctx.workers, rig.spec(tiles, f"senior-{i}-tile", "senior", {"video": "tile"},
                                                          permissions=("publish",))))
        f3, join_c = await rig.join(tile_specs, concurrency=4, timeout=180)
        failures += f3
        ok, lagging = await rig.wait_media(60, audio_total=3 * 19)
        await asyncio.sleep(ctx.plan.warmup_s)
        # host video -> 19, 19 tiles -> host view; 3 voices -> 19 each.
        win = await rig.measure("activity-target", 19 + 19, 3 * 19, ctx.plan.activity_window_s)
        win.notes.insert(0, f"joined 40 peer connections in {join_a + join_b + join_c:.1f} s")
        if failures:
            win.notes.append(f"{len(failures)} joins failed: {failures[:3]}")
        if not ok:
            win.notes.append(f"{len(lagging)} participants were not receiving everything before the window")
        return win


# --- profile -------------------------------------------------------------------------------------

# Which layer a frame belongs to, by a piece of its "function (path)" text (first match wins).
LAYERS = (
    # py-spy has no frame for a C function: the C call's time (libsrtp and the kernel's
    # sendto, loopback delivery included) is DirectWire.send's own time.
    ("DirectWire.send", "server: DirectWire.send + its C call (SRTP protect, kernel sendto)"),
    ("_SelectorDatagramTransport.sendto", "kernel: UDP sendto syscall (loopback delivery included)"),
    ("pylibsrtp/", "libsrtp: SRTP protect/unprotect (C)"),
    ("aiortc/clock.py", "aiortc: clock (NTP time via datetime)"),
    ("server/sfu/consumer.py", "server: Consumer.forward (seq/ts rewrite)"),
    ("server/sfu/producer.py", "server: Producer fan-out loop"),
    ("server/rtc/rtphooks.py", "server: rtphooks (ReceiverTap, SenderFeed.send)"),
    ("server/rtc/rtppayload.py", "server: keyframe check"),
    ("aiortc/rtp.py", "aiortc: RTP parse/serialize, header extensions"),
    ("aiortc/rtcdtlstransport.py", "aiortc: DTLS transport (_send_rtp, _recv_next)"),
    ("aiortc/rtcrtpreceiver.py", "aiortc: receiver (stats, NACK, RTCP)"),
    ("aiortc/rtcrtpsender.py", "aiortc: sender (RTCP)"),
    ("aiortc/rate.py", "aiortc: REMB estimator"),
    ("aioice/", "aioice: ICE send/receive layers"),
    ("asyncio/", "asyncio event loop (select, callbacks, reads)"),
)


def _layer(frame_text: str) -> str | None:
    return next((label for key, label in LAYERS if key in frame_text), None)


class Profiler:
    def __init__(self, seconds: float, out_dir: Path) -> None:
        self.seconds = seconds
        self.out_dir = out_dir
        self.exe = shutil.which("py-spy")

    async def run(self, pid: int, label: str) -> dict[str, Any]:
        if self.exe is None:
            return {"error": "py-spy not installed (pip install py-spy)"}
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        raw = self.out_dir / f"capacity-profile-{stamp}.txt"
        cpu0, t0 = process_cpu_s(pid), time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            self.exe, "record", "--pid", str(pid), "--duration", str(int(max(1, self.seconds))), "--rate", "200",
            "--nonblocking", "--format", "raw", "--output", str(raw),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        cpu_pct = round(100 * (process_cpu_s(pid) - cpu0) / (time.monotonic() - t0), 1)
        if proc.returncode != 0 or not raw.exists():
            return {"error": f"py-spy failed ({proc.returncode}): {out.decode(errors='replace')[-500:]}"}
        result = summarize_folded(raw.read_text())
        result.update({"file": str(raw), "at": label, "server_cpu_pct": cpu_pct, "rate_hz": 200})
        return result


def _frame_name(frame: str) -> tuple[str, str]:
    """'forward (server/sfu/consumer.py:63)' -> ('forward (consumer.py)', 'server/sfu/consumer.py')."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(path.split("/")[-2:])
    return (f"{name or frame} ({short})", path)


# Frames every sample goes through (the event loop's own machinery, the CLI): left out of
# the inclusive list, which is there to show the SFU's layers.
_FRAMEWORK = ("runpy", "asyncio/base_events.py", "asyncio/runners.py", "asyncio/events.py", "server/cli.py")
# Leaves that mean "waiting for I/O": not CPU time.
_IDLE_LEAVES = ("select (selectors.py)", "poll (selectors.py)")


def summarize_folded(text: str, top: int = 15) -> dict[str, Any]:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    layers_own: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        if any("sitecustomize.py" in f for f in frames):
            continue  # the bench's GC probe thread, not the server
        names = [_frame_name(f) for f in frames]
        if names[-1][0].endswith(_IDLE_LEAVES):
            idle += count
            continue
        total += count
        own[names[-1][0]] += count
        for n in {n for n, path in names if not any(key in path for key in _FRAMEWORK)}:
            incl[n] += count
        # The leaf's layer; a leaf outside every layer is charged to the nearest one up the stack.
        layer = None
        for frame in reversed(frames):
            layer = _layer(frame)
            if layer:
                break
        layers_own[layer or "other"] += count

    def pct(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)] if total else []

    return {"samples": total, "idle_samples": idle, "own": pct(own), "inclusive": pct(incl),
            "layers": pct(layers_own)}


# What to do about a layer that takes a visible share of the server's time (printed after
# the profile for each layer above 4 %).
ADVICE = {
    "server: DirectWire.send + its C call (SRTP protect, kernel sendto)":
        "mostly the kernel's sendto (on loopback it also pays the receiver's path) and libsrtp, one each per "
        "packet per consumer; only fewer syscalls (sendmmsg on one shared socket) or more SFU processes move it",
    "kernel: UDP sendto syscall (loopback delivery included)":
        "one sendto per packet per consumer; on loopback it also pays the receiver's kernel path. Only fewer "
        "syscalls (sendmmsg batching, not offered by asyncio) or more SFU processes (rooms sharded, one "
        "process per core) move this",
    "libsrtp: SRTP protect/unprotect (C)": "one AES-CM + HMAC per packet per leg, already in C; unavoidable",
    "aioice: ICE send/receive layers":
        "Connection.send -> Connection.sendto -> StunProtocol.send_data -> transport.sendto, three coroutine "
        "hops per packet: send on the nominated pair's asyncio transport directly (cached per transport)",
    "aiortc: clock (NTP time via datetime)":
        "aiortc's clock.current_ntp_time() builds datetime objects: take time.time() once per incoming packet "
        "and derive abs-send-time / NTP with arithmetic",
    "aiortc: RTP parse/serialize, header extensions":
        "RtpPacket.parse once per incoming packet is fine; anything that builds or serialises an RtpPacket per "
        "consumer should pack the header with struct instead",
    "server: Consumer.forward (seq/ts rewrite)":
        "per packet and consumer: keep it to offset arithmetic with everything else cached",
    "server: rtphooks (ReceiverTap, SenderFeed.send)":
        "per-packet Python in the tap and the feed (header packing, history, counters): the next candidate "
        "for C, with the consumer's rewrite",
    "aiortc: DTLS transport (_send_rtp, _recv_next)": "state check, is_rtcp(), SRTP call and counters per packet",
    "server: Producer fan-out loop": "tuple(consumers) copy and one await per consumer per packet",
    "asyncio event loop (select, callbacks, reads)": "reading datagrams and scheduling: per incoming packet",
}


def print_profile(prof: dict[str, Any], us_per_packet: float | None = None) -> None:
    if "error" in prof:
        print(f"profile: {prof['error']}")
        return
    us = (lambda p: f"  ~{p * us_per_packet / 100:4.1f} us/pkt") if us_per_packet else (lambda p: "")
    print(f"\n== profile of the server at {prof['at']} (py-spy, {prof['rate_hz']} Hz, {prof['samples']} busy + "
          f"{prof['idle_samples']} idle samples while it used {prof['server_cpu_pct']} % of a core; "
          f"% of busy samples) ==")
    print(f"  raw folded stacks: {prof['file']}  (flamegraph.pl or speedscope.app read them)")
    print("  by layer (a sample's leaf, charged to the nearest layer up its stack)"
          + (f"; us per forwarded packet at {us_per_packet} us/pkt:" if us_per_packet else ":"))
    for name, p in prof["layers"]:
        print(f"    {p:5.1f} %{us(p)}  {name}")
    print("  what would make the big layers cheaper:")
    for name, p in prof["layers"]:
        if p >= 4.0 and name in ADVICE:
            print(f"    - {name}: {ADVICE[name]}")
    print("  own time (leaf function):")
    for name, p in prof["own"]:
        print(f"    {p:5.1f} %  {name}")
    print("  inclusive time:")
    for name, p in prof["inclusive"]:
        print(f"    {p:5.1f} %  {name}")


# --- the run -----------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> int:
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the server and load generators are stopped.
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    plan = QUICK if args.quick else FULL
    if args.steps:
        plan = Plan(**{**plan.__dict__, "steps": tuple(int(x) for x in args.steps.split(","))})
    for name in ("window", "warmup", "budget", "profile_seconds"):
        value = getattr(args, name)
        if value is not None:
            key = {"window": "window_s", "warmup": "warmup_s", "budget": "budget_s", "profile_seconds": "profile_s"}[name]
            plan = Plan(**{**plan.__dict__, key: value})
            if name == "window":
                plan = Plan(**{**plan.__dict__, "activity_window_s": value})
    scenarios = args.scenarios.split(",")
    command = "python -m bench.capacity" + ("" if len(sys.argv) <= 1 else " " + shlex.join(sys.argv[1:]))
    started = time.monotonic()
    total_budget = args.deadline if args.deadline else (55.0 if args.quick else 600.0)
    print(f"command: {command}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print("machine: " + json.dumps(machine()))
    print(f"load average at start: {loadavg()}")
    START_CODE[0] = server_code(Server.code_dir)
    print(f"server code: {START_CODE[0]}")
    if Rig.experiment_env:
        print(f"SERVER EXPERIMENT (not the production configuration): {Rig.experiment_env}")
    print("columns: v/a streams = forwarded video/audio streams; pkt/s = packets the consumers received per s; "
          "loss % = by the publishers' packet counters (seq % = by the SFU's RTP sequence numbers); "
          "video/audio p50/p99 and max = received - sent, ms; srv cpu = server process, 100 % = one core; "
          "us/pkt = server CPU per forwarded packet; v/core = video streams / (srv cpu / 100 %); gen cpu = "
          "load generators; gen lag = their worst event-loop lag p99, ms; other = CPU used by everything else "
          "on the machine; ok: yes/NO, * = a load generator saturated, ~ = a load generator's loop lagged")
    print(f"plan: steps {list(plan.steps)} subscribers x {args.rooms} room(s); warm-up {plan.warmup_s} s, "
          f"window {plan.window_s} s; ramp budget {plan.budget_s:.0f} s; {args.workers} load generator process(es); "
          f"pass = loss <= {LOSS_LIMIT_PCT} % and p99 <= {P99_LIMIT_MS:.0f} ms; scenarios {','.join(scenarios)}; "
          f"before each window wait up to {Rig.quiet_wait_s:.0f} s for other processes < {BUSY_OTHER_PCT:.0f} % CPU; "
          f"{'a failing step on a busy machine is measured once more' if not (args.quick or args.no_retry) else 'no re-measuring'}",
          flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        workdir = Path(tmp)
        t = time.monotonic()
        media = encode_media(plan.loop_s)
        media_path = workdir / "media.pickle"
        save_media(media, media_path)
        print(f"media encoded once in {time.monotonic() - t:.1f} s (replayed, never re-encoded):")
        for stream in media.values():
            print(f"  {stream.describe()}")
        ctx = Ctx(workdir, media_path, plan, args.workers, args.rooms, started, started + total_budget,
                  retry_busy=not args.quick and not args.no_retry, direct=not args.no_direct,
                  watch_s=0.0 if args.quick else 60.0, video_only=args.video_only)
        profiler = Profiler(plan.profile_s, Path(args.profile_dir)) if plan.profile_s > 0 else None

        fanout: list[Window] = []
        direct_windows: list[Window] = []
        stop_reason = "not run"
        prof: dict[str, Any] | None = None
        extra: dict[str, Window] = {}
        if "fanout" in scenarios:
            published = "video only" if args.video_only else "video+audio"
            print(f"\n== fanout: 1 publisher ({published}) per room, growing subscribers ==")
            print(HEADER, flush=True)
            try:
                fanout, stop_reason, prof = await run_fanout(ctx, profiler, direct_windows)
            except Exception as exc:
                logger.exception("fanout failed")
                stop_reason = f"FAILED: {exc!r}"
                print(f"  fanout FAILED: {exc!r}\n{_tails(workdir)}", flush=True)
            print(f"  ramp ended: {stop_reason}")
        for name, runner in (("activity-now", run_activity_now), ("activity-adhoc", run_activity_adhoc),
                             ("activity-target", run_activity_target)):
            if name not in scenarios:
                continue
            if time.monotonic() + 8 + plan.warmup_s + plan.activity_window_s > ctx.deadline:
                print(f"\n== {name}: skipped (run deadline) ==")
                continue
            print(f"\n== {name} ==", flush=True)
            try:
                win = await asyncio.wait_for(runner(ctx), timeout=max(30.0, ctx.deadline - time.monotonic() + 30))
            except Exception as exc:
                logger.exception("%s failed", name)
                print(f"  {name} FAILED: {exc!r}\n{_tails(workdir)}", flush=True)
                continue
            extra[name] = win
            print(HEADER)
            print(row(win))
            for note in row_notes(win):
                print(f"    {note}")
        if prof is not None:
            at = next((w for w in fanout if w.label == prof.get("at")), None)
            print_profile(prof, at.us_per_packet if at else None)

    passing = [w for w in fanout if w.passed]
    best = passing[-1] if passing else None
    last = fanout[-1] if fanout else None
    video_pps = media["video"].packets_per_s
    audio_pps = media["audio"].packets_per_s
    video_only = round(1e6 / (best.us_per_packet * video_pps), 0) if best and best.us_per_packet else None
    print(f"\nload average at end: {loadavg()}; total {time.monotonic() - started:.0f} s; command: {command}")
    if best is not None:
        print(f"fanout: last passing step {best.label}: {best.video_streams} video + {best.audio_streams} audio "
              f"streams forwarded with {best.server_cpu_pct} % of a core -> {best.streams_per_core} video streams "
              f"(+ as many audio) per SFU core; {best.us_per_packet} us per forwarded packet; loss "
              f"{best.loss_pct()} %, p50/p99 {_f(best.latency(50, ('video', 'tile', 'audio')))}/{_f(best.p99_ms)} ms")
        print(f"  at {best.us_per_packet} us per forwarded packet, a core would forward ~{video_only:.0f} video-only "
              f"streams ({video_pps:.0f} packets/s each) or ~{1e6 / (best.us_per_packet * (video_pps + audio_pps)):.0f} "
              f"video+audio pairs (extrapolated, not measured)")
    if last is not None and not last.passed:
        print(f"first failing step {last.label}: loss {last.loss_pct()} %, p99 {_f(last.p99_ms)} ms, server "
              f"{last.server_cpu_pct} % of a core (waited for a CPU {last.server_wait_pct} % of the time), "
              f"{last.streams_per_core} video streams per core at that load; machine 'other' {last.other_cpu_pct} %")
    out: dict[str, Any] = {
        "bench": "capacity",
        "quick": bool(args.quick),
        "server_code": server_code(Server.code_dir),
        "streams_per_core": best.streams_per_core if best else None,
        "loss_pct": best.loss_pct() if best else None,
        "p50_added_ms": best.latency(50, ("video", "tile", "audio")) if best else None,
        "p99_added_ms": best.p99_ms if best else None,
        "last_passing_subscribers": best.video_streams if best else None,
        "server_cpu_pct": best.server_cpu_pct if best else None,
        "us_per_forwarded_packet": best.us_per_packet if best else None,
        "video_only_streams_per_core_est": video_only,
        "fanout_video_only": bool(args.video_only),
        "first_failing_subscribers": last.video_streams if last is not None and not last.passed else None,
        "first_failing_loss_pct": last.loss_pct() if last is not None and not last.passed else None,
        "first_failing_p99_ms": last.p99_ms if last is not None and not last.passed else None,
        "first_failing_server_cpu_pct": last.server_cpu_pct if last is not None and not last.passed else None,
        "first_failing_streams_per_core": last.streams_per_core if last is not None and not last.passed else None,
        "stop_reason": stop_reason,
        "direct_p50_ms": direct_windows[0].latency(50, ("video", "tile", "audio")) if direct_windows else None,
        "direct_p99_ms": direct_windows[0].p99_ms if direct_windows else None,
        "steps": [_compact(w) for w in fanout],
    }
    for name, win in extra.items():
        out[name.replace("-", "_")] = _compact(win)
    if prof is not None and "error" not in prof:
        out["profile_at"] = prof["at"]
        out["profile_layers"] = prof["layers"][:8]
        out["profile_own_top"] = prof["own"][:8]
    print(json.dumps(out))
    return 0


def _compact(w: Window) -> dict[str, Any]:
    s = w.summary()
    keys = ("label", "video_streams", "audio_streams", "passed", "loss_pct", "loss_seq_pct", "video_p50_ms",
            "video_p99_ms", "audio_p50_ms", "audio_p99_ms", "server_cpu_pct", "server_wait_pct", "streams_per_core",
            "us_per_forwarded_packet", "forwarded_packets_per_s", "worker_cpu_pct", "worker_lag_p99_ms",
            "other_cpu_pct", "generator_limited", "server_gc_max_ms")
    return {k: s[k] for k in keys}


def _tails(workdir: Path) -> str:
    parts = []
    for log in sorted(workdir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-10:]
        if lines:
            parts.append(f"  --- tail of {log.name}:\n" + "\n".join("  " + x for x in lines))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 short steps, short windows (< 1 min)")
    parser.add_argument("--steps", help="comma-separated subscriber counts per room for the fan-out ramp")
    parser.add_argument("--rooms", type=int, default=1, help="fan-out rooms, each with its own publisher")
    parser.add_argument("--workers", type=int, default=2, help="load generator processes (1-2 on 2 cores)")
    parser.add_argument("--window", type=float, help="seconds per measured window")
    parser.add_argument("--warmup", type=float, help="seconds between media flowing and the window")
    parser.add_argument("--budget", type=float, help="seconds for the fan-out ramp")
    parser.add_argument("--deadline", type=float, help="seconds for the whole run (default 55 quick, 600 full)")
    parser.add_argument("--scenarios", default="fanout,activity-now",
                        help="comma-separated: fanout, activity-now, activity-adhoc, activity-target")
    parser.add_argument("--profile-seconds", type=float, help="py-spy the server this long after the ramp (0: no)")
    parser.add_argument("--profile-dir", default=tempfile.gettempdir(), help="where the raw profile goes")
    parser.add_argument("--quiet-wait", type=float,
                        help="before each window wait up to this many s for other processes to use < 25 %% CPU "
                             "(default 30 full, 0 quick)")
    parser.add_argument("--server-dir", type=Path,
                        help="run `python -m server.cli serve` from this directory (e.g. `git archive HEAD` "
                             "unpacked there, with the commit id in a file COMMIT); default: this repo")
    parser.add_argument("--video-only", action="store_true",
                        help="fan-out publishers send video only: subscribers receive only ~500 kbps video streams")
    parser.add_argument("--no-direct", action="store_true", help="skip the no-server floor measurement")
    parser.add_argument("--no-retry", action="store_true",
                        help="do not re-measure a failing step when the machine was busy (full runs retry once)")
    parser.add_argument("--server-gc-threshold", metavar="A,B,C",
                        help="experiment: gc.set_threshold(A, B, C) in the server process")
    parser.add_argument("--server-send-history", type=int, metavar="N",
                        help="experiment: server.rtc.rtphooks.SEND_HISTORY_SIZE = N in the server process")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.server_dir:
        Server.code_dir = args.server_dir.resolve()
    Rig.quiet_wait_s = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 30.0)
    if args.server_gc_threshold:
        Rig.experiment_env["VZ_BENCH_GC_THRESHOLD"] = args.server_gc_threshold
    if args.server_send_history:
        Rig.experiment_env["VZ_BENCH_SEND_HISTORY"] = str(args.server_send_history)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return asyncio.run(bench(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: server and load generators stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
