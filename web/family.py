"""Family pages, reached only through an invite link (`/family/{invite}`); no account.

- `/family/{invite}`: who they are about to call (name, photo) and one big call button.
  The button posts the invite to `POST /api/calls` (server/api.py), joins the call room
  with the token it returns, and says in plain words what the call does (`call_state`).
  While the page is open it also listens (`hello` with `contact`, docs/protocol.md): the
  senior's kiosk can call it, the page rings (Answer / Do not answer), and calls missed
  earlier are listed until the family member taps "Seen". A phone only rings while the
  page is open: Web Push would need VAPID keys and a push service (not built).
- `/family/{invite}/activities`: the senior's activities that welcome guests.
- `/family/{invite}/activities/{id}`: joins that activity with a family token; the server
  puts a family member in the waiting room, which is the knock.
  The token is short-lived (`page_token_ttl_s`); the open page renews it at
  `/family/{invite}/activities/{id}/token`, which a replaced invite no longer answers.

An invite grants nothing else: no staff session, no admin page (those check the session
cookie, which an invite never creates).
"""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from server.appkeys import DIRECTORY_KEY, ISSUER_KEY, SETTINGS_KEY
from server.directory import Activity, Contact, Senior
from server.invites import InviteError, named_secret, resolve_invite
from server.schedule import next_occurrence

from .callstrings import call_strings
from .i18n import N_
from .rendering import error_page, render

FAMILY_STRINGS = {
    "calling": N_("We are calling %(name)s…"),
    "warning": N_("%(name)s will answer in 10 seconds"),
    "accepted": N_("You are talking with %(name)s"),
    "declined": N_("%(name)s cannot answer right now"),
    "busy": N_("%(name)s is already in a call. Try again in a little while."),
    "missed": N_("%(name)s did not answer. Try again later."),
    "unavailable": N_("%(name)s cannot be reached"),
    "call_failed": N_("Calling does not work right now. Please try again later."),
    "too_many_calls": N_("You have called several times in a short while. Please try again in a few minutes."),
    "hung_up": N_("The call has ended."),
    "left": N_("You hung up."),
    "link_invalid": N_("This link no longer works. Ask the coordinator for a new one."),
    # The senior calls: the page listens while it is open.
    "incoming_title": N_("%(name)s is calling you"),
    "notification_body": N_("Open the page to answer."),
    "missed_at": N_("%(name)s called at %(time)s"),
    "missed_on": N_("%(name)s called on %(day)s at %(time)s"),
    "listening": N_("%(name)s can call you while this page is open."),
    "listen_offline": N_("No connection: %(name)s cannot call you right now. We keep trying."),
    "answered_elsewhere": N_("You answered on another device."),
    "senior_hung_up": N_("%(name)s hung up before you answered."),
}

ACTIVITY_STRINGS = {
    "left": N_("You have left the activity."),
}


async def _contact(request: web.Request) -> tuple[Contact, Senior] | web.Response:
    secret = named_secret(request.app[SETTINGS_KEY], "invite")
    directory = request.app[DIRECTORY_KEY]
    try:
        contact = await resolve_invite(directory, secret, request.match_info["invite"])
    except InviteError as exc:
        status = 404 if exc.code == "invalid" else 410
        return error_page(
            request, status, N_("This link no longer works"),
            N_("Ask the coordinator or your family member for a new link."),
        )
    senior = await directory.get(Senior, contact.senior_id)
    if senior is None:
        return error_page(
            request, 410, N_("This link no longer works"),
            N_("Ask the coordinator or your family member for a new link."),
        )
    return contact, senior


async def _guest_activities(request: web.Request, senior: Senior) -> list[Activity]:
    activities = await request.app[DIRECTORY_KEY].activities_of(senior.id)
    return sorted((a for a in activities if a.guests_allowed), key=lambda a: a.title.lower())


async def call_page(request: web.Request) -> web.Response:
    found = await _contact(request)
    if isinstance(found, web.Response):
        return found
    contact, senior = found
    return render(
        request,
        "family/call.html",
        contact=contact,
        senior=senior,
        invite=request.match_info["invite"],
        has_activities=bool(await _guest_activities(request, senior)),
        js_strings=call_strings(request, FAMILY_STRINGS),
    )


async def activities_page(request: web.Request) -> web.Response:
    found = await _contact(request)
    if isinstance(found, web.Response):
        return found
    contact, senior = found
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for activity in await _guest_activities(request, senior):
        upcoming = next_occurrence(activity.weekly_slots, now)
        rows.append({"activity": activity, "next": upcoming[0] if upcoming else None})
    return render(
        request,
        "family/activities.html",
        contact=contact,
        senior=senior,
        invite=request.match_info["invite"],
        rows=rows,
    )


async def _guest_activity(request: web.Request) -> tuple[Contact, Senior, Activity] | web.Response:
    found = await _contact(request)
    if isinstance(found, web.Response):
        return found
    contact, senior = found
    activity_id = request.match_info["activity_id"]
    activity = next((a for a in await _guest_activities(request, senior) if a.id == activity_id), None)
    if activity is None:
        return error_page(
            request, 404, N_("Not found"),
            N_("This activity does not exist, or it does not welcome guests."),
        )
    return contact, senior, activity


def _activity_token(request: web.Request, contact: Contact, activity: Activity) -> str:
    """Short-lived (page_token_ttl_s): the open page renews it with its invite."""
    return request.app[ISSUER_KEY].issue(
        role="family", room=activity.id, name=contact.name, participant_id=contact.id,
        ttl_s=request.app[SETTINGS_KEY].page_token_ttl_s,
    )


async def activity_page(request: web.Request) -> web.Response:
    found = await _guest_activity(request)
    if isinstance(found, web.Response):
        return found
    contact, senior, activity = found
    return render(
        request,
        "family/activity.html",
        contact=contact,
        senior=senior,
        activity=activity,
        invite=request.match_info["invite"],
        token=_activity_token(request, contact, activity),
        # A third of the lifetime: two renewals may fail before a reconnect would.
        token_refresh_ms=request.app[SETTINGS_KEY].page_token_ttl_s * 1000 // 3,
        js_strings=call_strings(request, ACTIVITY_STRINGS),
    )


async def activity_token(request: web.Request) -> web.Response:
    """A fresh family token for the open activity page: {token, expires_in_s}."""
    found = await _guest_activity(request)
    if isinstance(found, web.Response):
        return found
    contact, _, activity = found
    ttl = request.app[SETTINGS_KEY].page_token_ttl_s
    return web.json_response(
        {"token": _activity_token(request, contact, activity), "expires_in_s": ttl},
        headers={"Cache-Control": "no-store"},
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/family/{invite}", call_page)
    app.router.add_get("/family/{invite}/activities", activities_page)
    app.router.add_get("/family/{invite}/activities/{activity_id}", activity_page)
    app.router.add_get("/family/{invite}/activities/{activity_id}/token", activity_token)
