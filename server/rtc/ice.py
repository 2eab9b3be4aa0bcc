"""ICE host candidates: which local addresses aioice offers.

Its own module so a kiosk can set this without loading server/rtc/rtphooks.py and the C
extension it binds (server/_srtpsend.c).
"""

from __future__ import annotations

import aioice.ice


def restrict_host_addresses(addresses: list[str]) -> None:
    """Gathers ICE host candidates only on these addresses (process-wide).

    aioice offers every interface and never 127.0.0.1; a node with several networks should
    offer only its media-facing address, and tests keep all media on loopback this way.
    """
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses
