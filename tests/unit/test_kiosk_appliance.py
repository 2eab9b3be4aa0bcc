"""The kiosk's state machine on its own: an injected clock, no screen, no network."""

from __future__ import annotations

import datetime as dt
import random
import stat
from pathlib import Path

import pytest

from kiosk_client.appliance import (
    AUTO_JOIN_COUNTDOWN_S,
    FAMILY_IDLE_S,
    FAMILY_TAP_GUARD_S,
    NO_ANSWER_S,
    REQUEST_TIMEOUT_S,
    TRUSTED_WARNING_S,
    Appliance,
    JoinRoom,
    LeaveRoom,
    Mode,
    Participant,
    PlaySound,
    RefreshDirectory,
    RunSelftest,
    Send,
    SetVolume,
    Unpair,
)
from kiosk_client.backoff import Backoff
from kiosk_client.clock import FakeClock
from kiosk_client.state import Credential, StateDir
from kiosk_client.texts import Texts

from tests.support import START, big_family, incoming, welcome


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START - dt.timedelta(minutes=30))


@pytest.fixture
def kiosk(clock: FakeClock) -> Appliance:
    k = Appliance(clock)
    k.start(paired=True)
    k.device_online(welcome())
    assert k.mode is Mode.HOME
    return k


def sends(actions: list, type_: str) -> list[dict]:
    return [a.message for a in actions if isinstance(a, Send) and a.message["type"] == type_]


def joins(actions: list) -> list[JoinRoom]:
    return [a for a in actions if isinstance(a, JoinRoom)]


# --- home, the Join button, auto-join ---------------------------------------------------------


def test_join_lights_up_ten_minutes_before_and_stays_lit_while_running(kiosk: Appliance, clock: FakeClock) -> None:
    assert not kiosk.join_lit()
    assert kiosk.tap("join") == []  # unlit: nothing happens
    clock.set(START - dt.timedelta(minutes=10, seconds=1))
    assert not kiosk.join_lit()
    clock.advance(1)
    assert kiosk.join_lit()
    clock.set(START + dt.timedelta(minutes=44))
    assert kiosk.join_lit()
    clock.set(START + dt.timedelta(minutes=45))
    assert not kiosk.join_lit()


def test_pressing_join_asks_for_a_token_and_joins_with_it(kiosk: Appliance, clock: FakeClock) -> None:
    clock.set(START - dt.timedelta(minutes=5))
    actions = kiosk.tap("join")
    [request] = sends(actions, "activity_join")
    assert request["activity_id"] == "a-gym" and kiosk.mode is Mode.IN_CALL
    assert joins(actions) == []
    # An answer for another activity is ignored; the right one joins.
    assert kiosk.device_message({"type": "activity_token", "activity_id": "a-other", "room": "a-other", "token": "t"}) == []
    actions = kiosk.device_message({"type": "activity_token", "activity_id": "a-gym", "room": "a-gym", "token": "t"})
    assert joins(actions) == [JoinRoom("a-gym", "t", "activity")]
    # Having joined by hand, the start does not bring a countdown.
    clock.set(START + dt.timedelta(seconds=1))
    assert kiosk.tick() == [] and kiosk.mode is Mode.IN_CALL


def test_auto_join_counts_down_ten_seconds_then_joins(kiosk: Appliance, clock: FakeClock) -> None:
    clock.set(START - dt.timedelta(seconds=1))
    assert kiosk.tick() == [] and kiosk.mode is Mode.HOME
    clock.advance(1)
    assert kiosk.tick() == [PlaySound("chime")]
    assert kiosk.mode is Mode.COUNTDOWN and kiosk.seconds_left() == 10
    clock.advance(AUTO_JOIN_COUNTDOWN_S - 0.5)
    assert kiosk.tick() == [] and kiosk.seconds_left() == 1
    clock.advance(0.5)
    actions = kiosk.tick()
    assert PlaySound("none") in actions and sends(actions, "activity_join")
    assert kiosk.mode is Mode.IN_CALL


def test_not_now_cancels_auto_join_for_this_occurrence_only(kiosk: Appliance, clock: FakeClock) -> None:
    clock.set(START)
    kiosk.tick()
    assert kiosk.tap("not_now") == [PlaySound("none")]
    assert kiosk.mode is Mode.HOME
    clock.advance(60)
    assert kiosk.tick() == [] and kiosk.mode is Mode.HOME
    # The Join button still works.
    assert sends(kiosk.tap("join"), "activity_join")


