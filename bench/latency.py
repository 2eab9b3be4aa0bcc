"""Glass-to-glass-ish latency of stamped video and audio over three paths, in one run.

    python -m bench.latency            # 1, 5 and 20 subscribers, 12 s windows (~3 min)
    python -m bench.latency --quick    # 1 and 5 subscribers, 4 s windows (< 1 min)

Paths, all on 127.0.0.1 with `RTCConfiguration(iceServers=[])`:

direct  aiortc publisher -> aiortc subscriber: one RTCPeerConnection pair in this
        process, offer and answer exchanged in-process, no server. The baseline. It has
        one subscriber whatever N is, so it is measured once at the start of the run, and
        once more at the end as a drift check ("direct@end": the machine may be shared).
naive   a relay server written the way aiortc's examples do it (HTTP offer/answer,
        `MediaRelay().subscribe(track)` per subscriber, so the server decodes the
        publisher's media once and re-encodes it for every subscriber). One courtesy is
        added: the relay keeps draining the publisher's tracks before anyone subscribes,
        so it is not charged for replaying stale frames to the first subscriber.
ours    publisher `CallClient` -> Verzilvering server -> N subscriber `CallClient`s that
        publish nothing. The server is `python -m server.cli serve` (= `verzilvering
        serve`) in its own process, as in production.

Processes. Both servers run as subprocesses (own interpreter and GIL, like a real server).
The publisher lives in this process. Subscribers of naive/ours live in worker processes
(`--subs-per-process`, default 5), because one Python process cannot decode many VP8
streams: it saturates its GIL, its sockets overflow, and it measures itself instead of the
server. `--subs-per-process 0` keeps them in this process. Every process reads the same
CLOCK_MONOTONIC, so a worker only records "stamp -> decode time" and this process maps
stamps to send times afterwards. `--in-process` runs the servers in this event loop
instead (for debugging; then there is no server CPU figure).

Sinks. A 2-core machine cannot also decode 20 VP8 streams (measured: ~150 % CPU for the
decoders alone, latency then grows by a second in the *clients*). So above
`--decoding-subscribers` (default 5) only that many subscribers, spread over the join
order, decode and measure; the others are sinks: full peer connections (ICE, DTLS, SRTP
decryption, RTCP) that count every packet but skip the jitter buffer and decoder. The
server does exactly the same work for a sink as for a viewer. `--decoding-subscribers 0`
makes everyone decode.

Media and stamps: see bench/stamp.py. 640x480 VP8 at 30 fps (every path negotiates VP8;
ours forces it) and 20 ms Opus frames at 48 kHz, generated and paced in Python.

Per path and subscriber count: the server starts; the publisher connects; subscribers join
one after another (late joiners, as in a real activity); wait until each got a video
frame; warm up; measure one window; keep receiving for a grace second.

- latency p50/p95/p99: every stamped frame (beep onset for audio) *decoded* inside the
  window, pooled over decoding subscribers. Sampling on receive time keeps a growing
  backlog visible.
- frames %: of the frames (beeps) the publisher sent inside the window, the share each
  decoding subscriber decoded by window end + grace; mean and worst subscriber. Sinks
  report frames (RTP marker packets) and audio packets that arrived inside the window
  against those sent in it (edges can make that 101 %).
- ttff: from a subscriber starting to join (CallClient.start(); for naive, creating its
  peer connection) to its first decoded video frame. For direct: from createOffer.
- added = ours - direct (and naive - direct), percentile by percentile, same run.
- CPU over the window, 100 % = one core: srv = the server process; cli = this process
  plus the subscriber workers; other = everything else on the machine (other people's
  jobs: if it is not ~0, every figure is noisier); lag = the worst p99 event-loop lag
  among the bench's processes (how late a 10 ms sleep wakes up); kbps = publisher's VP8.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import secrets
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError

from kiosk_client.call import CallClient
from kiosk_client.rtpreceiver import install_tuned_receiver
from signaling.tokens import TokenIssuer

from .looplag import LoopLag
from .machine import describe, machine_busy_s, process_cpu_s
from .processes import ParentPipe, free_port, send_command, start_worker, wait_or_kill, worker_messages
from .stamp import ReceiveLog, SendLog, StampedAudioTrack, StampedVideoTrack
from .waiting import until

logger = logging.getLogger("bench.latency")
# Marks a subscriber-side report that receive paths were mixed (crosses worker processes as text).
RECEIVE_PATH_MIX = "receive path mix"

REPO = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
# Stop a window early when the bench and server together hold more than this.
RSS_LIMIT_BYTES = 6 * 1024**3
# Above this much CPU used by processes outside the bench (100 = one core), say so.
BUSY_OTHER_PCT = 25.0


@dataclass(frozen=True)
class Timing:
    warmup_s: float
    window_s: float
    grace_s: float = 1.0
    first_frame_timeout_s: float = 15.0
    join_spacing_s: float = 0.05


FULL = Timing(warmup_s=3.0, window_s=12.0)
QUICK = Timing(warmup_s=1.0, window_s=4.0)


# --- process accounting ------------------------------------------------------------------------


def _proc_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


# --- subscribers ---------------------------------------------------------------------------------


def new_pc() -> RTCPeerConnection:
    # An explicit empty list: None would mean Google's public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def subscriber_pc(receiver: str) -> RTCPeerConnection:
    """A subscriber's peer connection with aiortc's stock receive path or kiosk_client's tuned one."""
    pc = new_pc()
    if receiver == "tuned":
        _install_tuned(pc)
    return pc


