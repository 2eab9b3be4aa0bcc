"""Faults mid-call on real processes: Redis restarts, the room's node killed, drain (issue 16).

    python -m bench.faults --quick                                  # ≈ 2 min
    python -m bench.faults                                          # longer outages and waits
    python -m bench.faults --quick --baseline /path/to/old/checkout # the same faults on old servers

Two `verzilvering serve` nodes (n1, n2; production timeouts) share a private redis-server
on a free port (bench/redis_server.py, started and stopped by the bench; never the shared
one). Room "gym" is placed on n1. Three clients, in the roles of the issue:

- the host: `RoomConnection` (what `verzilvering-kiosk run` uses for a room) straight to
  n1, then n2 (two addresses, tried in order);
- a senior: the same, through n2 first, so its signalling is relayed to n1 (no nginx: the
  client connects to the non-owner node directly, which is what makes it relayed);
- a kiosk running `verzilvering-kiosk join --server n2 --server n1` as its own process,
  receiving only (its report gives its longest video gap).

Host and senior publish 160x120@15 test video; the video gap is measured from frame
arrival times (the longest wait between two decoded frames from the other side).

Faults, each on a fresh cluster and a fresh redis-server:
1. redis-server stopped for the outage time and started again, without persistence;
2. the same with appendonly yes (the node set survives, the heartbeat keys expire);
3. kill -9 of the room's node (n1), then a wait for ghosts;
4. SIGTERM (drain) of the room's node.

Final JSON line (contract): owner_kill_gap_s (worst client), redis_restart_gap_s (worst
client, both persistence modes), drain_exit_s (from the last client's move to the node's
exit), ghost_participants (after the kill), false_reaps (nodes reaped or found
unreachable during Redis restarts), missing_tracks (tracks not listed after the restarts,
in Redis or in a client's list). Exit 2 when the setup was not what it claims (no media
before a fault, the room not on n1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.machine import describe
from bench.redis_server import RedisServer
from bench.server_process import SECRET, Node
from bench.waiting import until
from kiosk_client.room import RoomConnection, Sources
from server.rtc.ice import restrict_host_addresses
from server.store.redis import RedisStore
from signaling.tokens import TokenIssuer

REPO = Path(__file__).resolve().parent.parent
ROOM = "gym"  # placed on n1 by the placement hash when both nodes are equally loaded
LOOPBACK = ["127.0.0.1"]
# The defaults of server/config.py, over the test ones of bench/server_process.py's Node.
PRODUCTION_TIMEOUTS = {"node_heartbeat_s": "1.0", "node_timeout_s": "5.0", "drain_timeout_s": "30"}
# Video gaps after a node is killed or drained are measured over this many seconds.
RECOVERY_WINDOW_S = 10.0


class WrongMeasurement(Exception):
    """The setup was not what the figures claim."""


@dataclass
class Person:
    """A self-healing room client that records when video from each other person arrived."""

    name: str
    participant_id: str
    room: RoomConnection
    video_at: dict[str, list[float]] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)

    def gap(self, source: str, start: float, end: float) -> float:
        """The longest wait for the next video frame from `source` within [start, end]."""
        times = [t for t in self.video_at.get(source, []) if t >= start - 2.0 and t <= end]
        if not times:
            return end - start
        points = [*times, end]
        return max(b - a for a, b in zip(points, points[1:]))

    def frames_since(self, source: str, since: float) -> int:
        return sum(1 for t in self.video_at.get(source, []) if t >= since)


def make_person(servers: list[str], token: str, name: str, participant_id: str) -> Person:
    person: Person

    def on_event(event: str, **data: Any) -> None:
        person.events.append((time.monotonic(), event))

    def on_frame(pid: str, kind: str, frame: Any) -> None:
        if kind == "video" and pid != "self":
            person.video_at.setdefault(pid, []).append(time.monotonic())

    room = RoomConnection(
        servers, token,
        sources=Sources("testsrc", "tone", width=160, height=120, fps=15, self_view=False),
        on_event=on_event, on_frame=on_frame,
    )
    person = Person(name, participant_id, room)
    return person


@dataclass
class Scenario:
    tree: Path
    secret: str
    workdir: Path
    redis: RedisServer
    prefix: str
    nodes: list[Node]
    people: list[Person]
    kiosk: subprocess.Popen[bytes] | None
    kiosk_report: Path
    kiosk_started: float

    @property
    def host(self) -> Person:
        return self.people[0]

    @property
    def senior(self) -> Person:
        return self.people[1]


async def start_scenario(tree: Path, workdir: Path, appendonly: bool, kiosk_s: float) -> Scenario:
    workdir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(appendonly=appendonly).start()
    secret = SECRET
    prefix = f"vzbench:{uuid.uuid4().hex[:8]}:"
    nodes = [Node(name, redis.url, prefix, workdir, PRODUCTION_TIMEOUTS, tree, secret=secret) for name in ("n1", "n2")]
    n1, n2 = nodes
    issuer = TokenIssuer(secret)
    host = make_person([n1.url, n2.url], issuer.issue(role="host", room=ROOM, name="Host", participant_id="p-host"),
                       "host", "p-host")
    senior = make_person([n2.url, n1.url], issuer.issue(role="senior", room=ROOM, name="Senior", participant_id="p-senior"),
                         "senior (relayed)", "p-senior")
    host.room.start()
    await _until(lambda: any(e == "joined" for _, e in host.events), 20, "the host to join")
    senior.room.start()
    report = workdir / "kiosk-join.json"
    kiosk_token = issuer.issue(role="senior", room=ROOM, name="Kiosk", participant_id="p-kiosk")
    kiosk = subprocess.Popen(
        [sys.executable, "-m", "kiosk_client.cli", "join", "--server", n2.url, "--server", n1.url,
         "--token", kiosk_token, "--video", "none", "--audio", "none", "--duration", str(kiosk_s),
         "--report", str(report)],
        cwd=tree, stdout=open(workdir / "kiosk-join.log", "wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "VERZILVERING_MEDIA_ADDRESSES": json.dumps(LOOPBACK)},
    )
    scenario = Scenario(tree, secret, workdir, redis, prefix, nodes, [host, senior], kiosk, report, time.monotonic())
    now = time.monotonic()
    await _until(
        lambda: host.frames_since("p-senior", now) > 15 and senior.frames_since("p-host", now) > 15,
        30, "video both ways before the fault",
    )
    store = await open_store(scenario)
    try:
        owner = await store.room_owner(ROOM)
    finally:
        await store.close()
    if owner != "n1":
        raise WrongMeasurement(f"room {ROOM} is on {owner}, not n1")
    return scenario


def log_count(node: Node, text: str) -> int:
    return node.log.read_text(errors="replace").count(text)


async def open_store(scenario: Scenario) -> RedisStore:
    store = RedisStore(scenario.redis.url, node_id="bench-probe", prefix=scenario.prefix)
    await store.open()
    return store


async def stop_scenario(scenario: Scenario) -> None:
    for person in scenario.people:
        await person.room.stop()
    if scenario.kiosk is not None and scenario.kiosk.poll() is None:
        scenario.kiosk.kill()
        scenario.kiosk.wait()
    for node in scenario.nodes:
        node.stop()
    scenario.redis.stop()


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    if not await until(check, timeout):
        raise WrongMeasurement(f"timed out after {timeout:.0f} s waiting for {what}")


def kiosk_result(scenario: Scenario) -> dict[str, Any]:
    """The `join` process's own report once it has exited (its --duration ran out)."""
    if scenario.kiosk is None:
        return {}
    try:
        scenario.kiosk.wait(timeout=max(0.0, scenario.kiosk_started + 120 - time.monotonic()))
    except subprocess.TimeoutExpired:
        scenario.kiosk.kill()
        scenario.kiosk.wait()
    try:
        seen = json.loads(scenario.kiosk_report.read_text())["participants"].get("p-host", {})
    except (OSError, ValueError):
        return {"exit": scenario.kiosk.returncode, "frames": 0}
    return {
        "exit": scenario.kiosk.returncode,
        "frames": seen.get("video_frames", 0),
        # Older `join` reports had no gap: none known.
        "gap_s": round(seen["longest_video_gap_ms"] / 1000, 2) if "longest_video_gap_ms" in seen else None,
    }


