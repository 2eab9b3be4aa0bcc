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

import pytest

from server.store.embedded import EmbeddedStore
from signaling.tokens import TokenIssuer, load_or_create_secret


REPO = Path(__file__).resolve().parents[2]


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
        while time.monotonic() < deadline and "/call?token=" not in "".join(lines).partition("family (familie)")[2]:
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        # Where the data is (absolute), the coordinators' pages and their first account, how to stop.
        assert f"Data: {tmp_path.resolve()}" in text, text
        assert f"http://127.0.0.1:{port}/admin" in text and "verzilvering admin create-user --data-dir" in text
        assert "Stop with Ctrl-C" in text
        host_link = re.search(r"host.*\n\s+(http://\S+/call\?token=\S+)", text)
        assert host_link, text
        assert re.search(r"family.*\n\s+http://\S+/call\?token=\S+", text)
        kiosk = re.search(r"verzilvering-kiosk join --server (\S+) --token (\S+)", text)
        assert kiosk and kiosk.group(1) == f"http://127.0.0.1:{port}"
        grant = TokenIssuer(load_or_create_secret(tmp_path)).verify(kiosk.group(2))
        assert grant.role == "senior"

        health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5))
        assert health["status"] == "ok" and health["version"]
        assert health["rooms"] == 0 and health["participants"] == 0
        assert health["uptime_s"] >= 0
        with urllib.request.urlopen(host_link.group(1), timeout=5) as page:
            # A host's link opens the host console: the waiting room is there to let family in.
            assert page.status == 200 and b"host.js" in page.read()
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
    # Family may join the demo (through the waiting room).
    assert activity["guests_allowed"] is True


def _run_cli(*argv: str, env: dict[str, str] | None = None, stdin: int | None = subprocess.DEVNULL,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *argv], capture_output=True, text=True, env=env or _env(),
        timeout=60, cwd=REPO, **({"input": input} if input is not None else {"stdin": stdin}),
    )


