"""The store contract, run against both backends.

Every test that takes `store` or `make_store` runs once on the embedded backend and once on
Redis (a private redis-server started for the session; each test gets its own key prefix,
deleted afterwards). The few Redis-only tests at the end cover what the embedded backend
has no counterpart for: several nodes sharing state, and an unreachable server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from bench.redis_server import RedisServer
from server.store import ADMIT, ADMIT_UNLESS_LOCKED, AccessCheck, AccessRefused, LOBBY, ParticipantState, RoomFull, Store, StoreUnavailable, TrackState
from server.store.redis import RedisStore

from tests.store_support import StoreFactory, _delete_prefix, make_store, redis_server, store  # noqa: F401  (fixtures)

# Long enough for a Redis round trip on a busy CI machine, short enough to fail fast.
DELIVERY_TIMEOUT_S = 5.0


def participant(
    pid: str, room: str = "koffie", joined_at: float = 1.0, **kw: Any
) -> ParticipantState:
    return ParticipantState(
        participant_id=pid,
        room=room,
        name=kw.pop("name", f"Naam {pid}"),
        role=kw.pop("role", "participant"),
        node_id=kw.pop("node_id", "node-a"),
        joined_at=joined_at,
        **kw,
    )


def track(tid: str, pid: str, room: str = "koffie", kind: str = "audio") -> TrackState:
    return TrackState(track_id=tid, room=room, participant_id=pid, kind=kind)


async def eventually(predicate: Callable[[], bool], timeout: float = DELIVERY_TIMEOUT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# --- live room state -----------------------------------------------------------------------


async def test_join_and_leave(store: Store) -> None:
    alice = participant("alice", joined_at=10.5)
    await store.add_participant(alice, max_participants=5)

    assert await store.get_participant("koffie", "alice") == alice
    assert await store.list_participants("koffie") == [alice]
    assert await store.list_rooms() == {"koffie": 1}
    assert await store.get_participant("andere-kamer", "alice") is None

    assert await store.remove_participant("koffie", "alice") == alice
    assert await store.get_participant("koffie", "alice") is None
    assert await store.list_participants("koffie") == []
    assert await store.list_rooms() == {}
    assert await store.remove_participant("koffie", "alice") is None


async def test_join_room_adds_sets_presence_and_returns_the_room(store: Store) -> None:
    alice = participant("alice", joined_at=1.0)
    await store.add_participant(alice, max_participants=5)
    await store.add_track(track("t-a", "alice"))
    await store.set_room_state("koffie", {"spotlight": "alice"})

    result = await store.join_room(participant("bob", joined_at=2.0), ADMIT, 5, 30.0)
    bob = participant("bob", joined_at=2.0)
    assert result.admitted and result.state == bob
    assert result.participants == [alice, bob]
    assert result.tracks == [track("t-a", "alice")]
    assert result.room_state == {"spotlight": "alice"}
    assert await store.get_participant("koffie", "bob") == bob
    assert await store.is_present("bob")
    assert await store.list_rooms() == {"koffie": 2}

    lobby = await store.join_room(participant("carol", joined_at=3.0), LOBBY, 5, 30.0)
    assert not lobby.admitted
    assert (await store.get_participant("koffie", "carol")) == participant("carol", joined_at=3.0, admitted=False)


async def test_join_room_admission_follows_the_lock(store: Store) -> None:
    first = await store.join_room(participant("alice"), ADMIT_UNLESS_LOCKED, 5, 30.0)
    assert first.admitted and first.room_state == {}
    await store.set_room_state("koffie", {"locked": True, "spotlight": None})
    locked = await store.join_room(participant("bob", joined_at=2.0), ADMIT_UNLESS_LOCKED, 5, 30.0)
    assert not locked.admitted and locked.room_state["locked"] is True
    assert not (await store.get_participant("koffie", "bob")).admitted  # type: ignore[union-attr]
    await store.set_room_state("koffie", {"locked": False})
    assert (await store.join_room(participant("carol", joined_at=3.0), ADMIT_UNLESS_LOCKED, 5, 30.0)).admitted


async def test_join_room_full(store: Store) -> None:
    await store.join_room(participant("alice"), ADMIT, 1, 30.0)
    with pytest.raises(RoomFull):
        await store.join_room(participant("bob"), ADMIT, 1, 30.0)
    assert not await store.is_present("bob")
    assert [p.participant_id for p in await store.list_participants("koffie")] == ["alice"]
    # Joining again is a replace and never hits the limit.
    assert (await store.join_room(participant("alice", joined_at=5.0), ADMIT, 1, 30.0)).participants == [
        participant("alice", joined_at=5.0)
    ]


async def test_returned_states_are_copies(store: Store) -> None:
    alice = participant("alice")
    await store.add_participant(alice, max_participants=5)
    alice.name = "changed by caller"
    fetched = await store.get_participant("koffie", "alice")
    assert fetched is not None
    fetched.audio_muted = True

    again = await store.get_participant("koffie", "alice")
    assert again is not None
    assert (again.name, again.audio_muted) == ("Naam alice", False)


async def test_room_full_at_limit(store: Store) -> None:
    await store.add_participant(participant("a"), max_participants=2)
    await store.add_participant(participant("b"), max_participants=2)

    with pytest.raises(RoomFull):
        await store.add_participant(participant("c"), max_participants=2)

    assert [p.participant_id for p in await store.list_participants("koffie")] == ["a", "b"]
    assert await store.list_rooms() == {"koffie": 2}
    # The limit is per room.
    await store.add_participant(participant("c", room="thee"), max_participants=2)
    assert await store.list_rooms() == {"koffie": 2, "thee": 1}


async def test_room_full_with_zero_limit_creates_no_room(store: Store) -> None:
    with pytest.raises(RoomFull):
        await store.add_participant(participant("a"), max_participants=0)
    assert await store.list_rooms() == {}
    assert await store.list_participants("koffie") == []


async def test_readding_existing_participant_at_limit_replaces_it(store: Store) -> None:
    await store.add_participant(participant("a"), max_participants=2)
    await store.add_participant(participant("b"), max_participants=2)

    replacement = participant("a", name="Anna opnieuw", connected=False)
    await store.add_participant(replacement, max_participants=2)

    assert await store.get_participant("koffie", "a") == replacement
    assert len(await store.list_participants("koffie")) == 2
    assert await store.list_rooms() == {"koffie": 2}


async def test_concurrent_adds_never_exceed_limit(store: Store) -> None:
    results = await asyncio.gather(
        *(
            store.add_participant(participant(f"p{i:02d}", joined_at=float(i)), max_participants=5)
            for i in range(20)
        ),
        return_exceptions=True,
    )

    assert sum(r is None for r in results) == 5
    assert sum(isinstance(r, RoomFull) for r in results) == 15
    members = await store.list_participants("koffie")
    assert len(members) == 5
    assert {p.participant_id for p in members} == {
        f"p{i:02d}" for i, r in enumerate(results) if r is None
    }
    assert await store.list_rooms() == {"koffie": 5}


async def test_participants_ordered_by_joined_at_then_id(store: Store) -> None:
    for pid, joined_at in [("d", 3.0), ("b", 1.0), ("c", 2.0), ("a", 2.0), ("e", 0.5)]:
        await store.add_participant(participant(pid, joined_at=joined_at), max_participants=10)

    ordered = [p.participant_id for p in await store.list_participants("koffie")]
    assert ordered == ["e", "b", "a", "c", "d"]


async def test_rooms_are_separate(store: Store) -> None:
    await store.add_participant(participant("a", room="koffie"), max_participants=5)
    await store.add_participant(participant("b", room="thee"), max_participants=5)
    await store.add_participant(participant("c", room="thee"), max_participants=5)
    await store.add_track(track("t1", "b", room="thee"))

    assert [p.participant_id for p in await store.list_participants("koffie")] == ["a"]
    assert await store.list_tracks("koffie") == []
    assert await store.remove_participant("koffie", "b") is None
    assert await store.list_rooms() == {"koffie": 1, "thee": 2}

    await store.remove_participant("thee", "b")
    assert await store.list_rooms() == {"koffie": 1, "thee": 1}
    await store.remove_participant("thee", "c")
    assert await store.list_rooms() == {"koffie": 1}


async def test_tracks_follow_their_participant(store: Store) -> None:
    await store.add_participant(participant("a"), max_participants=5)
    await store.add_participant(participant("b"), max_participants=5)
    await store.add_track(track("a-audio", "a"))
    await store.add_track(track("a-video", "a", kind="video"))
    await store.add_track(track("b-audio", "b"))

    removed = await store.remove_participant("koffie", "a")

    assert removed is not None and removed.participant_id == "a"
    assert await store.list_tracks("koffie") == [track("b-audio", "b")]
    assert await store.remove_track("koffie", "a-video") is None
    assert await store.update_track("koffie", "a-audio", muted=True) is None


async def test_add_track_requires_participant(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.add_track(track("t1", "ghost"))
    assert await store.list_tracks("koffie") == []

    await store.add_participant(participant("a", room="thee"), max_participants=5)
    with pytest.raises(KeyError):
        await store.add_track(track("t1", "a", room="koffie"))
    assert await store.list_tracks("koffie") == []


async def test_track_add_update_remove(store: Store) -> None:
    await store.add_participant(participant("a"), max_participants=5)
    audio, video = track("t-audio", "a"), track("t-video", "a", kind="video")
    await store.add_track(audio)
    await store.add_track(video)
    assert sorted(await store.list_tracks("koffie"), key=lambda t: t.track_id) == [audio, video]

    updated = await store.update_track("koffie", "t-video", muted=True)
    assert updated == dataclasses.replace(video, muted=True)
    assert sorted(await store.list_tracks("koffie"), key=lambda t: t.track_id) == [audio, updated]

    assert await store.remove_track("koffie", "t-audio") == audio
    assert await store.remove_track("koffie", "t-audio") is None
    assert await store.list_tracks("koffie") == [updated]
    assert await store.update_track("koffie", "nope", muted=True) is None


async def test_update_participant(store: Store) -> None:
    await store.add_participant(participant("a", joined_at=7.25), max_participants=5)

    updated = await store.update_participant("koffie", "a", audio_muted=True, connected=False)

    expected = participant("a", joined_at=7.25, audio_muted=True, connected=False)
    assert updated == expected
    assert await store.get_participant("koffie", "a") == expected
    assert await store.update_participant("koffie", "ghost", audio_muted=True) is None
    assert await store.get_participant("koffie", "ghost") is None


async def test_concurrent_updates_of_different_fields_are_all_kept(store: Store) -> None:
    await store.add_participant(participant("a"), max_participants=5)

    await asyncio.gather(
        *(
            store.update_participant("koffie", "a", **{field: True})
            for field in ("audio_muted", "video_muted")
            for _ in range(10)
        ),
        *(store.update_participant("koffie", "a", connected=False) for _ in range(10)),
    )

    state = await store.get_participant("koffie", "a")
    assert state is not None
    assert (state.audio_muted, state.video_muted, state.connected) == (True, True, False)


async def test_invalid_updates_change_nothing(store: Store) -> None:
    original = participant("a")
    await store.add_participant(original, max_participants=5)
    original_track = track("t1", "a")
    await store.add_track(original_track)

    with pytest.raises(ValueError, match="unknown"):
        await store.update_participant("koffie", "a", audio_muted=True, colour="red")
    # `room` and `participant_id` collide with the method's own parameters, so Python
    # refuses them before the store sees them; either way nothing may change.
    with pytest.raises((TypeError, ValueError)):
        await store.update_participant("koffie", "a", **{"room": "thee"})
    with pytest.raises(ValueError, match="unknown"):
        await store.update_track("koffie", "t1", muted=True, volume=3)
    with pytest.raises(ValueError, match="participant_id"):
        await store.update_track("koffie", "t1", muted=True, participant_id="b")

    assert await store.get_participant("koffie", "a") == original
    assert await store.list_participants("koffie") == [original]
    assert await store.list_participants("thee") == []
    assert await store.list_tracks("koffie") == [original_track]
    assert await store.list_rooms() == {"koffie": 1}


# --- counters ------------------------------------------------------------------------------


async def test_count_adds_up_within_its_window_and_resets_after_it(store: Store) -> None:
    assert await store.counted("user:ann") == 0
    assert [await store.count("user:ann", window_s=0.4) for _ in range(3)] == [1, 2, 3]
    assert await store.count("user:bob", window_s=0.4) == 1
    assert await store.counted("user:ann") == 3

    await asyncio.sleep(0.2)
    # A later count does not move the window's end: the limit is a fixed window.
    assert await store.count("user:ann", window_s=0.4) == 4
    await asyncio.sleep(0.3)
    assert await store.counted("user:ann") == 0
    assert await store.count("user:ann", window_s=0.4) == 1


async def test_reset_count_forgets_one_counter(store: Store) -> None:
    await store.count("user:ann", window_s=30)
    await store.count("addr:10.0.0.1", window_s=30)

    await store.reset_count("user:ann")
    await store.reset_count("never-counted")

    assert await store.counted("user:ann") == 0
    assert await store.counted("addr:10.0.0.1") == 1


async def test_uncount_takes_one_back_but_never_starts_a_window(store: Store) -> None:
    for _ in range(3):
        await store.count("addr:10.0.0.1", window_s=0.4)
    await store.uncount("addr:10.0.0.1")
    assert await store.counted("addr:10.0.0.1") == 2
    await store.uncount("addr:10.0.0.1")
    await store.uncount("addr:10.0.0.1")
    await store.uncount("addr:10.0.0.1")
    assert await store.counted("addr:10.0.0.1") == 0
    # Never counted, or the window is over: nothing happens, and no counter appears.
    await store.uncount("never-counted")
    assert await store.counted("never-counted") == 0
    assert await store.count("never-counted", window_s=0.4) == 1
    await asyncio.sleep(0.5)
    await store.uncount("addr:10.0.0.1")
    assert await store.count("addr:10.0.0.1", window_s=0.4) == 1


async def test_counts_are_shared_by_every_node(redis_server: RedisServer) -> None:
    prefix = f"vztest:{uuid4().hex}:"
    nodes = [RedisStore(redis_server.url, node_id=name, prefix=prefix) for name in ("n1", "n2")]
    for node in nodes:
        await node.open()
    try:
        await nodes[0].count("user:ann", window_s=30)
        assert await nodes[1].count("user:ann", window_s=30) == 2
        await nodes[1].reset_count("user:ann")
        assert await nodes[0].counted("user:ann") == 0
    finally:
        for node in nodes:
            await node.close()
        await _delete_prefix(redis_server.url, prefix)

# --- presence ------------------------------------------------------------------------------


async def test_presence_expires_after_ttl(store: Store) -> None:
    assert not await store.is_present("a")

    await store.touch_presence("a", ttl_s=0.2)
    assert await store.is_present("a")
    assert not await store.is_present("b")

    await asyncio.sleep(0.35)
    assert not await store.is_present("a")


async def test_touching_presence_extends_it(store: Store) -> None:
    await store.touch_presence("a", ttl_s=0.3)
    await asyncio.sleep(0.2)
    await store.touch_presence("a", ttl_s=0.3)
    await asyncio.sleep(0.2)
    assert await store.is_present("a")

    await asyncio.sleep(0.25)
    assert not await store.is_present("a")


async def test_clear_presence(store: Store) -> None:
    await store.touch_presence("a", ttl_s=30)
    await store.touch_presence("b", ttl_s=30)

    await store.clear_presence("a")
    await store.clear_presence("never-seen")

    assert not await store.is_present("a")
    assert await store.is_present("b")


# --- room event fan-out --------------------------------------------------------------------


async def test_publish_reaches_every_handler_of_the_room_only(store: Store) -> None:
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    await store.subscribe("koffie", first.append)
    await store.subscribe("koffie", second.append)
    await store.subscribe("thee", other.append)

    event = {"type": "participant_joined", "participant": {"id": "a", "muted": False}}
    await store.publish("koffie", event)
    # Events reach one node's subscriber in publish order, so once the marker on "thee"
    # arrives, a wrongly delivered "koffie" event would have arrived before it.
    await store.publish("thee", {"type": "marker"})

    await eventually(lambda: len(first) == 1 and len(second) == 1 and len(other) == 1)
    assert first == [event] and second == [event]
    assert other == [{"type": "marker"}]


async def test_events_arrive_as_json(store: Store) -> None:
    received: list[dict[str, Any]] = []
    await store.subscribe("koffie", received.append)

    await store.publish("koffie", {"ids": ("a", "b"), "n": 1.5, "nested": {"ok": True}})

    await eventually(lambda: len(received) == 1)
    assert received == [{"ids": ["a", "b"], "n": 1.5, "nested": {"ok": True}}]


async def test_events_arrive_in_publish_order(store: Store) -> None:
    received: list[dict[str, Any]] = []
    await store.subscribe("koffie", received.append)

    for seq in range(50):
        await store.publish("koffie", {"seq": seq})

    await eventually(lambda: len(received) == 50)
    assert [e["seq"] for e in received] == list(range(50))


async def test_closed_subscription_gets_nothing_more(store: Store) -> None:
    closed: list[dict[str, Any]] = []
    open_: list[dict[str, Any]] = []
    subscription = await store.subscribe("koffie", closed.append)
    await store.subscribe("koffie", open_.append)

    await store.publish("koffie", {"n": 1})
    await eventually(lambda: len(closed) == 1 and len(open_) == 1)

    await subscription.close()
    await subscription.close()  # closing twice is harmless
    await store.publish("koffie", {"n": 2})
    await eventually(lambda: len(open_) == 2)
    assert closed == [{"n": 1}]


async def test_resubscribing_after_the_last_handler_left(store: Store) -> None:
    before: list[dict[str, Any]] = []
    subscription = await store.subscribe("koffie", before.append)
    await subscription.close()
    await store.publish("koffie", {"n": 1})

    after: list[dict[str, Any]] = []
    await store.subscribe("koffie", after.append)
    await store.publish("koffie", {"n": 2})

    await eventually(lambda: len(after) == 1)
    assert after == [{"n": 2}]
    assert before == []


async def test_each_subscription_is_its_own_and_a_raising_handler_harms_nobody(store: Store) -> None:
    received: list[dict[str, Any]] = []

    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    await store.subscribe("koffie", broken)
    first = await store.subscribe("koffie", received.append)
    await store.subscribe("koffie", received.append)

    await store.publish("koffie", {"n": 1})
    await eventually(lambda: len(received) == 2)
    await first.close()
    await store.publish("koffie", {"n": 2})
    await eventually(lambda: len(received) == 3)
    assert received == [{"n": 1}, {"n": 1}, {"n": 2}]


async def test_room_state_round_trip_and_ends_with_the_room(store: Store) -> None:
    assert await store.get_room_state("koffie") == {}
    await store.add_participant(participant("a"), max_participants=5)
    await store.set_room_state("koffie", {"locked": True, "spotlight": "a"})
    assert await store.get_room_state("koffie") == {"locked": True, "spotlight": "a"}
    assert await store.get_room_state("thee") == {}
    await store.remove_participant("koffie", "a")
    assert await store.get_room_state("koffie") == {}


# --- durable directory ---------------------------------------------------------------------


async def test_directory_put_get_list_delete(store: Store) -> None:
    assert await store.get_record("people", "p1") is None
    assert await store.list_records("people") == []

    await store.put_record("people", "p2", {"id": "p2", "name": "Bert"})
    await store.put_record("people", "p1", {"id": "p1", "name": "Annie", "tags": ["koor"]})
    await store.put_record("kiosks", "p1", {"id": "p1", "location": "De Hoven"})

    annie = {"id": "p1", "name": "Annie", "tags": ["koor"]}
    assert await store.get_record("people", "p1") == annie
    assert await store.list_records("people") == [annie, {"id": "p2", "name": "Bert"}]
    assert await store.list_records("kiosks") == [{"id": "p1", "location": "De Hoven"}]
    assert await store.list_records("contacts") == []

    assert await store.delete_record("people", "p1") is True
    assert await store.delete_record("people", "p1") is False
    assert await store.get_record("people", "p1") is None
    assert await store.list_records("people") == [{"id": "p2", "name": "Bert"}]
    assert await store.get_record("kiosks", "p1") == {"id": "p1", "location": "De Hoven"}


async def test_directory_overwrite_replaces_whole_record(store: Store) -> None:
    await store.put_record("activities", "a1", {"title": "Bingo", "weekday": 2})
    await store.put_record("activities", "a1", {"title": "Zingen"})

    assert await store.get_record("activities", "a1") == {"title": "Zingen"}
    assert await store.list_records("activities") == [{"title": "Zingen"}]


@pytest.mark.parametrize("kind", ["", "person", "People", "rooms", "people; DROP TABLE people"])
async def test_directory_rejects_unknown_kinds(store: Store, kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        await store.put_record(kind, "x", {})
    with pytest.raises(ValueError, match="kind"):
        await store.get_record(kind, "x")
    with pytest.raises(ValueError, match="kind"):
        await store.list_records(kind)
    with pytest.raises(ValueError, match="kind"):
        await store.delete_record(kind, "x")


@pytest.mark.parametrize("record_id", ["", "x" * 129, 42, None])
async def test_directory_rejects_invalid_ids(store: Store, record_id: Any) -> None:
    with pytest.raises(ValueError, match="record id"):
        await store.put_record("people", record_id, {"name": "x"})
    assert await store.list_records("people") == []


async def test_directory_accepts_longest_id(store: Store) -> None:
    record_id = "x" * 128
    await store.put_record("people", record_id, {"name": "lang"})
    assert await store.get_record("people", record_id) == {"name": "lang"}


async def test_directory_survives_reopening(make_store: StoreFactory) -> None:
    first = await make_store()
    await first.put_record("people", "p1", {"name": "Annie"})
    await first.put_record("kiosks", "k1", {"location": "Buiten"})
    await first.put_record("people", "p2", {"name": "weg"})
    await first.delete_record("people", "p2")
    await first.close()

    second = await make_store()
    assert await second.get_record("people", "p1") == {"name": "Annie"}
    assert await second.list_records("people") == [{"name": "Annie"}]
    assert await second.list_records("kiosks") == [{"location": "Buiten"}]


# --- revocations, bans and staff sessions --------------------------------------------------


async def test_revocation_keeps_the_later_time_and_survives_reopening(make_store: StoreFactory) -> None:
    first = await make_store()
    assert await first.revocations(["participant:a", "room:r"]) == {}
    await first.revoke("participant:a", 1000.5, keep_s=60)
    await first.revoke("participant:a", 900.0, keep_s=60)  # earlier: changes nothing
    await first.revoke("room:r", 2000.25, keep_s=60)
    assert await first.revocations(["participant:a", "room:r", "participant:b"]) == {
        "participant:a": 1000.5,
        "room:r": 2000.25,
    }
    await first.revoke("participant:a", 1500.0, keep_s=60)
    await first.close()
    second = await make_store()
    assert await second.revocations(["participant:a", "room:r"]) == {"participant:a": 1500.0, "room:r": 2000.25}


async def test_revocation_is_forgotten_after_keep(store: Store) -> None:
    await store.revoke("participant:a", 1000.0, keep_s=0.3)
    assert await store.revocations(["participant:a"]) == {"participant:a": 1000.0}
    await asyncio.sleep(0.5)
    assert await store.revocations(["participant:a"]) == {}


async def test_bans_until_their_time_or_unban_and_survive_reopening(make_store: StoreFactory) -> None:
    first = await make_store()
    now = time.time()
    await first.ban("gym", "p-1", {"name": "Piet"}, until=now + 60)
    await first.ban("gym", "p-2", {"name": "Kees"}, until=now + 0.3)
    await first.ban("bingo", "p-3", {"name": "Ans"}, until=now + 60)
    assert await first.bans("gym") == {"p-1": {"name": "Piet"}, "p-2": {"name": "Kees"}}
    assert await first.access(["participant:p-1"], "gym", "p-1") == ({}, {"name": "Piet"})
    assert await first.access(["participant:p-3"], "gym", "p-3") == ({}, None)
    await asyncio.sleep(0.5)
    assert await first.bans("gym") == {"p-1": {"name": "Piet"}}
    assert await first.access([], "gym", "p-2") == ({}, None)
    await first.close()
    second = await make_store()
    assert await second.bans("gym") == {"p-1": {"name": "Piet"}}
    assert await second.unban("gym", "p-1") is True
    assert await second.unban("gym", "p-1") is False
    assert await second.bans("gym") == {}
    assert await second.bans("bingo") == {"p-3": {"name": "Ans"}}
    await second.revoke("room:gym", 5.0, keep_s=60)
    assert await second.access(["participant:p-1", "room:gym"], "gym", "p-1") == ({"room:gym": 5.0}, None)


async def test_join_room_refuses_a_revoked_or_banned_joiner_and_writes_nothing(store: Store) -> None:
    def joiner(pid: str) -> ParticipantState:
        return ParticipantState(participant_id=pid, room="gym", name=pid, role="senior", node_id="n", joined_at=1.0)

    check = AccessCheck(issued_at=100.0, subjects=("room:gym", "participant:p-1"))
    await store.revoke("participant:p-1", 100.5, keep_s=60)
    with pytest.raises(AccessRefused) as refused:
        await store.join_room(joiner("p-1"), ADMIT, 10, 5.0, check)
    assert refused.value.subject == "participant:p-1"
    await store.revoke("room:gym", 101.0, keep_s=60)
    with pytest.raises(AccessRefused) as refused:
        await store.join_room(joiner("p-1"), ADMIT, 10, 5.0, check)
    assert refused.value.subject == "room:gym"
    # Issued after both: in, unless banned.
    later = AccessCheck(issued_at=200.0, subjects=check.subjects)
    await store.ban("gym", "p-2", {"name": "p-2"}, until=time.time() + 60)
    with pytest.raises(AccessRefused) as refused:
        await store.join_room(joiner("p-2"), ADMIT, 10, 5.0, AccessCheck(200.0, ("room:gym", "participant:p-2")))
    assert refused.value.subject is None
    assert await store.list_participants("gym") == [] and not await store.is_present("p-2")
    result = await store.join_room(joiner("p-1"), ADMIT, 10, 5.0, later)
    assert result.admitted and [p.participant_id for p in result.participants] == ["p-1"]


async def test_staff_sessions_end_one_by_one_or_per_account(make_store: StoreFactory) -> None:
    first = await make_store()
    for key, account in (("k1", "staff-a"), ("k2", "staff-a"), ("k3", "staff-a"), ("k4", "staff-b")):
        await first.put_staff_session(key, {"account": account, "created": 1.0, "seen": 1.0}, ttl_s=60)
    assert await first.get_staff_session("k1") == {"account": "staff-a", "created": 1.0, "seen": 1.0}
    await first.put_staff_session("k1", {"account": "staff-a", "created": 1.0, "seen": 5.0}, ttl_s=60)
    assert (await first.get_staff_session("k1") or {})["seen"] == 5.0
    await first.delete_staff_session("k2")
    assert await first.get_staff_session("k2") is None
    await first.close()
    second = await make_store()
    assert await second.get_staff_session("k3") is not None
    assert await second.delete_staff_sessions("staff-a", keep="k1") == 1
    assert await second.get_staff_session("k3") is None
    assert await second.get_staff_session("k1") is not None
    assert await second.get_staff_session("k4") is not None
    assert await second.delete_staff_sessions("staff-a") == 1
    assert await second.get_staff_session("k1") is None
    assert await second.delete_staff_sessions("nobody") == 0


async def test_staff_session_expires(store: Store) -> None:
    await store.put_staff_session("k1", {"account": "staff-a"}, ttl_s=0.3)
    await asyncio.sleep(0.5)
    assert await store.get_staff_session("k1") is None


# --- Redis only ----------------------------------------------------------------------------


@pytest.fixture
async def redis_nodes(redis_server: RedisServer) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    prefix = f"vztest:{uuid4().hex}:"
    a = RedisStore(redis_server.url, node_id="node-a", prefix=prefix)
    b = RedisStore(redis_server.url, node_id="node-b", prefix=prefix)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()
    await _delete_prefix(redis_server.url, prefix)


async def test_redis_nodes_share_state_and_events(
    redis_nodes: tuple[RedisStore, RedisStore],
) -> None:
    a, b = redis_nodes
    received: list[dict[str, Any]] = []
    await b.subscribe("koffie", received.append)

    await a.add_participant(participant("x", node_id="node-a"), max_participants=1)
    with pytest.raises(RoomFull):
        await b.add_participant(participant("y", node_id="node-b"), max_participants=1)
    await a.touch_presence("x", ttl_s=30)
    await a.publish("koffie", {"type": "hello"})

    assert [p.participant_id for p in await b.list_participants("koffie")] == ["x"]
    assert await b.is_present("x")
    await eventually(lambda: received == [{"type": "hello"}])


async def test_redis_prefixes_are_isolated(redis_server: RedisServer) -> None:
    prefixes = [f"vztest:{uuid4().hex}:" for _ in range(2)]
    stores = [RedisStore(redis_server.url, node_id="n", prefix=prefix) for prefix in prefixes]
    for s in stores:
        await s.open()
    try:
        await stores[0].add_participant(participant("a"), max_participants=5)
        await stores[0].put_record("people", "p1", {"name": "Annie"})
        assert await stores[1].list_rooms() == {}
        assert await stores[1].get_record("people", "p1") is None
    finally:
        for s, prefix in zip(stores, prefixes):
            await s.close()
            await _delete_prefix(redis_server.url, prefix)


async def test_redis_unreachable_raises_store_unavailable() -> None:
    with RedisServer() as server:
        url = server.url
        store = RedisStore(url, node_id="n", prefix="vztest:down:")
        await store.open()
    # The server is gone now.
    try:
        with pytest.raises(StoreUnavailable):
            await store.list_rooms()
        with pytest.raises(StoreUnavailable):
            await store.add_participant(participant("a"), max_participants=5)
        with pytest.raises(StoreUnavailable):
            await store.publish("koffie", {})
    finally:
        await store.close()

    never = RedisStore(url, node_id="n")
    with pytest.raises(StoreUnavailable):
        await never.open()
    await never.close()


async def test_redis_full_server_is_unavailable_not_a_crash() -> None:
    """noeviction + maxmemory: writes fail with OOM, which callers must see as retryable."""
    import redis.asyncio as aioredis

    with RedisServer() as server:
        store = RedisStore(server.url, node_id="n", prefix="vztest:oom:")
        await store.open()
        admin = aioredis.Redis.from_url(server.url)
        try:
            await admin.config_set("maxmemory-policy", "noeviction")
            await admin.config_set("maxmemory", "1")
            with pytest.raises(StoreUnavailable, match="OutOfMemory"):
                await store.add_participant(participant("a"), max_participants=5)
            with pytest.raises(StoreUnavailable):
                await store.put_record("people", "p1", {"name": "x"})
            await admin.config_set("maxmemory", "0")
            await store.add_participant(participant("a"), max_participants=5)
            assert [p.participant_id for p in await store.list_participants("koffie")] == ["a"]
        finally:
            await admin.aclose()
            await store.close()


async def test_redis_through_sentinel(tmp_path: Path) -> None:
    """A `redis+sentinel://` URL reaches the primary a real Sentinel names."""
    import shutil
    import socket
    import subprocess
    import time

    with RedisServer() as primary:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor vz 127.0.0.1 {primary.port} 1\n"
        )
        sentinel = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        try:
            store = RedisStore(f"redis+sentinel://127.0.0.1:{port}/vz", node_id="n", prefix="vztest:sentinel:")
            deadline = time.monotonic() + 10
            while True:
                try:
                    await store.open()
                    break
                except StoreUnavailable:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            try:
                await store.add_participant(participant("a"), max_participants=5)
                assert [p.participant_id for p in await store.list_participants("koffie")] == ["a"]
            finally:
                await store.remove_participant("koffie", "a")
                await store.close()
        finally:
            sentinel.terminate()
            sentinel.wait(timeout=10)


async def test_redis_busy_pool_waits_and_heartbeat_has_its_own_connection(redis_server: RedisServer) -> None:
    """A burst that takes every pooled connection makes commands wait, not fail, and the
    node's heartbeat still gets through at once (a busy pool must not look like an outage)."""
    prefix = f"vzpool:{uuid4().hex}:"
    store = RedisStore(redis_server.url, node_id="n1", prefix=prefix, max_connections=3, pool_timeout_s=5.0)
    await store.open()
    try:
        # The control connection is one of the 3; these two blocking pops hold the rest.
        hold = [asyncio.ensure_future(store._redis.blpop(f"{prefix}nothing", timeout=1)) for _ in range(2)]
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(store.get_room_state("r"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        started = asyncio.get_running_loop().time()
        await store.heartbeat_node("n1", {"load": 0}, 5.0)
        assert "n1" in await store.live_nodes()
        assert asyncio.get_running_loop().time() - started < 0.5
        assert not waiting.done()
        assert await waiting == {}
        await asyncio.gather(*hold)
    finally:
        await store.forget_node("n1")
        await store.close()
        await _delete_prefix(redis_server.url, prefix)


async def test_redis_pool_wait_is_bounded(redis_server: RedisServer) -> None:
    prefix = f"vzpool:{uuid4().hex}:"
    store = RedisStore(redis_server.url, node_id="n1", prefix=prefix, max_connections=2, pool_timeout_s=0.2)
    await store.open()
    try:
        hold = asyncio.ensure_future(store._redis.blpop(f"{prefix}nothing", timeout=1))
        await asyncio.sleep(0.1)
        with pytest.raises(StoreUnavailable):
            await store.get_room_state("r")
        await hold
    finally:
        await store.close()