def _install_tuned(pc: RTCPeerConnection) -> None:
    install_tuned_receiver(pc)


def _uses_tuned(pc: RTCPeerConnection | None) -> bool:
    return pc is not None and any(
        getattr(t.receiver, "_verzilvering_tuned", None) is not None for t in pc.getTransceivers()
    )


class ReceivePathMix(Exception):
    """Subscribers in one run used different receive paths: the comparison would be false."""


def check_receive_path(path: str, pcs: list[RTCPeerConnection | None], receiver: str) -> None:
    stray = sum(1 for pc in pcs if pc is not None and _uses_tuned(pc) != (receiver == "tuned"))
    if stray:
        raise ReceivePathMix(
            f"{stray} {path} subscriber(s) did not use the {receiver} receive path that every path in this run uses"
        )


async def _consume(track: MediaStreamTrack, log: ReceiveLog) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        log.on_frame(track.kind, frame)


def _make_sink(pc: RTCPeerConnection, track: MediaStreamTrack, log: ReceiveLog) -> None:
    """Turns the receiver behind `track` into a packet counter: no jitter buffer, no decoding.

    The one place the bench reaches into aiortc (1.16): the DTLS transport calls
    `receiver._handle_rtp_packet(packet, arrival_time_ms=...)` for every SRTP-decrypted
    packet, and an instance attribute shadows the method.
    """
    receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
    kind = track.kind

    async def count(packet: Any, arrival_time_ms: int) -> None:
        log.on_sink_packet(kind, bool(packet.marker))

    receiver._handle_rtp_packet = count  # type: ignore[method-assign]


def _probe(pc: RTCPeerConnection, log: ReceiveLog, tasks: set[asyncio.Task[None]]) -> None:
    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if log.sink:
            _make_sink(pc, track, log)
            return
        task = asyncio.ensure_future(_consume(track, log))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _post_offer(http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection) -> None:
    await pc.setLocalDescription(await pc.createOffer())
    desc = pc.localDescription
    async with http.post(url, json={"sdp": desc.sdp, "type": desc.type}) as resp:
        resp.raise_for_status()
        answer = await resp.json()
    await pc.setRemoteDescription(RTCSessionDescription(**answer))


class ProbedCallClient(CallClient):
    """A CallClient whose decoded frames also pass through the stamp reader."""

    def __init__(self, log: ReceiveLog, receiver: str, server: str, token: str, **media: Any) -> None:
        # The receive path the run chose, like every other path's subscribers (CallClient's
        # own default is the tuned one).
        super().__init__(server, token, tuned_receiver=receiver == "tuned", **media)
        self.log = log

    async def _consume(self, track: MediaStreamTrack, consumer: dict[str, Any], since: float) -> None:
        recv = track.recv
        kind = consumer["kind"]
        log = self.log

        async def probed_recv() -> Any:
            frame = await recv()
            log.on_frame(kind, frame)
            return frame

        track.recv = probed_recv  # type: ignore[method-assign]
        await super()._consume(track, consumer, since)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self.log.sink and self.pc is not None:
            _make_sink(self.pc, track, self.log)
        super()._on_track(track)


class LocalHost:
    """Subscribers in this process (also what runs inside a worker process)."""

    pid: int | None = None

    def __init__(self, on_first_video: Callable[[ReceiveLog], None] | None = None) -> None:
        self.logs: list[ReceiveLog] = []
        self.errors: list[str] = []
        self._on_first_video = on_first_video
        self._clients: list[CallClient] = []
        self._pcs: list[RTCPeerConnection] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._receiver = "stock"

    async def join(
        self, path: str, name: str, server: str, token: str | None, sink: bool = False, receiver: str = "stock"
    ) -> ReceiveLog:
        log = ReceiveLog(name, sink=sink, on_first_video=self._on_first_video)
        self.logs.append(log)
        self._receiver = receiver
        log.joined_at = time.monotonic()
        if path == "ours":
            assert token is not None
            client = ProbedCallClient(log, receiver, server, token, video=None, audio=None)
            self._clients.append(client)
            await client.start()
        else:
            if self._http is None:
                self._http = aiohttp.ClientSession()
            pc = subscriber_pc(receiver)
            self._pcs.append(pc)
            _probe(pc, log, self._tasks)
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            await _post_offer(self._http, server + "/subscribe", pc)
        return log

    async def collect(self) -> None:
        self.errors = [str(e.get("code")) for c in self._clients for e in c.errors]
        # The comparison only holds when every path's subscribers use the same receive path.
        try:
            check_receive_path("ours", [c.pc for c in self._clients], self._receiver)
            check_receive_path("naive", self._pcs, self._receiver)
        except ReceivePathMix as exc:
            self.errors.append(f"{RECEIVE_PATH_MIX}: {exc}")

    async def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), timeout=10)
        for task in list(self._tasks):
            task.cancel()
        for pc in self._pcs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), timeout=10)
        if self._http is not None:
            await self._http.close()