def test_no_auto_join_without_the_setting_or_long_after_the_start(clock: FakeClock) -> None:
    k = Appliance(clock)
    k.start(paired=True)
    k.device_online(welcome(auto_join=False))
    clock.set(START)
    assert k.tick() == [] and k.mode is Mode.HOME
    late = Appliance(clock)
    late.start(paired=True)
    clock.set(START + dt.timedelta(minutes=11))
    late.device_online(welcome())
    assert late.mode is Mode.HOME, "an occurrence well under way is not joined by itself"


def test_after_an_activity_ends_the_kiosk_asks_for_the_next_times(kiosk: Appliance, clock: FakeClock) -> None:
    clock.set(START + dt.timedelta(minutes=45))
    assert RefreshDirectory() in kiosk.tick()
    assert RefreshDirectory() not in kiosk.tick()


def test_volume_buttons_stay_within_bounds(kiosk: Appliance) -> None:
    assert kiosk.tap("volume_up") == [SetVolume(7)]
    for _ in range(10):
        kiosk.tap("volume_up")
    assert kiosk.volume == 10
    for _ in range(20):
        kiosk.tap("volume_down")
    assert kiosk.volume == 1, "never silent: a call must be heard"


# --- family drop-in ---------------------------------------------------------------------------


def test_trusted_auto_answer_warns_ten_seconds_before_anything_is_sent(kiosk: Appliance, clock: FakeClock) -> None:
    assert kiosk.device_message(incoming("c-sanne")) == [PlaySound("chime")]
    assert kiosk.mode is Mode.INCOMING and kiosk.seconds_left() == 10
    clock.advance(TRUSTED_WARNING_S - 0.1)
    assert kiosk.tick() == [] and kiosk.mode is Mode.INCOMING
    clock.advance(0.1)
    actions = kiosk.tick()
    [answer] = sends(actions, "call_answer")
    assert answer["accept"] is True and answer["call_id"] == "call-1"
    assert joins(actions) == [], "no room (no camera) until the server sends call_join"
    actions = kiosk.device_message({"type": "call_join", "call_id": "call-1", "room": "call-x", "token": "t"})
    assert joins(actions) == [JoinRoom("call-x", "t", "call")]


def test_trusted_warning_can_be_refused_or_answered_at_once(kiosk: Appliance) -> None:
    kiosk.device_message(incoming("c-sanne"))
    actions = kiosk.tap("not_now")
    assert sends(actions, "call_answer")[0]["accept"] is False and kiosk.mode is Mode.HOME
    kiosk.device_message(incoming("c-sanne", call_id="call-2"))
    assert sends(kiosk.tap("answer"), "call_answer")[0]["accept"] is True


def test_untrusted_caller_rings_until_answered(kiosk: Appliance, clock: FakeClock) -> None:
    assert kiosk.device_message(incoming("c-piet")) == [PlaySound("ring")]
    assert kiosk.mode is Mode.RINGING
    clock.advance(20)
    assert kiosk.tick() == [], "ringing never answers by itself"
    actions = kiosk.tap("answer")
    assert PlaySound("none") in actions and sends(actions, "call_answer")[0]["accept"] is True


def test_trusted_without_auto_answer_rings_too(kiosk: Appliance) -> None:
    kiosk.device_message(incoming("c-kees"))
    assert kiosk.mode is Mode.RINGING


def test_auto_answer_is_ignored_for_a_contact_that_is_not_trusted(kiosk: Appliance) -> None:
    message = incoming("c-piet")
    message["contact"] = {**message["contact"], "auto_answer": True}
    kiosk.device_message(message)
    assert kiosk.mode is Mode.RINGING


def test_decline(kiosk: Appliance) -> None:
    kiosk.device_message(incoming("c-piet"))
    actions = kiosk.tap("decline")
    assert sends(actions, "call_answer") == [{"type": "call_answer", "call_id": "call-1", "accept": False}]
    assert kiosk.mode is Mode.HOME and kiosk.notes == []


