"""Signalling protocol v1 over a real server: every message type and every error code."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from server.appkeys import ISSUER_KEY, SETTINGS_KEY, SFU_KEY, SIGNALING_KEY, STORE_KEY
from server.store import StoreUnavailable
from signaling.protocol import CloseCode
from signaling.tokens import TokenIssuer

from tests.conftest import TEST_SECRET, RunningServer, WsClient, count_presence_writes, hello, join, resume, resume_field


async def test_hello_welcome_carries_session_and_limits(server: RunningServer, connect: Any) -> None:
    c = await connect()
    welcome = await hello(c, server.token(role="host", name="Ans"))
    assert welcome["v"] == 1
    assert welcome["session_id"] and welcome["resume_key"]
    assert welcome["participant"]["name"] == "Ans"
    assert welcome["participant"]["role"] == "host"
    assert welcome["participant"]["permissions"] == ["moderate", "publish", "subscribe"]
    assert welcome["room"] == "room-1"
    assert welcome["ice_servers"] == []
    assert welcome["limits"]["max_message_bytes"] == 64 * 1024
    assert welcome["seq"] == 1


async def test_join_snapshot_and_events(server: RunningServer, connect: Any) -> None:
    a, b = await connect(), await connect()
    joined_a = await join(a, server.token(name="Alice", participant_id="p-alice"))
    assert joined_a["self_id"] == "p-alice"
    assert [p["name"] for p in joined_a["participants"]] == ["Alice"]
    joined_b = await join(b, server.token(name="Bob", participant_id="p-bob"))
    assert [p["participant_id"] for p in joined_b["participants"]] == ["p-alice", "p-bob"]
    event = await a.expect("participant_joined")
    assert event["participant"]["name"] == "Bob"
    assert event["participant"]["connected"] is True

    await b.send({"type": "leave", "id": "bye"})
    left = await b.expect("left")
    assert left["ref"] == "bye"
    assert await b.closed() == CloseCode.NORMAL
    gone = await a.expect("participant_left")
    assert gone == {**gone, "participant_id": "p-bob", "reason": "left"}
    assert (await server.app[STORE_KEY].list_rooms()) == {"room-1": 1}


async def test_ping_pong_echoes_ts_and_ref(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await hello(c, server.token())
    await c.send({"type": "ping", "ts": 12.5, "id": "p1"})
    pong = await c.expect("pong")
    assert pong["ts"] == 12.5 and pong["ref"] == "p1"


async def test_publish_offer_answer_and_stale_and_bad_answer(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await join(c, server.token())
    await c.send({"type": "publish", "audio": True, "video": True})
    offer = await c.expect("offer")
    assert offer["negotiation_id"] == 1
    assert set(offer["publish"]) == {"audio", "video"}
    assert "m=audio" in offer["sdp"] and "m=video" in offer["sdp"]
    assert "VP8" in offer["sdp"] and "opus" in offer["sdp"]
    assert offer["consumers"] == []

    await c.send({"type": "answer", "sdp": "v=0", "negotiation_id": 7, "id": "a7"})
    err = await c.expect_error("stale_negotiation")
    assert err["ref"] == "a7"

    await c.send({"type": "answer", "sdp": "this is not sdp", "negotiation_id": 1})
    await c.expect_error("negotiation_failed")
    again = await c.expect("offer")
    assert again["negotiation_id"] == 2

    await c.send({"type": "unpublish", "kind": "video"})
    # The in-flight offer must be answered before the next one; a stale id is refused.
    await c.send({"type": "answer", "sdp": "v=0", "negotiation_id": 1})
    await c.expect_error("stale_negotiation")


async def test_mute_own_and_moderated(server: RunningServer, connect: Any) -> None:
    host, senior = await connect(), await connect()
    await join(host, server.token(role="host", name="Host", participant_id="p-host"))
    await join(senior, server.token(role="senior", name="Senior", participant_id="p-senior"))

    await senior.send({"type": "mute", "kind": "audio", "muted": True})
    changed = await host.expect("mute_changed")
    assert changed == {**changed, "participant_id": "p-senior", "kind": "audio", "muted": True, "by": "p-senior"}
    await senior.send({"type": "mute", "kind": "audio", "muted": False})
    await host.expect("mute_changed", muted=False)

    await host.send({"type": "mute", "kind": "audio", "muted": True, "participant_id": "p-senior"})
    told = await senior.expect("mute_changed", participant_id="p-senior", by="p-host")
    assert told["muted"] is True and told["by"] == "p-host"
    state = await server.app[STORE_KEY].get_participant("room-1", "p-senior")
    assert state is not None and state.audio_muted is True

    # Unmuting someone else is refused, even for a host: they are asked instead.
    await host.send({"type": "mute", "kind": "audio", "muted": False, "participant_id": "p-senior"})
    await host.expect_error("forbidden")
    # A senior may not mute anyone else.
    await senior.send({"type": "mute", "kind": "video", "muted": True, "participant_id": "p-host"})
    await senior.expect_error("forbidden")
    await host.send({"type": "mute", "kind": "video", "muted": True, "participant_id": "p-nobody"})
    await host.expect_error("unknown_participant")


async def test_kick_removes_and_closes(server: RunningServer, connect: Any) -> None:
    host, senior, other = await connect(), await connect(), await connect()
    await join(host, server.token(role="host", name="Host", participant_id="p-host"))
    await join(senior, server.token(name="Senior", participant_id="p-senior"))
    await join(other, server.token(role="family", name="Fam", participant_id="p-fam"))

    await other.send({"type": "kick", "participant_id": "p-senior"})
    await other.expect_error("forbidden")
    await host.send({"type": "kick", "participant_id": "p-nobody"})
    await host.expect_error("unknown_participant")

    await host.send({"type": "kick", "participant_id": "p-senior"})
    removed = await senior.expect("removed")
    assert removed["reason"] == "kicked"
    assert await senior.closed() == CloseCode.REMOVED
    left = await host.expect("participant_left", participant_id="p-senior")
    assert left["reason"] == "kicked"
    await other.expect("participant_left", participant_id="p-senior")
    ids = [p.participant_id for p in await server.app[STORE_KEY].list_participants("room-1")]
    assert ids == ["p-host", "p-fam"]


async def test_bad_input_errors_keep_connection_and_spare_others(server: RunningServer, connect: Any) -> None:
    a, b = await connect(), await connect()
    await join(a, server.token(name="A"))
    await join(b, server.token(name="B"))
    await a.expect("participant_joined")
    n_before = len(a.received)

    await b.send_raw("{not json")
    await b.expect_error("bad_json")
    await b.send_raw("[1, 2]")
    await b.expect_error("bad_json")
    await b.send({"type": "dance", "id": "d1"})
    assert (await b.expect_error("unknown_type"))["ref"] == "d1"
    await b.send({"no_type": True})
    await b.expect_error("bad_message")
    await b.send({"type": "publish", "audio": True})
    err = await b.expect_error("bad_message")
    assert "video" in err["message"]
    await b.send({"type": "publish", "audio": "yes", "video": True})
    await b.expect_error("bad_message")
    await b.send({"type": "answer", "sdp": "x", "negotiation_id": True})
    await b.expect_error("bad_message")
    await b.send({"type": "mute", "kind": "smell", "muted": True})
    await b.expect_error("bad_message")
    await b.send({"type": "ping", "id": 5})
    await b.expect_error("bad_message")
    await b.ws.send_bytes(b"\x00\x01")
    await b.expect_error("bad_json")
    await b.send({"type": "ping", "pad": "x" * (64 * 1024)})
    await b.expect_error("message_too_large")
    await b.send({"type": "join", "room": "room-1"})
    await b.expect_error("already_joined")
    await b.send({"type": "hello", "v": 1, "token": "x"})
    await b.expect_error("already_authenticated")

    # Still alive, and state unchanged.
    await b.send({"type": "ping", "id": "alive"})
    assert (await b.expect("pong"))["ref"] == "alive"
    assert len(await server.app[STORE_KEY].list_participants("room-1")) == 2
    # The other participant saw none of it.
    await a.send({"type": "ping", "id": "a-alive"})
    await a.expect("pong")
    assert [m["type"] for m in a.received[n_before:]] == ["pong"]


async def test_layout_is_validated_and_a_bad_one_changes_nothing(server: RunningServer, connect: Any) -> None:
    client = await connect()
    await join(client, server.token(name="A", participant_id="p-a"))
    await client.send({"type": "layout", "tiles": [{"participant_id": "p-b", "width": 320, "height": 180}]})
    await client.send({"type": "ping", "id": "after-layout"})
    await client.expect("pong")
    transport = server.app[SFU_KEY].routers["room-1"].transports["p-a"]
    assert transport.layout == {"p-b": (320, 180)}
    bad = [
        ({"type": "layout"}, "tiles"),
        ({"type": "layout", "tiles": {"p-b": 1}}, "array"),
        ({"type": "layout", "tiles": ["p-b"]}, "tiles[0] must be an object"),
        ({"type": "layout", "tiles": [{"participant_id": "p-b", "width": 320}]}, "height"),
        ({"type": "layout", "tiles": [{"participant_id": "p-b", "width": 1.5, "height": 2}]}, "integer"),
        ({"type": "layout", "tiles": [{"participant_id": "p-b", "width": True, "height": 2}]}, "integer"),
        ({"type": "layout", "tiles": [{"participant_id": "p-b", "width": -1, "height": 2}]}, "0 to 8192"),
        ({"type": "layout", "tiles": [{"participant_id": "p-b", "width": 9000, "height": 2}]}, "0 to 8192"),
        ({"type": "layout", "tiles": [{"participant_id": f"p-{i}", "width": 1, "height": 1} for i in range(65)]},
         "at most 64"),
    ]
    for message, words in bad:
        await client.send(message)
        error = await client.expect_error("bad_message")
        assert words in error["message"], (message, error)
    assert transport.layout == {"p-b": (320, 180)}


async def test_not_authenticated_and_not_joined(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await c.send({"type": "join", "room": "room-1"})
    await c.expect_error("not_authenticated")
    await hello(c, server.token())
    await c.send({"type": "publish", "audio": True, "video": False})
    await c.expect_error("not_joined")
    await c.send({"type": "kick", "participant_id": "x"})
    await c.expect_error("not_joined")


@pytest.mark.parametrize(
    "make_token, code",
    [
        (lambda s: s.token(ttl_s=1, participant_id="p-x"), None),
        (lambda s: "garbage.token.here", "token_invalid"),
        (lambda s: jwt.encode({"iss": "verzilvering", "sub": "p", "exp": time.time() + 60, "room": "room-1",
                               "name": "Forger", "role": "admin", "perms": ["moderate"]},
                              "another-secret-" + "y" * 40, algorithm="HS256"), "token_invalid"),
        (lambda s: jwt.encode({"iss": "verzilvering", "sub": "p", "exp": time.time() - 5, "room": "room-1",
                               "name": "Late", "role": "senior", "perms": []},
                              TEST_SECRET, algorithm="HS256"), "token_expired"),
        (lambda s: jwt.encode({"iss": "verzilvering", "sub": "p", "exp": time.time() + 60, "room": "room-1",
                               "name": "Odd", "role": "king", "perms": []},
                              TEST_SECRET, algorithm="HS256"), "token_invalid"),
        (lambda s: jwt.encode({"iss": "verzilvering", "sub": "p", "exp": time.time() + 60, "room": "room-1",
                               "name": "None", "role": "senior", "perms": []},
                              "", algorithm="none"), "token_invalid"),
    ],
)
async def test_token_refusals_close_with_4001(server: RunningServer, connect: Any, make_token: Any, code: str | None) -> None:
    c = await connect()
    token = make_token(server)
    await c.send({"type": "hello", "v": 1, "token": token})
    if code is None:
        await c.expect("welcome")
        return
    await c.expect_error(code)
    assert await c.closed() == CloseCode.AUTH_FAILED
    assert server.app[SIGNALING_KEY].sessions == {}


async def test_wrong_room_token_refused_without_closing(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await hello(c, server.token(room="room-2"))
    await c.send({"type": "join", "room": "room-1"})
    await c.expect_error("token_wrong_room")
    assert await server.app[STORE_KEY].list_rooms() == {}
    await c.send({"type": "join", "room": "room-2"})
    await c.expect("joined")


async def test_unsupported_version(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await c.send({"type": "hello", "v": 2, "token": server.token()})
    await c.expect_error("unsupported_version")
    assert await c.closed() == CloseCode.AUTH_FAILED


async def test_publish_needs_permission(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await join(c, server.token(permissions=("subscribe",)))
    await c.send({"type": "publish", "audio": True, "video": False})
    await c.expect_error("forbidden")
    # Switching publishing off needs no permission and changes nothing.
    await c.send({"type": "publish", "audio": False, "video": False, "id": "off"})
    await c.send({"type": "ping", "id": "after"})
    assert (await c.expect("pong"))["ref"] == "after"
    assert not [m for m in c.received if m["type"] == "error" and m.get("ref") == "off"]


@pytest.mark.parametrize("settings_overrides", [{"max_participants_per_room": 2}])
async def test_room_full(server: RunningServer, connect: Any) -> None:
    clients = [await connect() for _ in range(3)]
    await join(clients[0], server.token(name="1"))
    await join(clients[1], server.token(name="2"))
    await hello(clients[2], server.token(name="3"))
    await clients[2].send({"type": "join", "room": "room-1"})
    await clients[2].expect_error("room_full")
    assert (await server.app[STORE_KEY].list_rooms()) == {"room-1": 2}


@pytest.mark.parametrize("settings_overrides", [{"messages_per_second": 2.0, "message_burst": 3}])
async def test_rate_limited(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await hello(c, server.token())
    for i in range(6):
        await c.send({"type": "ping", "id": str(i)})
    replies = [await c.next() for _ in range(6)]
    assert [r["type"] for r in replies].count("pong") == 2
    assert [r.get("code") for r in replies].count("rate_limited") == 4
    await asyncio.sleep(1.1)
    await c.send({"type": "ping", "id": "later"})
    assert (await c.expect("pong"))["ref"] == "later"


@pytest.mark.parametrize("settings_overrides", [{"max_frame_bytes": 128 * 1024}])
async def test_frame_over_hard_limit_closes_1009(server: RunningServer, connect: Any) -> None:
    c = await connect()
    await hello(c, server.token())
    await c.send({"type": "ping", "pad": "x" * (200 * 1024)})
    assert await c.closed() == 1009


@pytest.mark.parametrize("settings_overrides", [{"hello_timeout_s": 0.5}])
async def test_hello_timeout(server: RunningServer, connect: Any) -> None:
    c = await connect()
    assert await c.closed(timeout=5) == CloseCode.HELLO_TIMEOUT


@pytest.mark.parametrize("settings_overrides", [{"ping_interval_s": 0.2, "ping_timeout_s": 0.6, "resume_grace_s": 0.5}])
async def test_ping_timeout_then_grace_expiry(server: RunningServer, connect: Any) -> None:
    watcher, silent = await connect(), await connect()
    await join(watcher, server.token(name="W", participant_id="p-w"))
    await join(silent, server.token(name="S", participant_id="p-s"))

    async def keep_alive() -> None:
        while True:
            await asyncio.sleep(0.1)
            await watcher.send({"type": "ping"})

    pinger = asyncio.ensure_future(keep_alive())
    try:
        assert await silent.closed(timeout=5) == CloseCode.PING_TIMEOUT
        update = await watcher.expect("participant_updated", timeout=5)
        assert update["participant"]["participant_id"] == "p-s"
        assert update["participant"]["connected"] is False
        left = await watcher.expect("participant_left", timeout=5)
        assert left["participant_id"] == "p-s" and left["reason"] == "timeout"
    finally:
        pinger.cancel()
    assert [p.participant_id for p in await server.app[STORE_KEY].list_participants("room-1")] == ["p-w"]


async def test_resume_replays_missed_messages(server: RunningServer, connect: Any) -> None:
    a, b = await connect(), await connect()
    token_a = server.token(name="A", participant_id="p-a")
    welcome = await hello(a, token_a)
    await a.send({"type": "join", "room": "room-1"})
    joined = await a.expect("joined")
    await a.ws.close()

    snapshot = await join(b, server.token(name="B", participant_id="p-b"))
    assert {p["participant_id"]: p["connected"] for p in snapshot["participants"]} == {"p-a": False, "p-b": True}

    a2 = await connect()
    resumed = await resume(a2, token_a, welcome, joined["seq"])
    assert resumed["session_id"] == welcome["session_id"]
    assert resumed["replayed"] >= 1
    missed = await a2.expect("participant_joined")
    assert missed["participant"]["participant_id"] == "p-b"
    assert missed["seq"] > joined["seq"]
    back = await b.expect("participant_updated")
    assert back["participant"]["connected"] is True
    # Same seat, not a second one.
    assert len(await server.app[STORE_KEY].list_participants("room-1")) == 2


@pytest.mark.parametrize("settings_overrides", [{"resume_buffer_messages": 4}])
async def test_pongs_are_not_sequenced_nor_kept_for_resume(server: RunningServer, connect: Any) -> None:
    a = await connect()
    token = server.token(participant_id="p-a")
    welcome = await hello(a, token)
    # More pings than the resume buffer holds: kept pongs would push out everything else.
    for i in range(10):
        await a.send({"type": "ping", "id": f"p{i}"})
        pong = await a.expect("pong")
        assert "seq" not in pong and pong["ref"] == f"p{i}"
    session = server.app[SIGNALING_KEY].sessions[welcome["session_id"]]
    assert session.seq == welcome["seq"] and session.buffered[0] == 1
    await a.send({"type": "join", "room": "room-1"})
    joined = await a.expect("joined")
    # The next sequenced message follows the welcome directly.
    assert joined["seq"] == welcome["seq"] + 1
    await a.ws.close()

    a2 = await connect()
    resumed = await resume(a2, token, welcome, welcome["seq"])
    assert resumed["replayed"] >= 1
    assert (await a2.expect("joined"))["seq"] == joined["seq"]


async def test_resume_resends_an_unanswered_offer(server: RunningServer, connect: Any) -> None:
    a = await connect()
    token = server.token(participant_id="p-a")
    welcome = await hello(a, token)
    await a.send({"type": "join", "room": "room-1"})
    await a.expect("joined")
    await a.send({"type": "publish", "audio": True, "video": False})
    offer = await a.expect("offer")
    await a.ws.close()  # the answer never left

    a2 = await connect()
    await resume(a2, token, welcome, offer["seq"])
    again = await a2.expect("offer")
    assert again["negotiation_id"] == offer["negotiation_id"] and again["sdp"] == offer["sdp"]


async def test_resume_failures(server: RunningServer, connect: Any) -> None:
    a = await connect()
    token = server.token(participant_id="p-a")
    welcome = await hello(a, token)
    await a.ws.close()
    c = await connect()
    for bad_resume in (
        {**resume_field(welcome, 1), "session_id": "s-unknown"},
        {**resume_field(welcome, 1), "resume_key": "wrong"},
        resume_field(welcome, "one"),
    ):
        await c.send({"type": "hello", "v": 1, "token": token, "resume": bad_resume})
        message = await c.next()
        assert message["type"] == "error" and message["code"] in ("resume_failed", "bad_message"), message
    # Another participant's valid token cannot take over the session.
    await c.send({"type": "hello", "v": 1, "token": server.token(participant_id="p-b"), "resume": resume_field(welcome, 1)})
    await c.expect_error("resume_failed")
    # Then a plain hello works on the same socket.
    await hello(c, token)


async def test_resume_replaces_open_socket(server: RunningServer, connect: Any) -> None:
    a = await connect()
    token = server.token(participant_id="p-a")
    welcome = await hello(a, token)
    a2 = await connect()
    await resume(a2, token, welcome, 1)
    assert await a.closed() == CloseCode.REPLACED


async def test_unavailable_and_internal_errors(server: RunningServer, connect: Any) -> None:
    """A store outage or a bug answers the one message with an error; the socket lives on."""
    store = server.app[STORE_KEY]
    c = await connect()
    await hello(c, server.token())
    original = store.add_participant

    async def outage(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("connection refused")

    async def bug(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    store.add_participant = outage  # type: ignore[method-assign]
    await c.send({"type": "join", "room": "room-1"})
    await c.expect_error("unavailable")
    store.add_participant = bug  # type: ignore[method-assign]
    await c.send({"type": "join", "room": "room-1"})
    err = await c.expect_error("internal")
    assert "boom" not in err["message"]
    store.add_participant = original  # type: ignore[method-assign]
    await c.send({"type": "join", "room": "room-1"})
    await c.expect("joined")


async def test_same_participant_joining_twice_replaces_old_seat(server: RunningServer, connect: Any) -> None:
    old, new, watcher = await connect(), await connect(), await connect()
    await join(watcher, server.token(name="W", participant_id="p-w"))
    token = server.token(name="Twin", participant_id="p-twin")
    await join(old, token)
    await join(new, token)
    assert (await old.expect("removed"))["reason"] == "replaced"
    assert await old.closed() == CloseCode.REPLACED
    left = await watcher.expect("participant_left", participant_id="p-twin")
    assert left["reason"] == "replaced"
    ids = [p.participant_id for p in await server.app[STORE_KEY].list_participants("room-1")]
    assert sorted(ids) == ["p-twin", "p-w"]


def test_every_documented_error_code_is_tested() -> None:
    """docs/protocol.md and the tests must not drift apart."""
    import pathlib
    import re

    doc = (pathlib.Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    section = doc.split("## Error codes", 1)[1].split("##", 1)[0]
    codes = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M))
    source = "".join(p.read_text() for p in pathlib.Path(__file__).parents[1].rglob("test_*.py"))
    untested = {code for code in codes if f'"{code}"' not in source}
    assert codes and not untested, f"error codes without a test: {sorted(untested)}"


@contextlib.asynccontextmanager
async def redis_node(tmp_path: Any) -> AsyncIterator[tuple[str, TokenIssuer]]:
    """One in-process node on its own redis-server: (WebSocket URL, token issuer)."""
    import uuid

    from aiohttp.test_utils import TestServer

    from server.app import create_app

    from tests.conftest import make_settings
    from bench.redis_server import RedisServer

    with RedisServer() as redis:
        settings = make_settings(tmp_path, redis_url=redis.url, redis_prefix=f"vztest:{uuid.uuid4().hex}:")
        app = create_app(settings)
        test_server = TestServer(app, host="127.0.0.1")
        await test_server.start_server()
        try:
            yield str(test_server.make_url("/ws")), app[ISSUER_KEY]
        finally:
            await test_server.close()


async def test_concurrent_joins_deliver_each_event_once(tmp_path: Any) -> None:
    """Joins racing into one room must not subscribe the node to it twice (Redis, where
    subscribing waits for the server's confirmation)."""
    import aiohttp

    async with redis_node(tmp_path) as (url, issuer):
        async with aiohttp.ClientSession() as http:
            clients = [WsClient(await http.ws_connect(url)) for _ in range(8)]
            for i, c in enumerate(clients):
                await hello(c, issuer.issue(role="senior", room="room-1", name=f"P{i}", participant_id=f"p-{i}"))
            await asyncio.gather(*(c.send({"type": "join", "room": "room-1"}) for c in clients))
            for c in clients:
                await c.expect("joined")
            await clients[0].send({"type": "mute", "kind": "audio", "muted": True})
            for c in clients:
                await c.expect("mute_changed", participant_id="p-0")
                await c.send({"type": "ping", "id": "after"})
                await c.expect("pong")
                assert sum(1 for m in c.received if m["type"] == "mute_changed") == 1
            for c in clients:
                await c.ws.close()


async def test_racing_joins_each_learn_of_every_other(tmp_path: Any) -> None:
    """The join snapshot is read in the store step that adds the participant; room events
    that arrive before `joined` is sent follow it. Every joiner must learn of every other
    one, by snapshot or by `participant_joined` (Redis: events and replies on two sockets)."""
    import aiohttp

    async with redis_node(tmp_path) as (url, issuer):
        async with aiohttp.ClientSession() as http:
            first = WsClient(await http.ws_connect(url))
            # The room is placed and subscribed first, so the racing joins use their snapshot.
            await join(first, issuer.issue(role="senior", room="room-1", name="First", participant_id="p-first"))
            clients = [WsClient(await http.ws_connect(url)) for _ in range(12)]
            for i, c in enumerate(clients):
                await hello(c, issuer.issue(role="senior", room="room-1", name=f"P{i}", participant_id=f"p-{i}"))
            await asyncio.gather(*(c.send({"type": "join", "room": "room-1"}) for c in clients))
            everyone = {"p-first"} | {f"p-{i}" for i in range(len(clients))}
            snapshots = [await c.expect("joined") for c in clients]
            for _ in clients:
                await first.expect("participant_joined")
            # One node delivers each event to all its sessions at once: once the first
            # participant has every announcement, the others' are queued before a pong.
            for i, c in enumerate(clients):
                joined = snapshots[i]
                await c.send({"type": "ping", "id": "settle"})
                await c.expect("pong")
                seen = {p["participant_id"] for p in joined["participants"]}
                seen |= {m["participant"]["participant_id"] for m in c.received if m["type"] == "participant_joined"}
                assert seen == everyone, (i, everyone - seen)
                # Whatever came early is sent after `joined`, in sequence.
                seqs = [m["seq"] for m in c.received if "seq" in m]
                assert seqs == sorted(seqs)
            for c in [first, *clients]:
                await c.ws.close()


async def test_join_makes_no_peer_connection_until_there_is_media(server: RunningServer, connect: Any) -> None:
    """The peer connection (and its DTLS certificate) costs CPU and memory: an idle
    participant with nothing to send or receive gets none, and nothing changes on the wire."""
    a, b = await connect(), await connect()
    await join(a, server.token(participant_id="p-a"))
    await join(b, server.token(participant_id="p-b"))
    transports = server.app[SFU_KEY].routers["room-1"].transports
    assert not transports["p-a"].has_peer_connection
    assert not transports["p-b"].has_peer_connection
    await a.send({"type": "publish", "audio": True, "video": False})
    offer = await a.expect("offer")
    assert offer["negotiation_id"] == 1 and list(offer["publish"]) == ["audio"]
    assert transports["p-a"].has_peer_connection
    assert not transports["p-b"].has_peer_connection
    await a.send({"type": "leave"})
    await a.expect("left")
    await b.send({"type": "leave"})
    await b.expect("left")


async def test_presence_refreshed_at_most_every_third_of_its_ttl(server: RunningServer, connect: Any) -> None:
    """A store write per ping was most of an idle connection's cost; presence is rewritten
    only once a third of its TTL has passed."""
    store = server.app[STORE_KEY]
    touched = count_presence_writes(store)
    c = await connect()
    welcome = await hello(c, server.token(participant_id="p-a"))
    await c.send({"type": "join", "room": "room-1"})
    await c.expect("joined")
    assert touched == ["p-a"]
    for i in range(5):
        await c.send({"type": "ping", "id": f"p{i}"})
        await c.expect("pong")
    assert touched == ["p-a"]
    assert await store.is_present("p-a")
    # As if a third of the TTL had passed since the last write.
    signaling = server.app[SIGNALING_KEY]
    session = signaling.sessions[welcome["session_id"]]
    session.presence_touched -= signaling.rooms.presence_ttl / 3
    await c.send({"type": "ping", "id": "late"})
    await c.expect("pong")
    # Frames of one connection are handled in order: the refresh is done by the next pong.
    await c.send({"type": "ping", "id": "after"})
    await c.expect("pong")
    assert touched == ["p-a", "p-a"]


@pytest.mark.parametrize("settings_overrides", [{"overload_lag_s": 0.3}])
async def test_new_sessions_shed_while_the_event_loop_runs_behind(server: RunningServer, connect: Any) -> None:
    """An overloaded node refuses new sessions with `unavailable` instead of growing its
    backlog until it misses its heartbeat; it takes them again once it has caught up."""
    kept = await connect()
    welcome = await hello(kept, server.token(participant_id="p-kept"))
    c = await connect()
    # Block the (shared, in-process) event loop well past the sweep's 1 s timer.
    time.sleep(1.6)
    await asyncio.sleep(0.05)
    assert server.app[SIGNALING_KEY].loop_lag > 0.3
    await c.send({"type": "hello", "v": 1, "token": server.token(participant_id="p-new"), "id": "h"})
    refused = await c.expect_error("unavailable")
    assert refused["ref"] == "h"
    # A session in progress goes on.
    await kept.send({"type": "ping", "id": "alive"})
    assert (await kept.expect("pong"))["ref"] == "alive"
    # Caught up at the next sweep: the same socket may say hello again.
    await asyncio.sleep(1.2)
    assert server.app[SIGNALING_KEY].loop_lag < 0.3
    await hello(c, server.token(participant_id="p-new"))
    assert welcome["session_id"] in server.app[SIGNALING_KEY].sessions


async def test_join_that_fails_after_the_store_step_leaves_nothing_behind(server: RunningServer, connect: Any) -> None:
    """A join answered `unavailable` must not keep a seat nobody was told of (a retry would
    then replace it: `participant_left` and a second `participant_joined` for the others)."""
    signaling = server.app[SIGNALING_KEY]
    store = server.app[STORE_KEY]
    watcher = await connect()
    await join(watcher, server.token(participant_id="p-w", name="W"))
    room = signaling.rooms.rooms["room-1"]
    original = room._subscribe
    calls = 0

    async def failing_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreUnavailable("subscribe timed out")
        await original()

    room._subscribe = failing_once  # type: ignore[method-assign]
    c = await connect()
    welcome = await hello(c, server.token(participant_id="p-a", name="A"))
    await c.send({"type": "join", "room": "room-1"})
    await c.expect_error("unavailable")
    assert [p.participant_id for p in await store.list_participants("room-1")] == ["p-w"]
    assert not await store.is_present("p-a")
    session = signaling.sessions[welcome["session_id"]]
    assert session.early is None and not session.joined
    # The same session joins again, and the others hear of it once.
    await c.send({"type": "join", "room": "room-1"})
    await c.expect("joined")
    await watcher.send({"type": "ping", "id": "settle"})
    await watcher.expect("pong")
    announced = [m for m in watcher.received if m["type"] in ("participant_joined", "participant_left")]
    assert [(m["type"], m.get("participant", {}).get("participant_id")) for m in announced] == [("participant_joined", "p-a")]


@pytest.mark.parametrize("settings_overrides", [{"error_reply_burst": 5, "error_replies_per_s": 0.5}])
async def test_error_replies_are_rate_limited_then_the_client_is_closed(server: RunningServer, connect: Any) -> None:
    c = await connect()
    for _ in range(50):
        await c.send_raw("x")
    assert await c.closed() == CloseCode.TOO_MANY_ERRORS
    errors = [m for m in c.received if m.get("type") == "error"]
    assert len(errors) == 5 and {e["code"] for e in errors} == {"bad_json"}


def _frame_of(size: int) -> str:
    head, tail = '{"type": "ping", "pad": "', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


async def test_frame_of_exactly_max_frame_bytes_is_read_one_more_closes_1009(
    server: RunningServer, connect: Any
) -> None:
    limit = server.app[SETTINGS_KEY].max_frame_bytes
    assert limit == 1_048_576
    c = await connect()
    await hello(c, server.token())
    await c.send_raw(_frame_of(limit))
    # Read (and refused as a message: it is over max_message_bytes), the socket stays open.
    await c.expect_error("message_too_large")
    await c.send({"type": "ping", "id": "alive"})
    assert (await c.expect("pong"))["ref"] == "alive"
    await c.send_raw(_frame_of(limit + 1))
    assert await c.closed() == 1009
