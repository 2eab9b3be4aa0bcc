"""Rendering pages: one Jinja2 environment per language, security headers, common context."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any, TypeVar

import jinja2
from aiohttp import web

from server.schedule import AMSTERDAM

from . import auditlog
from .i18n import (
    LANGUAGE_NAMES,
    gettext_for,
    language_of,
    other_language,
    switch_language_url,
    template_gettext,
    translations,
)

# Pages can carry tokens or personal data: no leaking via Referer, no framing, no caching.
# Pages whose URL holds a join token or an invite send no Referer at all; the others send
# it to this site only, so a form's POST carries its Origin (checked in web/auth.py).
SECRET_URL_PREFIXES = ("/call", "/family/")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

@cache
def environment(lang: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("web", "templates"),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_callables(  # type: ignore[attr-defined]
        template_gettext(lang), translations(lang).ngettext, newstyle=True
    )
    env.filters["local_time"] = _local_time
    env.filters["local_date"] = _local_date
    gettext = translations(lang).gettext
    env.filters["audit_details"] = lambda fields, action: auditlog.changed_details(fields, action, gettext)
    env.filters["audit_actor"] = lambda actor, names: auditlog.actor_name(actor, names, gettext)
    return env


def _local_time(value: float | dt.datetime | None) -> str:
    if value is None or value == 0:
        return "—"
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    return value.astimezone(AMSTERDAM).strftime("%d-%m-%Y %H:%M")


def _local_date(value: dt.datetime) -> str:
    return value.astimezone(AMSTERDAM).strftime("%d-%m-%Y")


def render(
    request: web.Request,
    template: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> web.Response:
    lang = language_of(request)
    other = other_language(lang)
    session = request.get("session")
    flash = session.pop("flash", None) if session is not None else None
    base = {
        "lang": lang,
        "account": request.get("account"),
        "csrf_token": lambda: csrf_token(session),
        "other_language_name": LANGUAGE_NAMES[other],
        "other_language_code": other,
        "other_language_url": switch_language_url(request, other),
        "current_path": request.path,
        "flash": gettext_for(lang)(flash) if flash else None,
    }
    policy = "no-referrer" if request.path.startswith(SECRET_URL_PREFIXES) else "same-origin"
    body = environment(lang).get_template(template).render(**base, referrer_policy=policy, **context)
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        headers={**SECURITY_HEADERS, "Referrer-Policy": policy, **(headers or {})},
    )


def csrf_token(session: Any) -> str:
    """The session's CSRF token, made when a page first needs one."""
    if session is None:
        return ""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(24)
        session["csrf"] = token
    return token


def redirect(location: str) -> web.Response:
    """303 See Other: after a form, the browser fetches the next page with GET."""
    return web.Response(status=303, headers={"Location": location, **SECURITY_HEADERS})


def error_page(request: web.Request, status: int, heading: str, body: str) -> web.Response:
    """A plain page with a heading and a sentence; `heading` and `body` are msgids."""
    _ = gettext_for(language_of(request))
    return render(request, "error.html", status=status, heading=_(heading), body=_(body))


Found = TypeVar("Found")


def needs(
    find: Callable[[web.Request], Awaitable[Found | web.Response]],
) -> Callable[[Callable[[web.Request, Found], Awaitable[web.Response]]], Callable[[web.Request], Awaitable[web.Response]]]:
    """For a page about what its URL names (a record, an invite's contact): `find` looks it
    up and the page gets it; when `find` answers with a page instead (404, 403, 410), that
    page is the answer."""

    def decorate(
        page: Callable[[web.Request, Found], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            found = await find(request)
            if isinstance(found, web.Response):
                return found
            return await page(request, found)

        handler.__name__ = page.__name__
        handler.__doc__ = page.__doc__
        return handler

    return decorate