def test_unanswered_ring_becomes_a_missed_call_note_with_call_back(kiosk: Appliance, clock: FakeClock) -> None:
    kiosk.device_message(incoming("c-piet", ring_ms=30000))
    clock.advance(30)
    actions = kiosk.tick()
    assert actions == [PlaySound("none")], "a missed call is not a decline"
    assert kiosk.mode is Mode.HOME
    [note] = kiosk.notes
    assert note.key == "missed_call" and note.params == {"name": "Buurman Piet", "time": "09:30"}
    assert note.contact_id == "c-piet"
    actions = kiosk.tap("call_back:c-piet")
    assert sends(actions, "call_contact") == [{"type": "call_contact", "id": actions[0].message["id"], "contact_id": "c-piet"}]
    assert kiosk.notes == []


def test_caller_hanging_up_while_ringing_is_a_missed_call(kiosk: Appliance) -> None:
    kiosk.device_message(incoming("c-piet"))
    kiosk.device_message({"type": "call_cancelled", "call_id": "call-1", "reason": "caller_left"})
    assert kiosk.mode is Mode.HOME and kiosk.notes[0].key == "missed_call"


def test_answered_on_another_kiosk_is_not_missed(kiosk: Appliance) -> None:
    kiosk.device_message(incoming("c-piet"))
    assert kiosk.device_message({"type": "call_cancelled", "call_id": "call-1", "reason": "answered_elsewhere"}) == [PlaySound("none")]
    assert kiosk.mode is Mode.HOME and kiosk.notes == []


def test_a_call_while_busy_is_declined_and_noted(kiosk: Appliance, clock: FakeClock) -> None:
    clock.set(START - dt.timedelta(minutes=1))
    kiosk.tap("join")
    actions = kiosk.device_message(incoming("c-sanne"))
    assert sends(actions, "call_answer") == [{"type": "call_answer", "call_id": "call-1", "accept": False, "reason": "busy"}]
    assert kiosk.mode is Mode.IN_CALL and kiosk.notes[0].key == "missed_call_busy"


def test_losing_the_connection_while_ringing_is_a_missed_call(kiosk: Appliance) -> None:
    kiosk.device_message(incoming("c-piet"))
    actions = kiosk.device_offline()
    assert PlaySound("none") in actions and kiosk.mode is Mode.OFFLINE and kiosk.notes


def test_call_ends_when_the_family_member_hangs_up(kiosk: Appliance, clock: FakeClock) -> None:
    kiosk.device_message(incoming("c-sanne"))
    kiosk.tap("answer")
    kiosk.device_message({"type": "call_join", "call_id": "call-1", "room": "call-x", "token": "t"})
    me, sanne = Participant("s-1", "Mevrouw Jansen", "senior"), Participant("c-sanne", "Sanne de Vries", "family")
    kiosk.room_event("joined", self_id="s-1", participants=[me, sanne])
    assert kiosk.session is not None and kiosk.session.phase == "connected"
    actions = kiosk.room_event("participant_left", participant_id="c-sanne")
    assert actions == [LeaveRoom()] and kiosk.mode is Mode.HOME and kiosk.notes == []


def test_hang_up_leaves_the_room(kiosk: Appliance) -> None:
    kiosk.device_message(incoming("c-sanne"))
    kiosk.tap("answer")
    kiosk.device_message({"type": "call_join", "call_id": "call-1", "room": "call-x", "token": "t"})
    assert kiosk.tap("hang_up") == [LeaveRoom()] and kiosk.mode is Mode.HOME


def test_outgoing_call_nobody_answers(kiosk: Appliance, clock: FakeClock) -> None:
    actions = kiosk.tap("call:c-kees")
    [request] = sends(actions, "call_contact")
    assert request["contact_id"] == "c-kees" and kiosk.session is not None and kiosk.session.outgoing
    actions = kiosk.device_message({"type": "call_join", "call_id": "call-9", "room": "call-9", "token": "t"})
    assert joins(actions) == [JoinRoom("call-9", "t", "call")]
    kiosk.room_event("joined", self_id="s-1", participants=[Participant("s-1", "Mevrouw Jansen", "senior")])
    clock.advance(NO_ANSWER_S + 1)
    assert kiosk.tick() == [LeaveRoom()]
    assert kiosk.mode is Mode.HOME and kiosk.notes[0].key == "no_answer"


