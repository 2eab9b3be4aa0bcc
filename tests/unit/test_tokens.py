"""Join tokens and the signing secret."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import jwt
import pytest

from signaling.tokens import TokenError, TokenIssuer, load_or_create_secret

SECRET = "s" * 48


def test_issue_and_verify_round_trip() -> None:
    issuer = TokenIssuer(SECRET)
    grant = issuer.verify(issuer.issue(role="host", room="bingo", name=" Ans ", ttl_s=60, participant_id="p-1"))
    assert grant.participant_id == "p-1"
    assert grant.name == "Ans"
    assert grant.role == "host"
    assert grant.room == "bingo"
    assert grant.permissions == {"publish", "subscribe", "moderate"}
    assert 55 <= grant.expires_at - time.time() <= 60
    assert grant.may("moderate") and not TokenIssuer(SECRET).verify(
        issuer.issue(role="family", room="bingo", name="F")
    ).may("moderate")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"role": "king", "room": "r", "name": "n"}, "unknown role"),
        ({"role": "host", "room": "", "name": "n"}, "room"),
        ({"role": "host", "room": "r", "name": "  "}, "name"),
        ({"role": "host", "room": "r", "name": "n", "ttl_s": 0}, "ttl"),
        ({"role": "host", "room": "r", "name": "n", "permissions": ("fly",)}, "unknown permissions"),
    ],
)
def test_issue_refuses_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenIssuer(SECRET).issue(**kwargs)


def test_short_secret_refused() -> None:
    with pytest.raises(ValueError):
        TokenIssuer("short")


def test_distinct_codes_for_forged_expired_and_wrong_room() -> None:
    issuer = TokenIssuer(SECRET)
    forged = TokenIssuer("o" * 48).issue(role="admin", room="r", name="x")
    expired = jwt.encode(
        {"iss": "verzilvering", "sub": "p", "name": "x", "role": "senior", "room": "r", "perms": [], "exp": time.time() - 1},
        SECRET,
        algorithm="HS256",
    )
    codes = []
    for token, room in ((forged, None), (expired, None), (issuer.issue(role="senior", room="r", name="x"), "other")):
        with pytest.raises(TokenError) as info:
            issuer.verify(token, room=room)
        codes.append(info.value.code)
    assert codes == ["token_invalid", "token_expired", "token_wrong_room"]


def test_secret_created_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path / "data")
    path = tmp_path / "data" / "token_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(tmp_path / "data") == first
    assert len(first) >= 32
