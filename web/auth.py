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
- Failed logins are counted per username and per address; `login_max_failures` within
  `login_failure_window_s` (counted from the first failure) locks that name or address until
  the window has passed; the counts live in the store, so with Redis every node shares them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import argon2
from aiohttp import web
from multidict import MultiDict

from server.app import DIRECTORY_KEY, SETTINGS_KEY, STORE_KEY
from server.config import Settings
from server.directory import Account, Directory
from server.invites import named_secret
from server.store import Store

from .i18n import N_, gettext_for, language_of
from .rendering import error_page, redirect, render
from .sessions import StaffSessions

SESSION_COOKIE = "vz_session"
CSRF_FIELD = "csrf_token"
SESSION_SECRET_KEY = web.AppKey("session_secret", str)
STAFF_SESSIONS_KEY = web.AppKey("staff_sessions", StaffSessions)
MIN_PASSWORD = 10
MAX_PASSWORD = 256
# Paths the web layer leaves alone: signalling, the JSON API, files, health.
_NOT_PAGES = ("/ws", "/api/", "/static/", "/healthz")

_hasher = argon2.PasswordHasher()
# Verified against when the username is unknown, so both cases take equally long.
_DUMMY_HASH = _hasher.hash("not a real password, only for timing")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- passwords ---------------------------------------------------------------------------


def check_new_password(password: str) -> str | None:
    """A msgid explaining what is wrong with a new password, or None."""
    if len(password) < MIN_PASSWORD:
        return N_("A password needs at least 10 characters.")
    if len(password) > MAX_PASSWORD:
        return N_("A password can be at most 256 characters.")
    return None


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


class Session(dict[str, Any]):
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


def _fresh_session(settings: Settings) -> Session:
    """An empty session; it becomes a cookie only once something is stored in it (a CSRF
    token when a page with a form is shown), so pages without forms set no cookie."""
    return Session({"exp": int(time.time()) + settings.session_ttl_s})


# --- login throttling ------------------------------------------------------------------------


class LoginThrottle:
    """Failed logins per key ("user:…", "addr:…") in the store, so every node sees them."""

    def __init__(self, store: Store, max_failures: int, window_s: float) -> None:
        self.store = store
        self.max_failures = max_failures
        self.window_s = window_s

    @staticmethod
    def _counter(key: str) -> str:
        return f"login_failures:{key}"

    async def locked(self, *keys: str) -> bool:
        for key in keys:
            if await self.store.counted(self._counter(key)) >= self.max_failures:
                return True
        return False

    async def failed(self, *keys: str) -> None:
        for key in keys:
            await self.store.count(self._counter(key), self.window_s)

    async def succeeded(self, key: str) -> None:
        await self.store.reset_count(self._counter(key))


# --- middleware ----------------------------------------------------------------------------


def _is_page(request: web.Request) -> bool:
    return not request.path.startswith(_NOT_PAGES)


async def read_form(request: web.Request, max_bytes: int) -> MultiDict[Any] | None:
    """The posted form; files come as (filename, content type, bytes). None when too large."""
    if request.content_type == "multipart/form-data":
        form: MultiDict[Any] = MultiDict()
        reader = await request.multipart()
        total = 0
        while (part := await reader.next()) is not None:
            if part.name is None:
                continue
            chunks = []
            while chunk := await part.read_chunk(64 * 1024):
                total += len(chunk)
                if total > max_bytes:
                    return None
                chunks.append(chunk)
            data = b"".join(chunks)
            if part.filename is not None:
                form.add(part.name, (part.filename, part.headers.get("Content-Type", ""), data))
            else:
                form.add(part.name, data.decode("utf-8", errors="replace"))
        return form
    try:
        return MultiDict(await request.post())
    except web.HTTPRequestEntityTooLarge:
        return None


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
    session = Session(data) if data is not None else _fresh_session(settings)
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
            secure=request.secure or settings.public_url.startswith("https:"),
            path="/",
        )
    return response


async def _check_post(request: web.Request, session: Session, settings: Settings) -> web.Response | None:
    """Reads the form into request["form"] and checks CSRF; a response when refused."""
    if not _same_origin(request):
        return _expired(request)
    form = await read_form(request, settings.photo_max_bytes + 64 * 1024)
    if form is None:
        return error_page(
            request, 413, N_("That is too large"), N_("The file is too large. Choose a smaller photo.")
        )
    token = form.get(CSRF_FIELD)
    expected = session.get("csrf")
    if not isinstance(token, str) or not isinstance(expected, str) or not expected or not hmac.compare_digest(
        token.encode(), expected.encode()
    ):
        return _expired(request)
    request["form"] = form
    return None


def _expired(request: web.Request) -> web.Response:
    return error_page(
        request,
        403,
        N_("This page has expired"),
        N_("For your safety this form can no longer be sent. Go back, reload the page and try again."),
    )


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


def _safe_next(target: str | None) -> str | None:
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
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
    throttle = LoginThrottle(app[STORE_KEY], settings.login_max_failures, settings.login_failure_window_s)
    directory: Directory = app[DIRECTORY_KEY]
    data = form(request)
    username = str(data.get("username", "")).strip().lower()[:64]
    password = str(data.get("password", ""))[:MAX_PASSWORD]
    target = _safe_next(data.get("next"))
    keys = (f"user:{username}", f"addr:{request.remote}")
    _ = gettext_for(language_of(request))
    if await throttle.locked(*keys):
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
        await throttle.failed(*keys)
        return render(
            request,
            "login.html",
            status=401,
            error=_("The username or password is not right."),
            next=target or "",
            username=username,
        )
    await throttle.succeeded(keys[0])
    if _hasher.check_needs_rehash(account.password_hash):
        account.password_hash = await hash_password(password)
        await directory.put(account, actor=account.id)
    # A new session on login: a token planted before login is worth nothing after it.
    session: Session = request["session"]
    await app[STAFF_SESSIONS_KEY].end(session.get("sid"))
    session.clear()
    session.update(_fresh_session(app[SETTINGS_KEY]))
    session["csrf"] = secrets.token_urlsafe(24)
    session["sid"] = await app[STAFF_SESSIONS_KEY].start(account.id)
    return redirect(target or home_of(account))


async def logout(request: web.Request) -> web.StreamResponse:
    session: Session = request["session"]
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