def _calling(kiosk: Appliance, contact_id: str = "c-kees", call_id: str = "call-7") -> str:
    [request] = sends(kiosk.tap(f"call:{contact_id}"), "call_contact")
    assert kiosk.session is not None and kiosk.session.outgoing and kiosk.session.phase == "requesting"
    assert kiosk.device_message({"type": "call_ringing", "ref": request["id"], "call_id": call_id, "ring_timeout_ms": 45000}) == []
    assert kiosk.session.phase == "ringing" and kiosk.session.call_id == call_id
    return request["id"]


def test_calling_family_joins_only_once_accepted(kiosk: Appliance, clock: FakeClock) -> None:
    _calling(kiosk)
    # Ringing for longer than a request may take: still calling, and no room, no camera.
    clock.advance(REQUEST_TIMEOUT_S + 10)
    assert kiosk.tick() == [] and kiosk.mode is Mode.IN_CALL and kiosk.session.phase == "ringing"
    # A join for another call is ignored; the right one joins.
    assert kiosk.device_message({"type": "call_join", "call_id": "other", "room": "call-other", "token": "t"}) == []
    actions = kiosk.device_message({"type": "call_join", "call_id": "call-7", "room": "call-call-7", "token": "t"})
    assert joins(actions) == [JoinRoom("call-call-7", "t", "call")]


@pytest.mark.parametrize(
    ("reason", "note", "text"),
    [
        ("unavailable", "contact_unavailable", "Kees is nu niet bereikbaar. Probeer het later nog eens."),
        ("declined", "contact_declined", "Kees kan nu niet opnemen. Probeer het later nog eens."),
        ("missed", "no_answer", "Kees neemt nu niet op. Probeer het later nog eens."),
        ("something_new", "call_failed", "Het gesprek lukt nu niet. Probeer het straks nog eens."),
    ],
)
def test_calling_family_that_does_not_connect_says_why(kiosk: Appliance, reason: str, note: str, text: str) -> None:
    from kiosk_client.texts import Texts

    _calling(kiosk)
    actions = kiosk.device_message({"type": "call_cancelled", "call_id": "call-7", "reason": reason})
    assert joins(actions) == [] and LeaveRoom() not in actions
    assert kiosk.mode is Mode.HOME and kiosk.session is None
    assert kiosk.notes[0].key == note
    assert Texts("nl")(note, **kiosk.notes[0].params) == text


def test_unavailable_answer_to_the_request_itself(kiosk: Appliance) -> None:
    [request] = sends(kiosk.tap("call:c-kees"), "call_contact")
    kiosk.device_message({"type": "call_cancelled", "ref": request["id"], "call_id": "c", "reason": "unavailable"})
    assert kiosk.mode is Mode.HOME and kiosk.notes[0].key == "contact_unavailable"


def test_hanging_up_while_it_rings_stops_the_ringing_there(kiosk: Appliance) -> None:
    _calling(kiosk)
    actions = kiosk.tap("hang_up")
    assert sends(actions, "call_hangup") == [{"type": "call_hangup", "call_id": "call-7"}]
    assert LeaveRoom() not in actions and kiosk.mode is Mode.HOME and kiosk.notes == []
    # The server's confirmation changes nothing.
    assert kiosk.device_message({"type": "call_cancelled", "call_id": "call-7", "reason": "hung_up"}) == []
    assert kiosk.notes == []


def test_hanging_up_before_the_server_answered(kiosk: Appliance) -> None:
    [request] = sends(kiosk.tap("call:c-kees"), "call_contact")
    assert kiosk.tap("hang_up") == [] and kiosk.mode is Mode.HOME
    actions = kiosk.device_message({"type": "call_ringing", "ref": request["id"], "call_id": "call-8", "ring_timeout_ms": 45000})
    assert sends(actions, "call_hangup") == [{"type": "call_hangup", "call_id": "call-8"}]
    assert kiosk.mode is Mode.HOME and kiosk.session is None


def test_ringing_out_without_word_from_the_server(kiosk: Appliance, clock: FakeClock) -> None:
    _calling(kiosk)
    clock.advance(45 + REQUEST_TIMEOUT_S + 1)
    assert kiosk.tick() == []
    assert kiosk.mode is Mode.HOME and kiosk.notes[0].key == "no_answer"


