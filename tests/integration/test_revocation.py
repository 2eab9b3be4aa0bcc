"""Access that can be taken back (issue 11, items 5 and 6), over the real app on both backends.

Join tokens: a kick keeps the participant out until a host lets them back, `end` spends the
room's tokens, a replaced invite, a removed contact and a removed or switched-off staff
account refuse their tokens and close their open sessions. Staff sessions: a copied cookie
is worth nothing after logout, a password change, removal, or idle/absolute timeouts.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.appkeys import ISSUER_KEY, SETTINGS_KEY, SIGNALING_KEY, STORE_KEY
from server.config import Settings
from server.invites import issue_invite, named_secret
from server.store.redis import RedisStore
from signaling.protocol import CloseCode
from signaling.revocation import Revocations
from signaling.tokens import TokenIssuer
from web.auth import SESSION_COOKIE, STAFF_SESSIONS_KEY

from bench.redis_server import RedisServer

from tests.conftest import TEST_SECRET, WsClient, hello, make_settings
from tests.store_support import backend_overrides, redis_server  # noqa: F401  (fixtures)
from tests.web_helpers import Seed, Web, seed

ROOM = "activity-stoelgym"


@pytest.fixture
def backend(backend_overrides: dict[str, Any], tmp_path: Path) -> Settings:
    """Settings for one backend; every app made from them shares its state (a restart)."""
    return make_settings(tmp_path, **backend_overrides)


@dataclass
class Site:
    app: web.Application
    client: TestClient
    seed: Seed
    issuer: TokenIssuer

    async def ws(self) -> WsClient:
        return WsClient(await self.client.ws_connect("/ws"))

    def token(self, role: str, name: str, participant_id: str, room: str = ROOM) -> str:
        return self.issuer.issue(role=role, room=room, name=name, participant_id=participant_id)


@pytest.fixture
async def site(backend: Settings, aiohttp_client: Any) -> Site:
    app = create_app(backend)
    client = await aiohttp_client(app)
    return Site(app, client, await seed(app), app[ISSUER_KEY])


async def joined(client: WsClient, token: str, room: str = ROOM) -> dict[str, Any]:
    await hello(client, token)
    await client.send({"type": "join", "room": room, "id": "join"})
    return await client.expect("joined")


async def refused(client: WsClient, token: str, code: str) -> None:
    """A hello with this token gets `code` and the socket closes with 4001."""
    await client.send({"type": "hello", "v": 1, "token": token})
    await client.expect_error(code)
    assert await client.closed() == CloseCode.AUTH_FAILED


# --- kick, unban, end --------------------------------------------------------------------


async def test_a_kicked_participant_stays_out_until_a_host_lets_them_back(site: Site) -> None:
    host, senior = await site.ws(), await site.ws()
    await joined(host, site.token("host", "Ans", "staff-victor"))
    senior_token = site.token("senior", "Riet", "senior-riet")
    await joined(senior, senior_token)
    await host.send({"type": "kick", "participant_id": "senior-riet"})
    assert (await senior.expect("removed"))["reason"] == "kicked"
    assert await senior.closed() == CloseCode.REMOVED
    ban_list = await host.expect("ban_list")
    assert ban_list["banned"] == [{"participant_id": "senior-riet", "name": "Riet"}]

    # The same token at once, and a fresh one for the same person: both kept out.
    await refused(await site.ws(), senior_token, "banned")
    await refused(await site.ws(), site.token("senior", "Riet", "senior-riet"), "banned")
    # Someone else still gets in; a host joining later sees who is kept out.
    await joined(await site.ws(), site.token("senior", "Kees", "senior-kees"))
    second_host = await site.ws()
    assert (await joined(second_host, site.token("host", "Wim", "staff-wim")))["banned"] == ban_list["banned"]

    await host.send({"type": "unban", "participant_id": "senior-riet"})
    assert (await host.expect("ban_list"))["banned"] == []
    await host.send({"type": "unban", "participant_id": "senior-riet"})
    await host.expect_error("not_banned")
    back = await site.ws()
    await joined(back, senior_token)
    # Only moderators may let someone back.
    await back.send({"type": "unban", "participant_id": "senior-kees"})
    await back.expect_error("forbidden")


async def test_a_ban_made_after_hello_is_checked_again_at_join(site: Site) -> None:
    host, seated, waiting = await site.ws(), await site.ws(), await site.ws()
    await joined(host, site.token("host", "Ans", "staff-victor"))
    token = site.token("senior", "Riet", "senior-riet")
    await joined(seated, token)
    await hello(waiting, token)
    await host.send({"type": "kick", "participant_id": "senior-riet"})
    await seated.expect("removed")
    await host.expect("ban_list")
    await waiting.send({"type": "join", "room": ROOM, "id": "join"})
    await waiting.expect_error("banned")
    assert await waiting.closed() == CloseCode.AUTH_FAILED
    await host.expect("participant_left", participant_id="senior-riet")
    assert [p.participant_id for p in await site.app[STORE_KEY].list_participants(ROOM)] == ["staff-victor"]


async def test_end_spends_the_activity_tokens_issued_before_it(site: Site) -> None:
    host, senior = await site.ws(), await site.ws()
    host_token = site.token("host", "Ans", "staff-victor")
    senior_token = site.token("senior", "Riet", "senior-riet")
    await joined(host, host_token)
    await joined(senior, senior_token)
    await host.send({"type": "end"})
    assert (await senior.expect("removed"))["reason"] == "ended"
    assert await senior.closed() == CloseCode.REMOVED
    assert await host.closed() == CloseCode.REMOVED
    await refused(await site.ws(), senior_token, "activity_ended")
    await refused(await site.ws(), host_token, "activity_ended")
    # Next week's session: tokens issued now work.
    await joined(await site.ws(), site.token("senior", "Riet", "senior-riet"))


async def test_revocations_and_bans_survive_a_restart(backend: Settings, aiohttp_client: Any) -> None:
    app = create_app(backend)
    client = await aiohttp_client(app)
    first = Site(app, client, await seed(app), app[ISSUER_KEY])
    host = await first.ws()
    await joined(host, first.token("host", "Ans", "staff-victor"))
    kicked = first.token("senior", "Riet", "senior-riet")
    await joined(await first.ws(), kicked)
    await host.send({"type": "kick", "participant_id": "senior-riet"})
    await host.expect("ban_list")
    called_before = first.token("family", "Sanne", "contact-sanne", room="call-abc")
    await app[SIGNALING_KEY].revoke_participant("contact-sanne")
    await client.close()

    again = create_app(backend)
    client = await aiohttp_client(again)
    site = Site(again, client, first.seed, again[ISSUER_KEY])
    await refused(await site.ws(), kicked, "banned")
    await refused(await site.ws(), called_before, "token_revoked")


# --- revoked people: replaced invites, removed contacts and staff -------------------------


async def _coordinator(site: Site, aiohttp_client: Any) -> Web:
    web_client = Web(await aiohttp_client(site.client.server))
    await web_client.login("carla")
    return web_client


async def test_a_replaced_invite_refuses_its_tokens_and_closes_its_pages(site: Site, aiohttp_client: Any) -> None:
    secret = named_secret(site.app[SETTINGS_KEY], "invite")
    invite = issue_invite(secret, site.seed.contact)
    page = await site.client.get(f"/family/{invite}/activities/{ROOM}")
    assert page.status == 200
    family_token = _data_token(await page.text())
    host, family, listener = await site.ws(), await site.ws(), await site.ws()
    await joined(host, site.token("host", "Ans", "staff-victor"))
    await hello(family, family_token)
    await family.send({"type": "join", "room": ROOM})
    await family.expect("lobby")  # the family token reaches the waiting room
    await listener.send({"type": "hello", "v": 1, "contact": {"invite": invite}})
    await listener.expect("contact_welcome")

    coordinator = await _coordinator(site, aiohttp_client)
    await coordinator.get(f"/admin/contacts/{site.seed.contact.id}")
    assert (await coordinator.post(f"/admin/contacts/{site.seed.contact.id}/new-invite")).status == 303

    assert (await family.expect("removed"))["reason"] == "revoked"
    assert await family.closed() == CloseCode.REVOKED
    await listener.expect_error("invite_invalid")
    assert await listener.closed() == CloseCode.AUTH_FAILED
    await refused(await site.ws(), family_token, "token_revoked")
    assert (await site.client.get(f"/family/{invite}/activities/{ROOM}")).status == 410


async def test_a_removed_contact_cannot_join_with_an_earlier_call_token(site: Site, aiohttp_client: Any) -> None:
    token = site.token("family", "Sanne", site.seed.contact.id, room="call-0123")
    coordinator = await _coordinator(site, aiohttp_client)
    await coordinator.get(f"/admin/contacts/{site.seed.contact.id}/delete")
    assert (await coordinator.post(f"/admin/contacts/{site.seed.contact.id}/delete")).status == 303
    await refused(await site.ws(), token, "token_revoked")


async def _host_console_token(site: Site, aiohttp_client: Any) -> tuple[Web, str]:
    volunteer = Web(await aiohttp_client(site.client.server))
    await volunteer.login("victor")
    return volunteer, _data_token(await volunteer.get(f"/host/activities/{ROOM}"))


@pytest.mark.parametrize("how", ["removed", "switched_off"])
async def test_a_removed_or_switched_off_volunteer_loses_host_access_at_once(
    site: Site, aiohttp_client: Any, how: str
) -> None:
    volunteer, token = await _host_console_token(site, aiohttp_client)
    host, waiting = await site.ws(), await site.ws()
    await joined(host, token)
    await hello(waiting, token)

    coordinator = await _coordinator(site, aiohttp_client)
    victor = site.seed.volunteer
    if how == "removed":
        await coordinator.get(f"/admin/accounts/{victor.id}/delete")
        response = await coordinator.post(f"/admin/accounts/{victor.id}/delete")
    else:
        await coordinator.get(f"/admin/accounts/{victor.id}")
        response = await coordinator.post(
            f"/admin/accounts/{victor.id}",
            {"name": victor.name, "role": "volunteer", "language": "nl", "password": "", "disabled": "on"},
        )
    assert response.status == 303

    for client in (host, waiting):
        assert (await client.expect("removed"))["reason"] == "revoked"
        assert await client.closed() == CloseCode.REVOKED
    await refused(await site.ws(), token, "token_revoked")
    # The browser session is over too: no new token, no console, no login.
    await volunteer.get("/host", status=303)
    assert (await volunteer.client.get(f"/host/activities/{ROOM}/token", allow_redirects=False)).status == 303
    if how == "switched_off":
        assert (await Web(await aiohttp_client(site.client.server)).login("victor")).status == 401


async def test_the_console_token_is_short_and_renewed_from_the_session(site: Site, aiohttp_client: Any) -> None:
    settings = site.app[SETTINGS_KEY]
    volunteer, token = await _host_console_token(site, aiohttp_client)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] <= settings.page_token_ttl_s
    page = await volunteer.get(f"/host/activities/{ROOM}")
    assert f'data-token-refresh-ms="{settings.page_token_ttl_s * 1000 // 3}"' in page
    response = await volunteer.client.get(f"/host/activities/{ROOM}/token")
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
    fresh = await response.json()
    assert fresh["expires_in_s"] == settings.page_token_ttl_s
    await joined(await site.ws(), fresh["token"])
    # Not a host of this activity: no token.
    other = Web(await aiohttp_client(site.client.server))
    await other.login("wim")
    assert (await other.client.get(f"/host/activities/{ROOM}/token")).status == 403


def test_no_token_outlives_the_longest_revocation() -> None:
    issuer = TokenIssuer(TEST_SECRET, max_ttl_s=600)
    with pytest.raises(ValueError, match="max_token_ttl_s"):
        issuer.issue(role="host", room="r", name="Ans", ttl_s=601)
    before = time.time()
    grant = issuer.verify(issuer.issue(role="host", room="r", name="Ans", ttl_s=600))
    assert before - 0.001 <= grant.issued_at <= time.time()


# --- staff sessions ------------------------------------------------------------------------


def _cookie(web_client: Web) -> str:
    return next(c for c in web_client.client.session.cookie_jar if c.key == SESSION_COOKIE).value


async def _with_cookie(site: Site, aiohttp_client: Any, cookie: str) -> TestClient:
    copy = await aiohttp_client(site.client.server)
    copy.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie})
    return copy


async def _opens(client: TestClient, path: str = "/admin") -> bool:
    response = await client.get(path, allow_redirects=False)
    return response.status == 200


async def test_a_copied_cookie_is_refused_after_logout(site: Site, aiohttp_client: Any) -> None:
    carla = await _coordinator(site, aiohttp_client)
    copied = await _with_cookie(site, aiohttp_client, _cookie(carla))
    assert await _opens(copied)
    await carla.get("/admin")
    assert (await carla.post("/logout")).status == 303
    assert not await _opens(copied)
    assert not await _opens(carla.client)


async def test_a_copied_cookie_is_refused_after_a_password_change(site: Site, aiohttp_client: Any) -> None:
    victor = Web(await aiohttp_client(site.client.server))
    await victor.login("victor")
    copied = await _with_cookie(site, aiohttp_client, _cookie(victor))
    assert await _opens(copied, "/host")
    carla = await _coordinator(site, aiohttp_client)
    carla_elsewhere = await _coordinator(site, aiohttp_client)
    await carla.get(f"/admin/accounts/{site.seed.volunteer.id}")
    response = await carla.post(
        f"/admin/accounts/{site.seed.volunteer.id}",
        {"name": site.seed.volunteer.name, "role": "volunteer", "language": "nl", "password": "another long password"},
    )
    assert response.status == 303
    assert not await _opens(copied, "/host")
    assert not await _opens(victor.client, "/host")
    # Changing one's own password keeps this session and ends the others.
    await carla.get(f"/admin/accounts/{site.seed.coordinator.id}")
    response = await carla.post(
        f"/admin/accounts/{site.seed.coordinator.id}",
        {"name": site.seed.coordinator.name, "role": "coordinator", "language": "nl", "password": "my own new password"},
    )
    assert response.status == 303
    assert await _opens(carla.client)
    assert not await _opens(carla_elsewhere.client)


async def test_a_copied_cookie_is_refused_after_the_account_is_removed(site: Site, aiohttp_client: Any) -> None:
    victor = Web(await aiohttp_client(site.client.server))
    await victor.login("victor")
    copied = await _with_cookie(site, aiohttp_client, _cookie(victor))
    carla = await _coordinator(site, aiohttp_client)
    await carla.get(f"/admin/accounts/{site.seed.volunteer.id}/delete")
    assert (await carla.post(f"/admin/accounts/{site.seed.volunteer.id}/delete")).status == 303
    assert not await _opens(copied, "/host")
    # Gone from the store as well, not only refused.
    assert await site.app[STORE_KEY].delete_staff_sessions(site.seed.volunteer.id) == 0


async def test_sessions_end_when_idle_or_too_old_on_a_clock_we_control(site: Site, aiohttp_client: Any) -> None:
    settings = site.app[SETTINGS_KEY]
    sessions = site.app[STAFF_SESSIONS_KEY]
    now = [time.time()]
    sessions.clock = lambda: now[0]
    carla = await _coordinator(site, aiohttp_client)
    # Busy: each request well within the idle time keeps the session alive...
    for _ in range(3):
        now[0] += settings.session_idle_s - 5
        assert await _opens(carla.client)
    # ...idle for longer than session_idle_s ends it.
    now[0] += settings.session_idle_s + 1
    assert not await _opens(carla.client)

    await carla.login("carla")
    steps = int(settings.session_ttl_s // (settings.session_idle_s - 5))
    for _ in range(steps):
        now[0] += settings.session_idle_s - 5
        assert await _opens(carla.client)
    now[0] += settings.session_idle_s - 5  # busy, but past session_ttl_s since login
    assert not await _opens(carla.client)


async def test_a_login_outlives_a_restart(backend: Settings, aiohttp_client: Any) -> None:
    app = create_app(backend)
    client = await aiohttp_client(app)
    await seed(app)
    carla = Web(client)
    await carla.login("carla")
    cookie = _cookie(carla)
    await client.close()
    again = await aiohttp_client(create_app(backend))
    again.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie})
    assert await _opens(again)


# --- helpers ---------------------------------------------------------------------------------


def _data_token(page: str) -> str:
    match = re.search(r'data-token="([^"]+)"', page)
    assert match, "the page carries no join token"
    return match.group(1)


# --- two real nodes sharing one Redis ----------------------------------------------------------


async def test_a_kick_on_one_node_refuses_the_token_on_the_other(tmp_path: Path, redis_server: RedisServer) -> None:
    from bench.server_process import Node

    prefix = f"vztest:{uuid.uuid4().hex}:"
    nodes = [Node(name, redis_server.url, prefix, tmp_path, secret=TEST_SECRET) for name in ("a", "b")]
    issuer = TokenIssuer(TEST_SECRET)
    try:
        async with aiohttp.ClientSession() as http:

            async def ws(node: Node) -> WsClient:
                return WsClient(await http.ws_connect(node.url + "/ws"))

            host, senior = await ws(nodes[0]), await ws(nodes[0])
            await joined(host, issuer.issue(role="host", room="gym", name="Ans", participant_id="h-1"), room="gym")
            token = issuer.issue(role="senior", room="gym", name="Riet", participant_id="s-1")
            await joined(senior, token, room="gym")
            await host.send({"type": "kick", "participant_id": "s-1"})
            await host.expect("ban_list")
            assert await senior.closed() == CloseCode.REMOVED
            await refused(await ws(nodes[1]), token, "banned")
            # A participant revoked on node B is closed where it sits (node A) and refused there.
            family_token = issuer.issue(role="family", room="gym", name="Sanne", participant_id="c-1")
            family = await ws(nodes[0])
            await joined(family, family_token, room="gym")
            revoker = RedisStore(redis_server.url, node_id="admin", prefix=prefix)
            await revoker.open()
            try:
                await Revocations(revoker, keep_s=60).revoke_participant("c-1")
            finally:
                await revoker.close()
            assert (await family.expect("removed"))["reason"] == "revoked"
            assert await family.closed() == CloseCode.REVOKED
            await refused(await ws(nodes[1]), family_token, "token_revoked")
    finally:
        for node in nodes:
            node.stop()


# --- the kiosk does not loop on a refused token -----------------------------------------------


@pytest.mark.parametrize(
    "refusal,outcome", [("banned", "kicked"), ("activity_ended", "ended"), ("token_revoked", "token")]
)
async def test_a_kiosk_stops_at_a_refused_token_instead_of_reconnecting(
    site: Site, refusal: str, outcome: str
) -> None:
    from kiosk_client.room import RoomConnection, Sources

    token = site.token("senior", "Riet", "senior-riet")
    host = await site.ws()
    await joined(host, site.token("host", "Ans", "staff-victor"))
    if refusal == "banned":
        await joined(await site.ws(), token)
        await host.send({"type": "kick", "participant_id": "senior-riet"})
        await host.expect("ban_list")
    elif refusal == "activity_ended":
        await host.send({"type": "end"})
        await host.closed()
    else:
        await site.app[SIGNALING_KEY].revoke_participant("senior-riet")
    events: list[tuple[str, dict[str, Any]]] = []
    room = RoomConnection(
        str(site.client.server.make_url("")).rstrip("/"), token,
        sources=Sources(None, None), on_event=lambda event, **data: events.append((event, data)),
    )
    room.start()
    try:
        async with asyncio.timeout(10):
            while not room.done:
                await asyncio.sleep(0.05)
    finally:
        await room.stop()
    assert room.outcome == outcome and room.attempts == 1 and room.rebuilds == []
    assert ("ended", {"reason": outcome}) in events


async def test_removing_an_activity_ends_it_and_spends_its_tokens(site: Site, aiohttp_client: Any) -> None:
    senior = await site.ws()
    token = site.token("senior", "Riet", "senior-riet")
    await joined(senior, token)
    coordinator = await _coordinator(site, aiohttp_client)
    await coordinator.get(f"/admin/activities/{ROOM}/delete")
    assert (await coordinator.post(f"/admin/activities/{ROOM}/delete")).status == 303
    assert (await senior.expect("removed"))["reason"] == "ended"
    assert await senior.closed() == CloseCode.REMOVED
    await refused(await site.ws(), token, "activity_ended")


async def test_the_family_activity_token_is_short_and_renewed_with_the_invite(site: Site, aiohttp_client: Any) -> None:
    settings = site.app[SETTINGS_KEY]
    invite = issue_invite(named_secret(settings, "invite"), site.seed.contact)
    page = await site.client.get(f"/family/{invite}/activities/{ROOM}")
    text = await page.text()
    claims = jwt.decode(_data_token(text), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] <= settings.page_token_ttl_s
    assert f'data-token-refresh-ms="{settings.page_token_ttl_s * 1000 // 3}"' in text
    response = await site.client.get(f"/family/{invite}/activities/{ROOM}/token")
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
    fresh = await response.json()
    assert fresh["expires_in_s"] == settings.page_token_ttl_s
    family = await site.ws()
    await hello(family, fresh["token"])
    await family.send({"type": "join", "room": ROOM})
    await family.expect("lobby")
    # A closed activity or a replaced invite gives no new token.
    assert (await site.client.get(f"/family/{invite}/activities/activity-bingo/token")).status == 404
    coordinator = await _coordinator(site, aiohttp_client)
    await coordinator.get(f"/admin/contacts/{site.seed.contact.id}")
    await coordinator.post(f"/admin/contacts/{site.seed.contact.id}/new-invite")
    assert (await site.client.get(f"/family/{invite}/activities/{ROOM}/token")).status == 410
