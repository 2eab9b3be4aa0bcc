"""Room (server/room.py) without sockets: seats, lobby, moderation, spotlight and video rules,
over the embedded store, the real directory and revocations, and this node's SFU (a
transport without media has no peer connection yet)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from server.config import Settings
from server.directory import Activity, Directory, Senior
from server.room import RoomError, Rooms, Seat
from server.sfu.router import Sfu
from server.store import AccessCheck
from server.store.embedded import EmbeddedStore
from server.sfu.transport import WebRtcTransport
from signaling.revocation import Revocations
from tests.conftest import make_settings

PERMISSIONS = {
    "host": frozenset({"publish", "subscribe", "moderate"}),
    "senior": frozenset({"publish", "subscribe"}),
    "family": frozenset({"publish", "subscribe"}),
}


@dataclass(frozen=True)
class Permit:
    participant_id: str
    name: str
    role: str
    room: str
    expires_at: int = 0

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]


@dataclass
class FakeSeat:
    """The signalling session as the room sees it: what it was sent, and whether it ended."""

    grant: Permit
    room: str | None = None
    transport: WebRtcTransport | None = None
    admitted: bool = False
    joined_at: float = 0.0
    presence_touched: float = 0.0
    early: list[dict[str, Any]] | None = None
    ended: bool = False
    started: float = field(default_factory=time.monotonic)
    connection: object | None = "connected"
    sent: list[dict[str, Any]] = field(default_factory=list)
    ended_for: str | None = None

    @property
    def participant_id(self) -> str:
        return self.grant.participant_id

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def kinds(self) -> list[str]:
        return [m["type"] for m in self.sent]

    def last(self, kind: str) -> dict[str, Any]:
        return [m for m in self.sent if m["type"] == kind][-1]


@dataclass
class Node:
    rooms: Rooms
    store: EmbeddedStore
    directory: Directory
    sfu: Sfu
    released: list[str]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def node(tmp_path: Path, settings_overrides: dict[str, Any]) -> AsyncIterator[Node]:
    settings: Settings = make_settings(tmp_path, **settings_overrides)
    store = EmbeddedStore(settings.data_dir)
    await store.open()
    directory = Directory(store)
    sfu = Sfu((), settings.keyframe_request_interval_s)
    released: list[str] = []

    async def end_seat(seat: Seat, reason: str) -> None:
        # What signalling does: the session ends, then the room frees its seat.
        assert isinstance(seat, FakeSeat)
        seat.ended, seat.ended_for = True, reason
        assert seat.room is not None
        await rooms.of(seat.room).leave(seat, reason)

    async def release(room: str) -> None:
        released.append(room)

    rooms = Rooms(settings, store, sfu, directory, Revocations(store, settings.max_token_ttl_s), end_seat, release)
    try:
        yield Node(rooms, store, directory, sfu, released)
    finally:
        await rooms.close()
        await sfu.close()
        await store.close()


def seat(participant_id: str, role: str = "senior", room: str = "room-1") -> FakeSeat:
    return FakeSeat(Permit(participant_id, participant_id.upper(), role, room))


async def join(node: Node, s: FakeSeat) -> None:
    await node.rooms.join(s, "j", AccessCheck(0.0, ()))


async def settle() -> None:
    """Lets tasks the room spawned (an admitted participant's entry, an end) run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_join_seats_enters_and_tells_the_others(node: Node) -> None:
    host, senior = seat("p-host", "host"), seat("s-1")
    await join(node, host)
    await join(node, senior)
    room = node.rooms.rooms["room-1"]
    assert set(room.seats) == {"p-host", "s-1"}
    joined = senior.last("joined")
    assert joined["ref"] == "j" and joined["self_id"] == "s-1"
    assert [p["participant_id"] for p in joined["participants"]] == ["p-host", "s-1"]
    assert "lobby" not in joined and "lobby" in host.last("joined")
    assert host.last("participant_joined")["participant"]["participant_id"] == "s-1"
    # Media: one router for the room, one transport per seat.
    assert room.router is not None and set(room.router.transports) == {"p-host", "s-1"}
    assert senior.transport is room.router.transports["s-1"]
    assert senior.last("publish_quality")["video"]["max_height"] == 240
    assert host.last("publish_quality")["video"]["max_height"] == 720


async def test_the_last_leave_releases_the_room(node: Node) -> None:
    a, b = seat("s-1"), seat("s-2")
    await join(node, a)
    await join(node, b)
    await node.rooms.of("room-1").leave(a, "left")
    assert b.last("participant_left") == {"type": "participant_left", "participant_id": "s-1", "reason": "left"}
    assert node.released == []
    await node.rooms.of("room-1").leave(b, "left")
    assert "room-1" not in node.rooms.rooms and "room-1" not in node.sfu.routers
    assert node.released == ["room-1"]
    assert await node.store.list_participants("room-1") == []


async def test_joining_again_replaces_the_earlier_seat(node: Node) -> None:
    watcher, first, second = seat("s-w"), seat("s-1"), seat("s-1")
    await join(node, watcher)
    await join(node, first)
    await join(node, second)
    assert first.ended_for == "replaced"
    assert node.rooms.rooms["room-1"].seats["s-1"] is second
    # The others hear the old session leave and the new one join; the new one never hears
    # that it left.
    assert watcher.kinds()[-2:] == ["participant_left", "participant_joined"]
    assert "participant_left" not in second.kinds()


async def _activity(node: Node, *, guests: bool) -> None:
    await node.directory.put(Senior(id="s-1", name="Mevrouw Jansen"), actor="test")
    await node.directory.put(
        Activity(id="room-1", title="Stoelgym", enrolled=["s-1"], guests_allowed=guests,
                 slots=[{"weekday": "tuesday", "start": "10:00", "duration_min": 45}]),
        actor="test",
    )


async def test_family_waits_in_the_lobby_until_admitted(node: Node) -> None:
    await _activity(node, guests=True)
    host, family = seat("p-host", "host"), seat("c-1", "family")
    await join(node, host)
    assert host.last("joined")["enrolled"] == [{"id": "s-1", "name": "Mevrouw Jansen"}]
    await join(node, family)
    assert family.last("lobby") == {"type": "lobby", "ref": "j", "room": "room-1"}
    assert family.transport is None and not family.admitted
    assert host.last("knock")["participant"]["participant_id"] == "c-1"
    room = node.rooms.rooms["room-1"]
    await room.admit("c-1", True)
    await settle()
    assert family.admitted and family.last("joined")["self_id"] == "c-1"
    assert host.last("lobby_left") == {"type": "lobby_left", "participant_id": "c-1", "reason": "admitted"}
    with pytest.raises(RoomError) as refused:
        await room.admit("c-1", True)
    assert refused.value.code == "not_in_lobby"


async def test_a_denied_participant_is_ended(node: Node) -> None:
    await _activity(node, guests=True)
    host, family = seat("p-host", "host"), seat("c-1", "family")
    await join(node, host)
    await join(node, family)
    await node.rooms.rooms["room-1"].admit("c-1", False)
    await settle()
    assert family.ended_for == "denied" and "c-1" not in node.rooms.rooms["room-1"].seats


async def test_an_activity_without_guests_refuses_family(node: Node) -> None:
    await _activity(node, guests=False)
    with pytest.raises(RoomError) as refused:
        await join(node, seat("c-1", "family"))
    assert refused.value.code == "forbidden"
    assert "room-1" not in node.rooms.rooms


@pytest.mark.parametrize("settings_overrides", [{"max_participants_per_room": 1}])
async def test_a_full_room_refuses_and_keeps_no_seat(node: Node) -> None:
    first, second = seat("s-1"), seat("s-2")
    await join(node, first)
    with pytest.raises(RoomError) as refused:
        await join(node, second)
    assert refused.value.code == "room_full" and second.early is None
    assert set(node.rooms.rooms["room-1"].seats) == {"s-1"}


async def test_mute_rules_and_mute_all(node: Node) -> None:
    host, a, b = seat("p-host", "host"), seat("s-1"), seat("s-2")
    for s in (host, a, b):
        await join(node, s)
    room = node.rooms.rooms["room-1"]
    with pytest.raises(RoomError) as refused:
        await room.mute(a, "s-2", "audio", True)
    assert refused.value.code == "forbidden"
    with pytest.raises(RoomError):
        await room.mute(host, "s-1", "audio", False)
    with pytest.raises(RoomError) as unknown:
        await room.mute(host, "nobody", "audio", True)
    assert unknown.value.code == "unknown_participant"
    await room.mute_all(host, "audio")
    changed = [(m["participant_id"], m["muted"]) for m in host.sent if m["type"] == "mute_changed"]
    assert changed == [("s-1", True), ("s-2", True)]
    # Only the participant unmutes themself.
    await room.mute(a, "s-1", "audio", False)
    assert b.last("mute_changed") == {
        "type": "mute_changed", "participant_id": "s-1", "kind": "audio", "muted": False, "by": "s-1"
    }


async def test_spotlight_and_video_rules_drive_the_router(node: Node) -> None:
    await _activity(node, guests=False)
    host, a = seat("p-host", "host"), seat("s-1")
    await join(node, host)
    await join(node, a)
    room = node.rooms.rooms["room-1"]
    router = room.router
    assert router is not None
    # An activity's rules, set by the room from the settings when its media started.
    assert router.activity and router.tiles_to_everyone_up_to == 6 and router.spotlight is None
    await room.spotlight("s-1")
    assert router.spotlight == "s-1"
    assert a.last("publish_quality")["video"]["max_height"] == 720
    assert a.last("room_updated")["room"]["spotlight"] == "s-1"
    with pytest.raises(RoomError) as refused:
        await room.spotlight("nobody")
    assert refused.value.code == "unknown_participant"
    await room.music_mode(True)
    assert all(t.music_bitrate_bps == 128_000 for t in router.transports.values())


@pytest.mark.parametrize("settings_overrides", [{"tiles_to_everyone_up_to": 2}])
async def test_tiles_to_everyone_comes_from_the_settings(node: Node) -> None:
    await join(node, seat("s-1"))
    router = node.rooms.rooms["room-1"].router
    assert router is not None and router.tiles_to_everyone_up_to == 2 and not router.activity


async def test_kick_bans_ends_and_unban_lifts(node: Node) -> None:
    host, a = seat("p-host", "host"), seat("s-1")
    await join(node, host)
    await join(node, a)
    room = node.rooms.rooms["room-1"]
    await room.kick("s-1")
    await settle()
    assert a.ended_for == "kicked"
    assert [b["participant_id"] for b in host.last("ban_list")["banned"]] == ["s-1"]
    await room.unban("s-1")
    assert host.last("ban_list")["banned"] == []
    with pytest.raises(RoomError) as refused:
        await room.unban("s-1")
    assert refused.value.code == "not_banned"


async def test_ending_the_room_ends_every_seat(node: Node) -> None:
    seats = [seat("p-host", "host"), seat("s-1"), seat("s-2")]
    for s in seats:
        await join(node, s)
    await node.rooms.end("room-1", by="p-host")
    await settle()
    assert [s.ended_for for s in seats] == ["ended"] * 3
    assert "room-1" not in node.rooms.rooms and node.released == ["room-1"]


async def test_events_wait_in_early_until_joined(node: Node) -> None:
    """An event published while a joiner's store step runs reaches it after `joined`."""
    watcher = seat("s-w")
    await join(node, watcher)
    joiner = seat("s-1")
    original = node.store.join_room

    async def join_room_then_event(*args: Any) -> Any:
        result = await original(*args)
        await node.rooms.rooms["room-1"].broadcast({"type": "mute_changed", "participant_id": "s-w"})
        return result

    node.store.join_room = join_room_then_event  # type: ignore[method-assign]
    await join(node, joiner)
    assert joiner.kinds()[:2] == ["joined", "mute_changed"]



async def test_events_during_entry_from_the_lobby_come_after_joined(node: Node) -> None:
    """Admitted from the lobby, an entry reads the room again; an event published meanwhile
    reaches the participant after `joined`, whose snapshot may predate it (and would undo it)."""
    await _activity(node, guests=True)
    host, family = seat("p-host", "host"), seat("c-1", "family")
    await join(node, host)
    await join(node, family)
    room = node.rooms.rooms["room-1"]
    read_state = room.state

    async def state_then_event() -> dict[str, Any]:
        state = await read_state()
        await room.broadcast({"type": "mute_changed", "participant_id": "p-host"})
        await asyncio.sleep(0)
        return state

    room.state = state_then_event  # type: ignore[method-assign]
    await room.admit("c-1", True)
    await settle()
    kinds = family.kinds()
    assert "mute_changed" in kinds and kinds.index("joined") < kinds.index("mute_changed"), kinds


async def test_closing_the_rooms_leaves_no_task_running(node: Node) -> None:
    await join(node, seat("s-1"))

    async def never_ends(s: Seat, reason: str) -> None:
        await asyncio.Event().wait()

    node.rooms.end_seat = never_ends
    before = asyncio.all_tasks()
    await node.rooms.end("room-1")
    await settle()
    started = asyncio.all_tasks() - before
    assert started and not any(t.done() for t in started)
    await node.rooms.close()
    assert all(t.done() for t in started)
