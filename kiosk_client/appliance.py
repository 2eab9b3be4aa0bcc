"""What the kiosk does, as a state machine with no drawing, no sockets and no sleeping.

Inputs are events (a device message arrived, the room connected, the senior tapped a
button, time passed — `tick`); every input returns the actions the runner must carry out
(send a device message, join or leave a room, play a sound, ...). Time comes from an
injected clock, so a test can walk through a whole morning in milliseconds.

Modes (what the screen shows):

    pairing ── paired ──▶ offline ── device_welcome ──▶ home ◀──────────────────────────┐
                             ▲                           │ activity start, auto_join    │
                             └──── connection lost ──────┤──▶ countdown (10 s, Not now) │
                                                         │ incoming_call               │
                                                         ├──▶ incoming (trusted, 10 s) │
                                                         ├──▶ ringing (Accept/Decline) │
                                                         │ Join / accepted / Call      │
                                                         ├──▶ in_call ─── ended ───────┤
                                                         │ More family                 │
                                                         ├──▶ family ─ Back, 60 s idle ┤
                                                         │ activity_invite (the host)  │
                                                         └──▶ invited ─ Not now, 2 min ┘

Invited: the host rang this kiosk at the start of an activity the senior is enrolled in
("We beginnen! Doet u mee?"). One big button joins (the same activity_join as Join); "Not
now", or two minutes without a tap, goes home. Nothing is sent before the senior taps.

More family: when more trusted contacts exist than fit on the home screen, the home screen
offers "More family", a full-screen list of all of them in pages (Previous / Next, never
scrolling). The family screen is a sub-screen of home: an incoming call or an activity's
countdown takes over exactly as from home, and after `FAMILY_IDLE_S` without a touch the
kiosk goes home by itself, so it never stays on a sub-screen.

Calling family (Call): in_call with an outgoing session, phase `requesting` until the
server answers `call_ringing`, then `ringing` until the family member accepts (`call_join`:
only now the room is joined), declines, misses it or is not reachable (`call_cancelled`),
or the senior hangs up (`call_hangup`). The screen shows "calling Piet…" and one big
Hang-up button meanwhile.

Privacy rule held here: nothing that opens the camera (`JoinRoom`) is produced before the
senior admitted the other side — by tapping, or by letting a trusted contact's ten-second
warning run out.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from .clock import DEFAULT_TIMEZONE, Clock
from .texts import DEFAULT_LANGUAGE, LANGUAGES

logger = logging.getLogger(__name__)

AUTO_JOIN_COUNTDOWN_S = 10.0
TRUSTED_WARNING_S = 10.0
# The Join button lights up this long before the start.
JOIN_LIT_BEFORE = dt.timedelta(minutes=10)
# Auto-join still happens when the kiosk comes online this long after the start.
AUTO_JOIN_WINDOW = dt.timedelta(minutes=10)
DEFAULT_RING_TIMEOUT_S = 45.0
# An outgoing call nobody picks up, or an accepted call whose caller never shows.
NO_ANSWER_S = 60.0
# A join or answer request the server does not answer.
REQUEST_TIMEOUT_S = 20.0
# How often the kiosk asks for a fresh activity token when one expires during a rejoin.
MAX_TOKEN_RENEWALS = 3
VOLUME_MIN, VOLUME_MAX, VOLUME_DEFAULT = 1, 10, 6
MAX_NOTES = 3
# The family screen goes back home after this long without a touch.
FAMILY_IDLE_S = 60.0
# A shaking hand's second tap on "More family" lands on the family screen: a Call button may
# be right there. Taps on it this soon after it opened do nothing.
FAMILY_TAP_GUARD_S = 0.6
# An invitation from the host stays on screen this long without a tap.
INVITE_TIMEOUT_S = 120.0
# Contacts per family page until the runner tells the real number (`family_page_size`).
DEFAULT_FAMILY_PAGE_SIZE = 4


class Mode(str, enum.Enum):
    PAIRING = "pairing"
    OFFLINE = "offline"
    HOME = "home"
    COUNTDOWN = "countdown"
    INCOMING = "incoming"
    RINGING = "ringing"
    IN_CALL = "in_call"
    FAMILY = "family"  # all trusted contacts, in pages (a sub-screen of home)
    INVITED = "invited"  # the host asks the senior to join an activity that starts


# --- actions for the runner ----------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """A message on the device WebSocket."""

    message: dict[str, Any]


@dataclass(frozen=True)
class JoinRoom:
    """Connect to a room with this token and send camera and microphone once admitted."""

    room: str
    token: str
    kind: str  # "activity" | "call"


@dataclass(frozen=True)
class LeaveRoom:
    pass


@dataclass(frozen=True)
class PlaySound:
    name: str  # "chime" (once), "ring" (until stopped), "none" (stop)


@dataclass(frozen=True)
class SetVolume:
    level: int


@dataclass(frozen=True)
class RefreshDirectory:
    """Fetch the senior's activities and contacts again (reconnect the device channel)."""


