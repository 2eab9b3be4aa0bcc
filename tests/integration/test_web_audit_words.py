"""The audit log speaks the coordinator's language (issue 12, item 7): what changed in
words, never a field's storage name (least of all a secret's), and no "cli" for who."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Settings
from server.directory import Account

from tests.web_helpers import PASSWORD, Web, seed, text_of

REPO = Path(__file__).resolve().parents[2]
RAW_FIELDS = ("password_hash", "credential_hash", "photo_url", "auto_join", "kind", "id,", "language", "username")


async def test_the_audit_log_says_what_changed_in_words(tmp_path: Path, aiohttp_client: Any) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "VERZILVERING_TOKEN_SECRET"}
    made = subprocess.run(
        [sys.executable, "-m", "server.cli", "admin", "create-user", "--username", "beheer", "--name", "Bea",
         "--role", "coordinator", "--password-stdin", "--data-dir", str(data_dir)],
        input=PASSWORD + "\n", capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )
    assert made.returncode == 0, made.stderr
    app = create_app(Settings(data_dir=data_dir))
    client: TestClient = await aiohttp_client(app)
    data = await seed(app)
    web = Web(client)
    assert (await web.login("carla")).status == 303
    # Victor's password and name change: an update of a secret and a plain field.
    page = await web.get(f"/admin/accounts/{data.volunteer.id}")
    assert "Victor" in page
    victor: Account = data.volunteer
    await web.post(f"/admin/accounts/{victor.id}", {
        "name": "Victor V.", "username": victor.username, "role": victor.role, "language": "nl",
        "password": "een nieuw wachtwoord 2",
    })
    for lang, who, changed in (("nl", "Systeembeheer (op de server)", "naam, wachtwoord"),
                               ("en", "System administration (on the server)", "name, password")):
        page = await web.get(f"/admin/audit?lang={lang}")
        rows = [text_of(r) for r in re.findall(r"<tr>(.*?)</tr>", page, re.S)[1:]]
        assert any(changed in row and "Victor V." in row for row in rows), rows
        # Bea was made with `verzilvering admin create-user`: who did it, in words.
        assert any(who in row and "Bea" in row for row in rows), rows
        for raw in RAW_FIELDS:
            assert not any(raw in row for row in rows), (raw, rows)
        assert not any(re.search(r"\bcli\b", row) for row in rows), rows