def test_a_refused_request_goes_home_with_plain_words(kiosk: Appliance) -> None:
    actions = kiosk.tap("call:c-kees")
    request_id = sends(actions, "call_contact")[0]["id"]
    kiosk.device_message({"type": "error", "code": "forbidden", "message": "…", "ref": request_id})
    assert kiosk.mode is Mode.HOME and kiosk.notes[0].key == "call_failed"


def test_a_request_without_answer_times_out(kiosk: Appliance, clock: FakeClock) -> None:
    clock.set(START - dt.timedelta(minutes=1))
    assert sends(kiosk.tap("join"), "activity_join")
    clock.advance(REQUEST_TIMEOUT_S - 1)
    assert kiosk.tick() == [] and kiosk.mode is Mode.IN_CALL
    clock.advance(2)
    assert kiosk.tick() == [], "nothing to leave: the room was never joined"
    assert kiosk.mode is Mode.HOME and kiosk.notes[0].key == "join_failed"


# --- more family than fit on the home screen ---------------------------------------------------


@pytest.fixture
def family(clock: FakeClock) -> Appliance:
    k = Appliance(clock)
    k.start(paired=True)
    k.device_online(big_family())
    k.family_page_size = 3
    return k


def open_family(kiosk: Appliance) -> list:
    """Taps "More family" and waits out the guard against a double tap."""
    actions = kiosk.tap("more_family")
    assert isinstance(kiosk.clock, FakeClock)
    kiosk.clock.advance(FAMILY_TAP_GUARD_S)
    return actions


def test_trusted_family_comes_in_the_coordinators_order(family: Appliance) -> None:
    names = [c.name for c in family.trusted_contacts]
    assert names == ["Emma", "Lotte", "Anna", "Bram", "Daan", "Kees", "Sanne de Vries"]
    # Without an order from the server (older servers): alphabetical, as before.
    family.device_online(welcome())
    assert [c.name for c in family.trusted_contacts] == ["Kees", "Sanne de Vries"]


def test_more_family_opens_the_family_screen_and_pages_through_everyone(family: Appliance) -> None:
    assert open_family(family) == [] and family.mode is Mode.FAMILY
    assert family.family_pages == 3
    page, pages, shown = family.family_page_contacts()
    assert (page, pages, [c.name for c in shown]) == (0, 3, ["Emma", "Lotte", "Anna"])
    assert family.tap("family_prev") == [] and family.family_page == 0  # nothing before the first
    family.tap("family_next")
    assert [c.name for c in family.family_page_contacts()[2]] == ["Bram", "Daan", "Kees"]
    family.tap("family_next")
    family.tap("family_next")  # a second tap on the last page stays there
    page, pages, shown = family.family_page_contacts()
    assert (page, [c.name for c in shown]) == (2, ["Sanne de Vries"])
    family.tap("family_prev")
    assert family.family_page == 1
    # Back goes home; opening again starts at the first page.
    assert family.tap("back") == [] and family.mode is Mode.HOME
    open_family(family)
    assert family.family_page == 0
    # A contact who is not trusted is never on it.
    assert all(c.id != "c-piet" for c in family.trusted_contacts)


def test_more_family_needs_the_connection(family: Appliance) -> None:
    family.device_offline()
    assert family.mode is Mode.OFFLINE
    assert open_family(family) == [] and family.mode is Mode.OFFLINE


def test_calling_from_the_family_screen(family: Appliance) -> None:
    open_family(family)
    family.tap("family_next")
    family.tap("family_next")
    actions = family.tap("call:c-sanne")
    [request] = sends(actions, "call_contact")
    assert request["contact_id"] == "c-sanne" and joins(actions) == []
    assert family.mode is Mode.IN_CALL and family.session is not None and family.session.outgoing
    # Not reachable: back home (not the family screen), with plain words.
    family.device_message({"type": "call_cancelled", "ref": request["id"], "reason": "unavailable"})
    assert family.mode is Mode.HOME and family.notes[0].key == "contact_unavailable"
    # Only trusted contacts can be called from the family screen.
    open_family(family)
    assert family.tap("call:c-piet") == [] and family.mode is Mode.FAMILY


