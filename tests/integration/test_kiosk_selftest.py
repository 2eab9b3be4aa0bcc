"""`verzilvering-kiosk selftest`: each check, the report, the CLI, and the remote request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from kiosk_client.appliance import Mode
from kiosk_client.selftest import check_echo_cancel, check_turn, report_text, run_selftest
from server.appkeys import DIRECTORY_KEY, SIGNALING_KEY
from server.directory import Kiosk

from tests.conftest import RunningServer
from tests.kiosk_support import kiosk_config, provision, real_clock, running_kiosk, seed
from tests.support import eventually


def fake_runner(outputs: dict[str, tuple[int, str]]) -> Any:
    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        code, out = outputs.get(" ".join(args), (1, ""))
        return subprocess.CompletedProcess(args, code, out, "")

    return run


def which(*present: str) -> Any:
    return lambda name: f"/usr/bin/{name}" if name in present else None


PULSE_MODULES = "0\tmodule-device-restore\t\t\n22\tmodule-echo-cancel\tuse_master_format=1 aec_method=webrtc\t\n"
PULSE_SOURCES = "1\talsa_input.usb-mic\tmodule-alsa-card.c\ts16le 1ch 48000Hz\tSUSPENDED\n3\tverzilvering_aec_source\tmodule-echo-cancel.c\tfloat32le 1ch 48000Hz\tRUNNING\n"
PW_NODES = '\tid 41, type PipeWire:Interface:Node/3\n \t\tnode.name = "verzilvering-aec-source"\n \t\tnode.description = "Verzilvering microphone (echo cancelled)"\n'


def test_echo_cancel_active_on_pulseaudio() -> None:
    runner = fake_runner({
        "pactl list short modules": (0, PULSE_MODULES),
        "pactl list short sources": (0, PULSE_SOURCES),
        "pactl list short sinks": (0, ""),
        "pactl get-default-source": (0, "verzilvering_aec_source\n"),
    })
    check = check_echo_cancel(runner, which("pactl"))
    assert check.status == "ok" and check.details["default_source"] == "verzilvering_aec_source"


def test_echo_cancel_present_but_not_used() -> None:
    runner = fake_runner({
        "pactl list short modules": (0, PULSE_MODULES),
        "pactl list short sources": (0, PULSE_SOURCES),
        "pactl get-default-source": (0, "alsa_input.usb-mic\n"),
    })
    assert check_echo_cancel(runner, which("pactl")).status == "warning"


def test_echo_cancel_active_on_pipewire() -> None:
    runner = fake_runner({
        "pactl list short sources": (0, "55\tverzilvering-aec-source\tPipeWire\tfloat32le 1ch 48000Hz\tRUNNING\n"),
        "pactl get-default-source": (0, "verzilvering-aec-source\n"),
        "pw-cli ls Node": (0, PW_NODES),
    })
    assert check_echo_cancel(runner, which("pactl", "pw-cli")).status == "ok"


def test_echo_cancel_missing_or_uncheckable_is_said_plainly() -> None:
    running_without = fake_runner({"pactl list short modules": (0, "0\tmodule-alsa-card\t\t\n"), "pactl get-default-source": (0, "alsa_input.usb\n")})
    check = check_echo_cancel(running_without, which("pactl"))
    assert check.status == "failed" and "horen zichzelf terug" in check.nl
    not_running = fake_runner({})
    check = check_echo_cancel(not_running, which("pactl", "pw-cli"))
    assert check.status == "not_available" and "draait niet" in check.nl
    check = check_echo_cancel(not_running, which())
    assert check.status == "not_available" and "not installed" in check.en


async def test_turn_not_configured_and_unreachable() -> None:
    assert (await check_turn([])).status == "skipped"
    assert (await check_turn([{"urls": ["stun:stun.example.nl:3478"]}])).status == "skipped"
    assert (await check_turn(None)).status == "skipped"
    check = await check_turn(
        [{"urls": ["turn:127.0.0.1:9?transport=udp"], "username": "u", "credential": "p"}], timeout=1.0
    )
    assert check.status == "failed"
    assert check.details["servers"][0]["url"] == "turn:127.0.0.1:9?transport=udp" and not check.details["servers"][0]["ok"]


async def test_full_selftest_with_test_sources(server: RunningServer) -> None:
    result = await run_selftest(server=server.url, video="testsrc", audio="tone", ice_servers=[], runner=fake_runner({}))
    checks = {name: c["status"] for name, c in result["checks"].items()}
    assert checks == {
        "camera": "ok",
        "microphone": "ok",
        "speaker": "ok",
        "echo_cancel": checks["echo_cancel"],  # depends on this machine's tools
        "server": "ok",
        "turn": "skipped",
    }
    assert result["checks"]["camera"]["details"]["width"] == 640
    # A 440 Hz tone at 1/8 full scale: -21 dBFS, -24 after the mono-to-stereo pan law.
    assert -27 < result["checks"]["microphone"]["details"]["level_dbfs"] < -18
    assert result["ok"] is True
    json.dumps(result)
    nl, en = report_text(result, "nl"), report_text(result, "en")
    assert "Camera: in orde" in nl and "De camera werkt." in nl
    assert "Speaker: fine" in en
    unreachable = await run_selftest(server="http://127.0.0.1:9", video="none", audio="none", ice_servers=None, runner=fake_runner({}))
    assert unreachable["ok"] is False and unreachable["checks"]["server"]["status"] == "failed"
    assert unreachable["checks"]["camera"]["status"] == "skipped"
    assert "niet bereikbaar" in report_text(unreachable, "nl")


async def test_selftest_command(server: RunningServer, tmp_path: Path) -> None:
    await seed(server)
    state_dir = tmp_path / "state"
    await provision(server, state_dir)
    out = tmp_path / "result.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kiosk_client.cli", "selftest", "--state-dir", str(state_dir),
        "--video", "testsrc", "--audio", "tone", "--language", "en", "--json", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**__import__("os").environ, "SDL_AUDIODRIVER": "dummy"},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    text = stdout.decode()
    assert "Verzilvering — kiosk check" in text and "Camera: fine" in text, (text, stderr.decode())
    result = json.loads(out.read_text())
    # The server comes from the stored credential; TURN from the device welcome (none configured).
    assert result["checks"]["server"]["status"] == "ok"
    assert result["checks"]["turn"]["status"] == "skipped" and "no TURN" in result["checks"]["turn"]["message"]["en"]
    assert process.returncode == (0 if result["ok"] else 1)


async def test_coordinator_triggers_the_selftest_remotely(server: RunningServer, tmp_path: Path) -> None:
    await seed(server)
    state_dir = tmp_path / "state"
    credential = await provision(server, state_dir)
    async with running_kiosk(kiosk_config(server.url, state_dir), real_clock()) as app:
        await eventually(lambda: app.model.mode is Mode.HOME, 10, "home")
        assert await server.app[SIGNALING_KEY].request_selftest(credential.kiosk_id)
        await eventually(lambda: bool(app.selftest_results), 30, "the self-test to run")
        directory = server.app[DIRECTORY_KEY]

        async def stored() -> Any:
            kiosk = await directory.get(Kiosk, credential.kiosk_id)
            return kiosk.last_selftest if kiosk else None

        for _ in range(100):
            if await stored():
                break
            await asyncio.sleep(0.05)
        saved = await stored()
        assert saved is not None, "the result reached the server"
        result = saved["result"]
        assert result["kiosk_id"] == credential.kiosk_id
        assert result["checks"]["camera"]["status"] == "ok" and result["checks"]["server"]["status"] == "ok"
        assert app.model.mode is Mode.HOME
