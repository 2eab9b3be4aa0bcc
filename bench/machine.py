"""What machine a benchmark ran on, read from /proc: each bench prints it with its figures."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def mem_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return None


def describe() -> dict[str, Any]:
    """The fields every bench reports; each adds the versions of what it exercises."""
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "mem_gib": mem_gib(), "python": platform.python_version()}