async def new_join_after(url: str, secret: str, deadline_s: float) -> float | None:
    """Seconds until a new participant's hello + join through `url` succeeds (retrying
    `unavailable`), or None within the deadline."""
    token = TokenIssuer(secret).issue(role="senior", room=ROOM, name="Newcomer", participant_id="p-new")
    start = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - start < deadline_s:
            try:
                async with http.ws_connect(url + "/ws") as ws:
                    await ws.send_json({"type": "hello", "v": 1, "token": token})
                    stage = "hello"
                    while True:
                        reply = await ws.receive_json(timeout=max(0.1, deadline_s - (time.monotonic() - start)))
                        if reply["type"] == "welcome" and stage == "hello":
                            stage = "join"
                            await ws.send_json({"type": "join", "room": ROOM})
                        elif reply["type"] == "joined":
                            took = time.monotonic() - start
                            await ws.send_json({"type": "leave"})
                            return took
                        elif reply["type"] == "error":
                            break
            except (aiohttp.ClientError, asyncio.TimeoutError, TypeError, ValueError):
                pass
            await asyncio.sleep(0.1)
    return None


# --- the faults ------------------------------------------------------------------------------


async def redis_restart(tree: Path, workdir: Path, appendonly: bool, outage_s: float, after_s: float) -> dict[str, Any]:
    label = "appendonly yes" if appendonly else "no persistence"
    kiosk_s = 12 + outage_s + after_s
    scenario = await start_scenario(tree, workdir, appendonly, kiosk_s)
    host, senior = scenario.host, scenario.senior
    try:
        await asyncio.sleep(2.0)
        halted = time.monotonic()
        scenario.redis.halt()
        await asyncio.sleep(outage_s)
        scenario.redis.restart()
        back = time.monotonic()
        join_s = await new_join_after(scenario.nodes[1].url, scenario.secret, 10.0)
        await asyncio.sleep(max(0.0, after_s - (time.monotonic() - back)))
        end = time.monotonic()
        gaps = {
            "host ← senior": host.gap("p-senior", halted, end),
            "senior ← host (relayed)": senior.gap("p-host", halted, end),
        }
        # The same clients' longest gap in the seconds before the fault: what the shared
        # CPU alone costs (the floor under every figure here).
        reference = max(host.gap("p-senior", halted - 2.0, halted), senior.gap("p-host", halted - 2.0, halted))
        store = await open_store(scenario)
        try:
            listed = {(t.participant_id, t.kind) for t in await store.list_tracks(ROOM)}
            live = sorted(await store.live_nodes())
        finally:
            await store.close()
        expected = {(p, k) for p in ("p-host", "p-senior") for k in ("audio", "video")}
        missing_store = sorted(expected - listed)
        missing_clients = [
            (person.name, t)
            for person in (host, senior)
            for t in sorted(expected)
            if t[0] != person.participant_id
            and t not in {(r.participant_id, r.kind) for r in person.room.tracks.values()}
        ]
        reaps = sum(log_count(n, "is gone; removing its participants") for n in scenario.nodes)
        unreachable = sum(log_count(n, "does not listen on its channel") for n in scenario.nodes)
        kiosk = kiosk_result(scenario)
        if kiosk.get("gap_s") is not None:
            gaps["kiosk join ← host (relayed)"] = kiosk["gap_s"]
        rebuilds = {p.name: p.room.rebuilds for p in (host, senior)}
        print(f"\nRedis restart, {label}: outage {outage_s:.0f} s (longest gap in the 2 s before: {reference:.2f} s)")
        for who, gap in gaps.items():
            print(f"  longest video gap {who:28s} {gap:6.2f} s")
        print(f"  kiosk join process: {kiosk}")
        print(f"  rebuilds: {rebuilds}")
        print(f"  new join through n2 after Redis returned: {join_s if join_s is None else round(join_s, 2)} s")
        print(f"  tracks missing: in Redis {missing_store}, in client lists {missing_clients}")
        print(f"  nodes live afterwards {live}; reaps {reaps}; found unreachable {unreachable}")
        return {
            "gap_s": max(gaps.values()),
            "missing_tracks": len(missing_store) + len(missing_clients),
            "false_reaps": reaps + unreachable,
            "join_s": join_s,
        }
    finally:
        await stop_scenario(scenario)


