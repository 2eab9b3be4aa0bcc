"""The coordinator's pages over a city's year, and what attendance adds to a join.

    python -m bench.engagement            # 60 requests per page and 100 joins of each kind
    python -m bench.engagement --quick    # 15 requests per page, 30 joins of each kind

For each backend (embedded SQLite; a private redis-server from bench/redis_server.py) the
bench seeds 2,000 seniors (each enrolled in one of 20 activities of three weekly slots:
60 occurrences a week), 2,000 kiosks (some offline, some with a failed self-test), and a
year of attendance: about 22 seniors per occurrence and 400 family calls a week, one in
seven seniors drifting away in the last weeks. The last two weeks go through the real
recording path (Store.attend / depart); older weeks are written as finished logs built by
the same merge rules. Then a logged-in coordinator fetches "Vandaag" (/admin), the
reach-out list (/admin/reach-out) and the trends page (/admin/trends, 13 weeks; 52 weeks
reported too) over HTTP from a real server in this process; p95 per page, target 200 ms.

Join cost (Redis): the server counts its own Redis round trips per connection task
(every `execute_command` and every pipeline `execute` is one). Seniors say hello and join
an activity room (attendance recorded) and, interleaved in the same run, a plain room with
no activity (nothing recorded, the join as it was before attendance); the difference in
round trips per join is `join_extra_redis_roundtrips` (target ≤ 1). The run exits 1 if the
activity joins recorded no attendance or the plain joins made no round trips: then it
measured the wrong thing.

Final line, JSON: today_p95_ms, reach_out_p95_ms, trends_p95_ms (worst of the two
backends), join_extra_redis_roundtrips.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.appkeys import ISSUER_KEY, SETTINGS_KEY, STORE_KEY
from server.attendance import Attendance, anonymous_member, occurrences_on
from server.config import Settings
from server.directory import DISTRICTS, Account, Activity, Kiosk, Senior
from server.schedule import AMSTERDAM, WEEKDAYS
from server.store import Store
from server.store.base import AttendanceLimits, attend_in, depart_in
from web.auth import hash_password

from .machine import describe
from .redis_server import RedisServer

SENIORS = 2000
ACTIVITIES = 20
SLOTS_PER_ACTIVITY = 3
PER_OCCURRENCE = 22
CALLS_PER_WEEK = 400
WEEKS = 52
LIVE_WEEKS = 2
DRIFTING = 1 / 7
TARGET_MS = 200.0
PASSWORD = "bench password 1234"


def _activities() -> list[Activity]:
    rng = random.Random(7)
    found = []
    for a in range(ACTIVITIES):
        days = rng.sample(range(7), SLOTS_PER_ACTIVITY)
        slots = [{"weekday": WEEKDAYS[d], "start": f"{9 + (a % 8)}:{'30' if a % 2 else '00'}", "duration_min": 60} for d in days]
        enrolled = [f"senior-{i:04d}" for i in range(a, SENIORS, ACTIVITIES)]
        found.append(Activity(id=f"activity-{a:02d}", title=f"Activiteit {a:02d}", slots=slots, enrolled=enrolled, capacity=100))
    return found


async def seed(app: Any, now: float) -> dict[str, int]:
    store: Store = app[STORE_KEY]
    settings: Settings = app[SETTINGS_KEY]
    rng = random.Random(11)
    seniors = [
        Senior(id=f"senior-{i:04d}", name=f"Senior {i:04d}", district=DISTRICTS[i % len(DISTRICTS)] if i % 9 else "",
               phone=f"036 {i:07d}" if i % 3 == 0 else "", named_overviews=i % 20 != 0)
        for i in range(SENIORS)
    ]
    drifting = {s.id for s in seniors if rng.random() < DRIFTING}
    for senior in seniors:
        await store.put_record("people", senior.id, senior.__dict__)
    coordinator = Account(id="staff-bench", name="Bench", username="bench", role="coordinator",
                          password_hash=await hash_password(PASSWORD))
    await store.put_record("people", coordinator.id, coordinator.__dict__)
    failed = {"at": now - 3600, "result": {"ok": False, "checks": {
        "microphone": {"status": "failed", "message": {"nl": "Geen geluid.", "en": "No sound."}}}}}
    for i, senior in enumerate(seniors):
        kiosk = Kiosk(id=f"kiosk-{i:04d}", senior_id=senior.id, paired_at=now - 90 * 86400,
                      last_seen=now - (3 * 86400 if i % 25 == 0 else 600), software_version="0.1.0",
                      last_selftest=failed if i % 40 == 0 else None)
        await store.put_record("kiosks", kiosk.id, kiosk.__dict__)
    activities = _activities()
    for activity in activities:
        await store.put_record("activities", activity.id, activity.__dict__)

    attendance = Attendance(settings, store)
    limits = AttendanceLimits(settings.attendance_merge_gap_s, settings.attendance_max_members, settings.attendance_max_intervals)
    today = dt.datetime.fromtimestamp(now, AMSTERDAM).date()
    logs = live = calls = 0
    for days_ago in range(WEEKS * 7, -1, -1):
        day = today - dt.timedelta(days=days_ago)
        recent = days_ago < LIVE_WEEKS * 7
        for activity in activities:
            for occurrence in occurrences_on(activity, day):
                if occurrence.end > now:
                    continue
                pool = [s for s in activity.enrolled if not (days_ago < 21 and s in drifting)]
                present = rng.sample(pool, min(PER_OCCURRENCE, len(pool)))
                skeleton = {"id": occurrence.log_id, "kind": "activity", "activity_id": activity.id,
                            "start": occurrence.start, "end": occurrence.end, "scheduled": True}
                stays = [(s, "senior", occurrence.start + rng.uniform(-300, 600), rng.uniform(20, 60) * 60) for s in present]
                stays += [(anonymous_member(occurrence.log_id, f"guest-{g}"), "family", occurrence.start + 60, 1800)
                          for g in range(rng.randrange(3))]
                if recent:
                    for member, role, start, length in stays:
                        await store.attend(skeleton, member, role, round(start, 3), limits)
                        await store.depart(skeleton["id"], member, round(start + length, 3))
                    live += len(stays)
                else:
                    log = dict(skeleton)
                    for member, role, start, length in stays:
                        attend_in(log, member, role, round(start, 3), limits)
                        depart_in(log, member, round(start + length, 3))
                    await store.replace_attendance(log)
                logs += 1
        for c in range(CALLS_PER_WEEK // 7):
            senior = f"senior-{rng.randrange(SENIORS):04d}"
            if days_ago < 21 and senior in drifting:
                continue
            start = dt.datetime.combine(day, dt.time(10 + c % 9, c % 60), AMSTERDAM).timestamp()
            if start > now:
                continue
            room = f"call-bench{days_ago}x{c}"
            for member, role in ((senior, "senior"), (f"contact-{senior}", "family")):
                if recent:
                    await attendance.joined(room, None, member, role, start, at=start)
                    await attendance.left(room, None, member, role, start, at=start + 900)
            if not recent:
                log = {"id": f"c:bench{days_ago}x{c}", "kind": "call", "start": start, "end": None}
                attend_in(log, senior, "senior", start, limits)
                attend_in(log, f"contact-{senior}", "family", start + 5, limits)
                depart_in(log, senior, start + 900)
                depart_in(log, f"contact-{senior}", start + 895)
                await store.replace_attendance(log)
            calls += 1
    return {"seniors": SENIORS, "activities": ACTIVITIES, "occurrences": logs, "family_calls": calls,
            "stays_through_attend": live, "drifting": len(drifting)}


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


async def pages(url: str, requests: int) -> dict[str, Any]:
    # unsafe: the server is an IP address (127.0.0.1), whose cookies aiohttp drops by default.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        # The login form needs its CSRF token and the session cookie from the login page.
        async with http.get(url + "/login") as r:
            body = await r.text()
        token = body.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        async with http.post(url + "/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token},
                             allow_redirects=False) as r:
            if r.status != 303:
                raise SystemExit(f"login failed: {r.status}")
        results: dict[str, Any] = {}
        for name, path, check in (
            ("today", "/admin", "Senioren om te bellen"),
            ("reach_out", "/admin/reach-out", "reach-out-senior-"),
            ("trends", "/admin/trends", "<svg"),
            ("trends_52_weeks", "/admin/trends?weeks=52", "<svg"),
        ):
            samples, cpu = [], []
            for i in range(requests + 2):
                started, cpu_started = time.perf_counter(), time.process_time()
                async with http.get(url + path) as r:
                    body = await r.text()
                elapsed = (time.perf_counter() - started) * 1000
                cpu_ms = (time.process_time() - cpu_started) * 1000
                if r.status != 200 or check not in body:
                    raise SystemExit(f"{path}: {r.status}, {check!r} missing: measured the wrong page")
                if i >= 2:  # two warm-up requests
                    samples.append(elapsed)
                    cpu.append(cpu_ms)
            # CPU: this process (server and client share it) per request; on a shared, busy
            # machine the wall time also holds the wait for a core, the CPU time does not.
            results[name] = {"p50_ms": round(sorted(samples)[len(samples) // 2], 1), "p95_ms": round(p95(samples), 1),
                             "cpu_p95_ms": round(p95(cpu), 1), "bytes": len(body)}
        return results


class RoundTrips:
    """Counts the Redis round trips each asyncio task makes (a connection's handler is one task)."""

    def __init__(self) -> None:
        self.by_task: collections.Counter[asyncio.Task[Any] | None] = collections.Counter()

    def install(self) -> None:
        from redis.asyncio.client import Pipeline, Redis

        counter = self.by_task
        execute_command, execute = Redis.execute_command, Pipeline.execute

        async def counted_command(client: Any, *args: Any, **kwargs: Any) -> Any:
            counter[asyncio.current_task()] += 1
            return await execute_command(client, *args, **kwargs)

        async def counted_pipeline(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            counter[asyncio.current_task()] += 1
            return await execute(pipe, *args, **kwargs)

        Redis.execute_command = counted_command  # type: ignore[method-assign]
        Pipeline.execute = counted_pipeline  # type: ignore[method-assign]


async def joins(url: str, app: Any, trips: RoundTrips, count: int) -> dict[str, Any]:
    issuer = app[ISSUER_KEY]
    store: Store = app[STORE_KEY]
    per_kind: dict[str, list[int]] = {"activity": [], "plain": []}
    async with aiohttp.ClientSession() as http:
        for i in range(2 * count + 4):
            kind = "activity" if i % 2 == 0 else "plain"
            room = f"activity-{i % 5:02d}" if kind == "activity" else f"bench-plain-{i % 5}"
            senior = f"senior-{(i % 5) + 5 * ACTIVITIES * (i // 10 % 10):04d}" if kind == "activity" else f"plain-{i}"
            before = set(trips.by_task)
            ws = await http.ws_connect(url + "/ws")
            token = issuer.issue(role="senior", room=room, name="Bench", participant_id=senior)
            await ws.send_json({"type": "hello", "v": 1, "token": token})
            while (await ws.receive_json())["type"] != "welcome":
                pass
            await ws.send_json({"type": "join", "room": room})
            while (message := await ws.receive_json())["type"] != "joined":
                if message["type"] == "error":
                    raise SystemExit(f"join failed: {message}")
            await asyncio.sleep(0.05)  # the stay is recorded right after `joined` is sent
            handlers = [t for t in trips.by_task if t not in before and t is not None and "RequestHandler" in repr(t.get_coro())]
            if len(handlers) != 1:
                raise SystemExit(f"expected one server connection task, found {len(handlers)}: measured the wrong thing")
            if i >= 4:  # warm-up: script loading, caches
                per_kind[kind].append(trips.by_task[handlers[0]])
            await ws.send_json({"type": "leave"})
            await ws.close()
    logs = await store.attendance_between(time.time() - 86400, time.time() + 86400)
    recorded = sum(1 for log in logs if log.get("kind") == "activity" and any(
        m.startswith("senior-") and len(e["iv"]) >= 1 for m, e in log.get("members", {}).items()))
    mean = {k: sum(v) / len(v) for k, v in per_kind.items()}
    if mean["plain"] <= 0 or recorded == 0:
        raise SystemExit(f"plain joins made {mean['plain']} round trips, {recorded} logs recorded: measured the wrong thing")
    return {"activity_join_roundtrips": round(mean["activity"], 2), "plain_join_roundtrips": round(mean["plain"], 2),
            "extra": round(mean["activity"] - mean["plain"], 2), "joins_each": count,
            "activity_min_max": [min(per_kind["activity"]), max(per_kind["activity"])],
            "plain_min_max": [min(per_kind["plain"]), max(per_kind["plain"])]}


async def run_backend(name: str, args: argparse.Namespace, redis_url: str, trips: RoundTrips | None) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"vz-bench-engagement-{name}-"))
    settings = Settings(data_dir=data_dir, token_secret="bench-" + "x" * 40, redis_url=redis_url,
                        redis_prefix=f"vzbench:{int(time.time())}:", messages_per_second=1000.0, message_burst=1000)
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        started = time.perf_counter()
        seeded = await seed(app, time.time())
        seeded["seed_s"] = round(time.perf_counter() - started, 1)
        print(f"[{name}] seeded {json.dumps(seeded)}", flush=True)
        result: dict[str, Any] = {"seeded": seeded, "pages": await pages(url, args.requests)}
        print(f"[{name}] pages {json.dumps(result['pages'])}", flush=True)
        if trips is not None:
            result["joins"] = await joins(url, app, trips, args.joins)
            print(f"[{name}] joins {json.dumps(result['joins'])}", flush=True)
        return result
    finally:
        await server.close()