def test_the_family_screen_goes_home_after_a_minute_without_a_touch(family: Appliance, clock: FakeClock) -> None:
    open_family(family)
    clock.advance(FAMILY_IDLE_S - 1 - FAMILY_TAP_GUARD_S)
    family.tick()
    assert family.mode is Mode.FAMILY
    family.tap("family_next")  # a touch starts the minute again
    clock.advance(FAMILY_IDLE_S - 1)
    family.tick()
    assert family.mode is Mode.FAMILY and family.family_page == 1
    family.tap("volume_up")  # so does the volume
    clock.advance(FAMILY_IDLE_S - 1)
    assert family.tick() == [] and family.mode is Mode.FAMILY
    clock.advance(1)
    assert family.tick() == [] and family.mode is Mode.HOME


def test_an_incoming_call_takes_over_the_family_screen(family: Appliance, clock: FakeClock) -> None:
    open_family(family)
    actions = family.device_message(incoming("c-piet"))
    assert actions == [PlaySound("ring")] and family.mode is Mode.RINGING
    assert sends(actions, "call_answer") == []  # not refused as "busy"
    family.tap("decline")
    assert family.mode is Mode.HOME
    # A trusted caller's warning, too: after it, the call is answered.
    open_family(family)
    family.device_message(incoming("c-sanne", call_id="call-2"))
    assert family.mode is Mode.INCOMING
    clock.advance(TRUSTED_WARNING_S)
    assert sends(family.tick(), "call_answer")[0]["accept"] is True and family.mode is Mode.IN_CALL


def test_the_countdown_takes_over_the_family_screen(family: Appliance, clock: FakeClock) -> None:
    clock.set(START - dt.timedelta(seconds=5))
    open_family(family)
    clock.advance(5 - FAMILY_TAP_GUARD_S)
    assert family.tick() == [PlaySound("chime")] and family.mode is Mode.COUNTDOWN
    family.tap("not_now")
    assert family.mode is Mode.HOME


def test_losing_the_connection_on_the_family_screen_goes_home(family: Appliance) -> None:
    open_family(family)
    family.device_offline()
    assert family.mode is Mode.OFFLINE
    family.device_online(big_family())
    assert family.mode is Mode.HOME


def test_a_shorter_family_list_keeps_the_page_in_range(family: Appliance) -> None:
    open_family(family)
    family.tap("family_next")
    family.tap("family_next")
    family.device_online(welcome())  # the coordinator removed five of them
    page, pages, shown = family.family_page_contacts()
    assert (page, pages, [c.name for c in shown]) == (0, 1, ["Kees", "Sanne de Vries"])
    family.tap("family_prev")
    assert family.family_page == 0


def test_a_double_tap_on_more_family_does_not_call_whoever_is_underneath(family: Appliance, clock: FakeClock) -> None:
    family.tap("more_family")
    clock.advance(FAMILY_TAP_GUARD_S - 0.1)
    assert family.tap("call:c-emma") == [] and family.tap("family_next") == []
    assert family.mode is Mode.FAMILY and family.family_page == 0 and family.session is None
    clock.advance(0.1)
    assert sends(family.tap("call:c-emma"), "call_contact") and family.mode is Mode.IN_CALL


# --- the room and the connection --------------------------------------------------------------


def in_activity(kiosk: Appliance, clock: FakeClock) -> None:
    clock.set(START - dt.timedelta(minutes=1))
    kiosk.tap("join")
    kiosk.device_message({"type": "activity_token", "activity_id": "a-gym", "room": "a-gym", "token": "t"})
    kiosk.room_event("joined", self_id="s-1", participants=[Participant("s-1", "Mevrouw Jansen", "senior"), Participant("h", "Ingrid", "host")])


def test_reconnecting_and_back_needs_no_touch(kiosk: Appliance, clock: FakeClock) -> None:
    in_activity(kiosk, clock)
    kiosk.device_offline()
    assert kiosk.room_event("reconnecting") == []
    assert kiosk.mode is Mode.IN_CALL and kiosk.session is not None and kiosk.session.phase == "reconnecting"
    kiosk.room_event("connecting")
    assert kiosk.session.phase == "reconnecting"
    kiosk.room_event("joined", self_id="s-1", participants=[])
    assert kiosk.session.phase == "connected" and kiosk.mode is Mode.IN_CALL


