"""Logging in, sessions, CSRF, login throttling and who may open what — through the real app."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY
from server.directory import Contact, Senior
from server.invites import issue_invite, named_secret
from web.auth import SESSION_COOKIE, encode_session

from tests.conftest import make_settings
from bench.redis_server import RedisServer
from tests.web_helpers import PASSWORD, Seed, Web, seed, text_of


@pytest.fixture
def web_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def site(tmp_path: Path, aiohttp_client: Any, web_overrides: dict[str, Any]) -> tuple[TestClient, Seed]:
    app = create_app(make_settings(tmp_path, **web_overrides))
    client = await aiohttp_client(app)
    return client, await seed(app)


async def test_login_page_and_wrong_password(site: tuple[TestClient, Seed]) -> None:
    client, _ = site
    web = Web(client)
    page = await web.get("/login")
    assert '<html lang="nl">' in page and "Inloggen" in page
    assert 'autocomplete="current-password"' in page
    response = await web.post("/login", {"username": "carla", "password": "not the password"})
    assert response.status == 401
    assert "De gebruikersnaam of het wachtwoord klopt niet." in text_of(await response.text())
    unknown = await web.post("/login", {"username": "nobody", "password": PASSWORD})
    assert unknown.status == 401
    # Still not logged in.
    await web.get("/admin", status=303)


async def test_login_sends_each_role_home_and_logout_ends_the_session(site: tuple[TestClient, Seed]) -> None:
    client, _ = site
    web = Web(client)
    response = await web.login("CARLA")  # usernames are not case-sensitive
    assert response.status == 303 and response.headers["Location"] == "/admin"
    cookie = response.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    page = await web.get("/admin")
    assert "Carla Coördinator" not in page or "Uitloggen" in page
    logout = await web.post("/logout")
    assert logout.status == 303 and logout.headers["Location"] == "/login"
    assert "U bent uitgelogd." in text_of(await web.get("/login"))
    await web.get("/admin", status=303)

    volunteer = Web(client)
    client.session.cookie_jar.clear()
    response = await volunteer.login("victor")
    assert response.headers["Location"] == "/host"


async def test_login_returns_to_the_page_asked_for_but_never_to_another_site(site: tuple[TestClient, Seed]) -> None:
    client, _ = site
    web = Web(client)
    redirect = await client.get("/admin/kiosks", allow_redirects=False)
    assert redirect.status == 303 and redirect.headers["Location"] == "/login?next=%2Fadmin%2Fkiosks"
    page = await web.get("/login?next=/admin/kiosks")
    assert 'name="next" value="/admin/kiosks"' in page
    response = await web.post("/login", {"username": "carla", "password": PASSWORD, "next": "/admin/kiosks"})
    assert response.headers["Location"] == "/admin/kiosks"
    client.session.cookie_jar.clear()
    web = Web(client)
    await web.get("/login")
    response = await web.post("/login", {"username": "carla", "password": PASSWORD, "next": "//evil.example/"})
    assert response.headers["Location"] == "/admin"


HOSTILE_NEXT = ["/%09/evil.example/", "/%0d%0aSet-Cookie:%20x=1", "/%0a/evil.example/", "/%5C/evil.example/",
                "//evil.example/", "/%2F/evil.example/", "https://evil.example/", "/ /evil.example/",
                "/%E2%80%8B/evil.example/", "javascript:alert(1)"]


@pytest.mark.parametrize("hostile", HOSTILE_NEXT)
async def test_next_never_leaves_the_site(site: tuple[TestClient, Seed], hostile: str) -> None:
    """Only a plain local path is followed after login, on GET and on POST alike; anything
    else (tabs and newlines included, which browsers drop or which split the header)
    goes to the account's home page, with no error."""
    client, _ = site
    web = Web(client)
    page = await web.get(f"/login?next={hostile}")
    assert 'name="next" value=""' in page
    from urllib.parse import unquote

    response = await web.post("/login", {"username": "carla", "password": PASSWORD, "next": unquote(hostile)})
    assert response.status == 303 and response.headers["Location"] == "/admin"
    # Logged in: the login page sends on at once, to the home page.
    again = await client.get(f"/login?next={hostile}", allow_redirects=False)
    assert again.status == 303 and again.headers["Location"] == "/admin"
    kept = await client.get("/login?next=/admin/kiosks%3Fsenior%3Dsenior-riet", allow_redirects=False)
    assert kept.headers["Location"] == "/admin/kiosks?senior=senior-riet"


