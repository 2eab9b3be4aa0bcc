"""Pairing over HTTP (docs/protocol.md): ask for a code, show it, wait for a coordinator.

    POST /api/kiosk/pair                       → {pairing_id, code, secret, expires_in_s}
    GET  /api/kiosk/pair/{pairing_id}
         X-Pairing-Secret: <secret>            → 202 waiting | 200 {kiosk_id, credential} | 410 expired
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from .state import Credential

REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


class PairingExpired(Exception):
    """The code ran out (or the server forgot it): ask for a new one."""


class PairingError(Exception):
    """The server answered something unexpected."""


@dataclass(frozen=True)
class PairingTicket:
    pairing_id: str
    code: str
    secret: str
    expires_in_s: float

    def __repr__(self) -> str:  # never print the secret
        return f"PairingTicket(pairing_id={self.pairing_id!r}, code={self.code!r})"


def pairing_url(server: str, code: str) -> str:
    """Where a coordinator confirms the code (the QR code on the pairing screen)."""
    return f"{server.rstrip('/')}/admin/kiosks/pair?code={quote(code)}"


async def request_pairing(http: aiohttp.ClientSession, server: str) -> PairingTicket:
    async with http.post(f"{server.rstrip('/')}/api/kiosk/pair", json={}, timeout=REQUEST_TIMEOUT) as response:
        if response.status not in (200, 201):
            raise PairingError(f"pairing request answered {response.status}")
        data = await response.json()
    try:
        return PairingTicket(
            str(data["pairing_id"]), str(data["code"]), str(data["secret"]), float(data.get("expires_in_s", 600))
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PairingError(f"pairing answer incomplete: {exc}") from None


async def poll_pairing(http: aiohttp.ClientSession, server: str, ticket: PairingTicket) -> Credential | None:
    """None while waiting; the credential once confirmed; `PairingExpired` when the code ran out."""
    url = f"{server.rstrip('/')}/api/kiosk/pair/{quote(ticket.pairing_id)}"
    async with http.get(url, headers={"X-Pairing-Secret": ticket.secret}, timeout=REQUEST_TIMEOUT) as response:
        if response.status == 202:
            return None
        if response.status in (404, 410):
            raise PairingExpired()
        if response.status != 200:
            raise PairingError(f"pairing status answered {response.status}")
        data = await response.json()
    try:
        return Credential(str(data["kiosk_id"]), str(data["credential"]), server.rstrip("/"))
    except (KeyError, TypeError) as exc:
        raise PairingError(f"pairing answer incomplete: {exc}") from None
