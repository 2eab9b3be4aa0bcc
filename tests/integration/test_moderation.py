"""Lobby with automatic knocking, and a host's moderation tools, over the real server."""

from __future__ import annotations

from typing import Any

from server.appkeys import DIRECTORY_KEY, SFU_KEY, STORE_KEY
from server.directory import Activity, Senior
from signaling.protocol import CloseCode

from tests.conftest import RunningServer, WsClient, hello, join


async def _activity(server: RunningServer, *, guests: bool) -> None:
    directory = server.app[DIRECTORY_KEY]
    await directory.put(Senior(id="s-1", name="Mevrouw Jansen"), actor="test")
    await directory.put(
        Activity(id="room-1", title="Stoelgym", enrolled=["s-1"], guests_allowed=guests,
                 slots=[{"weekday": "tuesday", "start": "10:00", "duration_min": 45}]),
        actor="test",
    )


async def _into_the_lobby(client: WsClient, token: str) -> dict[str, Any]:
    """Hello and join: the "lobby" the client waits in."""
    await hello(client, token)
    await client.send({"type": "join", "room": "room-1"})
    return await client.expect("lobby")


async def _host_and_family_in_the_lobby(server: RunningServer, connect: Any, family_id: str) -> tuple[WsClient, WsClient]:
    await _activity(server, guests=True)
    host, family = await connect(), await connect()
    await join(host, server.token(role="host", name="Ans"))
    await _into_the_lobby(family, server.token(role="family", name="Piet", participant_id=family_id))
    return host, family


async def test_family_knocks_automatically_and_is_admitted(server: RunningServer, connect: Any) -> None:
    await _activity(server, guests=True)
    host, senior, family = await connect(), await connect(), await connect()
    await join(host, server.token(role="host", name="Ans", participant_id="p-host"))
    await join(senior, server.token(role="senior", name="Jansen", participant_id="s-1"))

    lobby = await _into_the_lobby(family, server.token(role="family", name="Sanne", participant_id="c-1"))
    assert lobby["room"] == "room-1"
    knock = await host.expect("knock")
    assert knock["participant"]["name"] == "Sanne" and knock["participant"]["admitted"] is False
    # Only moderators hear the knock, and waiting is not yet being in the room.
    await senior.send({"type": "ping", "id": "s"})
    await senior.expect("pong")
    assert not [m for m in senior.received if m["type"] in ("knock", "participant_joined")]
    # A waiting participant can do nothing but wait.
    await family.send({"type": "publish", "audio": True, "video": True})
    await family.expect_error("forbidden")
    # The senior (no moderate permission) cannot let anyone in.
    await senior.send({"type": "admit", "participant_id": "c-1"})
    await senior.expect_error("forbidden")

    await host.send({"type": "admit", "participant_id": "c-1"})
    joined = await family.expect("joined")
    assert [p["participant_id"] for p in joined["participants"]] == ["p-host", "s-1", "c-1"]
    assert (await host.expect("lobby_left"))["reason"] == "admitted"
    assert (await senior.expect("participant_joined"))["participant"]["participant_id"] == "c-1"
    await host.send({"type": "admit", "participant_id": "c-1"})
    await host.expect_error("not_in_lobby")


async def test_denied_family_is_told_and_closed(server: RunningServer, connect: Any) -> None:
    host, family = await _host_and_family_in_the_lobby(server, connect, "c-2")
    await host.expect("knock")
    await host.send({"type": "deny", "participant_id": "c-2"})
    await family.expect("denied")
    assert await family.closed() == CloseCode.DENIED
    assert (await host.expect("lobby_left"))["reason"] == "denied"
    names = [p.name for p in await server.app[STORE_KEY].list_participants("room-1")]
    assert names == ["Ans"]


async def test_family_refused_when_activity_takes_no_guests(server: RunningServer, connect: Any) -> None:
    await _activity(server, guests=False)
    family = await connect()
    await hello(family, server.token(role="family", name="Piet"))
    await family.send({"type": "join", "room": "room-1"})
    await family.expect_error("forbidden")
    assert await server.app[STORE_KEY].list_rooms() == {}


async def test_lobby_leaver_is_reported_to_hosts(server: RunningServer, connect: Any) -> None:
    host, family = await _host_and_family_in_the_lobby(server, connect, "c-3")
    await family.send({"type": "leave"})
    gone = await host.expect("lobby_left")
    assert gone["participant_id"] == "c-3" and gone["reason"] == "left"
    assert not [m for m in host.received if m["type"] == "participant_left"]


async def test_locked_room_sends_seniors_to_the_lobby(server: RunningServer, connect: Any) -> None:
    host, senior = await connect(), await connect()
    joined = await join(host, server.token(role="host", name="Ans"))
    assert joined["room_state"] == {"locked": False, "spotlight": None, "music_mode": False}
    assert joined["lobby"] == []
    await host.send({"type": "lock", "locked": True})
    assert (await host.expect("room_updated"))["room"]["locked"] is True
    await _into_the_lobby(senior, server.token(name="Laat", participant_id="s-late"))
    await host.expect("knock")
    await host.send({"type": "admit", "participant_id": "s-late"})
    assert (await senior.expect("joined"))["room_state"]["locked"] is True


