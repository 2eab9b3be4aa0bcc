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

CODE_DIGITS = 6
# Random codes tried before giving up; with a million codes, only a flood fills them.
_CODE_TRIES = 20
# Expired pairings are swept at most this often (one node does it, under a store lock).
SWEEP_INTERVAL_S = 60.0


@dataclass
class PairingStart:
    pairing_id: str
    code: str
    secret: str
    expires_in_s: int


def _code() -> str:
    return "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))


def _code_record(code: str) -> str:
    return f"code-{code}"


class PairingBusy(Exception):
    """No free code was found (nearly every code is showing on some kiosk)."""


async def start_pairing(store: Store, ttl_s: int) -> PairingStart:
    """A new pairing with a code no other live pairing shows, valid `ttl_s` (Settings.pairing_ttl_s).

    A code is claimed with one atomic store lock for the pairing's lifetime, and found
    again through a small index record ("code-<digits>"): starting or confirming a
    pairing never lists the others.
    """
    await _sweep_expired(store)
    for _ in range(_CODE_TRIES):
        code = _code()
        if await store.acquire_lock(f"pairing-code:{code}", ttl_s):
            break
    else:
        raise PairingBusy()
    pairing_id = f"pair-{uuid.uuid4().hex}"
    secret = secrets.token_urlsafe(24)
    expires_at = time.time() + ttl_s
    await store.put_record(
        "pairings",
        pairing_id,
        {
            "id": pairing_id,
            "code": code,
            "secret_hash": hash_secret(secret),
            "expires_at": expires_at,
            "kiosk_id": None,
            "credential": None,
        },
    )
    await store.put_record(
        "pairings", _code_record(code), {"id": _code_record(code), "pairing_id": pairing_id, "expires_at": expires_at}
    )
    return PairingStart(pairing_id, code, secret, ttl_s)


async def _sweep_expired(store: Store) -> None:
    """Deletes expired pairings (and their code records), at most once per interval for
    all nodes together: pairings a kiosk never came back for must not pile up."""
    if not await store.acquire_lock("pairings-sweep", SWEEP_INTERVAL_S):
        return
    now = time.time()
    for record in await store.list_records("pairings"):
        if record.get("expires_at", 0) < now:
            await store.delete_record("pairings", record["id"])


async def _live(store: Store, record_id: str) -> dict[str, Any] | None:
    record = await store.get_record("pairings", record_id)
    if record is None or record["expires_at"] < time.time():
        return None
    return record


async def confirm_pairing(store: Store, directory: Directory, code: str, senior_id: str, actor: str) -> Kiosk:
    """Binds the kiosk showing `code` to the senior; raises DirectoryError on bad input."""
    code = "".join(ch for ch in str(code) if ch.isdigit())
    if len(code) != CODE_DIGITS:
        raise DirectoryError("code", f"The code has {CODE_DIGITS} digits.")
    senior = await directory.get(Senior, senior_id)
    if senior is None:
        raise DirectoryError("senior_id", "Choose a senior.")
    index = await _live(store, _code_record(code))
    pairing = await _live(store, index["pairing_id"]) if index is not None else None
    if pairing is None or pairing["code"] != code or pairing["kiosk_id"]:
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
    await store.delete_record("pairings", _code_record(code))
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
