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
from typing import Any

from aiohttp import web

from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY
from server.directory import Activity, Contact, Senior
from server.invites import InviteError, named_secret, resolve_invite

from .callstrings import call_strings
from .i18n import N_
from .rendering import error_page, needs, render
from .roompages import activity_row, page_token, token_refresh_ms, token_response

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


def _render(request: web.Request, template: str, contact: Contact, senior: Senior, **context: Any) -> web.Response:
    """A family page: it knows who calls whom, and its links carry the invite on."""
    return render(request, template, contact=contact, senior=senior, invite=request.match_info["invite"], **context)


@needs(_contact)
async def call_page(request: web.Request, found: tuple[Contact, Senior]) -> web.Response:
    contact, senior = found
    return _render(
        request,
        "family/call.html",
        contact,
        senior,
        has_activities=bool(await _guest_activities(request, senior)),
        js_strings=call_strings(request, FAMILY_STRINGS),
    )


@needs(_contact)
async def activities_page(request: web.Request, found: tuple[Contact, Senior]) -> web.Response:
    contact, senior = found
    now = dt.datetime.now(dt.timezone.utc)
    rows = [activity_row(activity, now) for activity in await _guest_activities(request, senior)]
    return _render(request, "family/activities.html", contact, senior, rows=rows)


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
    """The open page renews it with its invite."""
    return page_token(request, role="family", room=activity.id, name=contact.name, participant_id=contact.id)


@needs(_guest_activity)
async def activity_page(request: web.Request, found: tuple[Contact, Senior, Activity]) -> web.Response:
    contact, senior, activity = found
    return _render(
        request,
        "family/activity.html",
        contact,
        senior,
        activity=activity,
        token=_activity_token(request, contact, activity),
        token_refresh_ms=token_refresh_ms(request),
        js_strings=call_strings(request, ACTIVITY_STRINGS),
    )


@needs(_guest_activity)
async def activity_token(request: web.Request, found: tuple[Contact, Senior, Activity]) -> web.Response:
    """A fresh family token for the open activity page: {token, expires_in_s}."""
    contact, _, activity = found
    return token_response(request, _activity_token(request, contact, activity))


def setup(app: web.Application) -> None:
    app.router.add_get("/family/{invite}", call_page)
    app.router.add_get("/family/{invite}/activities", activities_page)
    app.router.add_get("/family/{invite}/activities/{activity_id}", activity_page)
    app.router.add_get("/family/{invite}/activities/{activity_id}/token", activity_token)
