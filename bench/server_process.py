"""`verzilvering serve` as a separate process, for tests and benchmarks that need a real one:
`ServerProcess` alone, `Node` as one of a cluster on a shared redis-server.

The server's own output goes to a log file (tracebacks are looked for there); settings come
from `VERZILVERING_*` environment variables, as an operator would set them.

    with ServerProcess(tmp_path, hello_timeout_s=10) as server:
        ...  # server.url, server.token(...), server.rss_mb(), server.log_text()
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.processes import free_port, wait_or_kill_sync
from signaling.tokens import TokenIssuer

ROOT = Path(__file__).resolve().parent.parent
SECRET = "server-process-secret-" + "y" * 40
NODE_TIMEOUT_S = 2.0


class ServerProcess:
    def __init__(
        self,
        directory: Path,
        *,
        redis_url: str = "",
        start_timeout_s: float = 30.0,
        open_files: int | None = None,
        root: Path = ROOT,
        **settings: Any,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "server.log"
        self.redis_url = redis_url
        self.start_timeout_s = start_timeout_s
        self.settings = settings
        # The server's own soft RLIMIT_NOFILE (None: inherited).
        self.open_files = open_files
        # The source tree to run (a benchmark's baseline runs an older checkout).
        self.root = root
        self.issuer = TokenIssuer(SECRET)
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VERZILVERING_TOKEN_SECRET"] = SECRET
        env["PYTHONPATH"] = str(self.root) + os.pathsep + env.get("PYTHONPATH", "")
        for name, value in self.settings.items():
            env[f"VERZILVERING_{name.upper()}"] = json.dumps(list(value)) if isinstance(value, tuple) else str(value)
        return env

    def start(self) -> "ServerProcess":
        data_dir = self.directory / "data"
        command = [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir)]
        if self.redis_url:
            command += ["--redis-url", self.redis_url]
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.root, preexec_fn=self._limit_open_files
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer /healthz within {self.start_timeout_s}s:\n{self.log_text()}")

    def _limit_open_files(self) -> None:
        if self.open_files is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        wait_or_kill_sync(self.proc, 15)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def open_sockets(self) -> int:
        """TCP sockets the server process holds (its listener included)."""
        count = 0
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            try:
                if os.readlink(fd).startswith("socket:"):
                    count += 1
            except OSError:
                continue
        return count

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def token(self, role: str = "senior", room: str = "room-1", name: str = "Test", **kw: Any) -> str:
        return self.issuer.issue(role=role, room=room, name=name, **kw)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


class Node:
    """One `verzilvering serve` process of a cluster sharing `redis_url`: test timeouts unless
    `settings` (names of server/config.py) say otherwise; tokens signed with `secret`; the
    code of `tree` (bench/faults.py runs an older checkout as its baseline), else this one."""

    def __init__(
        self,
        name: str,
        redis_url: str,
        prefix: str,
        data_dir: Path,
        settings: dict[str, str] | None = None,
        tree: Path | None = None,
        *,
        secret: str,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / f"{name}.log"
        env = dict(os.environ)
        env.update(
            VERZILVERING_TOKEN_SECRET=secret,
            VERZILVERING_REDIS_PREFIX=prefix,
            VERZILVERING_NODE_HEARTBEAT_S="0.5",
            VERZILVERING_NODE_TIMEOUT_S=str(NODE_TIMEOUT_S),
            VERZILVERING_DRAIN_TIMEOUT_S="10",
        )
        env.update({f"VERZILVERING_{k.upper()}": v for k, v in (settings or {}).items()})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir / name),
             "--redis-url", redis_url, "--node-id", name],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=tree,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)
                return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"node {name} did not start:\n{self.log.read_text()}")

    def health(self) -> dict[str, Any]:
        return json.load(urllib.request.urlopen(self.url + "/healthz", timeout=2))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            wait_or_kill_sync(self.process, 20)
