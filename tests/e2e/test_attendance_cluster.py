"""Attendance across two real server processes sharing a real Redis, through a kill -9.

The room's owner is killed while three enrolled seniors are in the activity; two come back
through the other node, one does not. Nobody is counted twice, no stay is lost, and the
one who did not come back has their stay closed by the node that reaps the dead one.
And a host on the room's node rings a kiosk whose device channel is on the other node.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from bench.redis_server import RedisServer
from bench.server_process import Node
from server.directory import Activity
from signaling.tokens import TokenIssuer

from tests.browser_helpers import device_socket
from tests.cluster_support import cluster, probe_store, redis_server, start_nodes  # noqa: F401  (fixtures)
from tests.conftest import TEST_SECRET
from tests.support import paired_kiosk

ROOM = "activity-gym"
SENIORS = ("senior-a", "senior-b", "senior-c")


class Kiosk:
    """A senior's signalling as a kiosk does it: join, and join again through another node."""

    def __init__(self, http: aiohttp.ClientSession, senior: str) -> None:
        self.http = http
        self.senior = senior
        self.token = TokenIssuer(TEST_SECRET).issue(role="senior", room=ROOM, name=senior, participant_id=senior)
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def join(self, url: str) -> None:
        self.ws = await self.http.ws_connect(url + "/ws")
        await self.ws.send_str(json.dumps({"type": "hello", "v": 1, "token": self.token}))
        await self._expect("welcome")
        await self.ws.send_str(json.dumps({"type": "join", "room": ROOM}))
        await self._expect("joined")

    async def _expect(self, kind: str) -> dict[str, Any]:
        assert self.ws is not None
        while True:
            msg = await self.ws.receive(timeout=20)
            assert msg.type == aiohttp.WSMsgType.TEXT, (kind, msg)
            data = json.loads(msg.data)
            if data.get("type") == kind:
                return data
            assert data.get("type") != "error", data

    async def leave(self) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps({"type": "leave"}))
        await self._expect("left")


async def _log(redis_url: str, prefix: str) -> dict[str, Any] | None:
    async with probe_store(redis_url, prefix) as store:
        logs = await store.attendance_between(0, time.time() + 86400)
    assert len(logs) <= 1, logs
    return logs[0] if logs else None


async def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_kill_9_of_the_rooms_node_loses_no_stay_and_counts_nobody_twice(
    cluster: tuple[list[Node], str], redis_server: RedisServer  # noqa: F811
) -> None:
    (n1, n2), prefix = cluster
    async with probe_store(redis_server.url, prefix, node_id="setup") as setup:
        activity = Activity(id=ROOM, title="Gym", enrolled=list(SENIORS))
        await setup.put_record("activities", ROOM, {**activity.__dict__})

    async with aiohttp.ClientSession() as http:
        a, b, c = (Kiosk(http, s) for s in SENIORS)
        await a.join(n1.url)  # places the room on n1
        await b.join(n2.url)  # relayed to n1
        await c.join(n1.url)
        async def three_stays() -> dict[str, Any] | None:
            log = await _log(redis_server.url, prefix)
            return log if log is not None and len(log.get("members", {})) == len(SENIORS) else None

        # The log exists from the first join on; the third stay is written a moment later.
        before = await _until(three_stays, 10, "three stays")
        assert sorted(before["members"]) == list(SENIORS)
        started = {m: e["iv"][0][0] for m, e in before["members"].items()}

        n1.kill()
        # A and B come back through the surviving node; C's kiosk stays away.
        for kiosk in (a, b):
            for _ in range(60):
                try:
                    await kiosk.join(n2.url)
                    break
                except (AssertionError, aiohttp.ClientError, asyncio.TimeoutError):
                    await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"{kiosk.senior} could not join again")

        async def c_closed() -> dict[str, Any] | None:
            log = await _log(redis_server.url, prefix)
            return log if log and len(log["members"]["senior-c"]["iv"][-1]) == 2 else None

        reaped = await _until(c_closed, 30, "the dead node's stay to be closed by the reaper")
        assert sorted(reaped["members"]) == list(SENIORS)
        for senior in ("senior-a", "senior-b"):
            (stay,) = reaped["members"][senior]["iv"]  # merged: one stay, still open
            assert stay == [started[senior]]
        (c_stay,) = reaped["members"]["senior-c"]["iv"]
        assert c_stay[0] == started["senior-c"] and c_stay[1] > c_stay[0]

        await a.leave()
        await b.leave()

        async def all_closed() -> dict[str, Any] | None:
            log = await _log(redis_server.url, prefix)
            return log if log and all(len(e["iv"][-1]) == 2 for e in log["members"].values()) else None

        final = await _until(all_closed, 10, "every stay closed")
        assert all(len(e["iv"]) == 1 for e in final["members"].values())


async def test_a_host_on_one_node_rings_a_kiosk_on_the_other(
    cluster: tuple[list[Node], str], redis_server: RedisServer  # noqa: F811
) -> None:
    from server.directory import Directory, Senior

    (n1, n2), prefix = cluster
    async with probe_store(redis_server.url, prefix, node_id="setup") as store:
        directory = Directory(store)
        await directory.put(Senior(id="senior-a", name="Mevrouw Jansen"), actor="test")
        await directory.put(Activity(id=ROOM, title="Gym", enrolled=["senior-a"]), actor="test")
        async with aiohttp.ClientSession() as http:
            credential = await paired_kiosk(http, n2.url, store, directory, "senior-a")
            host = await http.ws_connect(n1.url + "/ws")
            token = TokenIssuer(TEST_SECRET).issue(role="host", room=ROOM, name="Ingrid", participant_id="host-1")
            await host.send_json({"type": "hello", "v": 1, "token": token})
            await host.send_json({"type": "join", "room": ROOM})
            while (joined := await host.receive_json(timeout=10))["type"] != "joined":
                pass
            assert joined["enrolled"] == [{"id": "senior-a", "name": "Mevrouw Jansen"}]
            # The kiosk's device channel on the node that does not hold the room.
            owner = await store.room_owner(ROOM)
            other = n2 if owner == "n1" else n1
            assert owner in ("n1", "n2") and other.name != owner
            device = await device_socket(http, other.url, credential)
            await host.send_json({"type": "invite_senior", "senior_id": "senior-a", "id": "ring"})
            while (reply := await host.receive_json(timeout=10))["type"] not in ("invite_sent", "error"):
                pass
            assert reply["type"] == "invite_sent" and reply["kiosks"] == 1, reply
            while (message := await device.receive_json(timeout=10))["type"] != "activity_invite":
                pass
            assert message["activity_id"] == ROOM and message["host"] == "Ingrid"
