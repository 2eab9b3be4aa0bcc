"""The browser side: pages for coordinators, hosts and family, and the plain call page.

Pages are server-rendered with Jinja2 (`web/templates`); calls run in small ES modules in
`web/static` (`callcore.js` speaks the signalling protocol of `docs/protocol.md`; each page
adds its own script). Every string goes through `web/i18n.py` (gettext catalogs in
`web/locale`, Dutch by default, English on request).

| module | pages |
|---|---|
| `auth.py` | login/logout, signed-cookie sessions, CSRF, login throttling, roles |
| `admin.py` | `/admin/…` for coordinators: seniors, contacts, kiosks, accounts, activities, audit |
| `engagement.py` | `/admin` ("Vandaag": today's activities live, kiosks to visit, seniors to call), `/admin/trends`, exports |
| `host.py` | `/host…` for volunteers: today's activities and the host console |
| `family.py` | `/family/{invite}…`: call the senior, be called by the senior (while open), join an activity's lobby |
| `roompages.py` | (no pages) what `host.py` and `family.py` share: activity rows, short-lived page tokens and their renewal |
| `photos.py` | photo uploads (re-encoded, no metadata) and `/photos/{id}` |
| `auditlog.py` | the audit log's words: changed details as labels, actors that are not accounts |

`/call?token=…` is the call for whoever holds a join link; a link that may moderate (a
host's) gets the host console. Unknown addresses and failures get the site's own 404 and
500 pages.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from server.app import ISSUER_KEY
from server.store import StoreUnavailable
from signaling.tokens import Grant, TokenError

from . import admin, auth, engagement, family, host, photos
from .i18n import N_, gettext_for, language_of, remember_language
from .rendering import error_page, render

STATIC_DIR = Path(__file__).parent / "static"
logger = logging.getLogger(__name__)

# Strings for the call scripts: key → msgid (translated per request).
CALL_STRINGS = {
    "connecting": N_("Connecting…"),
    "connected": N_("Connected"),
    "waiting": N_("Connected. Waiting for the others…"),
    "reconnecting": N_("No connection — trying again"),
    "left": N_("You have left the group."),
    "removed": N_("The host removed you from the group."),
    "replaced": N_("You are now taking part in another window or on another device."),
    "link_invalid": N_("This link does not work (any more). Ask the host for a new link."),
    "room_full": N_("The group is full. Please try again later."),
    "forbidden": N_("This link does not allow that."),
    "unavailable": N_("This is not working right now. We are trying again."),
    "media_blocked": N_("Sound and picture cannot get through on this network, perhaps because of a firewall or VPN. We keep trying, less often. Try another network (for example mobile data instead of Wi-Fi), or ask the organisation for help."),
    "no_media": N_("Your camera and microphone do not work. You can still watch and listen."),
    "no_camera": N_("Your camera does not work. The others can still hear you."),
    "no_microphone": N_("Your microphone does not work. The others can still see you."),
    "muted_by_host": N_("The host turned your microphone off."),
    "mic_on": N_("Microphone is on"),
    "mic_off": N_("Microphone is off"),
    "camera_on": N_("Camera is on"),
    "camera_off": N_("Camera is off"),
    "muted_badge": N_("sound off"),
    "away_badge": N_("connection lost"),
    "lobby": N_("You are in the waiting room. The host will let you in shortly."),
    "denied": N_("The host did not let you in this time."),
    "ended": N_("The activity has ended. Thank you for taking part!"),
    "unmute_requested": N_("The host asks you to turn your microphone on. Press the microphone button when you are ready."),
    "spotlight_badge": N_("in the spotlight"),
    "music_badge": N_("music mode: the sound is not filtered"),
}


def call_strings(request: web.Request, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The strings the call scripts need, translated for this request."""
    _ = gettext_for(language_of(request))
    table = {**CALL_STRINGS, **(extra or {})}
    return {key: _(msgid) for key, msgid in table.items()}


# Seconds a client is told to wait when the store (Redis) is briefly away.
STORE_OUTAGE_RETRY_AFTER_S = 30


@web.middleware
async def store_outage(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """While the store is unreachable, pages and the API say so plainly (503, retry later)
    instead of failing with an internal error; calls already running are not affected."""
    try:
        return await handler(request)
    except StoreUnavailable:
        if request.path == "/ws":
            raise
        headers = {"Retry-After": str(STORE_OUTAGE_RETRY_AFTER_S)}
        if request.path.startswith("/api/"):
            return web.json_response(
                {"error": "unavailable", "message": "The service is briefly unavailable; try again shortly."},
                status=503, headers=headers,
            )
        page = error_page(
            request, 503, N_("One moment, please"),
            N_("This page cannot be reached right now. Please try again in a minute."),
        )
        page.headers.update(headers)
        return page


# Paths whose clients are programs: they keep aiohttp's plain answers (or their own JSON).
MACHINE_PATHS = ("/api/", "/ws", "/healthz", "/metrics", "/static/", "/photos/")


@web.middleware
async def error_pages(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Unknown addresses and failures get a page in the site's style and language, not
    aiohttp's bare "404: Not Found" or "500 Internal Server Error"."""
    if request.path.startswith(MACHINE_PATHS):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_page(
            request, 404, N_("Page not found"),
            N_("There is no page at this address. Check the link, or go to the start page."),
        )
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, StoreUnavailable):
        raise
    except Exception:
        logger.exception("page %s failed", request.path)
        return error_page(
            request, 500, N_("Something went wrong"),
            N_("This page did not work because of a fault on our side. Please try again in a minute; if it keeps happening, tell the organisation."),
        )


def setup(app: web.Application) -> None:
    app.middlewares.append(error_pages)
    app.middlewares.append(store_outage)
    app.middlewares.append(remember_language)
    auth.setup(app)
    app.router.add_get("/", landing_page)
    app.router.add_get("/call", call_page)
    admin.setup(app)
    engagement.setup(app)
    host.setup(app)
    family.setup(app)
    photos.setup(app)
    app.router.add_static("/static/", STATIC_DIR, name="static")


async def landing_page(request: web.Request) -> web.Response:
    return render(request, "index.html")


async def call_page(request: web.Request) -> web.Response:
    """The call for whoever holds the link. A link that may moderate (a host's) gets the
    host console, waiting room included: a host can only let family in from where they are."""
    token = request.query.get("token", "").strip()
    if not token:
        return render(request, "missing_token.html", status=400)
    grant = _grant_of(request, token)
    if grant is not None and grant.may("moderate"):
        return await host.console_for_link(request, token, grant.room)
    return render(
        request,
        "call.html",
        token=token,
        js_strings=call_strings(request),
    )


def _grant_of(request: web.Request, token: str) -> Grant | None:
    """The token's grant, or None when it does not verify: the call page then explains the
    server's refusal itself, in the same words as every other refusal."""
    try:
        return request.app[ISSUER_KEY].verify(token)
    except TokenError:
        return None
