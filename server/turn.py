"""Time-limited TURN credentials in coturn's REST-API scheme (`use-auth-secret`).

username = "<expiry unix time>:<user>", credential = base64(HMAC-SHA1(secret, username)).
coturn checks the HMAC and the expiry itself, so no per-user state is kept anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from .config import Settings


def turn_credential(secret: str, user: str, ttl_s: int, now: float | None = None) -> tuple[str, str]:
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers_for(settings: Settings, user: str) -> list[dict[str, Any]]:
    """The ICE servers a client gets: the configured ones plus TURN with fresh credentials."""
    servers = [dict(server) for server in settings.ice_servers]
    if settings.turn_urls and settings.turn_secret:
        username, credential = turn_credential(settings.turn_secret, user, settings.turn_ttl_s)
        servers.append({"urls": list(settings.turn_urls), "username": username, "credential": credential})
    return servers
