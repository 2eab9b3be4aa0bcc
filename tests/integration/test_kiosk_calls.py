"""Family drop-in on the kiosk appliance: a trusted contact's ten-second warning with no
camera sent before it ends, ringing for anyone else, decline, and missed calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from kiosk_client.appliance import TRUSTED_WARNING_S, Mode
from kiosk_client.call import CallClient
from kiosk_client.media import open_audio, open_video
from kiosk_client.runner import KioskApp
from kiosk_client.screen import Layout
from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, SFU_KEY
from server.directory import Contact
from server.invites import issue_invite, named_secret

from tests.conftest import RunningServer
from tests.kiosk_support import (
    SENIOR,
    family_call,
    kiosk_config,
    provision,
    real_clock,
    running_kiosk,
    screenshot,
    seed,
)
from tests.support import eventually


@pytest.fixture
async def kiosk(server: RunningServer, tmp_path: Path) -> AsyncIterator[KioskApp]:
    await seed(server)
    state_dir = tmp_path / "kiosk-state"
    await provision(server, state_dir)
    async with running_kiosk(kiosk_config(server.url, state_dir), real_clock()) as app:
        await eventually(lambda: app.model.mode is Mode.HOME, 10, "home")
        yield app


@pytest.fixture
async def family(server: RunningServer) -> AsyncIterator[list[CallClient]]:
    clients: list[CallClient] = []
    yield clients
    for client in clients:
        await client.close()


async def _family_joins(server: RunningServer, family: list[CallClient], contact_id: str, publish: bool) -> tuple[dict, CallClient]:
    call = await family_call(server, contact_id)
    video = open_video("testsrc", 320, 240, 15).video if publish else None
    audio = open_audio("tone").audio if publish else None
    client = CallClient(server.url, call["token"], video=video, audio=audio)
    family.append(client)
    await client.start()
    return call, client


async def _kiosk_shows_the_call(
    server: RunningServer, kiosk: KioskApp, family: list[CallClient], contact_id: str, *,
    publish: bool, state: str, mode: Mode, sound: str, screen: str,
) -> tuple[dict, CallClient, Layout]:
    """`contact_id` calls; the server puts the call in `state` and the kiosk goes to `mode`
    with `sound`: the call, the caller, and the kiosk's screen (screenshot `screen`)."""
    call, caller = await _family_joins(server, family, contact_id, publish)
    assert call["state"] == state
    await eventually(lambda: kiosk.model.mode is mode, 10, f"the kiosk in {mode.name}")
    assert kiosk.sounds[-1] == sound
    return call, caller, screenshot(kiosk, screen)


def _senior_producers(server: RunningServer, room: str) -> list:
    router = server.app[SFU_KEY].routers.get(room)
    return [p for p in router.producers if p.participant_id == SENIOR] if router else []


async def test_trusted_drop_in_warns_first_and_sends_nothing_before(server: RunningServer, kiosk: KioskApp, family: list[CallClient]) -> None:
    # The ten-second warning.
    call, sanne, layout = await _kiosk_shows_the_call(
        server, kiosk, family, "c-sanne", publish=True, state="warning", mode=Mode.INCOMING, sound="chime",
        screen="incoming-trusted",
    )
    assert layout.text_shown("Sanne de Vries belt u")
    assert layout.text_shown("Over 10 seconden ziet en hoort u elkaar.")
    assert layout.button("not_now") and layout.button("answer")

    # Nine seconds into the warning: no room, no peer connection, no camera, nothing at the server.
    kiosk.clock.advance(TRUSTED_WARNING_S - 1)
    await eventually(lambda: kiosk.render().text_shown("Over 1 seconden") or True, 1)
    assert kiosk.model.mode is Mode.INCOMING
    assert kiosk.room is None
    router = server.app[SFU_KEY].routers[call["room"]]
    assert SENIOR not in router.transports
    assert _senior_producers(server, call["room"]) == []
    assert not any(m["type"] == "call_answer" for m in kiosk.sent)

    # The warning runs out: the kiosk answers and joins; now its camera reaches the family.
    kiosk.clock.advance(1.5)
    await eventually(lambda: kiosk.model.mode is Mode.IN_CALL and kiosk.room is not None, 10, "joining the call")
    assert {"type": "call_answer", "call_id": call["call_id"], "accept": True}.items() <= kiosk.sent[-1].items()
    await eventually(
        lambda: (m := sanne.remote.get(SENIOR)) is not None and m.video_frames >= 5 and m.audio_frames >= 5,
        20, "Sanne sees and hears the kiosk",
    )
    assert any(p.kind == "video" and p.packets > 0 for p in _senior_producers(server, call["room"]))
    await eventually(lambda: kiosk.wall.frames_in.get("c-sanne", 0) >= 5, 10, "the kiosk sees Sanne")
    assert kiosk.speaker.voice_samples_played > 0 or not kiosk.speaker.available

    # Sanne hangs up: the kiosk goes home by itself and closes its camera.
    await sanne.close()
    family.remove(sanne)
    await eventually(lambda: kiosk.model.mode is Mode.HOME and kiosk.room is None, 15, "home after the call")
    assert kiosk.model.notes == []