def test_an_expired_token_is_renewed_over_the_device_channel(kiosk: Appliance, clock: FakeClock) -> None:
    in_activity(kiosk, clock)
    actions = kiosk.room_event("ended", reason="token")
    assert sends(actions, "activity_join") and kiosk.mode is Mode.IN_CALL
    actions = kiosk.device_message({"type": "activity_token", "activity_id": "a-gym", "room": "a-gym", "token": "t2"})
    assert joins(actions) == [JoinRoom("a-gym", "t2", "activity")]


def test_a_request_lost_while_offline_is_asked_again(kiosk: Appliance, clock: FakeClock) -> None:
    clock.set(START - dt.timedelta(minutes=1))
    kiosk.device_offline()
    kiosk.mode = Mode.HOME  # the Join was pressed just before the connection went
    kiosk.tap("join")
    assert sends(kiosk.device_online(welcome()), "activity_join")


@pytest.mark.parametrize(
    ("reason", "note"),
    [("ended", "activity_ended"), ("kicked", "removed"), ("denied", "denied"), ("room_full", "room_full"), ("replaced", "elsewhere")],
)
def test_why_an_activity_ended_is_said_in_plain_words(kiosk: Appliance, clock: FakeClock, reason: str, note: str) -> None:
    in_activity(kiosk, clock)
    assert kiosk.room_event("ended", reason=reason) == []
    assert kiosk.mode is Mode.HOME and kiosk.notes[0].key == note
    text = Texts("nl")(note)
    assert not any(word in text.lower() for word in ("ice", "error", "server", "token", "4003", "websocket"))


def test_offline_and_back(kiosk: Appliance) -> None:
    kiosk.device_offline()
    assert kiosk.mode is Mode.OFFLINE
    kiosk.device_online(welcome())
    assert kiosk.mode is Mode.HOME


def test_revocation_forgets_everything_and_pairs_again(kiosk: Appliance, clock: FakeClock) -> None:
    in_activity(kiosk, clock)
    actions = kiosk.revoked()
    assert LeaveRoom() in actions and Unpair() in actions
    assert kiosk.mode is Mode.PAIRING and kiosk.contacts == [] and kiosk.senior == {}


def test_selftest_request_and_directory_change(kiosk: Appliance) -> None:
    assert kiosk.device_message({"type": "selftest_request"}) == [RunSelftest()]
    assert kiosk.device_message({"type": "directory_changed"}) == [RefreshDirectory()]


def test_language_follows_the_senior_unless_chosen(clock: FakeClock) -> None:
    k = Appliance(clock)
    k.device_online(welcome(language="en"))
    assert k.language == "en"
    chosen = Appliance(clock, language="nl")
    chosen.device_online(welcome(language="en"))
    assert chosen.language == "nl"


# --- words, storage, backoff --------------------------------------------------------------


def test_dutch_and_english_dates_and_durations() -> None:
    local = dt.datetime(2026, 11, 24, 10, 0)
    assert Texts("nl").date(local) == "Dinsdag 24 november"
    assert Texts("en").date(local) == "Tuesday 24 November"
    nl, en = Texts("nl"), Texts("en")
    assert nl.duration(8 * 60) == "8 minuten" and nl.duration(61) == "2 minuten"
    assert nl.duration(3600 + 60) == "1 uur en 1 minuut"
    assert en.duration(2 * 3600 + 5 * 60) == "2 hours and 5 minutes"
    assert nl.when(dt.datetime(2026, 11, 25, 10, 0), local) == "Morgen om 10:00"
    assert en.when(dt.datetime(2026, 11, 27, 10, 0), local) == "Friday at 10:00"


def test_credential_is_private_and_atomic(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.save_credential(Credential("kiosk-1", "secret-credential", "http://x"))
    path = state.credential_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert state.load_credential() == Credential("kiosk-1", "secret-credential", "http://x")
    assert "secret-credential" not in repr(state.load_credential())
    assert not list(path.parent.glob(".*.tmp"))
    path.write_text("{broken")
    assert state.load_credential() is None and not path.exists()
    state.save_credential(Credential("kiosk-1", "c"))
    state.wipe_credential()
    assert state.load_credential() is None


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(7))
    waits = [backoff.next() for _ in range(8)]
    for i, wait in enumerate(waits):
        step = min(8.0, 2.0**i)
        assert step / 2 <= wait <= step
    assert len({round(w, 6) for w in waits[4:]}) > 1, "jitter: capped waits still differ"
    backoff.reset()
    assert backoff.next() <= 1.0