async def owner_kill(tree: Path, workdir: Path, ghost_wait_s: float) -> dict[str, Any]:
    scenario = await start_scenario(tree, workdir, False, 14 + ghost_wait_s)
    host, senior = scenario.host, scenario.senior
    try:
        await asyncio.sleep(2.0)
        killed = time.monotonic()
        reference = max(host.gap("p-senior", killed - 2.0, killed), senior.gap("p-host", killed - 2.0, killed))
        scenario.nodes[0].process.send_signal(signal.SIGKILL)
        scenario.nodes[0].process.wait()
        # Frames in flight at the kill still arrive after it: the gap is the longest wait
        # between frames over a window well past any recovery.
        window = killed + RECOVERY_WINDOW_S
        await asyncio.sleep(RECOVERY_WINDOW_S)
        gaps = {
            "host ← senior": host.gap("p-senior", killed, window),
            "senior ← host": senior.gap("p-host", killed, window),
        }
        await asyncio.sleep(max(0.0, ghost_wait_s - RECOVERY_WINDOW_S))
        store = await open_store(scenario)
        try:
            listed = [(p.participant_id, p.node_id) for p in await store.list_participants(ROOM)]
        finally:
            await store.close()
        present = {"p-host", "p-senior", "p-kiosk"}
        ghosts_store = [p for p in listed if p[0] not in present or p[1] == "n1"]
        ghosts_clients = [
            (person.name, pid) for person in (host, senior) for pid in person.room.participants if pid not in present
        ]
        kiosk = kiosk_result(scenario)
        if kiosk.get("gap_s") is not None:
            gaps["kiosk join ← host"] = kiosk["gap_s"]
        print(f"\nkill -9 of the room's node (n1) (longest gap in the 2 s before: {reference:.2f} s)")
        for who, gap in gaps.items():
            print(f"  video gap {who:20s} {gap:6.2f} s")
        print(f"  kiosk join process: {kiosk}")
        print(f"  rebuilds: { {p.name: p.room.rebuilds for p in (host, senior)} }")
        print(f"  after {ghost_wait_s:.0f} s: listed {sorted(listed)}; ghosts in Redis {ghosts_store}, in client lists {ghosts_clients}")
        return {"gap_s": max(gaps.values()), "ghosts": len(ghosts_store) + len(ghosts_clients)}
    finally:
        await stop_scenario(scenario)


