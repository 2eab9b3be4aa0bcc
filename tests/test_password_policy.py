"""The password policy (NIST SP 800-63B): the rules themselves, then where they apply —
`verzilvering admin create-user`, new staff accounts and password changes at /admin."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.appkeys import DIRECTORY_KEY
from server.directory import Account
from web.password_policy import (
    COMMON,
    MAX_PASSWORD,
    PATTERN,
    PERSONAL,
    TOO_LONG,
    TOO_SHORT,
    check_new_password,
    common_passwords,
)

from .conftest import make_settings
from .test_cli_admin import _accounts, _run
from .web_helpers import Web, seed, text_of


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("kort", TOO_SHORT),
        ("x" * (MAX_PASSWORD + 1), TOO_LONG),
        ("1111111111", PATTERN),
        (" " * 12, PATTERN),
        ("\t \u3000" * 4, PATTERN),
        ("abababababab", PATTERN),
        ("abcabcabcabc", PATTERN),
        ("passwordpassword", PATTERN),
        ("1234567890", PATTERN),
        ("0987654321", PATTERN),
        ("qwertyuiop", PATTERN),
        ("AZERTYUIOP", PATTERN),
        ("abcdefghijkl", PATTERN),
        ("password123", COMMON),
        ("Password1234!", COMMON),
        ("P@ssw0rd2024", COMMON),
        ("Welkom2024!", COMMON),
        ("wachtwoord123", COMMON),
        ("1qaz2wsx3edc", COMMON),
        ("Verzilvering1", COMMON),
        ("sunshine2024", COMMON),
        ("carlaxx1234", PERSONAL),
        ("Carla2024!!!", PERSONAL),
        ("carlacarla1", PERSONAL),
        ("aaaaaaaaab", PATTERN),
        ("!!alrac!!2024", PERSONAL),
        ("ALRAC-12345", PERSONAL),
        ("coordinator!!", COMMON),
        ("deboer12345", PERSONAL),
        ("CarladeBoer!", PERSONAL),
    ],
)
def test_weak_passwords_are_refused_with_the_reason(password: str, problem: str) -> None:
    assert check_new_password(password, username="carla", name="Carla de Boer") == problem


@pytest.mark.parametrize(
    "password",
    ["correct horse battery", "een lang wachtwoord", "zomer in almere 2024", "Carla fietst naar de markt",
     "mijn kat heet Minoes", "x7#Lq9!vR2@m", "januarizon1", "Ééndrachtmaaktmacht"],
)
def test_good_passwords_are_accepted(password: str) -> None:
    assert check_new_password(password, username="carla", name="Carla de Boer") is None


def test_the_bundled_list_is_there_lower_case_and_says_where_it_comes_from() -> None:
    common = common_passwords()
    assert len(common) > 3000
    assert {"password", "wachtwoord", "welkom", "qwerty", "verzilvering"} <= common
    assert all(word == word.casefold() and len(word) >= 4 for word in common)
    from web.password_policy import COMMON_PASSWORDS_FILE

    header = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").split("\n", 5)
    assert any("public domain" in line for line in header)


def test_create_user_refuses_a_weak_password_in_both_languages(tmp_path: Path) -> None:
    for password, english, dutch in [
        ("1111111111", "easy to guess", "makkelijk te raden"),
        ("victorxx2024", "username or name", "gebruikersnaam of naam"),
        ("Wachtwoord2024", "used by many people", "gebruiken veel mensen"),
    ]:
        out = _run(tmp_path, "--username", "victor", "--name", "Victor Vos", "--role", "volunteer",
                   "--password-stdin", stdin=password + "\n")
        assert out.returncode == 2 and english in out.stderr and dutch in out.stderr, out.stderr
    assert asyncio.run(_accounts(tmp_path))[0] == []


async def test_the_staff_form_refuses_weak_passwords_for_new_accounts_and_changes(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    app = create_app(make_settings(tmp_path))
    client = await aiohttp_client(app)
    data = await seed(app)
    web = Web(client)
    assert (await web.login("carla")).status == 303
    directory = app[DIRECTORY_KEY]
    await web.get("/admin/accounts/new")
    fields = {"name": "Ans de Gastvrouw", "username": "ans", "role": "volunteer", "language": "nl"}
    for password, message in [
        (" " * 12, "Dit wachtwoord is een patroon dat makkelijk te raden is"),
        ("ansxx123456", "Een wachtwoord mag niet gemaakt zijn van uw gebruikersnaam of naam."),
        ("welkom12345", "Dit wachtwoord gebruiken veel mensen"),
    ]:
        response = await web.post("/admin/accounts/new", {**fields, "password": password})
        assert response.status == 400 and message in text_of(await response.text()), password
    assert await directory.account_by_username("ans") is None
    # A password change on an existing account follows the same rules, in English too.
    before = (await directory.get(Account, data.volunteer.id)).password_hash
    change = {"name": data.volunteer.name, "role": "volunteer", "language": "nl", "password": "rotciv!!2024"}
    response = await web.post(f"/admin/accounts/{data.volunteer.id}?lang=en", change)
    assert response.status == 400
    assert "A password may not be made from your username or name." in text_of(await response.text())
    assert (await directory.get(Account, data.volunteer.id)).password_hash == before
    page = text_of(await web.get("/admin/accounts/new?lang=nl"))
    assert "geen bekend wachtwoord en niet uw naam" in page