class WorkerHost:
    """Subscribers in a worker process (`python -m bench.latency --worker`), driven over pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self.logs: list[ReceiveLog] = []
        self.errors: list[str] = []
        self.lag: list[tuple[float, float]] = []
        self._by_name: dict[str, ReceiveLog] = {}
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, stderr_path: Path) -> "WorkerHost":
        host = cls(await start_worker(("bench.latency", "--worker"), stderr_path))
        reply = await host._reply(30)
        if reply.get("event") != "ready":
            raise RuntimeError(f"worker did not start: {reply}")
        return host

    async def _read(self) -> None:
        async for msg in worker_messages(self.proc):
            if msg.get("event") == "first_video":
                log = self._by_name.get(msg["name"])
                if log is not None and log.first_video_at is None:
                    log.first_video_at = msg["t"]
            else:
                await self._replies.put(msg)
        await self._replies.put({"event": "eof"})

    async def _reply(self, timeout: float) -> dict[str, Any]:
        msg = await asyncio.wait_for(self._replies.get(), timeout)
        if msg.get("event") in ("eof", "error"):
            raise RuntimeError(f"worker {self.pid}: {msg}")
        return msg

    async def join(
        self, path: str, name: str, server: str, token: str | None, sink: bool = False, receiver: str = "stock"
    ) -> ReceiveLog:
        log = ReceiveLog(name, sink=sink)
        self.logs.append(log)
        self._by_name[name] = log
        await send_command(self.proc, {"cmd": "join", "path": path, "name": name, "server": server, "token": token,
                          "sink": sink, "receiver": receiver})
        reply = await self._reply(30)
        log.joined_at = reply["joined_at"]
        return log

    async def collect(self) -> None:
        await send_command(self.proc, {"cmd": "report"})
        reply = await self._reply(30)
        for data in reply["logs"]:
            self._by_name[data["name"]].load(data)
        self.errors = reply["errors"]
        self.lag = [(t, lag) for t, lag in reply["lag"]]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await send_command(self.proc, {"cmd": "close"})
        await wait_or_kill(self.proc, 30)
        self._reader.cancel()


async def worker_main() -> int:
    """Hosts subscribers for the parent bench; JSON lines on stdin/stdout."""
    pipe = await ParentPipe.open()
    lag = LoopLag()
    lag.start()
    host = LocalHost(on_first_video=lambda log: pipe.emit({"event": "first_video", "name": log.name, "t": log.first_video_at}))
    pipe.emit({"event": "ready"})
    try:
        while (msg := await pipe.command()) is not None:
            cmd = msg["cmd"]
            if cmd == "join":
                try:
                    log = await host.join(
                        msg["path"], msg["name"], msg["server"], msg["token"], msg["sink"], msg["receiver"]
                    )
                except Exception as exc:
                    pipe.emit({"event": "error", "message": repr(exc)})
                    continue
                pipe.emit({"event": "joined", "name": log.name, "joined_at": log.joined_at})
            elif cmd == "report":
                await host.collect()
                pipe.emit({"event": "report", "logs": [log.to_dict() for log in host.logs],
                           "errors": host.errors, "lag": lag.samples})
            elif cmd == "close":
                break
    finally:
        lag.stop()
        await host.close()
    return 0


class Subscribers:
    """N subscribers spread over hosts: this process, or workers of `per_process` each."""

    def __init__(self, hosts: list[LocalHost | WorkerHost], per_process: int) -> None:
        self.hosts = hosts
        self.per_process = per_process
        self.logs: list[ReceiveLog] = []

    @classmethod
    async def create(cls, n: int, per_process: int, workdir: Path) -> "Subscribers":
        if per_process <= 0:
            return cls([LocalHost()], max(n, 1))
        count = -(-n // per_process)
        hosts = await asyncio.gather(*(WorkerHost.start(workdir / "workers.log") for _ in range(count)))
        return cls(list(hosts), per_process)

    async def join(self, path: str, i: int, server: str, token: str | None, sink: bool, receiver: str) -> ReceiveLog:
        host = self.hosts[min(i // self.per_process, len(self.hosts) - 1)]
        log = await host.join(path, f"{path}-{i}", server, token, sink, receiver)
        self.logs.append(log)
        return log

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self.hosts if h.pid is not None]

    async def collect(self) -> list[str]:
        await asyncio.gather(*(h.collect() for h in self.hosts))
        return [e for h in self.hosts for e in h.errors]

    def lag_between(self, t0: float, t1: float) -> list[list[float]]:
        return [[lag for t, lag in h.lag if t0 <= t < t1] for h in self.hosts if isinstance(h, WorkerHost)]

    async def close(self) -> None:
        await asyncio.gather(*(h.close() for h in self.hosts), return_exceptions=True)


# --- measuring ---------------------------------------------------------------------------


@dataclass
class PathRun:
    path: str
    subscribers: int
    sent: SendLog
    logs: list[ReceiveLog]
    t0: float = 0.0
    t1: float = 0.0
    grace_s: float = 1.0
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    loop_lag_p99_ms: float | None = None
    publisher_video_kbps: float | None = None
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def summarize(run: PathRun) -> dict[str, Any]:
    t0, t1, sent = run.t0, run.t1, run.sent
    decoders = [log for log in run.logs if not log.sink]
    sinks = [log for log in run.logs if log.sink]
    video = [x for log in decoders for x in log.video_latencies_ms(sent, t0, t1)]
    audio = [x for log in decoders for x in log.audio_latencies_ms(sent, t0, t1)]
    deadline = t1 + run.grace_s
    sent_video = sent.video_sent_between(t0, t1)
    sent_beeps = sent.beeps_sent_between(t0, t1)
    video_pct, audio_pct, ttff = [], [], []
    for log in decoders:
        got = sum(1 for c in sent_video if log.video.get(c, deadline + 1) <= deadline)
        video_pct.append(100 * got / len(sent_video) if sent_video else 0.0)
        beeps = log.beeps(sent)
        got = sum(1 for b in sent_beeps if beeps.get(b, deadline + 1) <= deadline)
        audio_pct.append(100 * got / len(sent_beeps) if sent_beeps else 0.0)
        if log.first_video_at is not None and log.joined_at is not None:
            ttff.append((log.first_video_at - log.joined_at) * 1000)
    # A sink counts frames (marker packets) and audio packets that arrived in the window.
    sink_video = [100 * sum(1 for t in log.sink_video_at if t0 <= t < t1) / max(1, len(sent_video)) for log in sinks]
    sink_audio = [100 * sum(1 for t in log.sink_audio_at if t0 <= t < t1) / max(1, len(sent.audio_between(t0, t1)))
                  for log in sinks]
    by_sub = [_pct(log.video_latencies_ms(sent, t0, t1), 50) for log in decoders]
    return {
        "video_p50_by_subscriber": by_sub,
        "decoding": len(decoders),
        "sinks": len(sinks),
        "sink_video_frames_pct": round(float(np.mean(sink_video)), 1) if sink_video else None,
        "sink_video_frames_pct_min": round(min(sink_video), 1) if sink_video else None,
        "sink_audio_frames_pct": round(float(np.mean(sink_audio)), 1) if sink_audio else None,
        "video_p50_ms": _pct(video, 50),
        "video_p95_ms": _pct(video, 95),
        "video_p99_ms": _pct(video, 99),
        "video_n": len(video),
        "audio_p50_ms": _pct(audio, 50),
        "audio_p95_ms": _pct(audio, 95),
        "audio_p99_ms": _pct(audio, 99),
        "audio_n": len(audio),
        "video_frames_sent": len(sent_video),
        "video_frames_pct": round(float(np.mean(video_pct)), 1) if video_pct else None,
        "video_frames_pct_min": round(min(video_pct), 1) if video_pct else None,
        "audio_beeps_sent": len(sent_beeps),
        "audio_beeps_pct": round(float(np.mean(audio_pct)), 1) if audio_pct else None,
        "audio_beeps_pct_min": round(min(audio_pct), 1) if audio_pct else None,
        "ttff_p50_ms": _pct(ttff, 50),
        "ttff_max_ms": round(max(ttff), 1) if ttff else None,
        "no_first_frame": sum(1 for log in run.logs if log.first_video_at is None),
        "video_unreadable": sum(log.video_unreadable for log in run.logs),
        "video_unknown": sum(log.video_unknown(sent) for log in run.logs),
        "audio_unreadable": sum(log.audio_unreadable for log in run.logs),
        "server_cpu_pct": run.server_cpu_pct,
        "client_cpu_pct": run.client_cpu_pct,
        "other_cpu_pct": run.other_cpu_pct,
        "loop_lag_p99_ms": run.loop_lag_p99_ms,
        "publisher_video_kbps": run.publisher_video_kbps,
        "peak_rss_mb": run.peak_rss_mb,
        "notes": run.notes,
    }


async def _video_bytes_sent(pc: RTCPeerConnection | None) -> int | None:
    if pc is None:
        return None
    try:
        report = await pc.getStats()
    except Exception:
        return None
    return sum(s.bytesSent for s in report.values() if s.type == "outbound-rtp" and s.kind == "video") or None


async def measure(
    run: PathRun,
    timing: Timing,
    lag: LoopLag,
    server_pid: int | None,
    client_pids: list[int],
    publisher_pc: Callable[[], RTCPeerConnection | None],
    subscribers: Subscribers | None = None,
) -> None:
    """Waits for first frames, warms up, measures one window and a grace period."""
    deadline = time.monotonic() + timing.first_frame_timeout_s
    while any(log.first_video_at is None for log in run.logs) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    missing = sum(1 for log in run.logs if log.first_video_at is None)
    if missing:
        run.notes.append(f"{missing} subscriber(s) had no video after {timing.first_frame_timeout_s:.0f} s")
    await asyncio.sleep(timing.warmup_s)

    pids = [os.getpid(), *client_pids]

    def cpu() -> tuple[float, float | None, float]:
        clients = sum(process_cpu_s(p) for p in pids)
        server = process_cpu_s(server_pid) if server_pid else None
        return clients, server, machine_busy_s()

    before = cpu()
    bytes0 = await _video_bytes_sent(publisher_pc())
    run.t0 = time.monotonic()
    peak = 0
    end = run.t0 + timing.window_s
    while time.monotonic() < end:
        await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
        rss = sum(_proc_rss(p) for p in pids) + (_proc_rss(server_pid) if server_pid else 0)
        peak = max(peak, rss)
        if rss > RSS_LIMIT_BYTES:
            run.notes.append(f"window cut short: {rss / 2**20:.0f} MB resident")
            break
    run.t1 = time.monotonic()
    after = cpu()
    bytes1 = await _video_bytes_sent(publisher_pc())
    wall = run.t1 - run.t0
    run.client_cpu_pct = round(100 * (after[0] - before[0]) / wall, 1)
    server_s = None
    if before[1] is not None and after[1] is not None:
        server_s = after[1] - before[1]
        run.server_cpu_pct = round(100 * server_s / wall, 1)
    run.other_cpu_pct = round(100 * max(0.0, (after[2] - before[2]) - (after[0] - before[0]) - (server_s or 0.0)) / wall, 1)
    if bytes0 is not None and bytes1 is not None:
        run.publisher_video_kbps = round((bytes1 - bytes0) * 8 / wall / 1000, 1)
    run.peak_rss_mb = round(peak / 2**20, 1)
    run.grace_s = timing.grace_s
    await asyncio.sleep(timing.grace_s)
    lags = [lag.between(run.t0, run.t1)]
    if subscribers is not None:
        errors = await subscribers.collect()
        mixes = [e for e in errors if e.startswith(RECEIVE_PATH_MIX)]
        if mixes:
            raise ReceivePathMix("; ".join(mixes))
        if errors:
            run.notes.append(f"server errors: {errors}")
        lags += subscribers.lag_between(run.t0, run.t1)
    p99s = [p for p in (_pct(x, 99) for x in lags) if p is not None]
    run.loop_lag_p99_ms = max(p99s) if p99s else None


# --- direct path -----------------------------------------------------------------------------


async def run_direct(timing: Timing, ctx: "BenchContext") -> PathRun:
    sent = SendLog()
    log = ReceiveLog("direct")
    run = PathRun("direct", 1, sent, [log])
    pub, sub = new_pc(), subscriber_pc(ctx.receiver)
    tasks: set[asyncio.Task[None]] = set()
    try:
        _probe(sub, log, tasks)
        pub.addTrack(StampedVideoTrack(sent))
        pub.addTrack(StampedAudioTrack(sent))
        log.joined_at = time.monotonic()
        await pub.setLocalDescription(await pub.createOffer())
        await sub.setRemoteDescription(pub.localDescription)
        await sub.setLocalDescription(await sub.createAnswer())
        await pub.setRemoteDescription(sub.localDescription)
        check_receive_path("direct", [sub], ctx.receiver)
        await measure(run, timing, ctx.lag, None, [], lambda: pub)
    finally:
        for task in list(tasks):
            task.cancel()
        for pc in (sub, pub):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), timeout=10)
    return run


# --- naive relay (aiortc example style) ---------------------------------------------------------


class NaiveRelay:
    """A relay written as aiortc's examples suggest: decode once, re-encode per subscriber."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.ready = asyncio.Event()
        self.pcs: set[RTCPeerConnection] = set()
        self._drains: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/publish", self.publish)
        app.router.add_post("/subscribe", self.subscribe)
        app.router.add_get("/healthz", self.healthz)
        app.on_shutdown.append(self.close)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "tracks": sorted(self.tracks), "pcs": len(self.pcs)})

    async def publish(self, request: web.Request) -> web.Response:
        offer = RTCSessionDescription(**await request.json())
        pc = new_pc()
        self.pcs.add(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tracks[track.kind] = track
            drain = self.relay.subscribe(track, buffered=False)
            self._drains.add(asyncio.ensure_future(self._drain(drain)))
            if len(self.tracks) == 2:
                self.ready.set()

        await pc.setRemoteDescription(offer)
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def subscribe(self, request: web.Request) -> web.Response:
        offer = RTCSessionDescription(**await request.json())
        await asyncio.wait_for(self.ready.wait(), timeout=10)
        pc = new_pc()
        self.pcs.add(pc)
        await pc.setRemoteDescription(offer)
        for kind in ("video", "audio"):
            pc.addTrack(self.relay.subscribe(self.tracks[kind]))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def close(self, app: web.Application | None = None) -> None:
        for task in self._drains:
            task.cancel()
        for pc in list(self.pcs):
            with contextlib.suppress(Exception):
                await pc.close()
        self.pcs.clear()


def serve_naive(port: int) -> int:
    logging.basicConfig(level=logging.WARNING)
    web.run_app(NaiveRelay().app(), host="127.0.0.1", port=port, print=None, access_log=None)
    return 0


# --- servers -------------------------------------------------------------------------------


class ServerHandle:
    """A server under test: a subprocess (default) or an app in this event loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = ""
        self.pid: int | None = None
        self.log_path: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._test_server: Any = None

    @classmethod
    async def subprocess(
        cls, name: str, argv: list[str], env: dict[str, str], workdir: Path, host: str = "127.0.0.1", cwd: Path = REPO
    ) -> "ServerHandle":
        """`cwd` is the checkout whose `server` package `python -m server.cli` runs (another
        commit's, for a baseline); `host` the address the server listens on (pass it as `--host`)."""
        self = cls(name)
        port = free_port()
        argv = [a.replace("{port}", str(port)) for a in argv]
        self.log_path = workdir / f"{name}-{port}.log"
        with open(self.log_path, "wb") as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env={**os.environ, **env}, stdout=log_file, stderr=asyncio.subprocess.STDOUT
            )
        self.pid = self._proc.pid
        self.url = f"http://{host}:{port}"
        await self._wait_healthy()
        return self

    @classmethod
    async def in_process(cls, name: str, app: web.Application) -> "ServerHandle":
        from aiohttp.test_utils import TestServer

        self = cls(name)
        self._test_server = TestServer(app, host="127.0.0.1")
        await self._test_server.start_server()
        self.url = str(self._test_server.make_url("")).rstrip("/")
        return self

    async def _wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.returncode is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} server did not come up; see {self.log_path}:\n{self.log_tail()}")

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.url + "/healthz") as resp:
                return await resp.json()

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> None:
        if self._test_server is not None:
            await self._test_server.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
            await wait_or_kill(self._proc, 15)


