"""The host console: today's activities for the logged-in volunteer, and running one.

`/host` lists the activities the account hosts (coordinators see all of them), today's
first. Starting one (a POST, so it is audited and CSRF-protected) opens the console at
`/host/activities/{id}`, which carries a host join token for the activity's room; the
console itself (`static/host.js`) speaks the signalling protocol through `callcore.js`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

from aiohttp import web

from server.appkeys import DIRECTORY_KEY, SIGNALING_KEY
from server.directory import Account, Activity
from server.schedule import AMSTERDAM

from .auth import current_account, require
from .callstrings import call_strings
from .i18n import N_
from .rendering import error_page, needs, redirect, render
from .roompages import activity_row, page_token, token_refresh_ms, token_response

staff = require("volunteer", "coordinator")


HOST_STRINGS = {
    "knock": N_("%(name)s is waiting in the waiting room."),
    "admit": N_("Let %(name)s in"),
    "deny": N_("Do not let %(name)s in"),
    "mute": N_("Turn off microphone of %(name)s"),
    "ask_unmute": N_("Ask %(name)s to turn on their microphone"),
    "asked_unmute": N_("We asked %(name)s to turn on their microphone."),
    "spotlight": N_("Put %(name)s in the spotlight"),
    "unspotlight": N_("Take %(name)s out of the spotlight"),
    "remove": N_("Remove %(name)s"),
    "remove_confirm": N_("Remove %(name)s from the activity?"),
    "locked": N_("The room is locked: newcomers wait in the waiting room"),
    "unlocked": N_("The room is open: seniors come in directly"),
    "music_on": N_("Music mode is on"),
    "music_off": N_("Music mode is off"),
    "all_muted": N_("All microphones are off. Participants can turn theirs on again."),
    "quality_good": N_("good"),
    "quality_fair": N_("fair"),
    "quality_poor": N_("poor"),
    "quality_unknown": N_("no sound or picture yet"),
    "quality_label": N_("Connection: %(quality)s"),
    "quality_detail": N_("%(loss)s percent lost, %(jitter)s ms jitter, %(rtt)s ms round trip"),
    "host_ended": N_("You ended the activity. Everyone has left."),
    "not_in_lobby": N_("This person is no longer waiting."),
    "end_confirm": N_("End the activity for everyone? Everyone leaves the room."),
    "unban": N_("Let %(name)s back in"),
    "ring": N_("Ring %(name)s"),
    "ringing": N_("The kiosk of %(name)s is ringing. They join with one tap."),
    "ring_offline": N_("The kiosk of %(name)s is not online. Perhaps call them by phone."),
}


def _may_host(account: Account, activity: Activity) -> bool:
    return account.role == "coordinator" or account.id in activity.host_ids


def _today(activities: list[Activity], now: dt.datetime) -> list[dict[str, Any]]:
    today = now.astimezone(AMSTERDAM).date()
    items = []
    for activity in activities:
        for slot in activity.weekly_slots:
            if slot.weekday != today.weekday():
                continue
            start = slot.occurrence_on(today)
            end = (start.astimezone(dt.timezone.utc) + dt.timedelta(minutes=slot.duration_min)).astimezone(AMSTERDAM)
            items.append(
                {
                    "activity": activity,
                    "start": start,
                    "end": end,
                    "running": start - dt.timedelta(minutes=15) <= now < end,
                    "over": now >= end,
                }
            )
    return sorted(items, key=lambda item: item["start"])


@staff
async def home(request: web.Request) -> web.Response:
    account = current_account(request)
    everything = await request.app[DIRECTORY_KEY].list(Activity)
    mine = [a for a in everything if _may_host(account, a)]
    now = dt.datetime.now(dt.timezone.utc)
    today = _today(mine, now)
    today_ids = {item["activity"].id for item in today}
    later = [
        activity_row(activity, now)
        for activity in sorted(mine, key=lambda a: a.title.lower())
        if activity.id not in today_ids
    ]
    return render(
        request,
        "host/home.html",
        today=today,
        later=later,
        today_date=now.astimezone(AMSTERDAM),
    )


async def _activity_for(request: web.Request) -> Activity | web.Response:
    activity = await request.app[DIRECTORY_KEY].get(Activity, request.match_info["activity_id"])
    if activity is None:
        return error_page(request, 404, N_("Not found"), N_("This activity does not exist (any more)."))
    if not _may_host(current_account(request), activity):
        return error_page(
            request, 403, N_("Not your activity"), N_("You are not a host of this activity. Ask a coordinator.")
        )
    return activity


@staff
@needs(_activity_for)
async def start(request: web.Request, activity: Activity) -> web.Response:
    directory = request.app[DIRECTORY_KEY]
    await directory.audit(current_account(request).id, "start", "activities", activity.id, [])
    # Kiosks know weekly slots; a start outside them reaches the seniors through this mark
    # (written without a second audit entry: the start above is the one that matters).
    activity.started_at = time.time()
    await directory.store.put_record("activities", activity.id, dataclasses.asdict(activity))
    signaling = request.app[SIGNALING_KEY]
    for senior_id in activity.enrolled:
        await signaling.directory_changed(senior_id)
    return redirect(f"/host/activities/{activity.id}")


@staff
@needs(_activity_for)
async def console(request: web.Request, activity: Activity) -> web.Response:
    return render(
        request,
        "host/console.html",
        activity=activity,
        token=_host_token(request, activity),
        token_refresh_ms=token_refresh_ms(request),
        js_strings=call_strings(request, HOST_STRINGS),
        back_to_host_home=True,
    )


async def console_for_link(request: web.Request, token: str, room: str) -> web.Response:
    """The console for a host's join link (`/call?token=…`, as `serve --demo` prints): the
    same waiting room and moderation as `/host`, without logging in; the room needs no
    activity record (an ad-hoc room is titled by its name)."""
    activity = await request.app[DIRECTORY_KEY].get(Activity, room)
    return render(
        request,
        "host/console.html",
        activity=activity or Activity(id=room, title=room),
        token=token,
        js_strings=call_strings(request, HOST_STRINGS),
        back_to_host_home=False,
    )


def _host_token(request: web.Request, activity: Activity) -> str:
    """The console renews it from the logged-in session."""
    account = current_account(request)
    return page_token(request, role="host", room=activity.id, name=account.name, participant_id=account.id)


@staff
@needs(_activity_for)
async def token(request: web.Request, activity: Activity) -> web.Response:
    """A fresh host token for the open console: {token, expires_in_s}."""
    return token_response(request, _host_token(request, activity))


def setup(app: web.Application) -> None:
    app.router.add_get("/host", home)
    app.router.add_post("/host/activities/{activity_id}/start", start)
    app.router.add_get("/host/activities/{activity_id}", console)
    app.router.add_get("/host/activities/{activity_id}/token", token)
