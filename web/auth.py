"""Staff accounts on the web: argon2 passwords, signed-cookie sessions, CSRF, login throttling.

- Passwords are hashed with argon2id (argon2-cffi's RFC 9106 defaults); hashing runs in a
  worker thread so a login never stalls the event loop (and with it everyone's calls).
- The cookie is base64url(JSON) "." base64url(HMAC-SHA256). The secret
  is `server.invites.named_secret(settings, "session")` (a 0600 file in the data dir, or
  derived from the operator's token secret). Logged in, it names a staff session kept in
  the store (web/sessions.py): logout, a password change, removing or switching off the
  account end it for every copy of the cookie. The account is loaded from the directory on
  every request, so a changed role takes effect at once.
- Every visitor of a page gets a per-session CSRF token; every POST outside `/api/` must
  carry it as the form field `csrf_token`, else 403 and nothing happens.
- Login attempts are counted per username and per client address (the proxy's word for it
  only from a trusted proxy, `server/forwarded.py`) before the password is checked; more
  than `login_max_failures` for a name, or `login_max_failures_per_address` for an address,
  within `login_failure_window_s` (from the first) locks that name or address until the
  window has passed. A good password clears the name's count. The counts live in the store,
  so with Redis every node shares them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import argon2
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDict

from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, STORE_KEY
from server.config import Settings
from server.directory import Account, Directory
from server.forwarded import TrustedProxies
from server.invites import named_secret
from server.store import Store

from .i18n import N_, gettext_for, language_of
from .password_policy import MAX_PASSWORD
from .rendering import error_page, redirect, render
from .sessions import StaffSessions

SESSION_COOKIE = "vz_session"
CSRF_FIELD = "csrf_token"
SESSION_SECRET_KEY = web.AppKey("session_secret", str)
STAFF_SESSIONS_KEY = web.AppKey("staff_sessions", StaffSessions)
# Paths the web layer leaves alone: signalling, the JSON API, files, health.
_NOT_PAGES = ("/ws", "/api/", "/static/", "/healthz")

_hasher = argon2.PasswordHasher()
# Verified against when the username is unknown, so both cases take equally long.
_DUMMY_HASH = _hasher.hash("not a real password, only for timing")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- passwords ---------------------------------------------------------------------------


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False

    return await asyncio.to_thread(check)


# --- signed cookie sessions ------------------------------------------------------------------


class LoginSession(dict[str, Any]):
    """The cookie's contents; `modified` says whether it must be sent again."""

    def __init__(self, data: dict[str, Any] | None = None, *, new: bool = False) -> None:
        super().__init__(data or {})
        self.modified = new

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.modified = True

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.modified = True

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        if key in self:
            self.modified = True
        return super().pop(key, *default)

    def clear(self) -> None:
        super().clear()
        self.modified = True


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_session(secret: str, data: dict[str, Any]) -> str:
    payload = _b64(json.dumps(data, separators=(",", ":")).encode())
    signature = _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{signature}"


