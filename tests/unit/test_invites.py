"""Family invite tokens and the per-purpose signing secrets."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from server.config import Settings
from server.directory import Contact, Directory
from server.invites import InviteError, issue_invite, named_secret, resolve_invite, verify_invite
from server.store.embedded import EmbeddedStore
from signaling.tokens import TokenError, TokenIssuer

SECRET = "invite-secret-" + "y" * 60
CONTACT = Contact(id="contact-1", senior_id="senior-1", name="Sanne", invite_version=3)


def test_an_invite_names_its_contact_and_version_for_half_a_year() -> None:
    token = issue_invite(SECRET, CONTACT)
    assert verify_invite(SECRET, token) == ("contact-1", 3)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["typ"] == "invite" and 179 * 86400 < claims["exp"] - time.time() <= 180 * 86400
    # Nothing personal in it beyond the contact's id.
    assert "Sanne" not in jwt.decode(token, options={"verify_signature": False}).values()


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: issue_invite("another secret " * 4, CONTACT), "invalid"),
        (lambda: issue_invite(SECRET, CONTACT)[:-3] + "abc", "invalid"),
        (lambda: "", "invalid"),
        (lambda: "x" * 5000, "invalid"),
        (lambda: jwt.encode({"iss": "verzilvering", "typ": "join", "sub": "contact-1", "ver": 1,
                             "exp": time.time() + 60}, SECRET, algorithm="HS256"), "invalid"),
        (lambda: jwt.encode({"iss": "verzilvering", "typ": "invite", "sub": "contact-1", "ver": True,
                             "exp": time.time() + 60}, SECRET, algorithm="HS256"), "invalid"),
        (lambda: jwt.encode({"iss": "verzilvering", "typ": "invite", "sub": "contact-1", "ver": 1,
                             "exp": time.time() - 1}, SECRET, algorithm="HS256"), "expired"),
        (lambda: jwt.encode({"iss": "verzilvering", "typ": "invite", "sub": "contact-1", "ver": 1,
                             "exp": time.time() + 60}, SECRET, algorithm="HS512"), "invalid"),
    ],
)
def test_bad_invites_are_refused(make, code: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InviteError) as caught:
        verify_invite(SECRET, make())
    assert caught.value.code == code


def test_an_invite_is_not_a_join_token() -> None:
    token = issue_invite(SECRET, CONTACT)
    with pytest.raises(TokenError):
        TokenIssuer(SECRET).verify(token)
    join = TokenIssuer(SECRET).issue(role="family", room="r", name="Sanne", participant_id="contact-1")
    with pytest.raises(InviteError):
        verify_invite(SECRET, join)


async def test_resolving_checks_the_current_version(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, node_id="t")
    await store.open()
    try:
        directory = Directory(store)
        contact = Contact(id="contact-2", senior_id="s", name="Henk")
        await directory.put(contact, actor="test")
        token = issue_invite(SECRET, contact)
        assert (await resolve_invite(directory, SECRET, token)).id == "contact-2"
        contact.invite_version += 1
        await directory.put(contact, actor="test")
        with pytest.raises(InviteError) as caught:
            await resolve_invite(directory, SECRET, token)
        assert caught.value.code == "revoked"
        fresh = issue_invite(SECRET, contact)
        await directory.delete(Contact, contact.id, actor="test")
        with pytest.raises(InviteError) as caught:
            await resolve_invite(directory, SECRET, fresh)
        assert caught.value.code == "revoked"
    finally:
        await store.close()


def test_named_secrets_live_in_the_data_dir_unless_a_token_secret_is_set(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = named_secret(settings, "invite")
    assert first == named_secret(settings, "invite") and len(first) >= 40
    path = tmp_path / "data" / "invite_secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert named_secret(settings, "session") != first
    # Several nodes share VERZILVERING_TOKEN_SECRET: every purpose derives from it, differently.
    shared = Settings(data_dir=tmp_path / "other", token_secret="t" * 40)
    assert named_secret(shared, "invite") == named_secret(Settings(data_dir=tmp_path / "x", token_secret="t" * 40), "invite")
    assert named_secret(shared, "invite") not in ("t" * 40, named_secret(shared, "session"))
    assert not (tmp_path / "other").exists()
    with pytest.raises(ValueError):
        named_secret(settings, "../escape")
