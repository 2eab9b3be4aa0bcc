"""JSON endpoints for kiosks (pairing) and family members (starting a call)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .invites import InviteError, named_secret, resolve_invite
from .pairing import PairingNotFound, poll_pairing, start_pairing


def setup(app: web.Application) -> None:
    app.router.add_post("/api/kiosk/pair", pair_start)
    app.router.add_get("/api/kiosk/pair/{pairing_id}", pair_poll)
    app.router.add_post("/api/calls", call_start)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def pair_start(request: web.Request) -> web.Response:
    from .app import STORE_KEY

    started = await start_pairing(request.app[STORE_KEY])
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
    from .app import STORE_KEY

    secret = request.headers.get("X-Pairing-Secret", "")
    try:
        result = await poll_pairing(request.app[STORE_KEY], request.match_info["pairing_id"], secret)
    except PairingNotFound:
        return _error(410, "pairing_gone", "This pairing code has expired; start again for a new code.")
    if result is None:
        return web.json_response({"status": "waiting"}, status=202)
    return web.json_response(result)


async def call_start(request: web.Request) -> web.Response:
    from .app import DIRECTORY_KEY, SETTINGS_KEY, SIGNALING_KEY

    try:
        body: Any = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "bad_json", "The request body is not JSON.")
    invite = body.get("invite") if isinstance(body, dict) else None
    if not isinstance(invite, str):
        return _error(400, "bad_request", "Field 'invite' is missing.")
    secret = named_secret(request.app[SETTINGS_KEY], "invite")
    try:
        contact = await resolve_invite(request.app[DIRECTORY_KEY], secret, invite)
    except InviteError as exc:
        return _error(403, f"invite_{exc.code}", "This link no longer works. Ask for a new one.")
    call = await request.app[SIGNALING_KEY].devices.start_call(contact)
    return web.json_response(call, status=201)