async def drain(tree: Path, workdir: Path) -> dict[str, Any]:
    scenario = await start_scenario(tree, workdir, False, 40)
    host, senior = scenario.host, scenario.senior
    n1 = scenario.nodes[0]
    try:
        await asyncio.sleep(2.0)
        signalled = time.monotonic()
        n1.process.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, n1.process.wait)
        exited = time.monotonic()
        await asyncio.sleep(max(0.0, signalled + RECOVERY_WINDOW_S - time.monotonic()))
        # A client has moved when it was told to reconnect (its session on n1 ended there).
        moved = [t for p in (host, senior) for t, e in p.events if e == "reconnecting" and t >= signalled]
        last_moved = max(moved) if moved else signalled
        window = signalled + RECOVERY_WINDOW_S
        gaps = {"host ← senior": host.gap("p-senior", signalled, window), "senior ← host": senior.gap("p-host", signalled, window)}
        print("\nSIGTERM (drain) of the room's node (n1)")
        print(f"  exit after SIGTERM {exited - signalled:.2f} s; after the last client moved {exited - last_moved:.2f} s")
        for who, gap in gaps.items():
            print(f"  video gap {who:20s} {gap:6.2f} s")
        return {"exit_s": max(0.0, exited - last_moved), "gap_s": max(gaps.values())}
    finally:
        await stop_scenario(scenario)


async def run_tree(tree: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    outage = 7.0 if args.quick else 12.0
    after = 8.0 if args.quick else 15.0
    ghost_wait = 15.0 if args.quick else 30.0
    plain = await redis_restart(tree, workdir / "restart-plain", False, outage, after)
    aof = await redis_restart(tree, workdir / "restart-aof", True, outage, after)
    kill = await owner_kill(tree, workdir / "kill", ghost_wait)
    drained = await drain(tree, workdir / "drain")
    joins = [r["join_s"] for r in (plain, aof)]
    print(f"\nnew joins after Redis returned: {joins} s (target ≤ 2)")
    return {
        "owner_kill_gap_s": round(kill["gap_s"], 2),
        "redis_restart_gap_s": round(max(plain["gap_s"], aof["gap_s"]), 2),
        "drain_exit_s": round(drained["exit_s"], 2),
        "ghost_participants": kill["ghosts"],
        "false_reaps": plain["false_reaps"] + aof["false_reaps"],
        "missing_tracks": plain["missing_tracks"] + aof["missing_tracks"],
    }


async def main_async(args: argparse.Namespace) -> int:
    restrict_host_addresses(LOOPBACK)
    print("command: python -m bench.faults " + " ".join(sys.argv[1:]))
    print("machine: " + json.dumps(describe()))
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        baseline = None
        if args.baseline is not None:
            print(f"\n=== baseline: servers and `join` from {args.baseline} ===")
            baseline = await run_tree(args.baseline.resolve(), args, Path(tmp) / "baseline")
            print("baseline: " + json.dumps(baseline))
        print(f"\n=== this tree: {REPO} ===")
        result = await run_tree(REPO, args, Path(tmp) / "current")
    if baseline is not None:
        print("\nfigure                 baseline   now    ratio now/baseline")
        for key, value in result.items():
            old = baseline[key]
            ratio = f"{value / old:.2f}" if old else "-"
            print(f"{key:22s} {old:8} {value:7}  {ratio}")
    print(json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter outages and waits (≈ 2 min per tree)")
    parser.add_argument("--baseline", type=Path, help="a checkout of older code (servers and `join`) to run the same faults on first")
    args = parser.parse_args()
    try:
        return asyncio.run(main_async(args))
    except WrongMeasurement as exc:
        print(f"bench.faults: measured the wrong thing: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