@pytest.mark.parametrize(
    "path",
    ["/admin", "/admin/seniors", "/admin/seniors/new", "/admin/kiosks", "/admin/accounts", "/admin/activities",
     "/admin/audit", "/admin/contacts/contact-sanne", "/host", "/host/activities/activity-stoelgym"],
)
async def test_without_a_session_every_staff_page_leads_to_login(site: tuple[TestClient, Seed], path: str) -> None:
    client, _ = site
    response = await client.get(path, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin"),
        ("GET", "/admin/seniors"),
        ("GET", "/admin/contacts/contact-sanne"),
        ("GET", "/admin/seniors/senior-riet/contacts/new"),
        ("GET", "/admin/kiosks"),
        ("GET", "/admin/accounts"),
        ("GET", "/admin/audit"),
        ("POST", "/admin/contacts/contact-sanne"),
        ("POST", "/admin/contacts/contact-sanne/new-invite"),
        ("POST", "/admin/seniors/senior-riet/contacts/new"),
        ("POST", "/admin/seniors/new"),
        ("POST", "/admin/accounts/new"),
    ],
)
async def test_a_volunteer_cannot_use_coordinator_pages(
    site: tuple[TestClient, Seed], method: str, path: str
) -> None:
    client, data = site
    web = Web(client)
    await web.login("victor")
    await web.get("/host")
    if method == "GET":
        page = await web.get(path, status=403)
        assert "Niet voor uw account" in page
    else:
        response = await web.post(path, {"name": "Hacker", "trusted": "on", "auto_answer": "on",
                                         "username": "mallory", "role": "coordinator", "password": "x" * 12,
                                         "language": "nl"})
        assert response.status == 403
    # Nothing changed: the contact is as seeded, no new records.
    directory = client.app[DIRECTORY_KEY]
    contact = await directory.get(Contact, data.contact.id)
    assert contact == data.contact
    assert len(await directory.contacts_of(data.senior.id)) == 1
    assert len(await directory.list(Senior)) == 1
    assert await directory.account_by_username("mallory") is None


async def test_a_family_invite_opens_no_staff_page(site: tuple[TestClient, Seed]) -> None:
    client, data = site
    settings = client.app[SETTINGS_KEY]
    invite = issue_invite(named_secret(settings, "invite"), data.contact)
    family = await client.get(f"/family/{invite}")
    assert family.status == 200
    # The family page sets no session (it has no form) …
    assert SESSION_COOKIE not in family.cookies
    for path in ("/admin", "/admin/contacts/contact-sanne", f"/admin?invite={invite}", "/host"):
        response = await client.get(path, allow_redirects=False)
        assert response.status == 303 and response.headers["Location"].startswith("/login"), path
    # … and an invite is no session cookie either.
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: invite})
    response = await client.get("/admin/kiosks", allow_redirects=False)
    assert response.status == 303
    # Nor is it a join token, nor a login.
    web = Web(client)
    response = await web.post("/login", {"username": "carla", "password": invite})
    assert response.status == 401


async def test_posts_without_the_right_csrf_token_change_nothing(site: tuple[TestClient, Seed]) -> None:
    client, data = site
    web = Web(client)
    await web.login("carla")
    await web.get("/admin/seniors/new")
    directory = client.app[DIRECTORY_KEY]

    missing = await web.post("/admin/seniors/new", {"name": "Opa Kees", "language": "nl"}, csrf=False)
    assert missing.status == 403
    assert "Deze pagina is verlopen" in text_of(await missing.text())
    wrong = await web.post("/admin/seniors/new", {"name": "Opa Kees", "language": "nl", "csrf_token": "guess"},
                           csrf=False)
    assert wrong.status == 403
    multipart = await web.post("/admin/seniors/new", {"name": "Opa Kees", "language": "nl"}, csrf=False,
                               files={"photo": ("x.jpg", b"", "image/jpeg")})
    assert multipart.status == 403
    # Another site's form, even with a token it somehow got, is refused by its Origin.
    cross = await web.post("/admin/seniors/new", {"name": "Opa Kees", "language": "nl"},
                           headers={"Origin": "https://evil.example"})
    assert cross.status == 403
    assert [s.name for s in await directory.list(Senior)] == [data.senior.name]
    # Logging out needs the token too.
    assert (await web.post("/logout", csrf=False)).status == 403
    await web.get("/admin")
    # The same form with the token works.
    ok = await web.post("/admin/seniors/new", {"name": "Opa Kees", "language": "nl"},
                        headers={"Origin": str(client.make_url("")).rstrip("/")})
    assert ok.status == 303
    assert sorted(s.name for s in await directory.list(Senior)) == ["Oma Riet", "Opa Kees"]