async def test_untrusted_caller_rings_and_decline_says_no(server: RunningServer, kiosk: KioskApp, family: list[CallClient]) -> None:
    call, piet, layout = await _kiosk_shows_the_call(
        server, kiosk, family, "c-piet", publish=False, state="ringing", mode=Mode.RINGING, sound="ring", screen="ringing",
    )
    assert layout.text_shown("Buurman Piet belt u")
    accept, decline = layout.button("answer"), layout.button("decline")
    assert accept and decline
    # Far apart, so a shaking hand does not hit the wrong one.
    assert decline.rect.left - accept.rect.right > 100
    # Ringing is no admission: still nothing of the kiosk in the call room.
    kiosk.clock.advance(20)
    await eventually(lambda: kiosk.model.mode is Mode.RINGING, 1)
    assert kiosk.room is None and _senior_producers(server, call["room"]) == []

    kiosk.press("decline")
    assert kiosk.model.mode is Mode.HOME and kiosk.sounds[-1] == "none"
    await eventually(
        lambda: any(e.get("type") == "call_state" and e.get("state") == "declined" for e in piet.events),
        10, "the caller hears no",
    )
    assert kiosk.room is None and kiosk.model.notes == []
    assert {"type": "call_answer", "call_id": call["call_id"], "accept": False}.items() <= kiosk.sent[-1].items()


async def test_unanswered_ring_leaves_a_missed_call_note(server: RunningServer, kiosk: KioskApp, family: list[CallClient]) -> None:
    call, _ = await _family_joins(server, family, "c-piet", publish=False)
    await eventually(lambda: kiosk.model.mode is Mode.RINGING, 10, "ringing")
    incoming = kiosk.model.incoming
    assert incoming is not None
    kiosk.clock.advance(45 + 1)  # the server's ring_timeout_ms, on the kiosk's clock
    await eventually(lambda: kiosk.model.mode is Mode.HOME, 5, "home after ringing out")
    assert kiosk.sounds[-1] == "none"
    assert not any(m.get("type") == "call_answer" for m in kiosk.sent), "a missed call is not a decline"
    [note] = kiosk.model.notes
    assert note.key == "missed_call" and note.params["name"] == "Buurman Piet"
    layout = screenshot(kiosk, "missed-call")
    assert layout.text_shown("Gemiste oproep van Buurman Piet om")
    assert layout.button("dismiss")
    kiosk.press("dismiss")
    assert kiosk.model.notes == []
    assert kiosk.room is None and _senior_producers(server, call["room"]) == []


async def test_accepting_an_untrusted_call_connects(server: RunningServer, kiosk: KioskApp, family: list[CallClient]) -> None:
    call, piet = await _family_joins(server, family, "c-piet", publish=True)
    await eventually(lambda: kiosk.model.mode is Mode.RINGING, 10, "ringing")
    kiosk.press("answer")
    await eventually(
        lambda: (m := piet.remote.get(SENIOR)) is not None and m.video_frames >= 3,
        20, "Piet sees the kiosk once answered",
    )
    assert kiosk.model.mode is Mode.IN_CALL and kiosk.model.session is not None
    assert kiosk.model.session.call_id == call["call_id"]
    kiosk.press("hang_up")
    assert kiosk.model.mode is Mode.HOME
    await eventually(lambda: SENIOR not in server.app[SFU_KEY].routers[call["room"]].transports, 10, "the kiosk left")


# --- the senior calls family ------------------------------------------------------------------


