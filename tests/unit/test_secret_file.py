"""One helper keeps every generated signing secret (join tokens, invites, login cookies)."""

from __future__ import annotations

import stat
from pathlib import Path

from server.config import Settings
from server.datadir import secret_file
from server.invites import named_secret
from signaling.tokens import SECRET_FILE, load_or_create_secret


def test_a_secret_is_generated_once_private_and_then_read(tmp_path: Path) -> None:
    path = tmp_path / "data" / "some_secret"
    first = secret_file(path)
    assert len(first) >= 32
    assert secret_file(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_secret_another_process_wrote_is_used(tmp_path: Path) -> None:
    path = tmp_path / "invite_secret"
    path.write_text("x" * 40 + "\n")
    assert secret_file(path) == "x" * 40


def test_join_tokens_and_invites_keep_their_files(tmp_path: Path) -> None:
    token_secret = load_or_create_secret(tmp_path)
    assert (tmp_path / SECRET_FILE).read_text().strip() == token_secret
    invite_secret = named_secret(Settings(data_dir=tmp_path), "invite")
    assert (tmp_path / "invite_secret").read_text().strip() == invite_secret != token_secret
