"""A private, throwaway coturn for tests: 127.0.0.1, a free port, long-term credentials.

    with TurnServer() as turn:
        RTCIceServer(turn.url, turn.username, turn.password)

Relays only between loopback addresses (`--allow-loopback-peers`), which is what the tests
need and what a production coturn must never allow (deploy/coturn denies private peers).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _answers(port: int) -> bool:
    """Whether a STUN binding request to the port gets an answer."""
    request = bytes.fromhex("0001 0000 2112a442") + bytes(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(request, ("127.0.0.1", port))
            return sock.recv(1024)[:2] == b"\x01\x01"
        except OSError:
            return False


class TurnServer:
    username = "verzilvering-test"
    password = "not-a-secret"

    def __init__(self) -> None:
        self.port = _free_udp_port()
        self.url = f"turn:127.0.0.1:{self.port}?transport=udp"
        self._dir = Path(tempfile.mkdtemp(prefix="verz-turn-"))
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "TurnServer":
        exe = shutil.which("turnserver")
        if exe is None:
            raise RuntimeError("coturn's turnserver is not installed (tests/run.sh installs it)")
        # The free port is found by binding and closing it, so another process (a test's
        # ICE candidates, on a busy suite) can take it before turnserver binds: then
        # turnserver exits at once, and another free port is tried.
        for attempt in range(3):
            if attempt:
                self.port = _free_udp_port()
                self.url = f"turn:127.0.0.1:{self.port}?transport=udp"
            if self._start(exe):
                return self
        raise RuntimeError(f"turnserver did not start on 127.0.0.1 (last port {self.port}, 3 attempts)")

    def _start(self, exe: str) -> bool:
        self._dir.mkdir(parents=True, exist_ok=True)  # a failed attempt removed it
        relay_base = 40000 + self.port % 20000
        self._process = subprocess.Popen(
            [exe, "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1", "--listening-port", str(self.port),
             "--min-port", str(relay_base), "--max-port", str(relay_base + 200),
             "--lt-cred-mech", "--user", f"{self.username}:{self.password}", "--realm", "verzilvering.test",
             "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers", "--no-rfc5780",
             "--log-file", str(self._dir / "turn.log"), "--pidfile", str(self._dir / "turn.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self._dir,
        )
        deadline = time.monotonic() + 10
        while not _answers(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                return False
            time.sleep(0.05)
        return True

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