async def _until_async(probe: Callable[[], Awaitable[int]], want: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe() >= want:
            return True
        await asyncio.sleep(0.1)
    return False


# --- naive and ours paths ----------------------------------------------------------------------


async def run_naive(n: int, timing: Timing, ctx: "BenchContext") -> PathRun:
    sent = SendLog()
    run = PathRun("naive", n, sent, [])
    if ctx.in_process:
        server = await ServerHandle.in_process("naive", NaiveRelay().app())
    else:
        server = await ServerHandle.subprocess(
            "naive", [sys.executable, "-m", "bench.latency", "--serve-naive", "--port", "{port}"], {}, ctx.workdir
        )
    pub = new_pc()
    subscribers: Subscribers | None = None
    try:
        subscribers = await Subscribers.create(n, ctx.per_process, ctx.workdir)
        pub.addTrack(StampedVideoTrack(sent))
        pub.addTrack(StampedAudioTrack(sent))
        async with aiohttp.ClientSession() as http:
            await _post_offer(http, server.url + "/publish", pub)
        await until(lambda: len(sent.video) > 15, 10, interval=0.02)
        for i in range(n):
            run.logs.append(await subscribers.join("naive", i, server.url, None, not ctx.decodes(i, n), ctx.receiver))
            await asyncio.sleep(timing.join_spacing_s)
        await measure(run, timing, ctx.lag, server.pid, subscribers.pids, lambda: pub, subscribers)
    finally:
        if subscribers is not None:
            await subscribers.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pub.close(), timeout=10)
        await server.stop()
    return run