@dataclass(frozen=True)
class RunSelftest:
    pass


@dataclass(frozen=True)
class Unpair:
    """Forget the credential and show a pairing code again."""


Action = Send | JoinRoom | LeaveRoom | PlaySound | SetVolume | RefreshDirectory | RunSelftest | Unpair


# --- what the kiosk knows ------------------------------------------------------------------


@dataclass(frozen=True)
class ContactCard:
    """A family contact as the kiosk shows it (the server's record is `server.directory.Contact`)."""

    id: str
    name: str
    trusted: bool = False
    auto_answer: bool = False
    photo_url: str = ""
    # The coordinator's order: lower first (then by name). Absent from older servers: 0.
    position: int = 0

    @classmethod
    def from_message(cls, data: dict[str, Any]) -> "ContactCard":
        position = data.get("position", 0)
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name", "")) or "?",
            trusted=bool(data.get("trusted", False)),
            auto_answer=bool(data.get("auto_answer", False)) and bool(data.get("trusted", False)),
            photo_url=str(data.get("photo_url") or ""),
            position=position if isinstance(position, int) and not isinstance(position, bool) else 0,
        )

    @property
    def initials(self) -> str:
        words = [w for w in self.name.replace("-", " ").split() if w[:1].isalpha()]
        if not words:
            return self.name[:1].upper() or "?"
        if len(words) == 1:
            return words[0][:1].upper()
        return (words[0][:1] + words[-1][:1]).upper()


@dataclass(frozen=True)
class ActivityOccurrence:
    """One coming time of an activity, as the kiosk's home screen lists it (the server's
    record, with its weekly slots, is `server.directory.Activity`)."""

    id: str
    title: str
    start: dt.datetime
    duration_min: int

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(minutes=self.duration_min)

    @property
    def key(self) -> tuple[str, str]:
        return (self.id, self.start.isoformat())


@dataclass
class Note:
    """A line on the home screen until the senior taps "Seen"."""

    key: str  # a texts.py key
    params: dict[str, str] = field(default_factory=dict)
    contact_id: str | None = None  # offers "Call back" when set


@dataclass
class Pairing:
    code: str | None = None
    url: str = ""
    expires_at: float = 0.0  # monotonic
    problem: bool = False
    done: bool = False


@dataclass
class Countdown:
    activity: ActivityOccurrence
    deadline: float  # monotonic


@dataclass
class Invite:
    activity_id: str
    title: str
    host: str
    deadline: float  # monotonic


@dataclass
class Incoming:
    call_id: str
    contact: ContactCard
    deadline: float  # monotonic: warning end (trusted) or ring timeout
    received_at: dt.datetime


@dataclass
class Participant:
    id: str
    name: str
    role: str
    connected: bool = True


@dataclass
class RoomSession:
    """The activity or call the kiosk is in (or on its way into)."""

    kind: str  # "activity" | "call"
    title: str
    activity_id: str | None = None
    call_id: str | None = None
    contact_id: str | None = None
    outgoing: bool = False
    # requesting (waiting for a token) → [ringing: an outgoing call rings at the family] →
    # connecting → lobby → connected ⇄ reconnecting
    phase: str = "requesting"
    request_id: str | None = None
    requested_at: float = 0.0
    room: str | None = None
    self_id: str | None = None
    participants: dict[str, Participant] = field(default_factory=dict)
    joined_at: float | None = None
    others_seen: bool = False
    renewals: int = 0
    ring_deadline: float = 0.0  # monotonic: an outgoing call's ring timeout plus a margin

    @property
    def others(self) -> list[Participant]:
        return [p for pid, p in self.participants.items() if pid != self.self_id]


def parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


class Appliance:
    """The kiosk's whole behaviour. Every method returns the actions to carry out."""

    def __init__(
        self,
        clock: Clock,
        *,
        language: str | None = None,
        volume: int = VOLUME_DEFAULT,
        timezone: ZoneInfo = DEFAULT_TIMEZONE,
    ) -> None:
        self.clock = clock
        self.timezone = timezone
        self.language_override = language if language in LANGUAGES else None
        self.mode = Mode.OFFLINE
        self.online = False
        self.ever_online = False
        self.pairing = Pairing()
        self.kiosk_id: str | None = None
        self.senior: dict[str, Any] = {}
        self.contacts: list[ContactCard] = []
        self.activities: list[ActivityOccurrence] = []
        self.notes: list[Note] = []
        self.volume = max(VOLUME_MIN, min(VOLUME_MAX, volume))
        self.countdown: Countdown | None = None
        self.invite: Invite | None = None
        self.incoming: Incoming | None = None
        self.session: RoomSession | None = None
        self._handled: set[tuple[str, str]] = set()
        self._refreshed: set[tuple[str, str]] = set()
        self._request_counter = 0
        # The senior hung up before the server said which call rang: hang that one up.
        self._hangup_request: str | None = None
        self.taps = 0
        # The family screen: which page, how many contacts a page holds on this screen
        # (the runner sets it from the renderer), and when the senior last touched it.
        self.family_page = 0
        self.family_page_size = DEFAULT_FAMILY_PAGE_SIZE
        self._family_touched = 0.0
        self._family_opened = 0.0

    # --- derived state ----------------------------------------------------------------

    @property
    def language(self) -> str:
        if self.language_override:
            return self.language_override
        language = self.senior.get("language")
        return language if language in LANGUAGES else DEFAULT_LANGUAGE

    @property
    def auto_join(self) -> bool:
        return bool(self.senior.get("auto_join", False))

    def local_now(self) -> dt.datetime:
        return self.clock.now().astimezone(self.timezone)

    def to_local(self, when: dt.datetime) -> dt.datetime:
        return when.astimezone(self.timezone)

    @property
    def trusted_contacts(self) -> list[ContactCard]:
        """In the coordinator's order (most important first), then alphabetical, so each
        face stays in the same place from day to day."""
        return sorted((c for c in self.contacts if c.trusted), key=lambda c: (c.position, c.name.casefold(), c.id))

    @property
    def family_pages(self) -> int:
        """How many pages the family screen has (at least one)."""
        size = max(1, self.family_page_size)
        return max(1, -(-len(self.trusted_contacts) // size))

    def family_page_contacts(self, page_size: int | None = None) -> tuple[int, int, list[ContactCard]]:
        """(page, pages, contacts on it) for a page of `page_size` (default: the kiosk's)."""
        size = max(1, page_size or self.family_page_size)
        contacts = self.trusted_contacts
        pages = max(1, -(-len(contacts) // size))
        page = max(0, min(self.family_page, pages - 1))
        return page, pages, contacts[page * size : (page + 1) * size]

    def next_activity(self) -> ActivityOccurrence | None:
        """The running activity, else the soonest one to come."""
        now = self.clock.now()
        current = [a for a in self.activities if a.end > now]
        return min(current, key=lambda a: a.start) if current else None

    def join_lit(self, activity: ActivityOccurrence | None = None) -> bool:
        activity = activity or self.next_activity()
        if activity is None:
            return False
        now = self.clock.now()
        return activity.start - JOIN_LIT_BEFORE <= now < activity.end

    def seconds_left(self) -> int:
        """Whole seconds left on the countdown, warning or ringing shown now."""
        deadline = None
        if self.mode is Mode.COUNTDOWN and self.countdown:
            deadline = self.countdown.deadline
        elif self.mode in (Mode.INCOMING, Mode.RINGING) and self.incoming:
            deadline = self.incoming.deadline
        if deadline is None:
            return 0
        return max(0, int(-(-(deadline - self.clock.monotonic()) // 1)))

    # --- start, pairing -----------------------------------------------------------------

    def start(self, paired: bool) -> list[Action]:
        self.mode = Mode.OFFLINE if paired else Mode.PAIRING
        return [SetVolume(self.volume)]

    def pairing_code(self, code: str, url: str, expires_in_s: float) -> list[Action]:
        self.pairing = Pairing(code=code, url=url, expires_at=self.clock.monotonic() + expires_in_s)
        self.mode = Mode.PAIRING
        return []

    def pairing_problem(self) -> list[Action]:
        """The pairing service could not be reached; the runner keeps trying."""
        self.pairing.problem = True
        self.mode = Mode.PAIRING
        return []

    def paired(self, kiosk_id: str) -> list[Action]:
        self.kiosk_id = kiosk_id
        self.pairing.done = True
        self.mode = Mode.OFFLINE
        return []

    def revoked(self) -> list[Action]:
        """The coordinator revoked this kiosk, or its credential is no longer valid."""
        actions: list[Action] = []
        if self.session is not None:
            actions.append(LeaveRoom())
        if self.mode in (Mode.INCOMING, Mode.RINGING, Mode.COUNTDOWN):
            actions.append(PlaySound("none"))
        self.session = None
        self.incoming = None
        self.countdown = None
        self.senior, self.contacts, self.activities, self.notes = {}, [], [], []
        self.online = False
        self.pairing = Pairing()
        self.mode = Mode.PAIRING
        actions.append(Unpair())
        return actions

    # --- the device channel -------------------------------------------------------------

    def device_online(self, welcome: dict[str, Any]) -> list[Action]:
        self.online = True
        self.ever_online = True
        self.kiosk_id = str(welcome.get("kiosk_id") or self.kiosk_id or "")
        senior = welcome.get("senior")
        self.senior = senior if isinstance(senior, dict) else {}
        self.contacts = [ContactCard.from_message(c) for c in welcome.get("contacts") or [] if isinstance(c, dict)]
        activities = []
        for a in welcome.get("activities") or []:
            start = parse_time(a.get("next_start")) if isinstance(a, dict) else None
            if start is None:
                continue
            duration = a.get("duration_min")
            activities.append(
                ActivityOccurrence(str(a.get("id", "")), str(a.get("title", "")), start, duration if isinstance(duration, int) else 60)
            )
        self.activities = activities
        actions: list[Action] = []
        if self.mode in (Mode.OFFLINE, Mode.PAIRING):
            self.mode = Mode.HOME
        session = self.session
        if session is not None and session.phase == "requesting" and session.kind == "activity":
            # The request may have been lost with the old connection: ask again.
            actions.append(self._request_activity(session))
        return actions + self.tick()

    def device_offline(self) -> list[Action]:
        self.online = False
        actions: list[Action] = []
        if self.mode in (Mode.INCOMING, Mode.RINGING) and self.incoming is not None:
            # Without the connection the call cannot be answered: it becomes a missed call.
            actions += self._missed(self.incoming.contact, self.incoming.received_at, busy=False)
        if self.mode in (Mode.HOME, Mode.FAMILY):
            # Nobody can be called without the connection: home, which says so.
            self.mode = Mode.OFFLINE
        return actions

    def device_message(self, message: dict[str, Any]) -> list[Action]:
        handlers: dict[str, Callable[[dict[str, Any]], list[Action]]] = {
            "incoming_call": self._incoming_call,
            "call_cancelled": self._call_cancelled,
            "call_join": self._call_join,
            "call_ringing": self._call_ringing,
            "activity_token": self._activity_token,
            "activity_invite": self._activity_invite,
            "selftest_request": lambda _: [RunSelftest()],
            "directory_changed": lambda _: [RefreshDirectory()],
            "error": self._device_error,
        }
        kind = message.get("type")
        # Message types this kiosk does not know (a newer server's) are ignored.
        handler = handlers.get(kind) if isinstance(kind, str) else None
        return handler(message) if handler is not None else []

    def _incoming_call(self, message: dict[str, Any]) -> list[Action]:
        call_id = message.get("call_id")
        contact_data = message.get("contact")
        if not isinstance(call_id, str) or not isinstance(contact_data, dict):
            return []
        if self.incoming is not None and self.incoming.call_id == call_id and self.mode in (Mode.INCOMING, Mode.RINGING):
            # The same call, rung again because the device channel reconnected meanwhile.
            return []
        contact = ContactCard.from_message(contact_data)
        now = self.clock.now()
        if self.mode in (Mode.FAMILY, Mode.INVITED):
            # Looking at the family list or an invitation is not being busy: the call takes over.
            self.invite = None
            self.mode = Mode.HOME
        if self.mode is not Mode.HOME:
            # Busy (another call, an activity, a countdown): say no, and tell the senior later.
            return [
                Send({"type": "call_answer", "call_id": call_id, "accept": False, "reason": "busy"}),
                *self._note_missed(contact, now, busy=True),
            ]
        ring_ms = message.get("ring_timeout_ms")
        ring_s = ring_ms / 1000 if isinstance(ring_ms, (int, float)) and ring_ms > 0 else DEFAULT_RING_TIMEOUT_S
        if contact.trusted and contact.auto_answer:
            self.mode = Mode.INCOMING
            self.incoming = Incoming(call_id, contact, self.clock.monotonic() + TRUSTED_WARNING_S, now)
            return [PlaySound("chime")]
        self.mode = Mode.RINGING
        self.incoming = Incoming(call_id, contact, self.clock.monotonic() + ring_s, now)
        return [PlaySound("ring")]

    def _activity_invite(self, message: dict[str, Any]) -> list[Action]:
        activity_id, title = message.get("activity_id"), message.get("title")
        if not isinstance(activity_id, str) or not activity_id or not isinstance(title, str):
            return []
        if self.mode not in (Mode.HOME, Mode.FAMILY, Mode.INVITED):
            # In a call, a countdown or ringing: the host sees the senior is still missing.
            return []
        host = message.get("host")
        self.invite = Invite(activity_id, title, host if isinstance(host, str) else "", self.clock.monotonic() + INVITE_TIMEOUT_S)
        self.mode = Mode.INVITED
        return [PlaySound("chime")]

    def _call_ringing(self, message: dict[str, Any]) -> list[Action]:
        call_id = message.get("call_id")
        if not isinstance(call_id, str):
            return []
        ref = message.get("ref")
        if ref is not None and ref == self._hangup_request:
            self._hangup_request = None
            return [Send({"type": "call_hangup", "call_id": call_id})]
        session = self.session
        if session is None or not session.outgoing or session.phase != "requesting" or ref != session.request_id:
            return []
        ring_ms = message.get("ring_timeout_ms")
        ring_s = ring_ms / 1000 if isinstance(ring_ms, (int, float)) and ring_ms > 0 else DEFAULT_RING_TIMEOUT_S
        session.call_id = call_id
        session.phase = "ringing"
        session.ring_deadline = self.clock.monotonic() + ring_s + REQUEST_TIMEOUT_S
        return []

    def _outgoing_cancelled(self, session: RoomSession, message: dict[str, Any]) -> list[Action]:
        name = next((c.name for c in self.contacts if c.id == session.contact_id), session.title)
        note = {
            "unavailable": "contact_unavailable",
            "declined": "contact_declined",
            "missed": "no_answer",
            "hung_up": None,
        }.get(str(message.get("reason")), "call_failed")
        return self._end_session(note, {"name": name})

    def _call_cancelled(self, message: dict[str, Any]) -> list[Action]:
        session = self.session
        if (
            session is not None
            and session.outgoing
            and session.phase in ("requesting", "ringing")
            and (
                (session.call_id is not None and message.get("call_id") == session.call_id)
                or (message.get("ref") is not None and message.get("ref") == session.request_id)
            )
        ):
            return self._outgoing_cancelled(session, message)
        incoming = self.incoming
        if incoming is not None and message.get("call_id") == incoming.call_id and self.mode in (Mode.INCOMING, Mode.RINGING):
            if message.get("reason") in ("answered_elsewhere", "declined"):
                # Another kiosk of the same senior took (or refused) the call: nothing was missed.
                self.incoming = None
                self.mode = Mode.HOME if self.online else Mode.OFFLINE
                return [PlaySound("none")]
            return self._missed(incoming.contact, incoming.received_at, busy=False)
        session = self.session
        if session is not None and session.call_id == message.get("call_id") and session.phase == "requesting":
            return self._end_session("call_ended")
        return []

    def _call_join(self, message: dict[str, Any]) -> list[Action]:
        session = self.session
        room, token, call_id = message.get("room"), message.get("token"), message.get("call_id")
        if (
            session is None
            or session.kind != "call"
            or session.phase not in ("requesting", "ringing")
            or not isinstance(room, str)
            or not isinstance(token, str)
        ):
            return []
        if session.call_id is not None and call_id != session.call_id:
            return []
        session.call_id = call_id if isinstance(call_id, str) else session.call_id
        session.room = room
        session.phase = "connecting"
        session.requested_at = self.clock.monotonic()
        return [JoinRoom(room, token, "call")]

    def _activity_token(self, message: dict[str, Any]) -> list[Action]:
        session = self.session
        room, token = message.get("room"), message.get("token")
        if (
            session is None
            or session.kind != "activity"
            or session.phase != "requesting"
            or message.get("activity_id") != session.activity_id
            or not isinstance(room, str)
            or not isinstance(token, str)
        ):
            return []
        session.room = room
        session.phase = "connecting" if session.joined_at is None else "reconnecting"
        session.requested_at = self.clock.monotonic()
        return [JoinRoom(room, token, "activity")]

    def _device_error(self, message: dict[str, Any]) -> list[Action]:
        session = self.session
        if session is not None and session.phase == "requesting" and message.get("ref") == session.request_id:
            return self._end_session("join_failed" if session.kind == "activity" else "call_failed")
        return []

    # --- the room (from the runner's room connection) -----------------------------------

    def room_event(self, event: str, **data: Any) -> list[Action]:
        session = self.session
        if session is None or self.mode is not Mode.IN_CALL:
            return []
        now = self.clock.monotonic()
        if event == "connecting":
            session.phase = "reconnecting" if session.joined_at is not None else "connecting"
        elif event == "lobby":
            session.phase = "lobby"
        elif event == "reconnecting":
            session.phase = "reconnecting"
        elif event == "joined":
            session.phase = "connected"
            session.self_id = data.get("self_id")
            session.participants = {p.id: p for p in data.get("participants", [])}
            if session.joined_at is None:
                session.joined_at = now
            if session.others:
                session.others_seen = True
        elif event == "participant_joined":
            participant: Participant = data["participant"]
            session.participants[participant.id] = participant
            if participant.id != session.self_id:
                session.others_seen = True
        elif event == "participant_updated":
            participant = data["participant"]
            if participant.id in session.participants:
                session.participants[participant.id] = participant
        elif event == "participant_left":
            session.participants.pop(data.get("participant_id", ""), None)
            if session.kind == "call" and session.others_seen and not session.others:
                # The family member hung up: the call is over.
                return self._end_session(None)
        elif event == "ended":
            return self._room_ended(str(data.get("reason", "")))
        return []

    def _room_ended(self, reason: str) -> list[Action]:
        session = self.session
        assert session is not None
        if reason == "token" and session.kind == "activity" and session.renewals < MAX_TOKEN_RENEWALS:
            session.renewals += 1
            session.phase = "requesting"
            return [self._request_activity(session)]
        note = {
            "ended": "activity_ended" if session.kind == "activity" else "call_ended",
            "kicked": "removed",
            "denied": "denied",
            "room_full": "room_full",
            "replaced": "elsewhere",
            "left": None,
        }.get(reason, "join_failed" if session.kind == "activity" else "call_failed")
        if session.kind == "call" and reason in ("ended", "left"):
            note = None if session.others_seen else note
        return self._end_session(note, leave=False)

    # --- the senior ---------------------------------------------------------------------

    def tap(self, button: str) -> list[Action]:
        self.taps += 1
        self._family_touched = self.clock.monotonic()
        if button == "volume_down":
            return self._set_volume(self.volume - 1)
        if button == "volume_up":
            return self._set_volume(self.volume + 1)
        mode = self.mode
        if mode is Mode.HOME:
            if button == "join":
                activity = self.next_activity()
                if activity is not None and self.join_lit(activity):
                    self._handled.add(activity.key)
                    return self._start_activity(activity)
            elif button.startswith("call:") or button.startswith("call_back:"):
                contact_id = button.split(":", 1)[1]
                contact = next((c for c in self.contacts if c.id == contact_id), None)
                if contact is not None:
                    if button.startswith("call_back:"):
                        self.notes = [n for n in self.notes if n.contact_id != contact_id]
                    return self._call_contact(contact)
            elif button == "dismiss" and self.notes:
                self.notes.pop(0)
            elif button == "more_family" and self.online and self.trusted_contacts:
                self.family_page = 0
                self.mode = Mode.FAMILY
                self._family_opened = self.clock.monotonic()
        elif mode is Mode.FAMILY and self.clock.monotonic() - self._family_opened < FAMILY_TAP_GUARD_S:
            pass
        elif mode is Mode.FAMILY:
            if button == "family_next":
                self.family_page = min(self.family_page + 1, self.family_pages - 1)
            elif button == "family_prev":
                self.family_page = max(0, min(self.family_page, self.family_pages - 1) - 1)
            elif button == "back":
                self.mode = Mode.HOME
            elif button.startswith("call:"):
                contact = next((c for c in self.trusted_contacts if c.id == button.split(":", 1)[1]), None)
                if contact is not None:
                    return self._call_contact(contact)
        elif mode is Mode.INVITED and self.invite is not None:
            invite = self.invite
            if button == "join_invite":
                self.invite = None
                self.session = RoomSession(kind="activity", title=invite.title, activity_id=invite.activity_id)
                self.mode = Mode.IN_CALL
                return [PlaySound("none"), self._request_activity(self.session)]
            if button == "not_now":
                self.invite = None
                self.mode = Mode.HOME
                return [PlaySound("none")]
        elif mode is Mode.COUNTDOWN and button == "not_now":
            self.countdown = None
            self.mode = Mode.HOME
            return [PlaySound("none")]
        elif mode in (Mode.INCOMING, Mode.RINGING) and self.incoming is not None:
            if button == "answer":
                return self._accept()
            if button in ("decline", "not_now"):
                incoming = self.incoming
                self.incoming = None
                self.mode = Mode.HOME
                return [PlaySound("none"), Send({"type": "call_answer", "call_id": incoming.call_id, "accept": False})]
        elif mode is Mode.IN_CALL and button in ("leave", "hang_up"):
            session = self.session
            if session is not None and session.outgoing and session.phase in ("requesting", "ringing"):
                # Still ringing at the family: stop it there too.
                if session.call_id is not None:
                    return [*self._end_session(None), Send({"type": "call_hangup", "call_id": session.call_id})]
                self._hangup_request = session.request_id
            return self._end_session(None)
        return []

    def _set_volume(self, level: int) -> list[Action]:
        self.volume = max(VOLUME_MIN, min(VOLUME_MAX, level))
        return [SetVolume(self.volume)]

    # --- time ---------------------------------------------------------------------------

    def tick(self) -> list[Action]:
        now = self.clock.now()
        mono = self.clock.monotonic()
        actions: list[Action] = []
        if self.mode is Mode.FAMILY and mono - self._family_touched >= FAMILY_IDLE_S:
            # Nobody is looking: home, with the clock and the next activity.
            self.mode = Mode.HOME
        if self.mode is Mode.INVITED and self.invite is not None and mono >= self.invite.deadline:
            self.invite = None
            self.mode = Mode.HOME if self.online else Mode.OFFLINE
        if self.mode is Mode.COUNTDOWN and self.countdown is not None and mono >= self.countdown.deadline:
            activity = self.countdown.activity
            self.countdown = None
            actions += [PlaySound("none"), *self._start_activity(activity)]
        elif self.mode is Mode.INCOMING and self.incoming is not None and mono >= self.incoming.deadline:
            actions += self._accept()
        elif self.mode is Mode.RINGING and self.incoming is not None and mono >= self.incoming.deadline:
            # Not a decline: the server times the call out on its own and tells the caller.
            actions += self._missed(self.incoming.contact, self.incoming.received_at, busy=False)
        session = self.session
        if self.mode is Mode.IN_CALL and session is not None:
            if session.phase == "requesting" and mono - session.requested_at > REQUEST_TIMEOUT_S:
                actions += self._end_session("join_failed" if session.kind == "activity" else "call_failed")
            elif session.phase == "ringing" and mono > session.ring_deadline:
                # The server times the call out first; this covers a lost connection.
                name = next((c.name for c in self.contacts if c.id == session.contact_id), session.title)
                actions += self._end_session("no_answer", {"name": name})
            elif (
                session.kind == "call"
                and not session.others_seen
                and session.phase in ("connecting", "connected")
                and mono - session.requested_at > NO_ANSWER_S
            ):
                name = next((c.name for c in self.contacts if c.id == session.contact_id), session.title)
                actions += self._end_session("no_answer", {"name": name})
        if self.mode in (Mode.HOME, Mode.FAMILY) and self.online and self.auto_join:
            for activity in sorted(self.activities, key=lambda a: a.start):
                if activity.key in self._handled:
                    continue
                if activity.start <= now < min(activity.end, activity.start + AUTO_JOIN_WINDOW):
                    self._handled.add(activity.key)
                    self.countdown = Countdown(activity, mono + AUTO_JOIN_COUNTDOWN_S)
                    self.mode = Mode.COUNTDOWN
                    actions.append(PlaySound("chime"))
                    break
        for activity in self.activities:
            if activity.end <= now and activity.key not in self._refreshed and self.online:
                # Its next occurrence is only known to the server: ask for the new times.
                self._refreshed.add(activity.key)
                actions.append(RefreshDirectory())
                break
        return actions

    # --- helpers ------------------------------------------------------------------------

    def _next_request_id(self, prefix: str) -> str:
        self._request_counter += 1
        return f"{prefix}-{self._request_counter}"

    def _request_activity(self, session: RoomSession) -> Send:
        session.request_id = self._next_request_id("aj")
        session.requested_at = self.clock.monotonic()
        return Send({"type": "activity_join", "id": session.request_id, "activity_id": session.activity_id})

    def _start_activity(self, activity: ActivityOccurrence) -> list[Action]:
        self.session = RoomSession(kind="activity", title=activity.title, activity_id=activity.id)
        self.mode = Mode.IN_CALL
        return [self._request_activity(self.session)]

    def _call_contact(self, contact: ContactCard) -> list[Action]:
        if not self.online:
            return []
        request_id = self._next_request_id("cc")
        self.session = RoomSession(
            kind="call",
            title=contact.name,
            contact_id=contact.id,
            outgoing=True,
            request_id=request_id,
            requested_at=self.clock.monotonic(),
        )
        self.mode = Mode.IN_CALL
        return [Send({"type": "call_contact", "id": request_id, "contact_id": contact.id})]

    def _accept(self) -> list[Action]:
        incoming = self.incoming
        assert incoming is not None
        self.incoming = None
        request_id = self._next_request_id("ca")
        self.session = RoomSession(
            kind="call",
            title=incoming.contact.name,
            call_id=incoming.call_id,
            contact_id=incoming.contact.id,
            request_id=request_id,
            requested_at=self.clock.monotonic(),
        )
        self.mode = Mode.IN_CALL
        return [
            PlaySound("none"),
            Send({"type": "call_answer", "id": request_id, "call_id": incoming.call_id, "accept": True}),
        ]

    def _missed(self, contact: ContactCard, at: dt.datetime, busy: bool) -> list[Action]:
        self.incoming = None
        self.mode = Mode.HOME if self.online else Mode.OFFLINE
        return [PlaySound("none"), *self._note_missed(contact, at, busy)]

    def _note_missed(self, contact: ContactCard, at: dt.datetime, busy: bool) -> list[Action]:
        self._add_note(
            Note(
                "missed_call_busy" if busy else "missed_call",
                {"name": contact.name, "time": self.to_local(at).strftime("%H:%M")},
                contact_id=contact.id if any(c.id == contact.id for c in self.contacts) else None,
            )
        )
        return []

    def _add_note(self, note: Note) -> None:
        self.notes.insert(0, note)
        del self.notes[MAX_NOTES:]

    def _end_session(self, note: str | None, params: dict[str, str] | None = None, leave: bool = True) -> list[Action]:
        session = self.session
        self.session = None
        self.mode = Mode.HOME if self.online else Mode.OFFLINE
        if note:
            self._add_note(Note(note, params or {}))
        actions: list[Action] = []
        if leave and session is not None and session.phase not in ("requesting", "ringing"):
            actions.append(LeaveRoom())
        return actions