async def _listening_page(server: RunningServer, http: aiohttp.ClientSession, contact_id: str) -> aiohttp.ClientWebSocketResponse:
    """What a family member's open invite page holds: a listening connection."""
    contact = await server.app[DIRECTORY_KEY].get(Contact, contact_id)
    assert contact is not None
    invite = issue_invite(named_secret(server.app[SETTINGS_KEY], "invite"), contact)
    ws = await http.ws_connect(server.url.replace("http", "ws") + "/ws")
    await ws.send_json({"type": "hello", "v": 1, "contact": {"invite": invite}})
    assert (await ws.receive_json(timeout=10))["type"] == "contact_welcome"
    return ws


async def _next(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 15) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive_json()
            if message.get("type") == kind:
                return message


def _senior_anywhere(server: RunningServer) -> bool:
    return any(SENIOR in router.transports for router in server.app[SFU_KEY].routers.values())


async def test_senior_calls_family_and_nothing_is_sent_before_they_accept(
    server: RunningServer, kiosk: KioskApp, family: list[CallClient]
) -> None:
    async with aiohttp.ClientSession() as http:
        page = await _listening_page(server, http, "c-kees")
        kiosk.press("call:c-kees")
        incoming = await _next(page, "incoming_call")
        assert incoming["senior"]["name"] == "Mevrouw Jansen"
        await eventually(lambda: kiosk.model.session is not None and kiosk.model.session.phase == "ringing", 10, "ringing at Kees")
        layout = screenshot(kiosk, "calling")
        assert layout.text_shown("U belt Kees…") and layout.text_shown("We wachten tot Kees opneemt.")
        assert [b.id for b in layout.buttons] == ["hang_up"]
        assert layout.button("hang_up").rect.height >= 0.18 * 800
        # Ringing is no admission: no room, no peer connection, no camera at the server.
        await asyncio.sleep(1.0)
        assert kiosk.room is None and not _senior_anywhere(server)

        await page.send_json({"type": "call_answer", "call_id": incoming["call_id"], "accept": True})
        join = await _next(page, "call_join")
        kees = CallClient(server.url, join["token"], video=open_video("testsrc", 320, 240, 15).video, audio=open_audio("tone").audio)
        family.append(kees)
        await kees.start()
        await eventually(
            lambda: (m := kees.remote.get(SENIOR)) is not None and m.video_frames >= 5 and m.audio_frames >= 5,
            25, "Kees sees and hears the kiosk",
        )
        await eventually(lambda: kiosk.wall.frames_in.get("c-kees", 0) >= 5, 15, "the kiosk sees Kees")
        assert kiosk.model.session is not None and kiosk.model.session.call_id == incoming["call_id"]
        kiosk.press("hang_up")
        await eventually(lambda: kiosk.room is None and not _senior_anywhere(server), 15, "the kiosk left")
        await page.close()


async def test_senior_calls_family_that_is_not_listening_or_declines(server: RunningServer, kiosk: KioskApp) -> None:
    kiosk.press("call:c-kees")
    await eventually(lambda: kiosk.model.mode is Mode.HOME and bool(kiosk.model.notes), 10, "home with a note")
    assert kiosk.render().text_shown("Kees is nu niet bereikbaar. Probeer het later nog eens.")
    kiosk.press("dismiss")
    async with aiohttp.ClientSession() as http:
        page = await _listening_page(server, http, "c-kees")
        kiosk.press("call:c-kees")
        incoming = await _next(page, "incoming_call")
        await page.send_json({"type": "call_answer", "call_id": incoming["call_id"], "accept": False})
        await eventually(lambda: kiosk.model.mode is Mode.HOME and bool(kiosk.model.notes), 10, "home after the decline")
        assert kiosk.render().text_shown("Kees kan nu niet opnemen.")
        assert kiosk.room is None and not _senior_anywhere(server)
        # The senior hangs up while it rings: the page stops ringing.
        kiosk.press("dismiss")
        kiosk.press("call:c-kees")
        incoming = await _next(page, "incoming_call")
        await eventually(lambda: kiosk.model.session is not None and kiosk.model.session.phase == "ringing", 10, "ringing")
        kiosk.press("hang_up")
        cancelled = await _next(page, "call_cancelled")
        assert cancelled == {"type": "call_cancelled", "call_id": incoming["call_id"], "reason": "hung_up"}
        assert kiosk.model.mode is Mode.HOME and kiosk.model.notes == []
        await page.close()
