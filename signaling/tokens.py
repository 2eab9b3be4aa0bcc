"""Signed join tokens (JWT, HS256) carrying who a participant is and what they may do."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt

from server.datadir import secret_file

ROLES = ("senior", "host", "family", "admin")
PERMISSIONS = ("publish", "subscribe", "moderate")
DEFAULT_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "senior": ("publish", "subscribe"),
    "family": ("publish", "subscribe"),
    "host": ("publish", "subscribe", "moderate"),
    "admin": ("publish", "subscribe", "moderate"),
}
ALGORITHM = "HS256"
# The longest a join token may live unless the issuer is told otherwise (Settings.max_token_ttl_s):
# revocations are kept this long, until every token issued before them has expired.
MAX_TTL_S = 12 * 3600
ISSUER = "verzilvering"
SECRET_FILE = "token_secret"


class TokenError(Exception):
    """A token was refused; `code` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Grant:
    participant_id: str
    name: str
    role: str
    room: str
    permissions: frozenset[str]
    expires_at: int
    # When the token was issued (Unix seconds, millisecond resolution); revocations refuse
    # tokens issued before them. 0 for a token without `iat`: any revocation refuses it.
    issued_at: float = 0.0

    def may(self, permission: str) -> bool:
        return permission in self.permissions


def load_or_create_secret(data_dir: Path) -> str:
    """Returns the signing secret kept in the data dir, creating it (mode 0600) once."""
    return secret_file(Path(data_dir) / SECRET_FILE)


class TokenIssuer:
    def __init__(self, secret: str, max_ttl_s: int = MAX_TTL_S) -> None:
        if len(secret) < 32:
            raise ValueError("token secret must be at least 32 characters")
        self._secret = secret
        self.max_ttl_s = max_ttl_s

    def issue(
        self,
        *,
        role: str,
        room: str,
        name: str,
        ttl_s: int = 3600,
        participant_id: str | None = None,
        permissions: tuple[str, ...] | None = None,
    ) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not room:
            raise ValueError("room must not be empty")
        if not name.strip():
            raise ValueError("name must not be empty")
        if ttl_s <= 0:
            raise ValueError("ttl must be positive")
        if ttl_s > self.max_ttl_s:
            raise ValueError(f"ttl must be at most {self.max_ttl_s} s (max_token_ttl_s)")
        perms = DEFAULT_PERMISSIONS[role] if permissions is None else permissions
        unknown = set(perms) - set(PERMISSIONS)
        if unknown:
            raise ValueError(f"unknown permissions: {', '.join(sorted(unknown))}")
        # Milliseconds, rounded down: a token made just before a revocation is older than it.
        now = math.floor(time.time() * 1000) / 1000
        claims = {
            "iss": ISSUER,
            "sub": participant_id or f"p-{uuid.uuid4().hex[:12]}",
            "name": name.strip(),
            "role": role,
            "room": room,
            "perms": list(perms),
            "iat": now,
            "exp": int(now) + ttl_s,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str, *, room: str | None = None) -> Grant:
        """Checks signature, expiry and, when given, the room the token is for."""
        if not isinstance(token, str) or not token:
            raise TokenError("token_invalid", "The token is missing or not a string.")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token_expired", "The token has expired; ask for a new link.") from None
        except jwt.InvalidTokenError:
            raise TokenError("token_invalid", "The token is not valid.") from None
        role = claims.get("role")
        perms = claims.get("perms")
        if (
            role not in ROLES
            or not isinstance(claims.get("room"), str)
            or not isinstance(claims.get("name"), str)
            or not isinstance(perms, list)
            or not set(perms) <= set(PERMISSIONS)
        ):
            raise TokenError("token_invalid", "The token's claims are incomplete.")
        if room is not None and claims["room"] != room:
            raise TokenError("token_wrong_room", "The token is for another room.")
        return Grant(
            participant_id=claims["sub"],
            name=claims["name"],
            role=role,
            room=claims["room"],
            permissions=frozenset(perms),
            expires_at=int(claims["exp"]),
            issued_at=_issued_at(claims.get("iat")),
        )


def _issued_at(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)