async def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engagement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and joins (same data)")
    args = parser.parse_args()
    args.requests = 15 if args.quick else 60
    args.joins = 30 if args.quick else 100
    command = "python -m bench.engagement" + (" --quick" if args.quick else "")
    print(f"$ {command}\nmachine: {json.dumps(describe())}", flush=True)
    trips = RoundTrips()
    trips.install()
    results = {"embedded": await run_backend("embedded", args, "", None)}
    with RedisServer() as redis:
        results["redis"] = await run_backend("redis", args, redis.url, trips)
    worst = {page: max(results[b]["pages"][page]["p95_ms"] for b in results) for page in ("today", "reach_out", "trends")}
    print(f"\nload average at the end: {os.getloadavg()}")
    print("page p95 (ms)     embedded wall / cpu    redis wall / cpu    target (wall)")
    for page in ("today", "reach_out", "trends", "trends_52_weeks"):
        e, r = results["embedded"]["pages"][page], results["redis"]["pages"][page]
        print(f"  {page:16s} {e['p95_ms']:8.1f} / {e['cpu_p95_ms']:6.1f}    {r['p95_ms']:8.1f} / {r['cpu_p95_ms']:6.1f}"
              f"    {'≤ 200' if page != 'trends_52_weeks' else '(info)'}")
    joins_result = results["redis"]["joins"]
    print(f"Redis round trips per hello+join: activity {joins_result['activity_join_roundtrips']}, "
          f"plain room (no attendance) {joins_result['plain_join_roundtrips']}: +{joins_result['extra']} (target ≤ 1)")
    print(json.dumps({
        "today_p95_ms": worst["today"],
        "reach_out_p95_ms": worst["reach_out"],
        "trends_p95_ms": worst["trends"],
        "join_extra_redis_roundtrips": joins_result["extra"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