async def run_ours(n: int, timing: Timing, ctx: "BenchContext") -> PathRun:
    sent = SendLog()
    run = PathRun("ours", n, sent, [])
    secret = secrets.token_urlsafe(48)
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=ctx.workdir))
    if ctx.in_process:
        # Only here: otherwise the server runs in its own process and this one (the
        # publisher's) stays without its code and heap.
        from server.app import create_app
        from server.config import Settings

        server = await ServerHandle.in_process("ours", create_app(Settings(data_dir=data_dir, token_secret=secret)))
    else:
        server = await ServerHandle.subprocess(
            "ours",
            [sys.executable, "-m", "server.cli", "serve", "--port", "{port}", "--data-dir", str(data_dir),
             "--log-level", "WARNING"],
            {"VERZILVERING_TOKEN_SECRET": secret},
            ctx.workdir,
        )
    issuer = TokenIssuer(secret)
    room = f"bench-latency-{n}"
    publisher: CallClient | None = None
    subscribers: Subscribers | None = None
    try:
        subscribers = await Subscribers.create(n, ctx.per_process, ctx.workdir)
        publisher = CallClient(
            server.url,
            issuer.issue(role="host", room=room, name="Publisher"),
            video=StampedVideoTrack(sent),
            audio=StampedAudioTrack(sent),
        )
        await publisher.start()
        if not await _until_async(lambda: _producers(server), 2, 15):
            run.notes.append("the publisher's producers did not appear within 15 s")
        await until(lambda: len(sent.video) > 15, 10, interval=0.02)
        for i in range(n):
            token = issuer.issue(role="senior", room=room, name=f"Kijker {i}")
            run.logs.append(await subscribers.join("ours", i, server.url, token, not ctx.decodes(i, n), ctx.receiver))
            await asyncio.sleep(timing.join_spacing_s)
        await measure(run, timing, ctx.lag, server.pid, subscribers.pids,
                      lambda: publisher.pc if publisher else None, subscribers)
        if publisher.errors:
            run.notes.append(f"publisher got errors: {[e.get('code') for e in publisher.errors]}")
    finally:
        if subscribers is not None:
            await subscribers.close()
        if publisher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(publisher.close(), timeout=10)
        await server.stop()
    return run


