"""Who sent a request: the client's own address and scheme, as a trusted proxy tells them.

Behind nginx every request arrives from the proxy's address. Its `X-Forwarded-For`,
`X-Real-IP` and `X-Forwarded-Proto` headers are believed only when the request comes
from an address in `Settings.trusted_proxies`; anyone else could forge them.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, entries: Iterable[str]) -> None:
        self._networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()
        )

    def trusts(self, address: str | None) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self._networks)

    def client_address(self, request: web.BaseRequest) -> str:
        """The client's IP address: the proxy's word for it when the peer is a trusted proxy.

        X-Forwarded-For is read from the right: the last address not itself a trusted proxy
        is the one that connected to our outermost proxy (everything left of it is the
        client's own, forgeable claim).
        """
        peer = request.remote or ""
        if not self.trusts(peer):
            return peer
        forwarded = request.headers.get("X-Forwarded-For", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        for hop in reversed(hops):
            if _ip(hop) is None:
                break
            if not self.trusts(hop):
                return hop
        real_ip = request.headers.get("X-Real-IP", "").strip()
        if _ip(real_ip) is not None:
            return real_ip
        return peer

    def scheme(self, request: web.BaseRequest) -> str:
        """"https" or "http" as the client sees it (X-Forwarded-Proto from a trusted proxy)."""
        if self.trusts(request.remote):
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                return proto
        return request.scheme


def _ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address:
        return None
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None
