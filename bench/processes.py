"""The benches' child processes: workers driven with JSON lines over their stdin and stdout,
and ending a process that does not end by itself in time."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent

# One line may carry a whole batch (every participant a worker joins, a report of all its
# logs): a worker's stdin and a bench's pipe from a worker's stdout read lines up to this long.
LINE_LIMIT = 64 * 1024 * 1024


class ParentPipe:
    """A worker's side of the pipe: commands from the bench on stdin, replies and events to
    stdout, one JSON object a line."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    @classmethod
    async def open(cls) -> ParentPipe:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        return cls(reader)

    async def command(self) -> dict[str, Any] | None:
        """The next command; None once the bench closed the pipe."""
        line = await self._reader.readline()
        return json.loads(line) if line else None

    def emit(self, msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_worker(module_args: tuple[str, ...], stderr_path: Path) -> asyncio.subprocess.Process:
    """`python -m <module_args>` from this checkout, with pipes for JSON lines; its stderr is
    appended to `stderr_path`."""
    with open(stderr_path, "ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", *module_args,
            cwd=CHECKOUT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, limit=LINE_LIMIT,
        )


async def worker_messages(proc: asyncio.subprocess.Process) -> AsyncIterator[dict[str, Any]]:
    """A worker's replies and events as they come, until it closes its stdout."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        yield json.loads(line)


async def send_command(proc: asyncio.subprocess.Process, msg: dict[str, Any]) -> None:
    """The bench's side: one command to a worker's stdin."""
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(msg) + "\n").encode())
    await proc.stdin.drain()


async def wait_or_kill(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """Waits `timeout` seconds for `proc` to end (it was asked to), then kills it."""
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


def wait_or_kill_sync(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """`wait_or_kill` for a process started with `subprocess`."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
