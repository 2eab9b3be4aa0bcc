"""The `verzilvering` command as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from server.store.embedded import EmbeddedStore
from signaling.tokens import TokenIssuer, load_or_create_secret


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VERZILVERING_TOKEN_SECRET", None)
    return env


def test_token_command_prints_a_token_signed_with_the_data_dir_secret(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "token", "--role", "family", "--room", "koffie",
         "--name", "Sanne", "--ttl", "120", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True, env=_env(),
    )
    grant = TokenIssuer(load_or_create_secret(tmp_path)).verify(out.stdout.strip(), room="koffie")
    assert grant.role == "family" and grant.name == "Sanne"


def test_token_command_refuses_bad_input_plainly(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "token", "--role", "host", "--room", "r", "--name", " ",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=_env(),
    )
    assert out.returncode == 2
    assert "name must not be empty" in out.stderr
    bad_role = subprocess.run(
        [sys.executable, "-m", "server.cli", "token", "--role", "king", "--room", "r", "--name", "n"],
        capture_output=True, text=True, env=_env(),
    )
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr


def test_serve_demo_prints_links_and_answers_healthz(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path), "--demo"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 20
        assert proc.stdout is not None
        while time.monotonic() < deadline and not any("verzilvering-kiosk join" in l for l in lines):
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        host_link = re.search(r"host.*?(http://\S+/call\?token=\S+)", text)
        assert host_link, text
        assert re.search(r"family.*?/call\?token=\S+", text)
        kiosk = re.search(r"verzilvering-kiosk join --server (\S+) --token (\S+)", text)
        assert kiosk and kiosk.group(1) == f"http://127.0.0.1:{port}"
        grant = TokenIssuer(load_or_create_secret(tmp_path)).verify(kiosk.group(2))
        assert grant.role == "senior"

        health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5))
        assert health["status"] == "ok" and health["version"]
        assert health["rooms"] == 0 and health["participants"] == 0
        assert health["uptime_s"] >= 0
        with urllib.request.urlopen(host_link.group(1), timeout=5) as page:
            assert page.status == 200 and b"call.js" in page.read()
        assert (tmp_path / "directory.sqlite3").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    assert proc.returncode == 0

    async def demo_activity() -> dict | None:
        store = EmbeddedStore(tmp_path)
        await store.open()
        try:
            return await store.get_record("activities", "demo-koffieochtend")
        finally:
            await store.close()

    activity = asyncio.run(demo_activity())
    assert activity is not None and activity["title"]