async def _producers(server: ServerHandle) -> int:
    with contextlib.suppress(Exception):
        return int((await server.health())["media"]["producers"])
    return 0


# --- the run -------------------------------------------------------------------------------


@dataclass
class BenchContext:
    workdir: Path
    in_process: bool
    per_process: int
    lag: LoopLag
    decoding: int = 0
    receiver: str = "stock"

    def decodes(self, i: int, n: int) -> bool:
        """Whether subscriber i of n decodes and measures (else it is a sink), spread over join order."""
        if self.decoding <= 0 or n <= self.decoding:
            return True
        step = n / self.decoding
        return any(int(k * step) == i for k in range(self.decoding))


def machine() -> dict[str, Any]:
    import aiortc
    import av

    return {**describe(), "aiortc": aiortc.__version__, "av": av.__version__}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}{unit}" if abs(value) >= 100 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def print_table(n: int, rows: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'path':<10} {'video p50/p95/p99 ms':>22} {'audio p50/p95/p99 ms':>22} {'frames %':>13} "
        f"{'beeps %':>13} {'ttff p50/max ms':>16} {'srv cpu':>8} {'cli cpu':>8} {'other':>6} {'lag p99':>8} {'kbps':>6}"
    )
    print(f"\n== {n} subscriber(s) ==")
    print(header)
    for path, s in rows.items():
        video = "/".join(_fmt(s[f"video_{q}_ms"]) for q in ("p50", "p95", "p99"))
        audio = "/".join(_fmt(s[f"audio_{q}_ms"]) for q in ("p50", "p95", "p99"))
        frames = f"{_fmt(s['video_frames_pct'])} (min {_fmt(s['video_frames_pct_min'])})"
        beeps = f"{_fmt(s['audio_beeps_pct'])} (min {_fmt(s['audio_beeps_pct_min'])})"
        ttff = f"{_fmt(s['ttff_p50_ms'])}/{_fmt(s['ttff_max_ms'])}"
        print(
            f"{path:<10} {video:>22} {audio:>22} {frames:>13} {beeps:>13} {ttff:>16} "
            f"{_fmt(s['server_cpu_pct'], '%'):>8} {_fmt(s['client_cpu_pct'], '%'):>8} {_fmt(s['other_cpu_pct'], '%'):>6} "
            f"{_fmt(s['loop_lag_p99_ms']):>8} {_fmt(s['publisher_video_kbps']):>6}"
        )
    for path, s in rows.items():
        extra = []
        if s["video_unreadable"] or s["audio_unreadable"] or s["video_unknown"]:
            extra.append(f"unreadable stamps: video {s['video_unreadable']} (+{s['video_unknown']} unknown), "
                         f"audio {s['audio_unreadable']}")
        if s["no_first_frame"]:
            extra.append(f"{s['no_first_frame']} subscriber(s) never got video")
        if s["sinks"]:
            extra.append(f"{s['decoding']} subscribers decode and measure, {s['sinks']} are sinks "
                         f"(receive all packets, no decode): sinks got {_fmt(s['sink_video_frames_pct'])} % of frames "
                         f"(min {_fmt(s['sink_video_frames_pct_min'])}), {_fmt(s['sink_audio_frames_pct'])} % of audio packets")
        if len(s["video_p50_by_subscriber"]) > 1:
            extra.append("video p50 per decoding subscriber (join order): "
                         + " ".join(_fmt(x) for x in s["video_p50_by_subscriber"]))
        extra += s["notes"]
        if (s["other_cpu_pct"] or 0) > BUSY_OTHER_PCT:
            extra.append(f"OTHER PROCESSES used {s['other_cpu_pct']:.0f} % CPU during this window: "
                         "p95/p99 (and small differences) are not reliable")
        extra.append(f"samples: video {s['video_n']}, audio {s['audio_n']}; sent in window: "
                     f"{s['video_frames_sent']} frames, {s['audio_beeps_sent']} beeps; peak RSS {s['peak_rss_mb']} MB")
        print(f"  {path}: " + "; ".join(extra))
    base = rows.get("direct")
    if base:
        for path in ("ours", "naive"):
            if path in rows:
                s = rows[path]
                diffs = []
                for kind in ("video", "audio"):
                    for q in ("p50", "p99"):
                        a, b = s[f"{kind}_{q}_ms"], base[f"{kind}_{q}_ms"]
                        diffs.append(f"{kind} {q} {_fmt(None if a is None or b is None else round(a - b, 1))}")
                print(f"  added by {path} (vs direct, same run): " + ", ".join(diffs) + " ms")


