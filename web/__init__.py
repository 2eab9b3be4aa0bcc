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

from server.appkeys import ISSUER_KEY
from server.store import StoreUnavailable
from signaling.tokens import Grant, TokenError

from . import admin, auth, engagement, family, host, photos
from .callstrings import call_strings
from .i18n import N_, remember_language
from .rendering import error_page, render

STATIC_DIR = Path(__file__).parent / "static"
logger = logging.getLogger(__name__)

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
