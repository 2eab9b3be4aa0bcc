"""What the kiosk keeps on disk: its device credential (0600), the senior's preferences and
the missed-call notes still on the home screen (so a restart does not lose "Kees belde").

The state directory is private to the kiosk user (0700). The credential file is written
atomically (temporary file with mode 0600, fsync, rename), so a power cut never leaves
half a credential, and it is never readable by anyone else, not even for an instant.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("~/.local/state/verzilvering-kiosk")
CREDENTIAL_FILE = "credential.json"
PREFERENCES_FILE = "preferences.json"
NOTES_FILE = "notes.json"


@dataclass(frozen=True)
class Credential:
    kiosk_id: str
    credential: str
    server: str = ""

    def __repr__(self) -> str:  # never print the secret
        return f"Credential(kiosk_id={self.kiosk_id!r}, server={self.server!r})"


class StateDir:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()

    def _ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)

    @property
    def credential_path(self) -> Path:
        return self.path / CREDENTIAL_FILE

    def load_credential(self) -> Credential | None:
        try:
            data = json.loads(self.credential_path.read_text())
            return Credential(str(data["kiosk_id"]), str(data["credential"]), str(data.get("server", "")))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            logger.warning("the stored credential is unreadable; pairing again")
            self.wipe_credential()
            return None

    def save_credential(self, credential: Credential) -> None:
        self._write_private(
            CREDENTIAL_FILE,
            {"kiosk_id": credential.kiosk_id, "credential": credential.credential, "server": credential.server},
        )

    def wipe_credential(self) -> None:
        try:
            self.credential_path.unlink()
        except FileNotFoundError:
            pass

    def load_preferences(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / PREFERENCES_FILE).read_text())
            return data if isinstance(data, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def save_preferences(self, preferences: dict[str, Any]) -> None:
        self._write_private(PREFERENCES_FILE, preferences)

    def load_notes(self) -> list[dict[str, Any]]:
        try:
            data = json.loads((self.path / NOTES_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return []
        notes = data.get("notes") if isinstance(data, dict) else None
        return [n for n in notes if isinstance(n, dict)] if isinstance(notes, list) else []

    def save_notes(self, notes: list[dict[str, Any]]) -> None:
        self._write_private(NOTES_FILE, {"notes": notes})

    def _write_private(self, name: str, data: dict[str, Any]) -> None:
        self._ensure()
        final = self.path / name
        tmp = self.path / f".{name}.tmp"
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
