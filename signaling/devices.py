"""Kiosks as devices: their always-open channel, family calls to them, and remote self-tests.

A kiosk is not a participant until it joins a room. While idle it holds one device
connection; everything addressed to it travels over the store's fan-out on channel
`device:<kiosk_id>`, so whichever node holds the connection delivers it. A call's own
events travel on `call:<call_id>` to the node that started the call, which owns its timer.

The other direction mirrors it: a family member's open invite page holds a listening
connection (`hello` with `contact` {`invite`}), present as `contact:<contact_id>` and
reached over channel `contact:<contact_id>`. A kiosk's `call_contact` rings those pages;
an unanswered call is kept as a missed call (record kind `missed_calls`, per contact)
until the family page says it was seen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from server.attendance import CALL_ROOM_PREFIX
from server.config import Settings
from server.directory import Activity, Contact, Directory, Kiosk, Senior
from server.invites import InviteError, named_secret, resolve_invite
from server.pairing import authenticate_kiosk
from server.schedule import next_occurrence
from server.turn import ice_servers_for
from server.store import Store, Subscription
from server.tasks import TaskOwner

from .protocol import VERSION, CloseCode, ProtocolError, error
from .session import Connection
from .tokens import TokenIssuer

logger = logging.getLogger(__name__)


def device_channel(kiosk_id: str) -> str:
    return f"device:{kiosk_id}"


def call_channel(call_id: str) -> str:
    return f"call:{call_id}"


def kiosk_presence(kiosk_id: str) -> str:
    return f"kiosk:{kiosk_id}"


def contact_channel(contact_id: str) -> str:
    return f"contact:{contact_id}"


def contact_presence(contact_id: str) -> str:
    return f"contact:{contact_id}"


MISSED_CALLS = "missed_calls"
# A family member who never opens the page does not collect an endless list.
MAX_MISSED_CALLS = 10


@dataclass
class DeviceLink:
    kiosk: Kiosk
    subscription: Subscription | None = None
    # When the kiosk's presence key was last written (monotonic).
    presence_touched: float = 0.0


@dataclass
class ContactLink:
    """A family member's invite page, listening for the senior's calls."""

    contact: Contact
    subscription: Subscription | None = None
    presence_touched: float = 0.0


def presence_of(link: DeviceLink | ContactLink) -> str:
    """The presence key a kiosk's or family member's connection keeps alive."""
    return kiosk_presence(link.kiosk.id) if isinstance(link, DeviceLink) else contact_presence(link.contact.id)


@dataclass
class Call:
    id: str
    room: str
    contact: Contact
    senior_id: str
    kiosk_ids: list[str]
    state: str = "ringing"
    # "incoming": family → kiosk (POST /api/calls); "outgoing": kiosk → family (call_contact).
    direction: str = "incoming"
    incoming: dict[str, Any] | None = None
    timer: asyncio.TimerHandle | None = None
    subscriptions: list[Subscription] = field(default_factory=list)


class DeviceHub:
    def __init__(self, settings: Settings, store: Store, directory: Directory, issuer: TokenIssuer) -> None:
        self.settings = settings
        self.store = store
        self.directory = directory
        self.issuer = issuer
        self.links: dict[Connection, DeviceLink] = {}
        self.listeners: dict[Connection, ContactLink] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self.calls: dict[str, Call] = {}
        # Ring timeouts, answers, hang-ups and the listeners' keepalive run as tasks of the hub.
        self.tasks = TaskOwner("devices")

    # --- device connections ------------------------------------------------------------

    async def hello(self, conn: Connection, device: dict[str, Any], ref: str | None) -> None:
        kiosk = await authenticate_kiosk(self.directory, device["kiosk_id"], device["credential"])
        if kiosk is None:
            conn.send(error("device_invalid", "This kiosk is not (or no longer) paired.", ref))
            await conn.close(CloseCode.AUTH_FAILED, "device_invalid")
            return
        link = DeviceLink(kiosk)
        self.links[conn] = link
        conn.device = kiosk.id
        link.subscription = await self.store.subscribe(
            device_channel(kiosk.id), lambda event: self._to_device(conn, event)
        )
        await self._refresh_presence(link, force=True)
        kiosk.last_seen = time.time()
        kiosk.software_version = str(device.get("version", ""))[:40]
        await self.directory.store.put_record("kiosks", kiosk.id, _as_record(kiosk))
        conn.send({"type": "device_welcome", "ref": ref, "v": VERSION, **await self._home(kiosk)})
        # A call that rang while the kiosk was reconnecting is still ringing: ring again.
        for call in self.calls.values():
            if (
                call.direction == "incoming" and call.state in ("ringing", "warning")
                and kiosk.id in call.kiosk_ids and call.incoming
            ):
                conn.send(call.incoming)

    @property
    def _presence_ttl(self) -> float:
        return self.settings.ping_timeout_s

    async def _refresh_presence(self, link: DeviceLink | ContactLink, *, force: bool = False) -> None:
        # Rewritten at most every fraction of its TTL, not on every ping: a store write
        # per ping was most of an idle kiosk's cost.
        now = time.monotonic()
        if force or now - link.presence_touched >= self._presence_ttl * self.settings.presence_refresh_fraction:
            await self.store.touch_presence(presence_of(link), self._presence_ttl)
            link.presence_touched = now

    async def _home(self, kiosk: Kiosk) -> dict[str, Any]:
        senior = await self.directory.get(Senior, kiosk.senior_id)
        contacts = await self.directory.contacts_of(kiosk.senior_id)
        now = dt.datetime.now(dt.timezone.utc)
        activities = []
        started_for = dt.timedelta(minutes=self.settings.started_activity_min)
        for activity in await self.directory.activities_of(kiosk.senior_id):
            started = dt.datetime.fromtimestamp(activity.started_at, dt.timezone.utc) if activity.started_at else None
            if started is not None and started <= now < started + started_for:
                # A host started it now ("Start now"), in or outside its weekly slots.
                activities.append(
                    {
                        "id": activity.id,
                        "title": activity.title,
                        "next_start": started.isoformat(),
                        "duration_min": self.settings.started_activity_min,
                    }
                )
                continue
            upcoming = next_occurrence(activity.weekly_slots, now)
            if upcoming is not None:
                start, slot = upcoming
                activities.append(
                    {
                        "id": activity.id,
                        "title": activity.title,
                        "next_start": start.isoformat(),
                        "duration_min": slot.duration_min,
                    }
                )
        activities.sort(key=lambda a: a["next_start"])
        return {
            "kiosk_id": kiosk.id,
            "senior": {
                "id": kiosk.senior_id,
                "name": senior.name if senior else "",
                "language": senior.language if senior else "nl",
                "auto_join": senior.auto_join if senior else False,
            },
            "contacts": [
                {
                    "id": c.id,
                    "name": c.name,
                    "relation": c.relation,
                    "trusted": c.trusted,
                    "auto_answer": c.auto_answer,
                    "photo_url": c.photo_url,
                    "position": c.position,
                }
                # Already in the coordinator's order (position, then name): most important first.
                for c in contacts
            ],
            "activities": activities,
            "ping_interval_ms": int(self.settings.ping_interval_s * 1000),
            "ice_servers": ice_servers_for(self.settings, f"kiosk-{kiosk.id}"),
        }

    def _to_device(self, conn: Connection, event: dict[str, Any]) -> None:
        if event.get("type") == "revoked":
            conn.send({"type": "revoked"})
            conn.close_soon(CloseCode.AUTH_FAILED, "revoked")
            return
        conn.send(event)

    async def dispatch(self, conn: Connection, message: dict[str, Any]) -> None:
        link = self.listeners.get(conn) or self.links[conn]
        if message["type"] == "ping":
            conn.send({"type": "pong", "ts": message.get("ts"), "ref": message.get("id")})
            await self._refresh_presence(link)
        elif isinstance(link, ContactLink):
            await self._listener_dispatch(conn, link, message)
        else:
            await self._kiosk_dispatch(conn, link, message)

    async def _kiosk_dispatch(self, conn: Connection, link: DeviceLink, message: dict[str, Any]) -> None:
        kind = message["type"]
        ref = message.get("id")
        kiosk_id = link.kiosk.id
        if kind == "call_contact":
            contact = await self.directory.get(Contact, message["contact_id"])
            if contact is None or contact.senior_id != link.kiosk.senior_id:
                raise ProtocolError("unknown_contact", "That person is not one of this senior's contacts.", ref)
            await self.call_contact(conn, link.kiosk, contact, ref)
        elif kind == "call_hangup":
            call = await self._outgoing_call(message["call_id"])
            if call is None or call.get("kiosk_id") != kiosk_id or call.get("state") != "ringing":
                raise ProtocolError("unknown_call", "No call of this kiosk with that id is ringing.", ref)
            await self.store.publish(call_channel(message["call_id"]), {"type": "_hangup", "ref": ref})
        elif kind == "call_answer":
            await self.store.publish(
                call_channel(message["call_id"]),
                {
                    "type": "_answer",
                    "kiosk_id": kiosk_id,
                    "accept": message["accept"],
                    "busy": message.get("reason") == "busy",
                },
            )
        elif kind == "activity_join":
            activity = await self.directory.get(Activity, message["activity_id"])
            senior = await self.directory.get(Senior, link.kiosk.senior_id)
            if activity is None or senior is None or senior.id not in activity.enrolled:
                raise ProtocolError("forbidden", "This kiosk's senior is not enrolled in that activity.", ref)
            token = self.issuer.issue(
                role="senior", room=activity.id, name=senior.name, participant_id=senior.id,
                ttl_s=self.settings.default_token_ttl_s,
            )
            conn.send({"type": "activity_token", "ref": ref, "activity_id": activity.id, "room": activity.id, "token": token})
        elif kind == "selftest_result":
            kiosk = await self.directory.get(Kiosk, kiosk_id)
            if kiosk is not None:
                kiosk.last_selftest = {"at": time.time(), "result": message["result"]}
                await self.directory.store.put_record("kiosks", kiosk.id, _as_record(kiosk))
            conn.send({"type": "selftest_saved", "ref": ref})
        else:
            raise ProtocolError("forbidden", f"A kiosk device cannot send '{kind}'.", ref)

    async def connection_lost(self, conn: Connection) -> None:
        link = self.listeners.pop(conn, None) or self.links.pop(conn, None)
        if link is None:
            return
        if link.subscription is not None:
            await link.subscription.close()
        # Present while another connection of the same kiosk or family member is open.
        presence = presence_of(link)
        if any(presence_of(other) == presence for other in [*self.links.values(), *self.listeners.values()]):
            return
        await self.store.clear_presence(presence)
        if isinstance(link, DeviceLink):
            # Last seen now: "Vandaag" counts how long a kiosk has been offline from here.
            kiosk = await self.directory.get(Kiosk, link.kiosk.id)
            if kiosk is not None and not kiosk.revoked:
                kiosk.last_seen = time.time()
                await self.directory.store.put_record("kiosks", kiosk.id, _as_record(kiosk))

    # --- family pages listening for the senior's calls ------------------------------------

    def access_revoked(self, contact_id: str) -> None:
        """The contact's invite was replaced or the contact removed: their open pages stop
        listening, as a page with a stale invite would at hello."""
        for conn, link in list(self.listeners.items()):
            if link.contact.id == contact_id and not conn.closing:
                conn.closing = True
                conn.send(error("invite_invalid", "This link no longer works. Ask for a new one."))
                conn.close_soon(CloseCode.AUTH_FAILED, "invite_invalid")

    async def contact_hello(self, conn: Connection, data: dict[str, Any], ref: str | None) -> None:
        secret = named_secret(self.settings, "invite")
        try:
            contact = await resolve_invite(self.directory, secret, data["invite"])
        except InviteError:
            conn.send(error("invite_invalid", "This link no longer works. Ask for a new one.", ref))
            await conn.close(CloseCode.AUTH_FAILED, "invite_invalid")
            return
        senior = await self.directory.get(Senior, contact.senior_id)
        link = ContactLink(contact)
        self.listeners[conn] = link
        conn.device = contact_presence(contact.id)
        link.subscription = await self.store.subscribe(
            contact_channel(contact.id), lambda event: self._to_listener(conn, event)
        )
        await self._refresh_presence(link, force=True)
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = self.tasks.spawn(self._keep_listeners_alive(), name="contact-keepalive")
        conn.send(
            {
                "type": "contact_welcome",
                "ref": ref,
                "v": VERSION,
                "contact": {"id": contact.id, "name": contact.name},
                "senior": {"id": contact.senior_id, "name": senior.name if senior else ""},
                "missed_calls": await self.missed_calls(contact.id),
                "ping_interval_ms": int(self.settings.ping_interval_s * 1000),
            }
        )
        # The senior is calling right now (the page was reloading): ring again.
        for call in self.calls.values():
            if call.direction == "outgoing" and call.state == "ringing" and call.contact.id == contact.id and call.incoming:
                conn.send(call.incoming)

    async def _keep_listeners_alive(self) -> None:
        """Asks every listening page for a `ping` each ping interval.

        A browser throttles the timers of a tab in the background (Chrome: once a minute
        after five minutes), so a page's own pings would stop keeping it present; message
        events are not throttled, so the page answers this at once.
        """
        while self.listeners:
            await asyncio.sleep(self.settings.ping_interval_s)
            for conn in list(self.listeners):
                conn.send({"type": "keepalive"})

    def _to_listener(self, conn: Connection, event: dict[str, Any]) -> None:
        if event.get("_to") not in (None, conn.id) or event.get("_skip") == conn.id:
            return
        conn.send({k: v for k, v in event.items() if k not in ("_to", "_skip")})

    async def _listener_dispatch(self, conn: Connection, link: ContactLink, message: dict[str, Any]) -> None:
        kind = message["type"]
        ref = message.get("id")
        contact_id = link.contact.id
        if kind == "call_answer":
            call = await self._outgoing_call(message["call_id"])
            if call is None or call.get("contact_id") != contact_id or call.get("state") != "ringing":
                raise ProtocolError("unknown_call", "That call is not ringing (any more).", ref)
            await self.store.publish(
                call_channel(message["call_id"]),
                {"type": "_family_answer", "accept": message["accept"], "conn": conn.id, "ref": ref},
            )
        elif kind == "missed_seen":
            await self.store.delete_record(MISSED_CALLS, contact_id)
            conn.send({"type": "missed_cleared", "ref": ref})
        else:
            raise ProtocolError("forbidden", f"A family page cannot send '{kind}'.", ref)

    async def missed_calls(self, contact_id: str) -> list[dict[str, Any]]:
        record = await self.store.get_record(MISSED_CALLS, contact_id)
        return list(record.get("calls", [])) if record else []

    async def _note_missed(self, contact_id: str) -> None:
        calls = await self.missed_calls(contact_id)
        calls.append({"at": int(time.time())})
        await self.store.put_record(
            MISSED_CALLS, contact_id, {"id": contact_id, "contact_id": contact_id, "calls": calls[-MAX_MISSED_CALLS:]}
        )

    async def _outgoing_call(self, call_id: str) -> dict[str, Any] | None:
        """The call's shared state (any node can read it), when it is a senior's call."""
        if not call_id or len(call_id) > 64:
            return None
        state = await self.store.get_room_state(f"{CALL_ROOM_PREFIX}{call_id}")
        call = state.get("call") if isinstance(state, dict) else None
        if not isinstance(call, dict) or call.get("direction") != "outgoing":
            return None
        return call

    # --- the senior calls family -------------------------------------------------------------

    async def call_contact(self, conn: Connection, kiosk: Kiosk, contact: Contact, ref: str | None) -> None:
        """Rings the contact's open invite pages; the kiosk sends no media before one accepts."""
        call_id = uuid.uuid4().hex[:16]
        room = f"{CALL_ROOM_PREFIX}{call_id}"
        if not await self.store.is_present(contact_presence(contact.id)):
            await self._note_missed(contact.id)
            conn.send(
                {"type": "call_cancelled", "ref": ref, "call_id": call_id, "contact_id": contact.id, "reason": "unavailable"}
            )
            return
        senior = await self.directory.get(Senior, kiosk.senior_id)
        call = Call(call_id, room, contact, kiosk.senior_id, [kiosk.id], direction="outgoing")
        self.calls[call_id] = call
        await self.store.set_room_state(
            room,
            {"call": {"call_id": call_id, "state": "ringing", "direction": "outgoing", "kiosk_id": kiosk.id, "contact_id": contact.id}},
        )
        call.subscriptions.append(
            await self.store.subscribe(call_channel(call_id), lambda e: self._call_event(call, e))
        )
        ring_timeout = self.settings.ring_timeout_s
        call.timer = asyncio.get_running_loop().call_later(
            ring_timeout, lambda: self.tasks.spawn(self._finish_outgoing(call, "missed"), name="call-ring-timeout")
        )
        call.incoming = {
            "type": "incoming_call",
            "call_id": call_id,
            "senior": {
                "id": kiosk.senior_id,
                "name": senior.name if senior else "",
                "photo_url": senior.photo_url if senior else "",
            },
            "ring_timeout_ms": int(ring_timeout * 1000),
        }
        conn.send(
            {"type": "call_ringing", "ref": ref, "call_id": call_id, "contact_id": contact.id, "ring_timeout_ms": int(ring_timeout * 1000)}
        )
        await self.store.publish(contact_channel(contact.id), dict(call.incoming))

    async def _family_answered(self, call: Call, accept: bool, conn_id: str, ref: str | None) -> None:
        if call.state != "ringing":
            return
        if not accept:
            await self._finish_outgoing(call, "declined")
            return
        # Settled first, so a second answer that crosses this one changes nothing.
        await self._finish_outgoing(call, "accepted", skip_conn=conn_id)
        contact = call.contact
        senior = await self.directory.get(Senior, call.senior_id)
        ttl = self.settings.default_token_ttl_s
        family_token = self.issuer.issue(role="family", room=call.room, name=contact.name, participant_id=contact.id, ttl_s=ttl)
        senior_token = self.issuer.issue(
            role="senior", room=call.room, name=senior.name if senior else "", participant_id=call.senior_id, ttl_s=ttl
        )
        await self.store.publish(
            contact_channel(contact.id),
            {"type": "call_join", "ref": ref, "call_id": call.id, "room": call.room, "token": family_token, "_to": conn_id},
        )
        for kiosk_id in call.kiosk_ids:
            await self.store.publish(
                device_channel(kiosk_id), {"type": "call_join", "call_id": call.id, "room": call.room, "token": senior_token}
            )

    async def _finish_outgoing(
        self, call: Call, state: str, *, ref: str | None = None, skip_conn: str | None = None
    ) -> None:
        """state: "accepted", "declined", "missed" (ring timeout) or "hung_up" (the senior)."""
        if call.state != "ringing":
            return
        call.state = state
        if call.timer is not None:
            call.timer.cancel()
        self.calls.pop(call.id, None)
        # The shared state first: an answer or hang-up that crosses these messages is refused.
        room_state = await self.store.get_room_state(call.room)
        room_state["call"] = {**room_state.get("call", {}), "call_id": call.id, "state": state}
        await self.store.set_room_state(call.room, room_state)
        if state != "accepted":
            for kiosk_id in call.kiosk_ids:
                await self.store.publish(
                    device_channel(kiosk_id),
                    {"type": "call_cancelled", "call_id": call.id, "contact_id": call.contact.id, "reason": state, "ref": ref},
                )
        # Every other page of this family member stops ringing.
        family_reason = "answered_elsewhere" if state == "accepted" else state
        cancel: dict[str, Any] = {"type": "call_cancelled", "call_id": call.id, "reason": family_reason}
        if skip_conn is not None:
            cancel["_skip"] = skip_conn
        await self.store.publish(contact_channel(call.contact.id), cancel)
        if state in ("missed", "hung_up"):
            await self._note_missed(call.contact.id)
        for subscription in call.subscriptions:
            await subscription.close()

    # --- what coordinators trigger -------------------------------------------------------

    async def request_selftest(self, kiosk_id: str) -> bool:
        """Asks the kiosk to run its self-test; False when it is offline."""
        if not await self.store.is_present(kiosk_presence(kiosk_id)):
            return False
        await self.store.publish(device_channel(kiosk_id), {"type": "selftest_request"})
        return True

    async def invite_to_activity(self, activity: Activity, senior_id: str, host_name: str) -> int:
        """Shows the host's invitation on the senior's online kiosks, on whichever node
        holds them; returns how many were rung."""
        kiosks = await self.directory.kiosks_of(senior_id)
        online = await self.store.present_among([kiosk_presence(k.id) for k in kiosks])
        rung = 0
        for kiosk in kiosks:
            if kiosk_presence(kiosk.id) in online:
                await self.store.publish(
                    device_channel(kiosk.id),
                    {"type": "activity_invite", "activity_id": activity.id, "title": activity.title, "host": host_name},
                )
                rung += 1
        return rung

    async def revoke_kiosk(self, kiosk_id: str) -> None:
        await self.store.publish(device_channel(kiosk_id), {"type": "revoked"})

    async def directory_changed(self, senior_id: str) -> None:
        for kiosk in await self.directory.kiosks_of(senior_id):
            await self.store.publish(device_channel(kiosk.id), {"type": "directory_changed"})

    # --- family calls ----------------------------------------------------------------------

    async def start_call(self, contact: Contact) -> dict[str, Any]:
        """Rings the senior's kiosks; returns the caller's room, token and first state."""
        call_id = uuid.uuid4().hex[:16]
        room = f"{CALL_ROOM_PREFIX}{call_id}"
        online = [
            k.id for k in await self.directory.kiosks_of(contact.senior_id)
            if await self.store.is_present(kiosk_presence(k.id))
        ]
        call = Call(call_id, room, contact, contact.senior_id, online)
        token = self.issuer.issue(
            role="family", room=room, name=contact.name, participant_id=contact.id,
            ttl_s=self.settings.default_token_ttl_s,
        )
        if not online:
            call.state = "unavailable"
            await self.store.set_room_state(room, {"call": {"call_id": call_id, "state": call.state}})
            return {"call_id": call_id, "room": room, "token": token, "state": call.state}
        self.calls[call_id] = call
        call.state = "warning" if contact.trusted and contact.auto_answer else "ringing"
        await self.store.set_room_state(room, {"call": {"call_id": call_id, "state": call.state}})
        call.subscriptions.append(
            await self.store.subscribe(call_channel(call_id), lambda e: self._call_event(call, e))
        )
        call.subscriptions.append(await self.store.subscribe(room, lambda e: self._call_room_event(call, e)))
        ring_timeout = self.settings.ring_timeout_s
        call.timer = asyncio.get_running_loop().call_later(
            ring_timeout, lambda: self.tasks.spawn(self._finish(call, "missed", "timeout"), name="call-ring-timeout")
        )
        call.incoming = {
            "type": "incoming_call",
            "call_id": call_id,
            "contact": {
                "id": contact.id,
                "name": contact.name,
                "relation": contact.relation,
                "trusted": contact.trusted,
                "auto_answer": contact.auto_answer,
                "photo_url": contact.photo_url,
            },
            "ring_timeout_ms": int(ring_timeout * 1000),
        }
        for kiosk_id in online:
            await self.store.publish(device_channel(kiosk_id), dict(call.incoming))
        return {"call_id": call_id, "room": room, "token": token, "state": call.state}

    def _call_event(self, call: Call, event: dict[str, Any]) -> None:
        if call.direction == "outgoing":
            if event.get("type") == "_family_answer":
                self.tasks.spawn(
                    self._family_answered(call, bool(event.get("accept")), str(event.get("conn")), event.get("ref")),
                    name="call-answer",
                )
            elif event.get("type") == "_hangup":
                self.tasks.spawn(self._finish_outgoing(call, "hung_up", ref=event.get("ref")), name="call-hangup")
            return
        if event.get("type") == "_answer" and call.state in ("ringing", "warning"):
            self.tasks.spawn(
                self._answered(call, event["kiosk_id"], bool(event["accept"]), bool(event.get("busy"))),
                name="call-answer",
            )

    def _call_room_event(self, call: Call, event: dict[str, Any]) -> None:
        if (
            event.get("type") == "participant_left"
            and event.get("participant_id") == call.contact.id
            and call.state in ("ringing", "warning")
        ):
            self.tasks.spawn(self._finish(call, "cancelled", "caller_left"), name="call-cancel")

    async def _answered(self, call: Call, kiosk_id: str, accept: bool, busy: bool = False) -> None:
        if not accept:
            await self._finish(call, "busy" if busy else "declined", "declined")
            return
        senior = await self.directory.get(Senior, call.senior_id)
        token = self.issuer.issue(
            role="senior", room=call.room, name=senior.name if senior else "", participant_id=call.senior_id,
            ttl_s=self.settings.default_token_ttl_s,
        )
        await self.store.publish(
            device_channel(kiosk_id), {"type": "call_join", "call_id": call.id, "room": call.room, "token": token}
        )
        await self._finish(call, "accepted", "answered_elsewhere", except_kiosk=kiosk_id)

    async def _finish(self, call: Call, state: str, cancel_reason: str, except_kiosk: str | None = None) -> None:
        if call.state not in ("ringing", "warning"):
            return
        call.state = state
        if call.timer is not None:
            call.timer.cancel()
        self.calls.pop(call.id, None)
        for kiosk_id in call.kiosk_ids:
            if kiosk_id != except_kiosk:
                await self.store.publish(
                    device_channel(kiosk_id), {"type": "call_cancelled", "call_id": call.id, "reason": cancel_reason}
                )
        if state != "cancelled":
            room_state = await self.store.get_room_state(call.room)
            room_state["call"] = {"call_id": call.id, "state": state}
            await self.store.set_room_state(call.room, room_state)
            await self.store.publish(call.room, {"type": "call_state", "call_id": call.id, "state": state})
        for subscription in call.subscriptions:
            await subscription.close()

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        for call in list(self.calls.values()):
            if call.direction == "outgoing":
                await self._finish_outgoing(call, "missed")
            else:
                await self._finish(call, "missed", "timeout")
        for conn in [*self.links, *self.listeners]:
            await self.connection_lost(conn)
        # Last: finishing the calls above may still have started tasks (answers, hang-ups).
        await self.tasks.close()


def _as_record(kiosk: Kiosk) -> dict[str, Any]:
    return dataclasses.asdict(kiosk)
