"""Fixtures of the end-to-end tests on an impaired link (bench.netns): the link, and a server
listening on this side of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.netns import ImpairedLink
from server.app import create_app
from server.appkeys import ISSUER_KEY
from server.rtc.ice import restrict_host_addresses

from tests.conftest import LOOPBACK_MEDIA, make_settings


@pytest.fixture
async def link() -> AsyncIterator[ImpairedLink]:
    """A network namespace behind a veth link; this process's media may use the link's address."""
    with ImpairedLink.create("e2e") as made:
        restrict_host_addresses([*LOOPBACK_MEDIA, made.host_address])
        try:
            yield made
        finally:
            restrict_host_addresses(list(LOOPBACK_MEDIA))


@dataclass
class LinkServer:
    app: web.Application
    url: str

    def token(self, **claims: str) -> str:
        return self.app[ISSUER_KEY].issue(**claims)


@pytest.fixture
async def link_server(link: ImpairedLink, tmp_path: Path) -> AsyncIterator[LinkServer]:
    """The whole server in this process, on the link's address (reachable from the namespace)."""
    app = create_app(make_settings(tmp_path))
    server = TestServer(app, host=link.host_address)
    await server.start_server()
    try:
        yield LinkServer(app, str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()