async def test_missed_call_notes_survive_a_restart_privately(tmp_path: Path, clock: FakeClock) -> None:
    from kiosk_client.runner import KioskApp, KioskConfig

    state_dir = tmp_path / "state"

    def app() -> KioskApp:
        return KioskApp(KioskConfig(server="http://127.0.0.1:9", state_dir=state_dir, display=False, sound=False), clock=clock)

    first = app()
    first.execute(first.model.device_online(welcome()))
    first.execute(first.model.device_message(incoming("c-piet", ring_ms=1000)))
    clock.advance(2)
    first.execute(first.model.tick())
    first.execute(first.model.tap("call:c-kees"))  # passing news is not kept:
    first.execute(first.model.device_message({"type": "call_cancelled", "ref": first.sent[-1]["id"], "call_id": "x", "reason": "unavailable"}))
    assert [n.key for n in first.model.notes] == ["contact_unavailable", "missed_call"]
    notes_file = state_dir / "notes.json"
    assert stat.S_IMODE(notes_file.stat().st_mode) == 0o600
    assert "Buurman Piet" in notes_file.read_text()

    # The kiosk restarts (power cut, update): the missed call is still there, with Call back.
    second = app()
    [note] = second.model.notes
    assert note.key == "missed_call" and note.params["name"] == "Buurman Piet" and note.contact_id == "c-piet"
    second.execute(second.model.device_online(welcome()))
    second.execute(second.model.tap("dismiss"))
    assert second.model.notes == []
    assert app().model.notes == []


# --- the host's invitation at the start of an activity ---------------------------------------------


def invite(activity_id: str = "a-gym") -> dict:
    return {"type": "activity_invite", "activity_id": activity_id, "title": "Stoelgym", "host": "Ingrid"}


def test_an_invitation_sends_nothing_until_the_senior_taps(kiosk: Appliance, clock: FakeClock) -> None:
    actions = kiosk.device_message(invite())
    assert kiosk.mode is Mode.INVITED and actions == [PlaySound("chime")]
    assert kiosk.tap("answer") == [] and kiosk.tick() == []  # other taps and time do nothing yet
    actions = kiosk.tap("join_invite")
    assert kiosk.mode is Mode.IN_CALL
    (request,) = sends(actions, "activity_join")
    assert request["activity_id"] == "a-gym" and joins(actions) == []
    actions = kiosk.device_message({"type": "activity_token", "ref": request["id"], "activity_id": "a-gym", "room": "a-gym", "token": "t"})
    assert joins(actions) == [JoinRoom("a-gym", "t", "activity")]


def test_an_invitation_goes_away_on_not_now_or_after_two_minutes(kiosk: Appliance, clock: FakeClock) -> None:
    from kiosk_client.appliance import INVITE_TIMEOUT_S

    kiosk.device_message(invite())
    assert kiosk.tap("not_now") == [PlaySound("none")] and kiosk.mode is Mode.HOME
    kiosk.device_message(invite())
    clock.advance(INVITE_TIMEOUT_S - 1)
    kiosk.tick()
    assert kiosk.mode is Mode.INVITED
    clock.advance(2)
    assert sends(kiosk.tick(), "activity_join") == [] and kiosk.mode is Mode.HOME and kiosk.invite is None


def test_an_invitation_never_interrupts_a_call_and_a_call_takes_over_an_invitation(kiosk: Appliance) -> None:
    kiosk.device_message(incoming("c-piet"))
    assert kiosk.mode is Mode.RINGING
    assert kiosk.device_message(invite()) == [] and kiosk.mode is Mode.RINGING
    kiosk.tap("decline")
    kiosk.device_message(invite())
    kiosk.device_message(incoming("c-piet", call_id="call-2"))
    assert kiosk.mode is Mode.RINGING and kiosk.invite is None
    assert kiosk.device_message({"type": "activity_invite", "activity_id": "", "title": "x"}) == []
