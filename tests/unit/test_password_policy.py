"""The password policy (NIST SP 800-63B): the rules themselves. Where they apply is tested
with each place: `verzilvering admin create-user` in tests/integration/test_cli_admin.py, new
staff accounts and password changes at /admin in tests/integration/test_web_admin.py."""

from __future__ import annotations

import pytest

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
