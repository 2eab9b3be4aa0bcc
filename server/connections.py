"""ConnectionGuard: what a TCP connection may hold before it has proven who it is.

Anyone can open a connection and then send nothing, a header line every few seconds, or
a body one byte at a time. aiohttp has no deadline for any of that, so each such
connection would hold a file descriptor and a handler task for as long as the peer likes;
at the process's descriptor limit the node stops accepting anyone, `/healthz` included.

The guard keeps every connection that is not a signed-in WebSocket (a `hello` accepted:
kiosks and participants are bounded elsewhere) within:

- `http_header_timeout_s`: from the connection's start, or the end of its last request,
  until a request's headers are complete (slowloris headers, idle keep-alive);
- `http_body_timeout_s`: from a request's headers until its body has arrived (slow bodies);
- `max_unauthenticated_connections` per node (at most half the descriptor limit): a new
  connection beyond it pushes out the oldest one that has no request in progress, or is
  refused when every one is busy;
- `max_connections_per_address` per client address (the trusted proxy's word for it
  behind nginx): beyond it, a new connection from that address pushes out that address's
  oldest idle one, or is refused.

It also keeps asyncio's "socket.accept() out of system resource" (at the descriptor limit
every accept attempt fails and would log a traceback) to one line per
`accept_error_log_interval_s`, with a count.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .config import Settings
from .forwarded import TrustedProxies
from .metrics import Metrics
from .tasks import TaskOwner

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACCEPT_ERROR = "socket.accept() out of system resource"


@dataclass(eq=False)
class Tracked:
    """One TCP connection as the guard sees it."""

    transport: asyncio.BaseTransport
    # The socket peer until a request names the client (behind a trusted proxy).
    address: str
    # Since when it has waited for a request's headers (start, or end of the last request).
    waiting_since: float
    request: web.BaseRequest | None = None
    request_started: float = 0.0
    counted_address: str = field(default="")


class ConnectionGuard:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proxies = TrustedProxies(settings.trusted_proxies)
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # The other half of the descriptors is for signed-in clients, media sockets, the
        # store: unauthenticated connections must never be what exhausts them.
        ceiling = soft_limit // 2 if soft_limit != resource.RLIM_INFINITY else settings.max_unauthenticated_connections
        self.max_unauthenticated = min(settings.max_unauthenticated_connections, ceiling)
        if self.max_unauthenticated < settings.max_unauthenticated_connections:
            logger.warning(
                "max_unauthenticated_connections lowered to %d: the open-files limit is %d (raise LimitNOFILE)",
                self.max_unauthenticated, soft_limit,
            )
        # Unauthenticated connections only: a signed-in one leaves (10,000 kiosks must not
        # be walked on every accept).
        self._tracked: dict[asyncio.BaseTransport, Tracked] = {}
        self._per_address: Counter[str] = Counter()
        self._tasks = TaskOwner("connection-guard")
        self.metrics: Metrics | None = None
        self._accept_errors = 0
        self._accept_logged_at = 0.0

    # --- installation ----------------------------------------------------------------------

    def install(self, server: web.Server, loop: asyncio.AbstractEventLoop) -> None:
        """Hooks into the server's connection accounting and the loop's exception handler."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: web.RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self.connection_made(transport)

        def connection_lost(handler: web.RequestHandler, exc: BaseException | None = None) -> None:
            if handler.transport is not None:
                self.connection_lost(handler.transport)
            lost(handler, exc)

        # web.Server calls these on itself for every connection; the guard wraps them.
        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        previous = loop.get_exception_handler()

        def exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if context.get("message") == ACCEPT_ERROR:
                self.accept_failed(context.get("exception"))
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(exception_handler)
        self._tasks.spawn(self._sweep(), name="connection-sweep")

    async def close(self) -> None:
        await self._tasks.close()

    # --- accounting ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else ""
        tracked = Tracked(transport, address, time.monotonic())
        # Behind a trusted proxy the socket address is the proxy's: counted per client once
        # a request says who it is.
        direct = not self.proxies.trusts(address)
        if direct and self._per_address[address] >= self.settings.max_connections_per_address:
            if not self._evict_idle(address):
                self._refuse(transport)
                return
        if len(self._tracked) >= self.max_unauthenticated and not self._evict_idle():
            self._refuse(transport)
            return
        self._tracked[transport] = tracked
        if direct:
            self._count(tracked, address)

    def connection_lost(self, transport: asyncio.BaseTransport) -> None:
        tracked = self._tracked.pop(transport, None)
        if tracked is not None:
            self._uncount(tracked)

    def _count(self, tracked: Tracked, address: str) -> None:
        tracked.counted_address = address
        self._per_address[address] += 1

    def _uncount(self, tracked: Tracked) -> None:
        if tracked.counted_address:
            self._per_address[tracked.counted_address] -= 1
            if self._per_address[tracked.counted_address] <= 0:
                del self._per_address[tracked.counted_address]
            tracked.counted_address = ""

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        self._count_drop("refused")
        transport.abort()  # type: ignore[attr-defined]

    def _count_drop(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_dropped.labels(reason).inc()

    def _evict_idle(self, address: str | None = None) -> bool:
        """Drops the oldest unauthenticated connection (from `address`, if given) that has
        no request in progress: a newcomer such as a health check gets through, while one
        address opening connections only pushes out its own."""
        idle = [
            t for t in self._tracked.values()
            if t.request is None and (address is None or t.counted_address == address)
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda t: t.waiting_since)
        self._drop(oldest)
        self._count_drop("evicted")
        return True

    def _drop(self, tracked: Tracked) -> None:
        self._tracked.pop(tracked.transport, None)
        self._uncount(tracked)
        tracked.transport.abort()  # type: ignore[attr-defined]

    def authenticated(self, transport: asyncio.BaseTransport | None) -> None:
        """A WebSocket said a valid `hello`: its own limits apply from now on."""
        tracked = self._tracked.pop(transport, None) if transport is not None else None
        if tracked is not None:
            self._uncount(tracked)

    # --- requests --------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        tracked = self._tracked.get(request.transport) if request.transport is not None else None
        if tracked is None:
            # Not accepted through the guarded server (tests' in-process servers).
            return await handler(request)
        if self.proxies.trusts(tracked.address) and not tracked.counted_address:
            client = self.proxies.client_address(request)
            if self._per_address[client] >= self.settings.max_connections_per_address and not self._evict_idle(client):
                self._count_drop("refused")
                return web.Response(
                    status=503, text="Too many connections from your address; try again shortly.",
                    headers={"Connection": "close", "Retry-After": "10"},
                )
            self._count(tracked, client)
        tracked.request = request
        tracked.request_started = time.monotonic()
        try:
            return await handler(request)
        finally:
            tracked.request = None
            tracked.waiting_since = time.monotonic()

    # --- deadlines -------------------------------------------------------------------------

    async def _sweep(self) -> None:
        s = self.settings
        interval = min(1.0, s.http_header_timeout_s / 4, s.http_body_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for tracked in list(self._tracked.values()):
                request = tracked.request
                if request is None:
                    late = now - tracked.waiting_since > s.http_header_timeout_s
                else:
                    # A request whose body is still arriving (a WebSocket has none).
                    late = (
                        not request.content.is_eof()
                        and now - tracked.request_started > s.http_body_timeout_s
                    )
                if late:
                    self._count_drop("timed_out")
                    self._drop(tracked)

    # --- accept errors ---------------------------------------------------------------------

    def accept_failed(self, exc: BaseException | None) -> None:
        """At the descriptor limit every accept fails: one log line per interval, counted."""
        self._accept_errors += 1
        self._count_drop("accept_failed")
        now = time.monotonic()
        if now - self._accept_logged_at >= self.settings.accept_error_log_interval_s:
            logger.error(
                "%s: %d time(s) since the last report (%s); open files are exhausted, see LimitNOFILE",
                ACCEPT_ERROR, self._accept_errors, exc,
            )
            self._accept_errors = 0
            self._accept_logged_at = now
