"""JSON endpoints for kiosks (pairing) and family members (starting a call).

Both can be reached without an account, so both are rate-limited with store counters
(shared by every node): pairing starts per client address, calls per invite.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .appkeys import DIRECTORY_KEY, SETTINGS_KEY, SIGNALING_KEY, STORE_KEY
from .forwarded import TrustedProxies
from .invites import InviteError, named_secret, resolve_invite
from .pairing import PairingBusy, PairingNotFound, poll_pairing, start_pairing


def setup(app: web.Application) -> None:
    app.router.add_post("/api/kiosk/pair", pair_start)
    app.router.add_get("/api/kiosk/pair/{pairing_id}", pair_poll)
    app.router.add_post("/api/calls", call_start)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def _rate_limited(window_s: float) -> web.Response:
    response = _error(429, "rate_limited", "Too many requests; try again later.")
    response.headers["Retry-After"] = str(max(1, round(window_s)))
    return response


class BadBody(Exception):
    pass


async def _json_body(request: web.Request) -> Any:
    """The JSON body; BadBody for anything that is not plain JSON text: not UTF-8, not JSON,
    nested too deep for the parser, or holding a lone surrogate (which no store can keep)."""
    try:
        body = json.loads(await request.text())
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        # UnicodeDecodeError and UnicodeEncodeError are ValueErrors.
        raise BadBody() from None
    return body


async def pair_start(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    store = request.app[STORE_KEY]
    address = TrustedProxies(settings.trusted_proxies).client_address(request)
    if await store.count(f"pairing_starts:{address}", settings.pairing_start_window_s) > settings.pairing_start_limit:
        return _rate_limited(settings.pairing_start_window_s)
    try:
        started = await start_pairing(store, settings.pairing_ttl_s)
    except PairingBusy:
        return _error(503, "unavailable", "No pairing code is free right now; try again shortly.")
    return web.json_response(
        {
            "pairing_id": started.pairing_id,
            "code": started.code,
            "secret": started.secret,
            "expires_in_s": started.expires_in_s,
        },
        status=201,
    )


async def pair_poll(request: web.Request) -> web.Response:
    secret = request.headers.get("X-Pairing-Secret", "")
    try:
        result = await poll_pairing(request.app[STORE_KEY], request.match_info["pairing_id"], secret)
    except PairingNotFound:
        return _error(410, "pairing_gone", "This pairing code has expired; start again for a new code.")
    if result is None:
        return web.json_response({"status": "waiting"}, status=202)
    return web.json_response(result)


async def call_start(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    try:
        body = await _json_body(request)
    except BadBody:
        return _error(400, "bad_json", "The request body is not JSON text (UTF-8, nested at most a few hundred levels).")
    invite = body.get("invite") if isinstance(body, dict) else None
    if not isinstance(invite, str):
        return _error(400, "bad_request", "Field 'invite' is missing.")
    secret = named_secret(settings, "invite")
    try:
        contact = await resolve_invite(request.app[DIRECTORY_KEY], secret, invite)
    except InviteError as exc:
        return _error(403, f"invite_{exc.code}", "This link no longer works. Ask for a new one.")
    counter = f"call_starts:{contact.id}"
    if await request.app[STORE_KEY].count(counter, settings.call_start_window_s) > settings.call_start_limit:
        return _rate_limited(settings.call_start_window_s)
    call = await request.app[SIGNALING_KEY].devices.start_call(contact)
    return web.json_response(call, status=201)