def _one_plain_line(out: subprocess.CompletedProcess[str]) -> str:
    """A refusal is exit 2 and one line on stderr, without a Python traceback."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_serve_refuses_a_port_out_of_range_in_one_line(tmp_path: Path) -> None:
    line = _one_plain_line(_run_cli("serve", "--port", "99999", "--data-dir", str(tmp_path)))
    assert "--port 99999" in line and "1 to 65535" in line


def test_serve_says_plainly_that_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_plain_line(_run_cli("serve", "--port", str(port), "--data-dir", str(tmp_path)))
    assert f"port {port} is already in use" in line and "--port" in line


def test_serve_says_plainly_that_the_host_is_not_this_machines(tmp_path: Path) -> None:
    # TEST-NET-1 (RFC 5737): never an address of this machine.
    line = _one_plain_line(_run_cli("serve", "--host", "192.0.2.77", "--port", str(_free_port()),
                                    "--data-dir", str(tmp_path)))
    assert "--host 192.0.2.77 is not an address of this machine" in line and "127.0.0.1" in line


def test_a_short_token_secret_is_explained_not_traced(tmp_path: Path) -> None:
    env = {**_env(), "VERZILVERING_TOKEN_SECRET": "too-short"}
    for argv in (("serve", "--port", str(_free_port())), ("token", "--role", "host", "--room", "r", "--name", "n")):
        line = _one_plain_line(_run_cli(*argv, "--data-dir", str(tmp_path), env=env))
        assert "VERZILVERING_TOKEN_SECRET has 9 characters but needs at least 32" in line
        assert "secrets.token_urlsafe" in line


def test_create_user_without_a_terminal_says_to_use_password_stdin(tmp_path: Path) -> None:
    line = _one_plain_line(_run_cli("admin", "create-user", "--username", "carla", "--name", "Carla",
                                    "--role", "coordinator", "--data-dir", str(tmp_path)))
    assert "no terminal" in line and "--password-stdin" in line and "nothing was created" in line
    assert not (tmp_path / "directory.sqlite3").exists()


def test_token_warns_when_it_makes_a_new_secret_and_names_the_data_dir(tmp_path: Path) -> None:
    argv = ("token", "--role", "host", "--room", "r", "--name", "n", "--data-dir", str(tmp_path / "d"))
    first = _run_cli(*argv)
    assert first.returncode == 0 and first.stdout.count(".") == 2  # only the token on stdout
    assert "warning" in first.stderr and str(tmp_path / "d") in first.stderr and "--data-dir" in first.stderr
    second = _run_cli(*argv)
    assert second.returncode == 0 and "warning" not in second.stderr
    assert f"signed with the secret in {tmp_path / 'd'}" in second.stderr


def test_help_shows_defaults_and_explains_every_option() -> None:
    serve_help = _run_cli("serve", "--help").stdout
    assert "./verzilvering-data" in serve_help and "default 8080" in serve_help
    assert re.search(r"--log-level \{DEBUG,INFO,WARNING,ERROR\}\s+how much", serve_help), serve_help
    token_help = _run_cli("token", "--help").stdout
    assert re.search(r"--room ROOM\s+the room to join", token_help), token_help
    assert re.search(r"--name NAME\s+the name the others see", token_help), token_help
    assert "./verzilvering-data" in token_help


def _kiosk(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiosk_client.cli", *argv], capture_output=True, text=True,
        env=env or _env(), timeout=90, cwd=REPO, stdin=subprocess.DEVNULL,
    )


def _last_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and "Task exception was never retrieved" not in out.stderr, out.stderr
    assert "Session is closed" not in out.stderr, out.stderr
    return out.stderr.strip().splitlines()[-1]


def test_kiosk_join_explains_refused_tokens_and_wrong_addresses(tmp_path: Path) -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO,
    )
    not_verzilvering = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(other := _free_port()), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )
    try:
        assert server.stdout is not None
        while "running at" not in server.stdout.readline():
            pass
        wrong_secret = TokenIssuer("another-secret-" + "y" * 40).issue(role="senior", room="r", name="Oma")
        refused = _last_line(_kiosk("join", "--server", f"http://127.0.0.1:{port}", "--token", wrong_secret,
                                    "--duration", "1"))
        assert "refused the token (token_invalid)" in refused and "verzilvering token" in refused
        no_scheme = _last_line(_kiosk("join", "--server", f"127.0.0.1:{port}", "--token", wrong_secret))
        assert "needs to start with http:// or https://" in no_scheme
        closed = _last_line(_kiosk("join", "--server", f"http://127.0.0.1:{_free_port()}", "--token", wrong_secret))
        assert closed.startswith("verzilvering-kiosk join: cannot reach http://127.0.0.1:")
        assert "ssl:default" not in closed
        plain_http = _last_line(_kiosk("join", "--server", f"https://127.0.0.1:{port}", "--token", wrong_secret))
        assert "does not speak https; try http://" in plain_http and "WRONG_VERSION_NUMBER" not in plain_http
        other_server = _last_line(_kiosk("join", "--server", f"http://127.0.0.1:{other}", "--token", wrong_secret))
        assert "not as a Verzilvering server (HTTP 404 at /ws)" in other_server
    finally:
        not_verzilvering.terminate()
        not_verzilvering.wait(timeout=10)
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


def test_kiosk_run_without_a_screen_says_so_once_and_stops(tmp_path: Path) -> None:
    env = {k: v for k, v in _env().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    if any(Path("/dev/dri").glob("card*")):
        # A machine with a display device: SDL's own probing decides; the dummy driver
        # chosen by nobody stands in for "found nothing".
        pytest.skip("the no-screen message needs a machine without a display device (/dev/dri/card*); this one has one, and CI has none")
    out = _kiosk("run", "--server", "http://127.0.0.1:9", "--state-dir", str(tmp_path / "state"), "--windowed",
                 env=env)
    assert out.returncode == 1, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no screen to show the kiosk on" in lines[0], out.stderr
    assert "ALSA lib" not in out.stderr and "XDG_RUNTIME_DIR" not in out.stderr


def test_kiosk_sound_problems_are_one_plain_line_without_alsa_noise() -> None:
    if Path("/dev/snd").exists() and any(Path("/dev/snd").glob("pcm*")):
        pytest.skip("the no-sound-card message needs a machine without one (/dev/snd/pcm*); this one has one, and CI has none")
    script = (
        "import logging, os; os.environ.setdefault('SDL_AUDIODRIVER', 'alsa');"
        "logging.basicConfig(format='%(message)s');"
        "from kiosk_client.media import open_audio\n"
        "try: open_audio('default')\n"
        "except Exception: pass\n"
        "from kiosk_client.speaker import Speaker; s = Speaker(); print(s.available)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={k: v for k, v in _env().items() if k != "SDL_AUDIODRIVER"})
    assert out.stdout.strip() == "False"
    lines = out.stderr.strip().splitlines()
    assert "ALSA lib" not in out.stderr, out.stderr
    assert len(lines) == 1 and lines[0].startswith("no sound: this machine has no sound card"), out.stderr
