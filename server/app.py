"""Builds the one-process application: signalling, SFU and web pages on one aiohttp app."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web

from signaling.service import SignalingService
from signaling.tokens import TokenIssuer, load_or_create_secret

import web as web_pages

from . import __version__, api
from .appkeys import (
    DIRECTORY_KEY,
    GUARD_KEY,
    ISSUER_KEY,
    METRICS_KEY,
    SETTINGS_KEY,
    SFU_KEY,
    SIGNALING_KEY,
    STARTED_KEY,
    STORE_KEY,
)
from .config import Settings
from .connections import ConnectionGuard
from .directory import Directory
from .metrics import Metrics, metrics_endpoint
from .rtc import nackgenerator
from .rtc.ice import restrict_host_addresses
from .rtc.pin import check_aiortc_version
from .rtc.rtphooks import set_ice_read_batch
from .sfu.consumer import LayerPolicy
from .sfu.router import Sfu
from .store import StoreUnavailable, open_store

logger = logging.getLogger(__name__)

def make_issuer(settings: Settings) -> TokenIssuer:
    return TokenIssuer(settings.token_secret or load_or_create_secret(settings.data_dir), settings.max_token_ttl_s)


def create_app(settings: Settings) -> web.Application:
    check_aiortc_version()
    set_ice_read_batch(settings.ice_read_batch)
    nackgenerator.configure(settings.nack_reorder_min_s, settings.nack_reorder_max_s)
    if settings.media_addresses:
        restrict_host_addresses(list(settings.media_addresses))
    guard = ConnectionGuard(settings)
    # First: it must see every request's start and end, whatever the others do.
    app = web.Application(client_max_size=settings.max_message_bytes, middlewares=[guard.middleware])
    app[SETTINGS_KEY] = settings
    app[GUARD_KEY] = guard
    app[ISSUER_KEY] = make_issuer(settings)
    app[STARTED_KEY] = time.monotonic()
    app[SFU_KEY] = Sfu(
        settings.ice_servers,
        settings.keyframe_request_interval_s,
        settings.last_n_audio,
        settings.speaker_interval_s,
        LayerPolicy.from_settings(settings),
        settings.layer_allocation_interval_s,
        settings.negotiation_timeout_s,
    )
    app.cleanup_ctx.append(_state)
    app.on_shutdown.append(_close_sockets)
    app[METRICS_KEY] = Metrics()
    guard.metrics = app[METRICS_KEY]
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/ws", websocket)

    api.setup(app)
    web_pages.setup(app)
    return app


async def _state(app: web.Application):  # type: ignore[no-untyped-def]
    settings = app[SETTINGS_KEY]
    store = await open_store(settings, node_id=settings.node_id or f"node-{uuid.uuid4().hex[:8]}")
    app[STORE_KEY] = store
    app[DIRECTORY_KEY] = Directory(store)
    app[SIGNALING_KEY] = SignalingService(
        settings, store, app[ISSUER_KEY], app[SFU_KEY], app[DIRECTORY_KEY]
    )
    app[SIGNALING_KEY].metrics = app[METRICS_KEY]
    app[SIGNALING_KEY].on_authenticated = app[GUARD_KEY].authenticated
    app[METRICS_KEY].watch(app[SFU_KEY], app[SIGNALING_KEY])
    await app[SIGNALING_KEY].start()
    yield
    await app[GUARD_KEY].close()
    app[METRICS_KEY].close()
    await app[SIGNALING_KEY].close()
    await app[SFU_KEY].close()
    await store.close()


async def _close_sockets(app: web.Application) -> None:
    """aiohttp waits for every open request, a websocket too, before the cleanup that
    would close them: close the signalling sockets first, or a stop (one not drained
    beforehand) hangs for the whole shutdown timeout."""
    await app[SIGNALING_KEY].close_sockets()


async def websocket(request: web.Request) -> web.StreamResponse:
    signaling = request.app[SIGNALING_KEY]
    if signaling.cluster.draining:
        # The load balancer tries another node.
        return web.json_response({"status": "draining"}, status=503)
    return await signaling.handle_ws(request)


async def healthz(request: web.Request) -> web.Response:
    """200 while this node takes calls, also when the store is down (calls go on);
    503 while it drains, so load balancers stop sending it clients."""
    app = request.app
    signaling = app[SIGNALING_KEY]
    cluster = signaling.cluster
    # `node`: this process only. `cluster`: the whole deployment, read from the store.
    node = {
        "sessions": len(signaling.sessions),
        "media": app[SFU_KEY].stats(),
        "relayed_out": len(cluster.relayed),
        "relayed_in": len(cluster.remote),
    }
    body: dict[str, object] = {
        "status": "draining" if cluster.draining else "ok",
        "version": __version__,
        "node_id": cluster.node_id,
        "uptime_s": round(time.monotonic() - app[STARTED_KEY], 1),
        "node": node,
        # The flat fields of earlier versions, kept for dashboards and scripts that read them.
        "sessions": node["sessions"],
        "media": node["media"],
    }
    try:
        totals = await signaling.health()
        body["cluster"] = {**totals, "unreachable_nodes": sorted(cluster.unreachable)}
        body.update(totals)
        body["store"] = "ok"
    except StoreUnavailable:
        body["store"] = "unavailable"
    return web.json_response(body, status=503 if cluster.draining else 200)
