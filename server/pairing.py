"""Kiosk pairing: a new kiosk shows a short code; a coordinator binds it to a senior.

The kiosk never holds a password. It receives a random device credential once, when it
polls after the coordinator confirmed its code; the directory keeps only its hash.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .directory import Directory, DirectoryError, Kiosk, Senior, hash_secret, new_id, secret_matches
from .store import Store

PAIRING_TTL_S = 15 * 60
CODE_DIGITS = 6


@dataclass
class PairingStart:
    pairing_id: str
    code: str
    secret: str
    expires_in_s: int


def _code() -> str:
    return "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))


async def start_pairing(store: Store) -> PairingStart:
    pending = {p["code"] for p in await _live_pairings(store)}
    code = _code()
    while code in pending:
        code = _code()
    pairing_id = f"pair-{uuid.uuid4().hex}"
    secret = secrets.token_urlsafe(24)
    await store.put_record(
        "pairings",
        pairing_id,
        {
            "id": pairing_id,
            "code": code,
            "secret_hash": hash_secret(secret),
            "expires_at": time.time() + PAIRING_TTL_S,
            "kiosk_id": None,
            "credential": None,
        },
    )
    return PairingStart(pairing_id, code, secret, PAIRING_TTL_S)


async def _live_pairings(store: Store) -> list[dict[str, Any]]:
    now = time.time()
    live = []
    for record in await store.list_records("pairings"):
        if record["expires_at"] < now:
            await store.delete_record("pairings", record["id"])
        else:
            live.append(record)
    return live


async def confirm_pairing(store: Store, directory: Directory, code: str, senior_id: str, actor: str) -> Kiosk:
    """Binds the kiosk showing `code` to the senior; raises DirectoryError on bad input."""
    code = "".join(ch for ch in str(code) if ch.isdigit())
    if len(code) != CODE_DIGITS:
        raise DirectoryError("code", f"The code has {CODE_DIGITS} digits.")
    senior = await directory.get(Senior, senior_id)
    if senior is None:
        raise DirectoryError("senior_id", "Choose a senior.")
    pairing = next((p for p in await _live_pairings(store) if p["code"] == code and not p["kiosk_id"]), None)
    if pairing is None:
        raise DirectoryError("code", "No kiosk shows this code. Check the digits, or restart the kiosk for a new code.")
    credential = secrets.token_urlsafe(32)
    kiosk = Kiosk(
        id=new_id("kiosk"),
        senior_id=senior.id,
        name=f"Kiosk {senior.name}",
        credential_hash=hash_secret(credential),
        paired_at=time.time(),
    )
    await directory.put(kiosk, actor=actor)
    # The plain credential waits here until the kiosk's next poll takes it, then goes.
    pairing.update(kiosk_id=kiosk.id, credential=credential)
    await store.put_record("pairings", pairing["id"], pairing)
    return kiosk


class PairingNotFound(Exception):
    pass


async def poll_pairing(store: Store, pairing_id: str, secret: str) -> dict[str, str] | None:
    """The kiosk's credential once confirmed (given out once), None while waiting."""
    record = await store.get_record("pairings", pairing_id) if pairing_id.startswith("pair-") else None
    if record is None or record["expires_at"] < time.time() or not secret_matches(secret, record["secret_hash"]):
        raise PairingNotFound(pairing_id)
    if not record["kiosk_id"]:
        return None
    await store.delete_record("pairings", pairing_id)
    return {"kiosk_id": record["kiosk_id"], "credential": record["credential"]}


async def authenticate_kiosk(directory: Directory, kiosk_id: str, credential: str) -> Kiosk | None:
    kiosk = await directory.get(Kiosk, kiosk_id) if kiosk_id else None
    if kiosk is None or kiosk.revoked or not kiosk.credential_hash:
        return None
    return kiosk if secret_matches(credential, kiosk.credential_hash) else None