def json_line(n: int, rows: dict[str, dict[str, Any]], receiver: str) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "latency", "subscribers": n, "receiver": receiver}
    for path, s in rows.items():
        for key in ("video_p50_ms", "video_p95_ms", "video_p99_ms", "audio_p50_ms", "audio_p95_ms", "audio_p99_ms"):
            out[f"{path.replace('@', '_')}_{key}"] = s[key]
    direct, ours, naive = rows.get("direct"), rows.get("ours"), rows.get("naive")

    def diff(a: dict[str, Any] | None, key: str) -> float | None:
        if a is None or direct is None or a[key] is None or direct[key] is None:
            return None
        return round(a[key] - direct[key], 1)

    for kind in ("video", "audio"):
        for q in ("p50", "p99"):
            out[f"added_{kind}_{q}_ms"] = diff(ours, f"{kind}_{q}_ms")
    for kind in ("video", "audio"):
        for q in ("p50", "p99"):
            out[f"naive_added_{kind}_{q}_ms"] = diff(naive, f"{kind}_{q}_ms")
    for path, s in rows.items():
        if path.startswith("direct"):
            out[f"{path.replace('@', '_')}_ttff_ms"] = s["ttff_p50_ms"]
            continue
        out[f"{path}_ttff_ms"] = s["ttff_p50_ms"]
        out[f"{path}_ttff_max_ms"] = s["ttff_max_ms"]
        out[f"{path}_decoding_subscribers"] = s["decoding"]
        out[f"{path}_sink_video_frames_pct"] = s["sink_video_frames_pct"]
        out[f"{path}_video_frames_pct"] = s["video_frames_pct"]
        out[f"{path}_video_frames_pct_min"] = s["video_frames_pct_min"]
        out[f"{path}_audio_beeps_pct"] = s["audio_beeps_pct"]
        out[f"{path}_server_cpu_pct"] = s["server_cpu_pct"]
        out[f"{path}_client_cpu_pct"] = s["client_cpu_pct"]
        out[f"{path}_other_cpu_pct"] = s["other_cpu_pct"]
    return out