async def test_login_form_needs_csrf_too(site: tuple[TestClient, Seed]) -> None:
    client, _ = site
    response = await client.post("/login", data={"username": "carla", "password": PASSWORD}, allow_redirects=False)
    assert response.status == 403
    assert (await client.get("/admin", allow_redirects=False)).status == 303


async def test_a_forged_or_tampered_session_cookie_is_no_session(site: tuple[TestClient, Seed]) -> None:
    client, data = site
    forged = encode_session("not the secret " * 4, {"uid": data.coordinator.id, "exp": 2**31, "csrf": "x"})
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: forged})
    assert (await client.get("/admin", allow_redirects=False)).status == 303
    client.session.cookie_jar.clear()
    web = Web(client)
    await web.login("carla")
    cookie = next(c for c in client.session.cookie_jar if c.key == SESSION_COOKIE).value
    payload, _, signature = cookie.partition(".")
    tampered = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + signature
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: tampered})
    assert (await client.get("/admin", allow_redirects=False)).status == 303
    # The genuine cookie, set the same way, is a session.
    client.session.cookie_jar.clear()
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie})
    assert (await client.get("/admin", allow_redirects=False)).status == 200


async def test_changing_a_password_logs_out_other_sessions(site: tuple[TestClient, Seed], aiohttp_client: Any) -> None:
    client, data = site
    first = Web(client)
    await first.login("victor")
    await first.get("/host")
    other_client = await aiohttp_client(client.server)
    coordinator = Web(other_client)
    await coordinator.login("carla")
    await coordinator.get(f"/admin/accounts/{data.volunteer.id}")
    response = await coordinator.post(
        f"/admin/accounts/{data.volunteer.id}",
        {"name": data.volunteer.name, "role": "volunteer", "language": "nl", "password": "a brand new password"},
    )
    assert response.status == 303
    await first.get("/host", status=303)
    assert (await Web(client).login("victor", "a brand new password")).status == 303


# The window starts at the first attempt, before its password is checked: long enough for
# four argon2 checks on a busy machine.
@pytest.mark.parametrize("web_overrides", [{"login_max_failures": 3, "login_failure_window_s": 5.0,
                                             "login_max_failures_per_address": 3}])
async def test_login_is_throttled_after_repeated_failures(site: tuple[TestClient, Seed]) -> None:
    client, _ = site
    web = Web(client)
    await web.get("/login")
    for _ in range(3):
        assert (await web.post("/login", {"username": "carla", "password": "wrong"})).status == 401
    # Locked: even the right password is not checked now.
    locked = await web.post("/login", {"username": "carla", "password": PASSWORD})
    assert locked.status == 429
    assert "Te veel pogingen" in text_of(await locked.text())
    # The address is locked too, for any username.
    assert (await web.post("/login", {"username": "victor", "password": PASSWORD})).status == 429
    await asyncio.sleep(5.1)
    assert (await web.post("/login", {"username": "carla", "password": PASSWORD})).status == 303


@pytest.fixture(params=["embedded", "redis"])
async def backend_site(request: Any, tmp_path: Path, aiohttp_client: Any,
                       web_overrides: dict[str, Any]) -> Any:
    """The site on either store backend (Redis: a real redis-server)."""
    if request.param == "redis":
        redis = RedisServer()
        redis.__enter__()
        request.addfinalizer(lambda: redis.__exit__(None, None, None))
        web_overrides = {**web_overrides, "redis_url": redis.url, "redis_prefix": f"vztest:{uuid.uuid4().hex}:"}
    app = create_app(make_settings(tmp_path, **web_overrides))
    client = await aiohttp_client(app)
    return client, await seed(app)


