"""The unit layer's promise, kept for every test in it: no socket connects or binds, no
process starts (not even a library's helper, such as pygame's font lookup running fc-list).
That keeps the folder fast and runnable anywhere; a test that needs either belongs in
tests/integration/ or tests/e2e/."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from typing import NoReturn

import pytest


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError(f"a unit test {what}; it belongs in tests/integration/ or tests/e2e/")

    return refuse


@pytest.fixture(autouse=True)
def no_sockets_no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # connect and bind, not socket(): the event loop's own socketpair (its wake-up pipe) is
    # made without either.
    for method in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, method, _refuse(f"called socket.{method}"))
    # Every subprocess (asyncio's included) starts in Popen._execute_child.
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse("started a process"))
    for call in ("fork", "system"):
        monkeypatch.setattr(os, call, _refuse(f"called os.{call}"))