async def bench(args: argparse.Namespace) -> int:
    timing = QUICK if args.quick else FULL
    if args.window is not None or args.warmup is not None:
        timing = Timing(
            warmup_s=timing.warmup_s if args.warmup is None else args.warmup,
            window_s=timing.window_s if args.window is None else args.window,
        )
    counts = [int(x) for x in args.subscribers.split(",")] if args.subscribers else ([1, 5] if args.quick else [1, 5, 20])
    paths = args.paths.split(",")
    started = time.monotonic()
    command = "python -m bench.latency" + ("" if len(sys.argv) <= 1 else " " + shlex.join(sys.argv[1:]))
    print(f"command: {command}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print("machine: " + json.dumps(machine()))
    print(f"timing: warm-up {timing.warmup_s} s, window {timing.window_s} s, grace {timing.grace_s} s; "
          f"servers {'in this process' if args.in_process else 'in subprocesses'}; "
          f"subscribers {'in this process' if args.subs_per_process <= 0 else f'{args.subs_per_process} per worker process'}"
          f", {'all' if args.decoding_subscribers <= 0 else f'at most {args.decoding_subscribers}'} decoding; "
          f"{args.receiver} aiortc receive path in every subscriber; "
          f"paths {','.join(paths)}; counts {counts}", flush=True)

    lag = LoopLag()
    lag.start()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        ctx = BenchContext(
            Path(tmp), args.in_process, args.subs_per_process, lag, args.decoding_subscribers, args.receiver
        )
        direct: dict[str, Any] | None = None
        if "direct" in paths:
            print("running direct ...", flush=True)
            direct = summarize(await run_direct(timing, ctx))
        lines = []
        for n in counts:
            rows: dict[str, dict[str, Any]] = {}
            if direct is not None:
                rows["direct"] = direct
            for path in ("ours", "naive"):
                if path not in paths:
                    continue
                print(f"running {path} with {n} subscriber(s) ...", flush=True)
                await asyncio.sleep(0.5)  # let the previous phase's threads wind down
                runner = run_ours if path == "ours" else run_naive
                try:
                    budget = 60 + timing.window_s + n * 3
                    rows[path] = summarize(await asyncio.wait_for(runner(n, timing, ctx), timeout=budget))
                except ReceivePathMix:
                    raise
                except Exception as exc:  # keep the other figures when one path breaks
                    logger.exception("%s with %d subscribers failed", path, n)
                    print(f"  {path} with {n} subscriber(s) FAILED: {exc!r}", flush=True)
                    if not args.in_process:
                        for log in sorted(ctx.workdir.glob("*.log")):
                            print(f"  --- tail of {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
            if n == counts[-1] and "direct" in paths:
                # The machine may be shared: a second baseline at the end shows drift.
                print("running direct again (drift check) ...", flush=True)
                rows["direct@end"] = summarize(await run_direct(timing, ctx))
            print_table(n, rows)
            lines.append(json_line(n, rows, args.receiver))
    lag.stop()
    print(f"\ntotal {time.monotonic() - started:.0f} s; command: {command}")
    for line in lines:
        print(json.dumps(line))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 and 5 subscribers, short windows (< 1 min)")
    parser.add_argument("--subscribers", help="comma-separated subscriber counts (default 1,5,20)")
    parser.add_argument("--paths", default="direct,ours,naive", help="which of direct,ours,naive to run")
    parser.add_argument("--window", type=float, help="seconds of measurement per phase")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per phase")
    parser.add_argument("--in-process", action="store_true", help="run the servers in this event loop")
    parser.add_argument("--subs-per-process", type=int, default=5,
                        help="subscribers per worker process for naive/ours (0: all in this process)")
    parser.add_argument("--decoding-subscribers", type=int, default=5,
                        help="above this many subscribers, only this many (spread over join order) decode and "
                             "measure; the others receive every packet without decoding (0: all decode)")
    parser.add_argument("--receiver", choices=("stock", "tuned"), default="stock",
                        help="every subscriber (all paths) uses aiortc's stock receive path or "
                             "kiosk_client.rtpreceiver's tuned one")
    parser.add_argument("--serve-naive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.serve_naive:
        return serve_naive(args.port)
    if args.worker:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        return asyncio.run(worker_main())
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING if args.verbose else logging.ERROR)
    try:
        return asyncio.run(bench(args))
    except ReceivePathMix as exc:
        print(f"\nMEASURED THE WRONG THING: {exc}; no figures from this run", flush=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