async def test_forty_concurrent_logins_get_no_more_guesses_than_the_limit(backend_site: Any) -> None:
    """39 wrong passwords and the right one at once, for one username: attempts are counted
    before any password is checked, so at most login_max_failures (5) are checked at all,
    and the right one gets in only if it was one of them."""
    client, _ = backend_site
    web = Web(client)
    await web.get("/login")
    token = await web.csrf()
    passwords = [f"wrong guess {i}" for i in range(39)] + [PASSWORD]

    async def attempt(password: str) -> int:
        response = await client.post("/login", data={"username": "carla", "password": password,
                                                     "csrf_token": token}, allow_redirects=False)
        await response.read()
        return response.status

    statuses = await asyncio.gather(*(attempt(p) for p in passwords))
    checked = statuses.count(401) + statuses.count(303)
    assert set(statuses) <= {401, 303, 429}, statuses
    assert checked <= 5 and statuses.count(429) >= 35, statuses
    if statuses[-1] == 303:
        assert statuses.count(401) <= 4
    else:
        assert statuses[-1] == 429
        # Still locked afterwards, also for the right password.
        assert await attempt(PASSWORD) == 429


@pytest.mark.parametrize("web_overrides", [{"trusted_proxies": ("127.0.0.1", "::1")}])
async def test_failures_of_others_behind_the_proxy_do_not_lock_out_staff(backend_site: Any) -> None:
    """Behind nginx every request comes from the proxy's address; with the proxy trusted,
    the client's own address is what is counted, so an attacker spraying names locks out
    only their own address, and a staff member logs in as usual."""
    client, _ = backend_site
    web = Web(client)
    await web.get("/login")
    attacker = {"X-Forwarded-For": "198.51.100.66", "X-Real-IP": "198.51.100.66"}
    for i in range(25):
        response = await web.post("/login", {"username": f"guess{i % 7}", "password": "wrong"}, headers=attacker)
        assert response.status in (401, 429)
        assert response.status == 401 or i >= 20
    # The attacker's address is locked, whatever the name and even with a right password.
    assert (await web.post("/login", {"username": "wim", "password": PASSWORD}, headers=attacker)).status == 429
    staff = await web.post("/login", {"username": "carla", "password": PASSWORD},
                           headers={"X-Forwarded-For": "203.0.113.5", "X-Real-IP": "203.0.113.5"})
    assert staff.status == 303 and staff.headers["Location"] == "/admin"


@pytest.mark.parametrize("web_overrides", [{"login_max_failures": 2, "login_max_failures_per_address": 4}])
async def test_retrying_a_locked_name_does_not_lock_the_address(site: tuple[TestClient, Seed]) -> None:
    """Attempts refused because the name is locked check no password: they do not use up the
    address's budget, so colleagues at the same address can still log in."""
    client, _ = site
    web = Web(client)
    await web.get("/login")
    statuses = [(await web.post("/login", {"username": "wim", "password": "wrong"})).status for _ in range(10)]
    assert statuses == [401, 401] + [429] * 8
    assert (await web.post("/login", {"username": "carla", "password": PASSWORD})).status == 303


@pytest.mark.parametrize("web_overrides", [{"login_max_failures_per_address": 4}])
async def test_forwarded_headers_from_an_untrusted_peer_do_not_dodge_the_address_lock(
    site: tuple[TestClient, Seed]
) -> None:
    client, _ = site
    web = Web(client)
    await web.get("/login")
    for i in range(4):
        forged = {"X-Forwarded-For": f"198.51.100.{i}"}
        assert (await web.post("/login", {"username": f"name{i}", "password": "x"}, headers=forged)).status == 401
    forged = {"X-Forwarded-For": "198.51.100.200"}
    assert (await web.post("/login", {"username": "carla", "password": PASSWORD}, headers=forged)).status == 429


@pytest.mark.parametrize(
    ("web_overrides", "headers", "secure"),
    [
        ({"trusted_proxies": ("127.0.0.1", "::1")}, {"X-Forwarded-Proto": "https"}, True),
        ({"trusted_proxies": ("127.0.0.1", "::1")}, {"X-Forwarded-Proto": "http"}, False),
        ({"trusted_proxies": ("127.0.0.1", "::1")}, {}, False),
        # From a peer that is not a trusted proxy the header means nothing.
        ({"trusted_proxies": ("192.0.2.1",)}, {"X-Forwarded-Proto": "https"}, False),
        ({"public_url": "https://verzilvering.example.nl"}, {}, True),
    ],
)
async def test_the_session_cookie_is_secure_when_the_browser_uses_https(
    site: tuple[TestClient, Seed], headers: dict[str, str], secure: bool
) -> None:
    client, _ = site
    page = await client.get("/login", headers=headers)
    cookie = page.cookies[SESSION_COOKIE]
    assert bool(cookie["secure"]) is secure
    assert cookie["httponly"] and cookie["samesite"] == "Lax"


