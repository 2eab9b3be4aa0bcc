"""`verzilvering admin create-user`, as an operator runs it for the first coordinator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from server.directory import Directory
from server.store.embedded import EmbeddedStore
from web.auth import verify_password


def _run(tmp_path: Path, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("VERZILVERING_TOKEN_SECRET", None)
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "admin", "create-user", "--data-dir", str(tmp_path), *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=60,
    )


async def _accounts(tmp_path: Path) -> tuple[list, list]:  # type: ignore[type-arg]
    store = EmbeddedStore(tmp_path, node_id="test")
    await store.open()
    try:
        directory = Directory(store)
        from server.directory import Account

        return await directory.list(Account), await directory.audit_log()
    finally:
        await store.close()


def test_create_user_stores_an_argon2_hash_and_audits(tmp_path: Path) -> None:
    out = _run(tmp_path, "--username", "Carla", "--name", "Carla de Boer", "--role", "coordinator",
               "--password-stdin", stdin="een lang wachtwoord\n")
    assert out.returncode == 0, out.stderr
    assert "created coordinator 'carla'" in out.stdout
    assert "een lang wachtwoord" not in out.stdout + out.stderr
    accounts, audit = asyncio.run(_accounts(tmp_path))
    assert [(a.username, a.name, a.role, a.language) for a in accounts] == [("carla", "Carla de Boer", "coordinator", "nl")]
    assert accounts[0].password_hash.startswith("$argon2id$")
    assert asyncio.run(verify_password(accounts[0].password_hash, "een lang wachtwoord"))
    assert not asyncio.run(verify_password(accounts[0].password_hash, "een ander wachtwoord"))
    assert audit[0]["actor"] == "cli" and audit[0]["action"] == "create"
    assert "een lang wachtwoord" not in str(audit)


def test_create_user_refuses_bad_input_and_creates_nothing(tmp_path: Path) -> None:
    short = _run(tmp_path, "--username", "victor", "--name", "Victor", "--role", "volunteer", "--password-stdin",
                 stdin="kort\n")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    bad_name = _run(tmp_path, "--username", "ab", "--name", "Victor", "--role", "volunteer", "--password-stdin",
                    stdin="lang genoeg wachtwoord\n")
    assert bad_name.returncode == 2 and "3 to 64 characters" in bad_name.stderr
    bad_role = _run(tmp_path, "--username", "victor", "--name", "V", "--role", "admin", "--password-stdin", stdin="x\n")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
    assert asyncio.run(_accounts(tmp_path))[0] == []
    first = _run(tmp_path, "--username", "victor", "--name", "Victor", "--role", "volunteer", "--password-stdin",
                 stdin="lang genoeg wachtwoord\n")
    assert first.returncode == 0
    again = _run(tmp_path, "--username", "VICTOR", "--name", "Other", "--role", "coordinator", "--password-stdin",
                 stdin="lang genoeg wachtwoord\n")
    assert again.returncode == 2 and "taken" in again.stderr
    assert [a.name for a in asyncio.run(_accounts(tmp_path))[0]] == ["Victor"]


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
