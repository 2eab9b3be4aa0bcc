"""A client whose WebSocket lands on another node than its room's keeps that socket: the
edge node relays it and must not take it for one that never said hello (it closed such
sockets after hello_timeout_s, so relayed clients resumed every 10 s)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from kiosk_client.call import CallClient
from signaling.tokens import TokenIssuer

from tests.conftest import TEST_SECRET
from tests.deploy_support import REPO, free_port, stop, wait_for_port
from bench.redis_server import RedisServer

HELLO_TIMEOUT_S = 1.0


async def test_a_relayed_client_keeps_its_socket_past_the_hello_timeout(tmp_path: Path) -> None:
    with RedisServer() as redis:
        env = {**os.environ, "VERZILVERING_TOKEN_SECRET": TEST_SECRET,
               "VERZILVERING_HELLO_TIMEOUT_S": str(HELLO_TIMEOUT_S), "VERZILVERING_REDIS_URL": redis.url}
        nodes, urls = [], []
        try:
            for i in range(2):
                port = free_port()
                nodes.append(subprocess.Popen(
                    [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--node-id", f"relay-{i}",
                     "--data-dir", str(tmp_path / f"n{i}"), "--log-level", "WARNING"],
                    env=env, cwd=REPO, stdout=(tmp_path / f"n{i}.log").open("wb"), stderr=subprocess.STDOUT,
                ))
                wait_for_port(port, 30, process=nodes[-1])
                urls.append(f"http://127.0.0.1:{port}")
            issuer = TokenIssuer(TEST_SECRET)
            # One client on each node: whichever node the room lands on, the other one relays.
            clients = [CallClient(url, issuer.issue(role="senior", room="relayed", name=f"c{i}"))
                       for i, url in enumerate(urls)]
            try:
                for client in clients:
                    await asyncio.wait_for(client.start(), 20)
                sockets = [client.signaling._ws for client in clients]
                await asyncio.sleep(3 * HELLO_TIMEOUT_S + 1)
                for client, socket in zip(clients, sockets):
                    assert client.signaling._ws is socket and socket is not None and not socket.closed
                assert not any(client.removed.is_set() for client in clients)
            finally:
                for client in clients:
                    await client.close()
        finally:
            for node in nodes:
                stop(node)
