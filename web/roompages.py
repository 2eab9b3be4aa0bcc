"""What the pages that open an activity's room share (the host console, web/host.py, and the
family's pages, web/family.py): the rows of an activity list, and the short-lived join token
such a page carries and renews while it is open.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from server.appkeys import ISSUER_KEY, SETTINGS_KEY
from server.directory import Activity
from server.schedule import next_occurrence


def activity_row(activity: Activity, now: dt.datetime) -> dict[str, Any]:
    """An activity in a list, with its next (or running) start; None without weekly slots."""
    upcoming = next_occurrence(activity.weekly_slots, now)
    return {"activity": activity, "next": upcoming[0] if upcoming else None}


def page_token(request: web.Request, *, role: str, room: str, name: str, participant_id: str) -> str:
    """A join token that lives `page_token_ttl_s`: the open page renews it (`token_response`)."""
    return request.app[ISSUER_KEY].issue(
        role=role, room=room, name=name, participant_id=participant_id,
        ttl_s=request.app[SETTINGS_KEY].page_token_ttl_s,
    )


def token_refresh_ms(request: web.Request) -> int:
    """How often the page renews its token: a third of the lifetime, so two renewals may
    fail before a reconnect would."""
    return request.app[SETTINGS_KEY].page_token_ttl_s * 1000 // 3


def token_response(request: web.Request, token: str) -> web.Response:
    """A renewal's answer: {token, expires_in_s}, never cached."""
    return web.json_response(
        {"token": token, "expires_in_s": request.app[SETTINGS_KEY].page_token_ttl_s},
        headers={"Cache-Control": "no-store"},
    )
