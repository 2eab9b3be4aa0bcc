"""The aiohttp app's keys: how server/app.py hands its parts to the handlers in web/,
server/api.py and server/metrics.py.

A module of its own, below every layer, so the handlers need not import the app that
assembles them. The parts' classes are named for the type checker only (`TYPE_CHECKING`):
several sit in higher layers, and a key never needs its class at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from signaling.service import SignalingService
    from signaling.tokens import TokenIssuer

    from .config import Settings
    from .connections import ConnectionGuard
    from .directory import Directory
    from .metrics import Metrics
    from .sfu.router import Sfu
    from .store import Store

SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings")
ISSUER_KEY: web.AppKey[TokenIssuer] = web.AppKey("issuer")
STORE_KEY: web.AppKey[Store] = web.AppKey("store")
SFU_KEY: web.AppKey[Sfu] = web.AppKey("sfu")
SIGNALING_KEY: web.AppKey[SignalingService] = web.AppKey("signaling")
STARTED_KEY: web.AppKey[float] = web.AppKey("started")
DIRECTORY_KEY: web.AppKey[Directory] = web.AppKey("directory")
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics")
GUARD_KEY: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard")