async def test_pages_speak_dutch_and_english_and_remember_the_choice(site: tuple[TestClient, Seed]) -> None:
    client, _ = site
    web = Web(client)
    page = await web.get("/login")
    assert '<html lang="nl">' in page and 'href="/login?lang=en"' in page and ">English<" in page
    english = await client.get("/login?lang=en")
    body = await english.text()
    assert '<html lang="en">' in body and "Log in" in body and ">Nederlands<" in body
    # The choice sticks for the next pages (a cookie), until changed again.
    assert '<html lang="en">' in await web.get("/")
    assert '<html lang="nl">' in await web.get("/?lang=nl")
    assert '<html lang="nl">' in await web.get("/")


async def test_referrer_policy_keeps_tokens_private_and_lets_forms_show_their_origin(
    site: tuple[TestClient, Seed]
) -> None:
    client, data = site
    web = Web(client)
    staff = await client.get("/login")
    assert staff.headers["Referrer-Policy"] == "same-origin"
    assert '<meta name="referrer" content="same-origin">' in await staff.text()
    invite = issue_invite(named_secret(client.app[SETTINGS_KEY], "invite"), data.contact)
    for path in (f"/family/{invite}", "/call?token=abc", f"/family/{invite}/activities"):
        response = await client.get(path)
        assert response.headers["Referrer-Policy"] == "no-referrer", path
        assert '<meta name="referrer" content="no-referrer">' in await response.text()
    # A browser that keeps its origin private ("null") still needs the token, and with it may post.
    await web.get("/login")
    assert (await web.post("/login", {"username": "carla", "password": PASSWORD}, csrf=False,
                           headers={"Origin": "null"})).status == 403
    ok = await web.post("/login", {"username": "carla", "password": PASSWORD}, headers={"Origin": "null"})
    assert ok.status == 303


@pytest.mark.parametrize("web_overrides", [{"photo_max_bytes": 20_000}])
async def test_too_large_uploads_are_refused_plainly(site: tuple[TestClient, Seed]) -> None:
    client, _ = site
    web = Web(client)
    await web.login("carla")
    await web.get("/admin/seniors/new")
    response = await web.post("/admin/seniors/new", {"name": "Opa Kees", "language": "nl"},
                              files={"photo": ("big.jpg", b"\xff\xd8\xff" + b"\0" * 200_000, "image/jpeg")})
    assert response.status == 413
    assert "Het bestand is te groot. Kies een kleinere foto." in text_of(await response.text())
    assert len(await client.app[DIRECTORY_KEY].list(Senior)) == 1


