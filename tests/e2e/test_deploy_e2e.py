"""The layout docs/operations.md sets up ("Several nodes with Redis"), run for real: nginx with
deploy/nginx/verzilvering.conf and TLS in front of two `verzilvering serve` nodes that share
a redis-server started from deploy/redis/redis.conf. A browser (headless Chromium) and a
kiosk (`verzilvering-kiosk join`, trusting the site's certificate) call each other through
it; nginx sends their WebSockets to different nodes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp

from signaling.tokens import TokenIssuer

from tests.browser_helpers import DESKTOP, launch, open_tab
from tests.deploy_support import (
    DEPLOY,
    REPO,
    NginxSite,
    TEST_PASSWORD,
    free_port,
    nginx,
    nginx_site,
    redis_from_deploy_conf,
    self_signed_certificate,
    stop,
    wait_for_port,
)

KIOSK_SECONDS = 30


async def test_kiosk_and_browser_call_through_nginx_tls_and_two_nodes_on_redis(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    redis, redis_port = redis_from_deploy_conf(tmp_path / "redis")
    processes: list[subprocess.Popen] = [redis]
    node_ports = [free_port(), free_port()]
    site = nginx_site(DEPLOY / "nginx" / "verzilvering.conf", tmp_path / "nginx",
                      [f"127.0.0.1:{port}" for port in node_ports], cert, key)
    public_url = f"https://127.0.0.1:{site.https_port}"
    secret = "deploy-e2e-secret-" + "q" * 40
    # The operator's shared settings (operations.md, step 2), here as the environment.
    env = {
        **os.environ,
        "VERZILVERING_TOKEN_SECRET": secret,
        "VERZILVERING_REDIS_URL": f"redis://:{TEST_PASSWORD}@127.0.0.1:{redis_port}/0",
        "VERZILVERING_PUBLIC_URL": public_url,
        "VERZILVERING_TRUSTED_PROXIES": json.dumps(["127.0.0.1"]),
    }
    try:
        for i, port in enumerate(node_ports):
            node = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--node-id", f"node-{i}", "--data-dir", str(tmp_path / f"node-{i}"), "--log-level", "WARNING"],
                env=env, cwd=REPO, stdout=(tmp_path / f"node-{i}.log").open("wb"), stderr=subprocess.STDOUT,
            )
            processes.append(node)
            wait_for_port(port, 30, process=node)
        web = subprocess.Popen([nginx(), "-c", str(site.main_conf)], stdout=(tmp_path / "nginx.out").open("wb"),
                               stderr=subprocess.STDOUT)
        processes.append(web)
        wait_for_port(site.https_port, process=web)
        await asyncio.wait_for(_call(tmp_path, site, node_ports, public_url, cert, TokenIssuer(secret)), 150)
    finally:
        for process in reversed(processes):
            stop(process, 40)


async def _call(
    tmp_path: Path, site: NginxSite, node_ports: list[int], public_url: str, cert: Path, issuer: TokenIssuer
) -> None:
    trusting = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{public_url}/healthz", ssl=trusting) as health:
            assert health.status == 200 and (await health.json())["status"] == "ok"
            assert health.headers["Strict-Transport-Security"].startswith("max-age=")
        async with http.get(f"http://127.0.0.1:{site.http_port}/call?token=abc", allow_redirects=False) as plain:
            assert plain.status == 301 and plain.headers["Location"].startswith("https://127.0.0.1")

    room = "koffie-via-nginx"
    browser_token = issuer.issue(role="family", room=room, name="Sanne")
    kiosk_token = issuer.issue(role="senior", room=room, name="Mevrouw Jansen")
    async for browser in launch():
        context = await browser.new_context(locale="nl-NL", viewport=DESKTOP, ignore_https_errors=True)
        page = await open_tab(context, f"{public_url}/call?token={browser_token}")
        await page.wait_for("window.verzilvering.state", until=lambda s: s == "connected", what="the browser to join")
        browser_id = await page.value("window.verzilvering.selfId")
        report = tmp_path / "kiosk.json"
        kiosk = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kiosk_client.cli", "join", "--server", public_url, "--token", kiosk_token,
            "--duration", str(KIOSK_SECONDS), "--report", str(report),
            cwd=REPO, env={**os.environ, "SSL_CERT_FILE": str(cert)},
            stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            await page.wait_for(
                """() => {
                    const who = Object.values(window.verzilvering.participants).find(p => p.name === 'Mevrouw Jansen');
                    return who ? window.verzilvering.stats().then(s => s[who.participant_id] ?? null) : null;
                }""",
                until=lambda m: bool(m) and m.get("video", {}).get("framesDecoded", 0) > 10
                and m.get("audio", {}).get("totalSamplesReceived", 0) > 0,
                timeout_s=40, what="the kiosk's picture and sound in the browser",
            )
            assert kiosk.stdout is not None
            output = (await kiosk.stdout.read()).decode(errors="replace")
            assert await kiosk.wait() == 0, output
        finally:
            if kiosk.returncode is None:
                kiosk.kill()
                await kiosk.wait()
        seen = json.loads(report.read_text())["participants"][browser_id]
        assert seen["video_frames"] > 10 and seen["audio_frames"] > 10, seen
        await context.close()

    # nginx spread the two WebSockets over both nodes (least_conn), and logged no token.
    # (A WebSocket is logged when it closes.)
    nodes = {f"127.0.0.1:{port}" for port in node_ports}
    for _ in range(50):
        log = site.access_log.read_text()
        upstreams = set(re.findall(r'"GET /ws HTTP/1.1" 101 .*? upstream=(\S+)', log))
        if upstreams == nodes:
            break
        await asyncio.sleep(0.2)
    assert upstreams == nodes, log
    # One WebSocket each for the whole call: the node that relays the kiosk to the room's
    # node keeps its socket (it used to close it as "no hello" after 10 s).
    assert len(re.findall(r'"GET /ws HTTP/1.1" 101 ', log)) == 2, log
    assert "token=" not in log
