"""Family invite links: a signed, expiring token naming one contact.

An invite is an HS256 JWT with `typ` "invite", the contact id (`sub`) and the contact's
`invite_version`. It is not a join token: it carries no room, role or permissions, and
`signaling.tokens.TokenIssuer.verify` refuses it. Making a new link for a contact bumps
`Contact.invite_version`, which turns every older link for that contact off at once.

The signing secret is separate from the join-token secret (see `named_secret`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import jwt

from .config import Settings
from .datadir import secret_file
from .directory import Contact, Directory

ALGORITHM = "HS256"
ISSUER = "verzilvering"
INVITE_TYPE = "invite"
DEFAULT_TTL_S = 180 * 24 * 3600


class InviteError(Exception):
    """An invite was refused. `code`: "invalid", "expired" or "revoked"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def named_secret(settings: Settings, purpose: str) -> str:
    """A signing secret for one purpose ("invite", "session", …).

    When the operator sets `token_secret` (every node of a cluster shares it) the secret is
    derived from it with HMAC, so all nodes agree without another setting. Otherwise it is
    generated once into `<data_dir>/<purpose>_secret` with mode 0600, like the join-token
    secret.
    """
    if not purpose.isidentifier():
        raise ValueError("purpose must be a plain word")
    if settings.token_secret:
        return hmac.new(
            settings.token_secret.encode(), f"verzilvering/{purpose}".encode(), hashlib.sha256
        ).hexdigest()
    return secret_file(Path(settings.data_dir) / f"{purpose}_secret")


def issue_invite(secret: str, contact: Contact, *, ttl_s: int = DEFAULT_TTL_S) -> str:
    if ttl_s <= 0:
        raise ValueError("ttl must be positive")
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "typ": INVITE_TYPE,
        "sub": contact.id,
        "ver": contact.invite_version,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_invite(secret: str, token: str) -> tuple[str, int]:
    """Checks signature, type and expiry; returns (contact_id, invite_version).

    The caller still compares the version with the contact's current `invite_version`
    (`resolve_invite` does both).
    """
    if not isinstance(token, str) or not token or len(token) > 2048 or not token.isascii():
        raise InviteError("invalid", "The invite is missing or malformed.")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iss", "typ", "ver"]},
        )
    except jwt.ExpiredSignatureError:
        raise InviteError("expired", "The invite has expired.") from None
    except jwt.InvalidTokenError:
        raise InviteError("invalid", "The invite is not valid.") from None
    version = claims.get("ver")
    if (
        claims.get("typ") != INVITE_TYPE
        or not isinstance(claims.get("sub"), str)
        or not isinstance(version, int)
        or isinstance(version, bool)
    ):
        raise InviteError("invalid", "The invite is not valid.")
    return claims["sub"], version


async def resolve_invite(directory: Directory, secret: str, token: str) -> Contact:
    """The contact an invite stands for, if the invite is valid and still current."""
    contact_id, version = verify_invite(secret, token)
    contact = await directory.get(Contact, contact_id)
    if contact is None:
        raise InviteError("revoked", "The contact no longer exists.")
    if contact.invite_version != version:
        raise InviteError("revoked", "A newer invite replaced this one.")
    return contact
