"""The anonymous JSON endpoints under load and abuse: pairing starts and family calls are
rate-limited (store counters, every node), pairing codes are found by index, and bodies
that are not plain JSON get a 400 — through the real app, on both store backends."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, STORE_KEY
from server.directory import Contact, Kiosk, Senior
from server.invites import issue_invite, named_secret
from server.pairing import confirm_pairing
from server.store import Store

from tests.conftest import make_settings
from bench.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis() -> Any:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["embedded", "redis"])
def backend(request: Any) -> dict[str, Any]:
    """Settings that put the app on one backend; Redis ones share a fresh prefix."""
    if request.param == "embedded":
        return {}
    return {"redis_url": request.getfixturevalue("redis").url, "redis_prefix": f"vztest:{uuid.uuid4().hex}:"}


async def _nodes(tmp_path: Path, aiohttp_client: Any, backend: dict[str, Any], count: int,
                 **limits: Any) -> list[TestClient]:
    """`count` nodes on Redis (one on the embedded store, which has no cluster)."""
    if not backend:
        count = 1
    clients = []
    for i in range(count):
        settings = make_settings(tmp_path / f"n{i}", node_id=f"n{i}", **backend, **limits)
        clients.append(await aiohttp_client(create_app(settings)))
    return clients


async def _contacts(client: TestClient) -> tuple[str, str]:
    directory = client.app[DIRECTORY_KEY]
    await directory.put(Senior(id="s-1", name="Mevrouw Jansen"), actor="test")
    invites = []
    for contact_id in ("c-sanne", "c-piet"):
        contact = Contact(id=contact_id, senior_id="s-1", name=contact_id)
        await directory.put(contact, actor="test")
        invites.append(issue_invite(named_secret(client.app[SETTINGS_KEY], "invite"), contact))
    return invites[0], invites[1]


async def test_pairing_starts_are_limited_per_client_address_on_every_node(
    tmp_path: Path, aiohttp_client: Any, backend: dict[str, Any]
) -> None:
    clients = await _nodes(tmp_path, aiohttp_client, backend, 2, pairing_start_limit=3,
                           pairing_start_window_s=60, trusted_proxies=("127.0.0.1",))
    statuses = []
    for i in range(4):
        response = await clients[i % len(clients)].post("/api/kiosk/pair", headers={"X-Forwarded-For": "198.51.100.7"})
        statuses.append(response.status)
        body = await response.json()
    assert statuses == [201, 201, 201, 429]
    assert body["error"] == "rate_limited" and response.headers["Retry-After"] == "60"
    # Another client behind the same proxy has its own budget.
    other = await clients[-1].post("/api/kiosk/pair", headers={"X-Forwarded-For": "203.0.113.9"})
    assert other.status == 201


async def test_calls_are_limited_per_invite_on_every_node(
    tmp_path: Path, aiohttp_client: Any, backend: dict[str, Any]
) -> None:
    clients = await _nodes(tmp_path, aiohttp_client, backend, 2, call_start_limit=2, call_start_window_s=30)
    sanne, piet = await _contacts(clients[0])
    statuses = []
    for i in range(3):
        response = await clients[i % len(clients)].post("/api/calls", json={"invite": sanne})
        statuses.append(response.status)
    assert statuses == [201, 201, 429]
    assert (await response.json())["error"] == "rate_limited" and response.headers["Retry-After"] == "30"
    # Another invite (another family member) is not held up.
    assert (await clients[-1].post("/api/calls", json={"invite": piet})).status == 201


async def test_a_pairing_start_or_confirm_does_not_list_the_live_pairings(
    tmp_path: Path, aiohttp_client: Any, backend: dict[str, Any]
) -> None:
    (client,) = await _nodes(tmp_path, aiohttp_client, backend, 1, pairing_start_limit=1000)
    store: Store = client.app[STORE_KEY]
    # Many kiosks are waiting for a coordinator.
    for i in range(300):
        await store.put_record("pairings", f"pair-old{i}", {"id": f"pair-old{i}", "code": f"{i:06d}",
                                                             "secret_hash": "x", "expires_at": time.time() + 600,
                                                             "kiosk_id": None, "credential": None})
    listed: list[str] = []
    original = store.list_records

    async def counting_list_records(kind: str) -> list[dict[str, Any]]:
        listed.append(kind)
        return await original(kind)

    store.list_records = counting_list_records  # type: ignore[method-assign]
    started = [await (await client.post("/api/kiosk/pair")).json() for _ in range(20)]
    assert len({s["code"] for s in started}) == 20
    # At most the one sweep of expired pairings per interval, for all nodes together.
    assert listed.count("pairings") <= 1
    directory = client.app[DIRECTORY_KEY]
    await directory.put(Senior(id="s-1", name="Mevrouw Jansen"), actor="test")
    listed.clear()
    kiosk = await confirm_pairing(store, directory, started[7]["code"], "s-1", actor="test")
    assert listed == []
    poll = await client.get(f"/api/kiosk/pair/{started[7]['pairing_id']}",
                            headers={"X-Pairing-Secret": started[7]["secret"]})
    assert (await poll.json())["kiosk_id"] == kiosk.id
    # A code is good once: confirming it again finds no kiosk.
    with pytest.raises(Exception, match="No kiosk shows this code"):
        await confirm_pairing(store, directory, started[7]["code"], "s-1", actor="test")
    assert len(await directory.list(Kiosk)) == 1


async def test_expired_pairings_are_swept_and_their_codes_refused(
    tmp_path: Path, aiohttp_client: Any, backend: dict[str, Any]
) -> None:
    (client,) = await _nodes(tmp_path, aiohttp_client, backend, 1)
    store: Store = client.app[STORE_KEY]
    started = await (await client.post("/api/kiosk/pair")).json()
    # As if its 15 minutes had passed.
    for record_id in (started["pairing_id"], f"code-{started['code']}"):
        record = await store.get_record("pairings", record_id)
        assert record is not None
        record["expires_at"] = time.time() - 1
        await store.put_record("pairings", record_id, record)
    directory = client.app[DIRECTORY_KEY]
    await directory.put(Senior(id="s-1", name="Mevrouw Jansen"), actor="test")
    with pytest.raises(Exception, match="No kiosk shows this code"):
        await confirm_pairing(store, directory, started["code"], "s-1", actor="test")
    # The start above took the sweep's lock; a start in the next interval sweeps.
    await _expire_lock(store, "pairings-sweep")
    await client.post("/api/kiosk/pair")
    remaining = {r["id"] for r in await store.list_records("pairings")}
    assert started["pairing_id"] not in remaining and f"code-{started['code']}" not in remaining


async def _expire_lock(store: Store, name: str) -> None:
    """Ends a store lock early (the sweep's interval), as time passing would."""
    from server.store.embedded import EmbeddedStore
    from server.store.redis import RedisStore

    if isinstance(store, EmbeddedStore):
        store._locks.pop(name, None)
    elif isinstance(store, RedisStore):
        await store._redis.delete(f"{store._prefix}lock:{name}")


DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize(
    "body",
    [
        DEEP.encode(),
        ('{"invite": ' + "[" * 5000 + "]" * 5000 + "}").encode(),
        b'{"invite": "\\ud800"}',
        b'{"invite": "x", "extra": "\\udfff tail"}',
        b'{"invite": "\xff\xfe"}',
        b"\xed\xa0\x80",
        b"",
    ],
    ids=["nested-1000", "nested-5000", "lone-high-surrogate", "lone-low-surrogate", "not-utf8", "encoded-surrogate",
         "empty"],
)
async def test_bodies_that_are_not_plain_json_get_400(
    tmp_path: Path, aiohttp_client: Any, backend: dict[str, Any], body: bytes
) -> None:
    (client,) = await _nodes(tmp_path, aiohttp_client, backend, 1)
    response = await client.post("/api/calls", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    answer = await response.json()
    assert answer["error"] == "bad_json" and answer["message"]
    # A real surrogate pair (an emoji) is plain JSON: it reaches the invite check.
    emoji = await client.post("/api/calls", data=json.dumps({"invite": "\U0001F600"}),
                              headers={"Content-Type": "application/json"})
    assert emoji.status == 403 and (await emoji.json())["error"] == "invite_invalid"
