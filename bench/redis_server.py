"""A private, throwaway redis-server for tests and benchmarks.

Runs on a free 127.0.0.1 port in its own temporary directory without persistence, so tests
never touch a shared Redis (such as one on 6379) and need no flushing.

    with RedisServer() as server:
        store = RedisStore(server.url, node_id="test")
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .processes import free_port, wait_or_kill_sync

SHARED_REDIS_PORT = 6379


def _free_port() -> int:
    """A free port that is not the shared redis-server's."""
    while (port := free_port()) == SHARED_REDIS_PORT:
        pass
    return port


def _server_pid(port: int) -> int | None:
    """The pid of the redis-server answering on the port, or None while nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\nINFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                reply += chunk
    except OSError:
        return None
    if not reply.startswith(b"+PONG"):
        return None
    for line in reply.split(b"\r\n"):
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


class RedisServer:
    def __init__(
        self, executable: str = "redis-server", *, start_timeout_s: float = 10.0, appendonly: bool = False
    ) -> None:
        self.executable = shutil.which(executable) or executable
        self.start_timeout_s = start_timeout_s
        self.appendonly = appendonly
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        if self._process is None:
            raise RuntimeError("redis-server is not running")
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        if self._process is not None:
            return self
        self._dir = Path(tempfile.mkdtemp(prefix="vz-redis-"))
        # Another process can take the port between choosing and binding it; try again.
        for _ in range(5):
            if self._launch(_free_port()):
                return self
        log = self._log()
        self.stop()
        raise RuntimeError(f"redis-server did not start:\n{log}")

    def _launch(self, port: int) -> bool:
        assert self._dir is not None
        with open(self._dir / "redis.log", "ab") as log:
            process = subprocess.Popen(
                [
                    self.executable,
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "yes" if self.appendonly else "no",
                    "--appendfsync", "always",
                    "--dir", str(self._dir),
                    "--daemonize", "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            # Checking the pid makes sure the server answering is ours, not one that
            # took the port first.
            if _server_pid(port) == process.pid:
                self._process = process
                self.port = port
                return True
            time.sleep(0.05)
        _terminate(process)
        return False

    def halt(self) -> None:
        """Stops the server but keeps its port and data directory, for an outage test."""
        process, self._process = self._process, None
        if process is not None:
            _terminate(process)

    def restart(self) -> None:
        """Starts the server again on the same port with the same data."""
        if self._process is None and not self._launch(self.port):
            raise RuntimeError(f"redis-server did not restart:\n{self._log()}")

    def _log(self) -> str:
        if self._dir is None:
            return ""
        try:
            return (self._dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            _terminate(process)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        wait_or_kill_sync(process, 10)