async def test_mute_all_ask_unmute_spotlight_music_mode(server: RunningServer, connect: Any) -> None:
    host, a, b = await connect(), await connect(), await connect()
    await join(host, server.token(role="host", name="Ans", participant_id="p-host"))
    await join(a, server.token(name="A", participant_id="p-a"))
    await join(b, server.token(name="B", participant_id="p-b"))

    await host.send({"type": "mute_all", "kind": "audio"})
    muted = {(await a.expect("mute_changed", participant_id=pid))["participant_id"] for pid in ("p-a", "p-b")}
    assert muted == {"p-a", "p-b"}
    states = {p.participant_id: p.audio_muted for p in await server.app[STORE_KEY].list_participants("room-1")}
    assert states == {"p-host": False, "p-a": True, "p-b": True}

    await host.send({"type": "ask_unmute", "participant_id": "p-a", "kind": "audio"})
    request = await a.expect("unmute_requested")
    assert request["kind"] == "audio" and request["by"] == "p-host"
    await b.send({"type": "ping", "id": "b"})
    await b.expect("pong")
    assert not [m for m in b.received if m["type"] == "unmute_requested"]

    await host.send({"type": "spotlight", "participant_id": "p-a"})
    assert (await b.expect("room_updated"))["room"]["spotlight"] == "p-a"
    await host.send({"type": "spotlight", "participant_id": "p-nobody"})
    await host.expect_error("unknown_participant")
    await host.send({"type": "music_mode", "enabled": True})
    update = await a.expect("room_updated", timeout=5)
    while not update["room"]["music_mode"]:
        update = await a.expect("room_updated")
    assert update["room"] == {"locked": False, "spotlight": "p-a", "music_mode": True}

    for message in (
        {"type": "mute_all", "kind": "video"},
        {"type": "lock", "locked": True},
        {"type": "spotlight", "participant_id": None},
        {"type": "music_mode", "enabled": False},
        {"type": "end"},
    ):
        await a.send(message)
        await a.expect_error("forbidden")
    assert (await server.app[STORE_KEY].get_room_state("room-1"))["music_mode"] is True


async def test_end_removes_everyone(server: RunningServer, connect: Any) -> None:
    host, a = await connect(), await connect()
    await join(host, server.token(role="host", name="Ans"))
    await join(a, server.token(name="A"))
    await host.send({"type": "end"})
    for client in (host, a):
        removed = await client.expect("removed")
        assert removed["reason"] == "ended"
        assert await client.closed() == CloseCode.REMOVED
    assert await server.app[STORE_KEY].list_rooms() == {}


async def test_publish_quality_follows_role_and_spotlight(server: RunningServer, connect: Any) -> None:
    host, senior = await connect(), await connect()
    await join(host, server.token(role="host", name="Ans", participant_id="p-host"))
    await join(senior, server.token(name="Jansen", participant_id="s-1"))
    assert (await host.expect("publish_quality"))["video"] == {"max_bitrate_bps": 1_000_000, "max_height": 720}
    assert (await senior.expect("publish_quality"))["video"] == {"max_bitrate_bps": 150_000, "max_height": 240}
    await host.send({"type": "spotlight", "participant_id": "s-1"})
    assert (await senior.expect("publish_quality"))["video"]["max_height"] == 720
    await host.send({"type": "spotlight", "participant_id": None})
    assert (await senior.expect("publish_quality"))["video"]["max_height"] == 240


async def test_music_mode_reoffers_opus_for_music(server: RunningServer, connect: Any) -> None:
    host = await connect()
    await join(host, server.token(role="host", name="Ans"))
    await host.send({"type": "publish", "audio": True, "video": False})
    first = await host.expect("offer")
    assert "stereo=1" not in first["sdp"] and "useinbandfec=1" in first["sdp"]
    await host.send({"type": "music_mode", "enabled": True})
    # The first offer is still unanswered; a stale answer is refused and the music offer
    # follows the next answer. Answering with the real SDP needs a peer, so check the
    # transport's next offer directly.
    transport = server.app[SFU_KEY].routers["room-1"].transports[next(iter(server.app[SFU_KEY].routers["room-1"].transports))]
    await eventually_true(lambda: transport.music_bitrate_bps == 128_000)
    from server.sfu.transport import opus_sdp

    munged = opus_sdp(first["sdp"], 128_000)
    opus_pt = next(l.split(":")[1].split(" ")[0] for l in munged.split("\r\n") if "opus/48000" in l)
    fmtp = next(l for l in munged.split("\r\n") if l.startswith(f"a=fmtp:{opus_pt} "))
    assert "useinbandfec=1;stereo=1;sprop-stereo=1;maxaveragebitrate=128000;usedtx=0" in fmtp
    assert munged.count("maxaveragebitrate") == first["sdp"].count("opus/48000")


async def eventually_true(check: Any, timeout: float = 5.0) -> None:
    import asyncio

    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met")