def decode_session(secret: str, cookie: str | None) -> dict[str, Any] | None:
    """The data of a genuine, unexpired cookie; None for anything else."""
    if not cookie or len(cookie) > 4096 or "." not in cookie:
        return None
    payload, _, signature = cookie.partition(".")
    expected = _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature):
        return None
    try:
        data = json.loads(_unb64(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or data["exp"] < time.time():
        return None
    return data


def _fresh_session(settings: Settings) -> LoginSession:
    """An empty session; it becomes a cookie only once something is stored in it (a CSRF
    token when a page with a form is shown), so pages without forms set no cookie."""
    return LoginSession({"exp": int(time.time()) + settings.session_ttl_s})


# --- login throttling ------------------------------------------------------------------------


class LoginThrottle:
    """Login attempts per username and per client address, counted in the store (every
    node sees them) BEFORE the password is checked: the count is one atomic increment, so
    concurrent attempts cannot all slip under the limit while the first ones are verified.

    An address gets a larger budget than a username: many people can share one (an office,
    a care home), and an address is locked only by many failures, for any names.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.max_per_user = settings.login_max_failures
        self.max_per_address = settings.login_max_failures_per_address
        self.window_s = settings.login_failure_window_s

    @staticmethod
    def _counter(key: str) -> str:
        return f"login_failures:{key}"

    async def attempt(self, user_key: str, address_key: str) -> bool:
        """Counts one attempt against both; False when either is over its limit."""
        user = await self.store.count(self._counter(user_key), self.window_s)
        address = await self.store.count(self._counter(address_key), self.window_s)
        if address > self.max_per_address:
            return False
        if user > self.max_per_user:
            # Refused for the name alone, no password checked: the address (an office
            # where someone keeps retrying a locked name) gets the attempt back.
            await self.store.uncount(self._counter(address_key))
            return False
        return True

    async def succeeded(self, user_key: str, address_key: str) -> None:
        """A good password: the name's failures are forgotten, and the address gets this
        attempt back (it was no failure)."""
        await self.store.reset_count(self._counter(user_key))
        await self.store.uncount(self._counter(address_key))


# --- middleware ----------------------------------------------------------------------------


def _is_page(request: web.Request) -> bool:
    return not request.path.startswith(_NOT_PAGES)


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_CHUNK = 64 * 1024
# Fields in one form at most: well above an activity form ticking every senior and host.
_MAX_FIELDS = 10_000


class FormTooLarge(Exception):
    """The body is larger than the request may send."""


class FormForged(Exception):
    """The body lacks the session's CSRF token before its first file, or has a wrong one."""


def _check_csrf(token: object, expected: str) -> None:
    if not isinstance(token, str) or not hmac.compare_digest(token.encode(), expected.encode()):
        raise FormForged()


async def read_form(request: web.Request, max_bytes: int, csrf: str) -> MultiDict[Any]:
    """The posted form, streamed, never more than `max_bytes` read; files come as
    (filename, content type, bytes). The CSRF token is compared as soon as it arrives and
    must come before any file part, so a forged upload is refused before its file is read.
    Raises FormTooLarge or FormForged."""
    if request.content_type == "multipart/form-data":
        try:
            return await _read_multipart(request, max_bytes, csrf)
        except (ValueError, HttpProcessingError):
            # Not multipart as it says (no boundary, endless lines, cut short): there is
            # no token to trust in it.
            raise FormForged() from None
    body = bytearray()
    while chunk := await request.content.read(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise FormTooLarge()
    try:
        pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True,
                          errors="replace", max_num_fields=_MAX_FIELDS)
    except ValueError:
        raise FormTooLarge() from None
    form: MultiDict[Any] = MultiDict(pairs)
    _check_csrf(form.get(CSRF_FIELD), csrf)
    return form


async def _read_multipart(request: web.Request, max_bytes: int, csrf: str) -> MultiDict[Any]:
    form: MultiDict[Any] = MultiDict()
    reader = await request.multipart()
    total = 0
    checked = False
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or len(form) >= _MAX_FIELDS:
            raise FormForged()
        if part.filename is not None and not checked:
            raise FormForged()
        chunks = []
        while chunk := await part.read_chunk(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise FormTooLarge()
            chunks.append(chunk)
        data = b"".join(chunks)
        if part.name is None:
            continue
        if part.filename is not None:
            form.add(part.name, (part.filename, part.headers.get("Content-Type", ""), data))
            continue
        text = data.decode("utf-8", errors="replace")
        if part.name == CSRF_FIELD:
            _check_csrf(text, csrf)
            checked = True
        form.add(part.name, text)
    if not checked:
        raise FormForged()
    return form


def _same_origin(request: web.Request) -> bool:
    """A browser says where a POST comes from; another site's form is refused.

    "null" (a browser keeping the origin private) says nothing either way; the CSRF
    token, checked next, is what decides. Staff pages use the referrer policy
    "same-origin", under which browsers do send their origin with a form.
    """
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc == request.host


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _is_page(request):
        return await handler(request)
    app = request.app
    settings = app[SETTINGS_KEY]
    secret = app[SESSION_SECRET_KEY]
    data = decode_session(secret, request.cookies.get(SESSION_COOKIE))
    session = LoginSession(data) if data is not None else _fresh_session(settings)
    request["session"] = session
    request["account"] = None
    staff_session = session.get("sid")
    if staff_session:
        account = await app[STAFF_SESSIONS_KEY].account(staff_session)
        if account is not None:
            request["account"] = account
        else:
            # Logged out elsewhere, timed out, password changed, account gone: over.
            session.clear()
            session.update(_fresh_session(settings))
            session.modified = True

    if request.method not in ("GET", "HEAD", "OPTIONS"):
        response = await _check_post(request, session, settings)
        if response is None:
            response = await handler(request)
    else:
        response = await handler(request)

    if session.modified and not response.prepared:
        response.set_cookie(
            SESSION_COOKIE,
            encode_session(secret, dict(session)),
            max_age=settings.session_ttl_s,
            httponly=True,
            samesite="Lax",
            secure=served_over_https(request, settings),
            path="/",
        )
    return response


async def _check_post(request: web.Request, session: LoginSession, settings: Settings) -> web.Response | None:
    """Reads the form into request["form"] and checks CSRF; a response when refused.

    Everything that needs no body is checked before a byte of it is read: the origin, a
    session that was shown a form (else no token can match), the content type and the
    declared size. Only staff may send a photo's worth; anyone else a small form.
    """
    expected = session.get("csrf")
    if not _same_origin(request) or not isinstance(expected, str) or not expected:
        return _expired(request)
    if request.content_type not in _FORM_TYPES:
        return _expired(request)
    max_bytes = settings.form_max_bytes
    if request.get("account") is not None:
        max_bytes += settings.photo_max_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        return _too_large(request)
    try:
        request["form"] = await read_form(request, max_bytes, expected)
    except FormTooLarge:
        return _too_large(request)
    except FormForged:
        return _expired(request)
    return None


def _too_large(request: web.Request) -> web.Response:
    return error_page(request, 413, N_("That is too large"), N_("The file is too large. Choose a smaller photo."))


def _expired(request: web.Request) -> web.Response:
    return error_page(
        request,
        403,
        N_("This page has expired"),
        N_("For your safety this form can no longer be sent. Go back, reload the page and try again."),
    )


def served_over_https(request: web.Request, settings: Settings) -> bool:
    """Whether the browser reached us over https: the public URL says so, or the request
    came over TLS, or a trusted proxy says it did (X-Forwarded-Proto); cookies are then
    sent with Secure, so a browser never gives them away over plain http."""
    if settings.public_url.startswith("https:") or request.secure:
        return True
    return TrustedProxies(settings.trusted_proxies).scheme(request) == "https"


# --- who may do what -------------------------------------------------------------------------


def login_url(request: web.Request) -> str:
    return "/login?" + urlencode({"next": request.path_qs})


def require(*roles: str) -> Callable[[Handler], Handler]:
    """Only logged-in staff with one of `roles`; others go to the login page or get 403."""

    def decorate(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            account: Account | None = request.get("account")
            if account is None:
                return redirect(login_url(request))
            if account.role not in roles:
                return error_page(
                    request,
                    403,
                    N_("Not for your account"),
                    N_("Your account may not open this page. Ask a coordinator if you need it."),
                )
            return await handler(request)

        guarded.__name__ = handler.__name__
        guarded.__doc__ = handler.__doc__
        return guarded

    return decorate


def current_account(request: web.Request) -> Account:
    account = request.get("account")
    assert account is not None, "route is not guarded by require()"
    return account


def form(request: web.Request) -> MultiDict[Any]:
    return request["form"]


# Where a login may send the browser on: a path of this site, in plain characters. Anything
# else (another site, a scheme, a backslash, "//", spaces or control characters that a
# browser drops or that would split the header) goes to the account's home page instead.
_LOCAL_PATH = re.compile(r"/(?!/)[A-Za-z0-9_.~/-]*(?:\?[A-Za-z0-9_.~/=&%+-]*)?")
_MAX_NEXT = 512


def _safe_next(target: object) -> str | None:
    if not isinstance(target, str) or len(target) > _MAX_NEXT or not _LOCAL_PATH.fullmatch(target):
        return None
    if "//" in target.partition("?")[0]:
        return None
    return target


def home_of(account: Account) -> str:
    return "/admin" if account.role == "coordinator" else "/host"


# --- pages -------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.StreamResponse:
    account = request.get("account")
    if account is not None:
        return redirect(_safe_next(request.query.get("next")) or home_of(account))
    return render(request, "login.html", next=_safe_next(request.query.get("next")) or "", username="")


async def login_submit(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS_KEY]
    throttle = LoginThrottle(app[STORE_KEY], settings)
    directory: Directory = app[DIRECTORY_KEY]
    data = form(request)
    username = str(data.get("username", "")).strip().lower()[:64]
    password = str(data.get("password", ""))[:MAX_PASSWORD]
    target = _safe_next(data.get("next"))
    user_key = f"user:{username}"
    address_key = f"addr:{TrustedProxies(settings.trusted_proxies).client_address(request)}"
    _ = gettext_for(language_of(request))
    if not await throttle.attempt(user_key, address_key):
        minutes = max(1, round(throttle.window_s / 60))
        return render(
            request,
            "login.html",
            status=429,
            error=_("Too many attempts. Please wait %(minutes)s minutes and try again.", minutes=minutes),
            next=target or "",
            username=username,
        )
    account = await directory.account_by_username(username) if username else None
    ok = await verify_password(account.password_hash if account else "", password)
    if not ok or account is None or account.disabled:
        return render(
            request,
            "login.html",
            status=401,
            error=_("The username or password is not right."),
            next=target or "",
            username=username,
        )
    await throttle.succeeded(user_key, address_key)
    if _hasher.check_needs_rehash(account.password_hash):
        account.password_hash = await hash_password(password)
        await directory.put(account, actor=account.id)
    # A new session on login: a token planted before login is worth nothing after it.
    session: LoginSession = request["session"]
    await app[STAFF_SESSIONS_KEY].end(session.get("sid"))
    session.clear()
    session.update(_fresh_session(app[SETTINGS_KEY]))
    session["csrf"] = secrets.token_urlsafe(24)
    session["sid"] = await app[STAFF_SESSIONS_KEY].start(account.id)
    return redirect(target or home_of(account))


async def logout(request: web.Request) -> web.StreamResponse:
    session: LoginSession = request["session"]
    await request.app[STAFF_SESSIONS_KEY].end(session.get("sid"))
    session.clear()
    session.update(_fresh_session(request.app[SETTINGS_KEY]))
    session["flash"] = N_("You are logged out.")
    return redirect("/login")


async def _open_staff_sessions(app: web.Application) -> None:
    # After the store opened (server.app's cleanup context runs first).
    settings = app[SETTINGS_KEY]
    app[STAFF_SESSIONS_KEY] = StaffSessions(
        app[STORE_KEY], app[DIRECTORY_KEY], idle_s=settings.session_idle_s, absolute_s=settings.session_ttl_s
    )


def setup(app: web.Application) -> None:
    settings = app[SETTINGS_KEY]
    app[SESSION_SECRET_KEY] = named_secret(settings, "session")
    app.on_startup.append(_open_staff_sessions)
    app.middlewares.append(session_middleware)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