async def _post_without_finishing(client: TestClient, path: str, headers: dict[str, str], declared: int) -> str:
    """Sends a POST's headers and 64 KiB of a body that claims `declared` bytes, then waits
    for the answer without sending the rest: the status line, or "" if none comes."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {client.server.host}\r\nContent-Length: {declared}\r\n{head}\r\n"
                     .encode() + b"x" * 65536)
        await writer.drain()
        try:
            return (await asyncio.wait_for(reader.readline(), 3)).decode().strip()
        except asyncio.TimeoutError:
            return ""
    finally:
        writer.close()


async def test_bodies_are_not_read_before_origin_session_and_size_are_checked(site: tuple[TestClient, Seed]) -> None:
    """An anonymous 8 MiB upload to /login is answered before its body is sent: no session
    (so no CSRF token can match) means 403, and with a session a visitor's body may only be
    form_max_bytes, so 413; neither is read into memory."""
    client, _ = site
    multipart = {"Content-Type": "multipart/form-data; boundary=xyz"}
    eight_mib = 8 * 1024 * 1024
    assert (await _post_without_finishing(client, "/login", multipart, eight_mib)).startswith("HTTP/1.1 403")
    web = Web(client)
    await web.get("/login")
    cookie = "; ".join(f"{c.key}={c.value}" for c in client.session.cookie_jar)
    with_session = {**multipart, "Cookie": cookie}
    assert (await _post_without_finishing(client, "/login", with_session, eight_mib)).startswith("HTTP/1.1 413")
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
    assert (await _post_without_finishing(client, "/login", urlencoded, eight_mib)).startswith("HTTP/1.1 413")
    # A chunked body (no length declared) is cut off at the limit too.
    chunked = await client.post("/login", data=_chunks(b"username=carla&password=" + b"x" * 200_000),
                                headers={"Content-Type": "application/x-www-form-urlencoded"},
                                allow_redirects=False)
    assert chunked.status == 413
    # A file before the CSRF token is refused before the file is read.
    await web.login("carla")
    await web.get("/admin/seniors/new")
    form = aiohttp.FormData()
    form.add_field("photo", b"\xff\xd8\xff" + b"\0" * 1000, filename="a.jpg", content_type="image/jpeg")
    form.add_field("name", "Opa Kees")
    form.add_field("csrf_token", await web.csrf())
    refused = await client.post("/admin/seniors/new", data=form, allow_redirects=False)
    assert refused.status == 403
    assert len(await client.app[DIRECTORY_KEY].list(Senior)) == 1
    # The service still answers the next form as usual.
    assert (await web.post("/logout")).status == 303


@pytest.mark.parametrize(
    "body",
    [b"x" * 30000, b"--xyz\r\n" + b"a" * 20000 + b"\r\n",
     b'--xyz\r\nContent-Disposition: form-data; name="csrf_token"\r\n' + b"X" * 9000 + b"\r\n\r\nv\r\n--xyz--\r\n",
     b'--xyz\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\nTOKEN',
     b"--xyz\r\nContent-Type: multipart/mixed; boundary=abc\r\n\r\n--abc\r\n\r\nx\r\n--abc--\r\n--xyz--\r\n"],
    ids=["no-boundary", "endless-line", "endless-header", "cut-short", "nested"],
)
async def test_a_broken_multipart_form_is_refused_plainly(site: tuple[TestClient, Seed], body: bytes) -> None:
    client, _ = site
    web = Web(client)
    await web.get("/login")
    body = body.replace(b"TOKEN", (await web.csrf()).encode())
    response = await client.post("/login", data=body, allow_redirects=False,
                                 headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert response.status == 403
    assert "Deze pagina is verlopen" in text_of(await response.text())


async def _chunks(body: bytes) -> Any:
    for start in range(0, len(body), 16384):
        yield body[start:start + 16384]


async def test_login_throttling_is_shared_by_every_node(tmp_path: Path, aiohttp_client: Any) -> None:
    """Two nodes on one Redis: failures on one lock the name on the other, so spreading
    guesses over the nodes behind the proxy gains nothing."""
    with RedisServer() as redis:
        prefix = f"vztest:{uuid.uuid4().hex}:"
        nodes = []
        for name in ("n1", "n2"):
            settings = make_settings(tmp_path / name, redis_url=redis.url, redis_prefix=prefix, node_id=name,
                                     login_max_failures=3, login_failure_window_s=60,
                                     login_max_failures_per_address=3)
            nodes.append(create_app(settings))
        clients = [await aiohttp_client(app) for app in nodes]
        first, second = Web(clients[0]), Web(clients[1])
        await seed(nodes[0])
        await first.get("/login")
        await second.get("/login")
        for _ in range(3):
            assert (await first.post("/login", {"username": "carla", "password": "wrong"})).status == 401
        locked = await second.post("/login", {"username": "carla", "password": PASSWORD})
        assert locked.status == 429
        # The address is locked on the other node too, for any username.
        assert (await second.post("/login", {"username": "victor", "password": PASSWORD})).status == 429
        for client in clients:
            await client.close()


async def test_pages_and_api_say_plainly_when_the_store_is_away(tmp_path: Path, aiohttp_client: Any) -> None:
    with RedisServer() as redis:
        settings = make_settings(tmp_path, redis_url=redis.url, redis_prefix=f"vztest:{uuid.uuid4().hex}:")
        app = create_app(settings)
        client = await aiohttp_client(app)
        await seed(app)
        web = Web(client)
        await web.login("carla")
        assert (await client.get("/admin")).status == 200

        redis.halt()
        page = await client.get("/admin")
        assert page.status == 503 and page.headers["Retry-After"] == "30"
        assert "Probeer het over een minuut opnieuw" in text_of(await page.text())
        api = await client.post("/api/kiosk/pair")
        assert api.status == 503 and (await api.json())["error"] == "unavailable"

        redis.restart()
        for _ in range(100):
            if (await client.get("/admin")).status == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("/admin did not come back after Redis returned")
        await client.close()
