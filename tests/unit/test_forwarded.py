"""TrustedProxies: forwarded headers believed only from a configured proxy (no sockets)."""

from aiohttp.test_utils import make_mocked_request

from server.forwarded import TrustedProxies


def _request(peer: str, headers: dict[str, str]):
    request = make_mocked_request("GET", "/", headers=headers)
    return request.clone(remote=peer)


def test_headers_from_an_untrusted_peer_are_ignored() -> None:
    proxies = TrustedProxies(["10.0.0.1"])
    request = _request("203.0.113.9", {"X-Forwarded-For": "198.51.100.1", "X-Real-IP": "198.51.100.2",
                                       "X-Forwarded-Proto": "https"})
    assert proxies.client_address(request) == "203.0.113.9"
    assert proxies.scheme(request) == "http"


def test_trusted_proxy_names_the_client() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    request = _request("10.0.0.1", {"X-Forwarded-For": "forged, 198.51.100.7, 10.0.0.5",
                                    "X-Forwarded-Proto": "https"})
    assert proxies.client_address(request) == "198.51.100.7"
    assert proxies.scheme(request) == "https"


def test_real_ip_when_no_forwarded_for() -> None:
    proxies = TrustedProxies(["127.0.0.1", "::1"])
    assert proxies.client_address(_request("::1", {"X-Real-IP": "2001:db8::5"})) == "2001:db8::5"
    assert proxies.client_address(_request("127.0.0.1", {"X-Real-IP": "not an address"})) == "127.0.0.1"


def test_no_trusted_proxies_by_default() -> None:
    proxies = TrustedProxies(())
    assert not proxies.trusts("127.0.0.1")
    assert proxies.client_address(_request("127.0.0.1", {"X-Forwarded-For": "1.2.3.4"})) == "127.0.0.1"
