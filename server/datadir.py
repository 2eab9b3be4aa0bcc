"""The data directory holds secrets and the directory of people: only the service may read it.

The directory is kept at mode 0700 and every file the service writes in it at 0600,
whatever the process's umask, also for files an older version left readable.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600

logger = logging.getLogger(__name__)


def private_dir(path: Path) -> Path:
    """Creates `path` (and its parents) if needed and makes it 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _restrict(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Creates `path` empty if it does not exist (never truncating it) and makes it 0600."""
    path = Path(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    _restrict(path, FILE_MODE)
    return path


def restrict_existing(path: Path) -> None:
    """Makes an existing file 0600; a missing one is left missing."""
    if Path(path).exists():
        _restrict(Path(path), FILE_MODE)


def secret_file(path: Path) -> str:
    """The signing secret kept in `path`, generated once (mode 0600, its directory 0700).
    Two processes starting at once agree: the first to create the file wins, the other reads it."""
    path = Path(path)
    private_dir(path.parent)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def _restrict(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except PermissionError:
        # Not ours (an operator's own directory): say so rather than refuse to start.
        logger.warning("cannot make %s mode %o; check its owner and permissions", path, mode)
