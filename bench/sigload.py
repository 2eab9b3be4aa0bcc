"""Load generator for `bench.signalling`: protocol-level signalling clients, no media.

    VZ_BENCH_SECRET=... python -m bench.sigload    # a worker; JSON-line commands on stdin

A simulated participant is one aiohttp WebSocket doing what `kiosk_client.signaling` does
up to the room snapshot: connect to `/ws`, `hello` {v, token}, wait for `welcome`, `join`
{room}, wait for `joined`. It never sends `publish`, so there is no SDP and no ICE. After
`joined` it stays connected: one reader per socket drains what the server sends
(`participant_joined` from later joiners, `pong`), and one pinger per process sends
`ping` {ts} on every socket at the `ping_interval_ms` the server gave in `welcome`, the
first one an interval after `welcome`, as the kiosk client does. `ts` is this process's
CLOCK_MONOTONIC in ms, so the pong gives a round-trip time. Like the kiosk client (and
browsers), a socket offers permessage-deflate unless the command says `compress: false`.

Timestamps are CLOCK_MONOTONIC seconds, which every process on the machine shares: the
orchestrator compares them across workers.

Commands (one JSON object per line on stdin; one reply line on stdout per command):

    {"cmd": "join", "tag": T, "clients": [[url, room, participant_id], ...],
     "concurrency": C, "timeout_s": S, "ping": true, "compress": true, "retries": 0}
        Joins every client, at most C at a time, in the order given; keeps them connected.
        With "arrivals": [offset_s, ...] and "start_at" (CLOCK_MONOTONIC s) instead, client k
        starts at start_at + arrivals[k] however many are in flight (an open loop).
        A client refused with `unavailable` starts over up to `retries` times (a retry's
        samples time the successful attempt only).
        Reply: {"ok", "failed", "errors": {code: n}, "retried": {code: n}, "samples": [[index, t_start,
        t_open, t_welcome, t_join_sent, t_joined], ...] (failed clients omitted),
        "lag_p99_ms", "elapsed_s"}.
    {"cmd": "ping_burst", "tag": T, "count": N, "pings": K, "rate": R, "timeout_s": S}
        The first N sockets of tag T each send K extra pings, R per second per socket.
    {"cmd": "stats", "coverage": false}  -> {"sockets", "pings", "pongs", "messages", "rtt_ms": [p50, p99],
                          "closed_by_server", "types": {type: n after joined}, "lag_p99_ms"}
        types also counts "participant_joined:duplicate" (the same participant announced
        twice to one socket) and "participant_joined:already_in_snapshot" (announced
        although the socket's `joined` snapshot already listed them: joins that overlapped).
        With coverage: "coverage": [[room, participants known], ...] per open socket.
    {"cmd": "close", "tag": T, "leave": true, "concurrency": C, "timeout_s": S}
        Sends `leave` (or just closes) on every socket of tag T, at most C at a time.
    {"cmd": "exit"}

Every loop is bounded by the command's timeout_s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import resource
import sys
import time
from collections import Counter
from typing import Any

import aiohttp

from bench.looplag import LoopLag
from bench.processes import ParentPipe
from signaling.tokens import TokenIssuer

MAX_RTT_SAMPLES = 200_000
# How long a leaving socket waits for the server's `left` and close.
LEAVE_WAIT_S = 5.0


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class JoinError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Sock:
    __slots__ = ("ws", "room", "interval", "reader", "snapshot", "announced")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, room: str, interval: float, snapshot: set[str]) -> None:
        self.ws = ws
        self.room = room
        self.interval = interval
        self.reader: asyncio.Task[None] | None = None
        # Participants in the `joined` snapshot, and those announced by participant_joined since.
        self.snapshot = snapshot
        self.announced: set[str] = set()


class Worker:
    def __init__(self, secret: str) -> None:
        self.issuer = TokenIssuer(secret)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self.socks: dict[str, list[Sock]] = {}
        self.lag = LoopLag()
        self.lag.start()
        self.pings = 0
        self.pongs = 0
        self.messages = 0
        self.closed_by_server = 0
        # Message types received after `joined` (participant_joined, pong, ...).
        self.types: Counter[str] = Counter()
        self.rtt_ms: list[float] = []
        # The pinger: (due time, tie-breaker, socket) for every socket that pings.
        self._due: list[tuple[float, int, Sock]] = []
        self._due_counter = 0
        self._wake = asyncio.Event()
        self._pinger = asyncio.ensure_future(self._ping_loop())
        self._stopping = False

    # --- one participant ---------------------------------------------------------------

    async def _recv(self, ws: aiohttp.ClientWebSocketResponse, want: str, deadline: float) -> dict[str, Any]:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise JoinError(f"timeout_waiting_{want}")
            msg = await ws.receive(timeout=left)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise JoinError(f"socket_{msg.type.name.lower()}_{ws.close_code}")
            self.messages += 1
            message = json.loads(msg.data)
            kind = message.get("type")
            if kind == want:
                return message
            if kind == "error":
                raise JoinError(str(message.get("code")))

    async def _join_one(
        self, url: str, token: str, room: str, deadline: float, ping: bool, compress: bool
    ) -> tuple[Sock, list[float]]:
        t_start = time.monotonic()
        ws = await asyncio.wait_for(
            self.http.ws_connect(url, compress=15 if compress else 0, max_msg_size=4 * 1024 * 1024, autoping=True),
            timeout=max(0.1, deadline - t_start),
        )
        try:
            t_open = time.monotonic()
            await ws.send_str(json.dumps({"type": "hello", "v": 1, "token": token, "id": "h"}))
            welcome = await self._recv(ws, "welcome", deadline)
            t_welcome = time.monotonic()
            await ws.send_str(json.dumps({"type": "join", "room": room, "id": "j"}))
            t_join_sent = time.monotonic()
            joined = await self._recv(ws, "joined", deadline)
            t_joined = time.monotonic()
        except BaseException:
            await ws.close()
            raise
        snapshot = {p.get("participant_id") for p in joined.get("participants", [])}
        sock = Sock(ws, room, welcome.get("ping_interval_ms", 10000) / 1000, snapshot)
        sock.reader = asyncio.ensure_future(self._drain(sock))
        if ping:
            self._schedule(sock, t_welcome + sock.interval)
        return sock, [t_start, t_open, t_welcome, t_join_sent, t_joined]

    async def _drain(self, sock: Sock) -> None:
        ws = sock.ws
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                self.messages += 1
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    continue
                kind = message.get("type")
                self.types[kind] += 1
                if kind == "participant_joined":
                    pid = (message.get("participant") or {}).get("participant_id")
                    if pid in sock.announced:
                        self.types["participant_joined:duplicate"] += 1
                    elif pid in sock.snapshot:
                        self.types["participant_joined:already_in_snapshot"] += 1
                    sock.announced.add(pid)
                if kind == "pong":
                    self.pongs += 1
                    ts = message.get("ts")
                    if isinstance(ts, (int, float)) and len(self.rtt_ms) < MAX_RTT_SAMPLES:
                        self.rtt_ms.append(time.monotonic() * 1000 - ts)
        except Exception:
            pass
        if not self._stopping and ws.close_code not in (1000, None):
            self.closed_by_server += 1

    # --- pinging -------------------------------------------------------------------------

    def _schedule(self, sock: Sock, due: float) -> None:
        self._due_counter += 1
        heapq.heappush(self._due, (due, self._due_counter, sock))
        self._wake.set()

    async def _ping_loop(self) -> None:
        while True:
            if not self._due:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, _, sock = self._due[0]
            now = time.monotonic()
            if due > now:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=due - now)
                except asyncio.TimeoutError:
                    pass
                continue
            heapq.heappop(self._due)
            if sock.ws.closed:
                continue
            try:
                await sock.ws.send_str(json.dumps({"type": "ping", "ts": time.monotonic() * 1000}))
                self.pings += 1
            except Exception:
                continue
            self._schedule(sock, due + sock.interval)

    # --- commands --------------------------------------------------------------------------

    async def join(self, cmd: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + float(cmd["timeout_s"])
        ping = bool(cmd.get("ping", True))
        compress = bool(cmd.get("compress", True))
        clients = cmd["clients"]
        # Tokens first, so signing them is not part of any timing.
        tokens = [
            self.issuer.issue(role="senior", room=room, name=f"Kiosk {pid}", participant_id=pid, ttl_s=7200)
            for _, room, pid in clients
        ]
        held = self.socks.setdefault(cmd["tag"], [])
        samples: list[list[float]] = []
        errors: Counter[str] = Counter()
        retried: Counter[str] = Counter()
        retries = int(cmd.get("retries", 0))
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(clients)):
            queue.put_nowait(i)

        async def one(i: int) -> None:
            url, room, _ = clients[i]
            try:
                for attempt in range(retries + 1):
                    try:
                        sock, times = await self._join_one(url, tokens[i], room, deadline, ping, compress)
                        break
                    except JoinError as exc:
                        # `unavailable` is retryable (docs/protocol.md); a kiosk tries again.
                        if exc.code != "unavailable" or attempt == retries:
                            raise
                        retried[exc.code] += 1
                        await asyncio.sleep(0.2 * (attempt + 1))
            except JoinError as exc:
                errors[exc.code] += 1
                return
            except (asyncio.TimeoutError, TimeoutError):
                errors["timeout"] += 1
                return
            except (aiohttp.ClientError, OSError) as exc:
                errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                return
            held.append(sock)
            samples.append([i, *times])

        async def runner() -> None:
            # Closed loop: each runner starts the next join when its last one is done.
            while time.monotonic() < deadline:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await one(i)

        arrivals = cmd.get("arrivals")

        async def arrive(i: int) -> None:
            # Open loop: client i starts at its own time whatever the others are doing.
            delay = start_at + float(arrivals[i]) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() >= deadline:
                errors["not_started_before_deadline"] += 1
                return
            await one(i)

        self.lag.take()
        if arrivals is not None:
            # CLOCK_MONOTONIC is shared by every process: all workers follow one schedule.
            start_at = float(cmd.get("start_at", started))
            while not queue.empty():
                queue.get_nowait()
            await asyncio.gather(*(arrive(i) for i in range(len(clients))))
        else:
            await asyncio.gather(*(runner() for _ in range(max(1, int(cmd["concurrency"])))))
        not_started = queue.qsize()
        if not_started:
            errors["not_started_before_deadline"] += not_started
        return {
            "ok": len(samples),
            "failed": sum(errors.values()),
            "errors": dict(errors),
            "retried": dict(retried),
            "samples": samples,
            "lag_p99_ms": self._lag_p99(),
            "elapsed_s": round(time.monotonic() - started, 3),
        }

    async def ping_burst(self, cmd: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + float(cmd["timeout_s"])
        socks = self.socks.get(cmd["tag"], [])[: int(cmd["count"])]
        pings, rate = int(cmd["pings"]), float(cmd["rate"])
        sent = 0

        async def one(sock: Sock, offset: float) -> None:
            nonlocal sent
            await asyncio.sleep(offset)
            for k in range(pings):
                if time.monotonic() > deadline or sock.ws.closed:
                    return
                await sock.ws.send_str(json.dumps({"type": "ping", "ts": time.monotonic() * 1000}))
                sent += 1
                self.pings += 1
                await asyncio.sleep(1 / rate)

        await asyncio.gather(*(one(s, (i % 100) / 100 / rate) for i, s in enumerate(socks)), return_exceptions=True)
        return {"sent": sent, "elapsed_s": round(time.monotonic() - started, 3)}

    def _lag_p99(self) -> float | None:
        value = pct(self.lag.take(), 99)
        return None if value is None else round(value, 2)

    def stats(self, coverage: bool = False) -> dict[str, Any]:
        rtt = self.rtt_ms
        out = {
            "sockets": sum(1 for socks in self.socks.values() for s in socks if not s.ws.closed),
            "pings": self.pings,
            "pongs": self.pongs,
            "messages": self.messages,
            "closed_by_server": self.closed_by_server,
            "rtt_ms": [pct(rtt, 50), pct(rtt, 99)],
            "rtt_n": len(rtt),
            "types": dict(self.types),
            "lag_p99_ms": self._lag_p99(),
        }
        if coverage:
            # Per open socket: its room and how many of the room's participants it knows of
            # (its snapshot, itself included, plus everyone announced since).
            out["coverage"] = [
                [sock.room, len(sock.snapshot | sock.announced)]
                for socks in self.socks.values() for sock in socks if not sock.ws.closed
            ]
        self.rtt_ms = []
        return out

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + float(cmd["timeout_s"])
        socks = self.socks.pop(cmd["tag"], [])
        leave = bool(cmd.get("leave", True))
        queue: asyncio.Queue[Sock] = asyncio.Queue()
        for s in socks:
            queue.put_nowait(s)
        left = 0

        async def runner() -> None:
            nonlocal left
            while time.monotonic() < deadline:
                try:
                    sock = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    if leave and not sock.ws.closed:
                        await sock.ws.send_str(json.dumps({"type": "leave", "id": "l"}))
                        # The server answers `left` and closes with 1000; the reader sees it.
                        if sock.reader is not None:
                            wait = min(LEAVE_WAIT_S, max(0.1, deadline - time.monotonic()))
                            await asyncio.wait_for(asyncio.shield(sock.reader), wait)
                        left += 1
                except Exception:
                    pass
                await self._abort(sock)

        await asyncio.gather(*(runner() for _ in range(max(1, int(cmd.get("concurrency", 50))))))
        # Out of time: the rest just close, so no socket outlives the command.
        unleft = queue.qsize()
        while not queue.empty():
            await self._abort(queue.get_nowait())
        return {"closed": len(socks), "left": left, "closed_without_leave": unleft,
                "elapsed_s": round(time.monotonic() - started, 3)}

    async def _abort(self, sock: Sock) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sock.ws.close(), 2.0)
        if sock.reader is not None:
            sock.reader.cancel()

    async def shutdown(self) -> None:
        self._stopping = True
        self._pinger.cancel()
        self.lag.stop()
        for socks in self.socks.values():
            for s in socks:
                if s.reader is not None:
                    s.reader.cancel()
        await self.http.close()


async def worker_main(secret: str) -> int:
    raise_nofile()
    pipe = await ParentPipe.open()
    worker = Worker(secret)
    pipe.emit({"ready": True})
    try:
        while (cmd := await pipe.command()) is not None:
            kind = cmd["cmd"]
            if kind == "exit":
                pipe.emit({"bye": True})
                return 0
            if kind == "join":
                pipe.emit(await worker.join(cmd))
            elif kind == "ping_burst":
                pipe.emit(await worker.ping_burst(cmd))
            elif kind == "stats":
                pipe.emit(worker.stats(bool(cmd.get("coverage"))))
            elif kind == "close":
                pipe.emit(await worker.close(cmd))
            else:
                pipe.emit({"error": f"unknown command {kind}"})
        return 0
    finally:
        await worker.shutdown()


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m bench.sigload", description="see bench/signalling.py").parse_args(argv)
    # The token secret comes in the environment, not argv (which `ps` shows).
    return asyncio.run(worker_main(os.environ["VZ_BENCH_SECRET"]))


if __name__ == "__main__":
    sys.exit(main())
