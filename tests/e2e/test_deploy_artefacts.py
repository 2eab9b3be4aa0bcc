"""Every artefact in deploy/ checked by the tool that runs it (issue 12, item 15).

nginx -t on both sites, promtool on the alert rules, systemd-analyze verify on the units,
redis-server and Redis Sentinel started from their configs, coturn started from its config
and answering a STUN request. The end-to-end run of the whole layout is in
tests/e2e/test_deploy_e2e.py.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy_support import (
    DEPLOY,
    TEST_PASSWORD,
    free_port,
    nginx,
    nginx_site,
    redis_from_deploy_conf,
    self_signed_certificate,
    stop,
    wait_for_port,
)


@pytest.mark.parametrize("site", ["verzilvering.conf", "compose.conf"])
def test_nginx_accepts_the_site(site: str, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    conf = nginx_site(DEPLOY / "nginx" / site, tmp_path / "nginx", ["127.0.0.1:18081", "127.0.0.1:18082"], cert, key)
    out = subprocess.run([nginx(), "-t", "-c", str(conf.main_conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr
    # No warnings either (a warning is how nginx reports a directive that does nothing).
    assert "[warn]" not in out.stderr, out.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    out = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus" / "verzilvering-rules.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    """The units as shipped, with the venv path of the install guide replaced by where this
    checkout's commands are (systemd checks that ExecStart= can run)."""
    bin_dir = Path(shutil.which("verzilvering") or "").parent
    assert (bin_dir / "verzilvering").exists() and (bin_dir / "verzilvering-kiosk").exists()
    units = sorted((DEPLOY / "systemd").iterdir())
    assert {u.name for u in units} >= {"verzilvering.service", "verzilvering@.service", "verzilvering-kiosk.service",
                                       "verzilvering-backup.service", "verzilvering-backup.timer"}
    for unit in units:
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/verzilvering/venv/bin/", f"{bin_dir}/"))
    out = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stdout + out.stderr


def _redis(port: int, *command: str) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port), "--no-auth-warning", "-a", TEST_PASSWORD, *command],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_redis_and_sentinel_run_from_their_configs(tmp_path: Path) -> None:
    redis, port = redis_from_deploy_conf(tmp_path / "redis")
    sentinel = None
    try:
        # What the file promises: a password, no eviction, AOF, and no FLUSHALL.
        assert _redis(port, "PING") == "PONG"
        assert _redis(port, "CONFIG", "GET", "maxmemory-policy").splitlines()[-1] == "noeviction"
        assert _redis(port, "CONFIG", "GET", "appendonly").splitlines()[-1] == "yes"
        assert "unknown command" in _redis(port, "FLUSHALL").lower()
        denied = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True, timeout=30)
        assert "NOAUTH" in denied.stdout + denied.stderr

        # Sentinel rewrites its own file: it runs on a copy, with the operator's changes.
        sentinel_port = free_port()
        conf = (DEPLOY / "redis" / "sentinel.conf").read_text()
        conf = re.sub(r"^port \d+", f"port {sentinel_port}", conf, flags=re.M)
        conf = re.sub(r"^bind .*", "bind 127.0.0.1", conf, flags=re.M)
        conf = re.sub(r"^dir .*", f"dir {tmp_path}", conf, flags=re.M)
        conf = re.sub(r"^sentinel monitor verzilvering \S+ \d+", f"sentinel monitor verzilvering 127.0.0.1 {port}",
                      conf, flags=re.M)
        conf = conf.replace("sentinel auth-pass verzilvering CHANGE_ME", f"sentinel auth-pass verzilvering {TEST_PASSWORD}")
        assert "CHANGE_ME" not in "\n".join(l for l in conf.splitlines() if not l.lstrip().startswith("#"))
        (tmp_path / "sentinel.conf").write_text(conf)
        sentinel = subprocess.Popen(["redis-server", str(tmp_path / "sentinel.conf"), "--sentinel"],
                                    stdout=(tmp_path / "sentinel.log").open("wb"), stderr=subprocess.STDOUT)
        wait_for_port(sentinel_port, process=sentinel)
        deadline = time.monotonic() + 15
        while True:
            out = subprocess.run(["redis-cli", "-p", str(sentinel_port), "SENTINEL", "get-master-addr-by-name",
                                  "verzilvering"], capture_output=True, text=True, timeout=30).stdout.split()
            if out == ["127.0.0.1", str(port)] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert out == ["127.0.0.1", str(port)], (tmp_path / "sentinel.log").read_text()
    finally:
        if sentinel is not None:
            stop(sentinel)
        stop(redis)


async def test_coturn_runs_from_its_config_and_answers_stun(tmp_path: Path) -> None:
    from aioice import stun

    cert, key = self_signed_certificate(tmp_path / "tls")
    port, tls_port, relay_base = free_port(), free_port(), free_port()
    conf = (DEPLOY / "coturn" / "turnserver.conf").read_text()
    changes = {
        r"^listening-ip=.*": "listening-ip=127.0.0.1",
        r"^listening-port=.*": f"listening-port={port}",
        r"^tls-listening-port=.*": f"tls-listening-port={tls_port}",
        r"^cert=.*": f"cert={cert}",
        r"^pkey=.*": f"pkey={key}",
        r"^relay-ip=.*": "relay-ip=127.0.0.1",
        r"^min-port=.*": f"min-port={relay_base}",
        r"^max-port=.*": f"max-port={relay_base + 100}",
        r"^static-auth-secret=.*": "static-auth-secret=" + TEST_PASSWORD,
        # Logs (and coturn's unused user database): here, not the system's syslog and /var/lib/turn.
        r"^syslog$": f"log-file={tmp_path}/turn.log\npidfile={tmp_path}/turn.pid\nuserdb={tmp_path}/turndb",
    }
    for pattern, value in changes.items():
        conf, count = re.subn(pattern, value, conf, flags=re.M)
        assert count == 1, pattern
    (tmp_path / "turnserver.conf").write_text(conf)
    turn = subprocess.Popen(["turnserver", "-c", str(tmp_path / "turnserver.conf")],
                            stdout=(tmp_path / "stdout.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process=turn)
        wait_for_port(tls_port, process=turn)
        # A STUN binding request over UDP: coturn answers with our address.
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[stun.Message] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if not answered.done():
                    answered.set_result(stun.parse_message(data))

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
        try:
            request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
            for _ in range(10):
                transport.sendto(bytes(request))
                try:
                    reply = await asyncio.wait_for(asyncio.shield(answered), 0.5)
                    break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("coturn did not answer a STUN binding request")
        finally:
            transport.close()
        assert reply.message_class == stun.Class.RESPONSE
        assert reply.attributes["XOR-MAPPED-ADDRESS"][0] == "127.0.0.1"
        logs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("turn*.log"))
        logs += (tmp_path / "stdout.log").read_text(errors="replace")
        assert "CONFIG ERROR" not in logs and "CONFIGURATION ALERT" not in logs, logs
    finally:
        stop(turn)
