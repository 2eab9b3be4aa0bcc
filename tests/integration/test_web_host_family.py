"""The host's pages and the family pages over HTTP (the browser tests drive their scripts)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.appkeys import DIRECTORY_KEY, ISSUER_KEY, SETTINGS_KEY
from server.directory import Activity, Contact, Directory
from server.invites import issue_invite, named_secret

from tests.conftest import make_settings
from tests.web_helpers import Seed, Web, seed, text_of


@pytest.fixture
async def site(tmp_path: Path, aiohttp_client: Any) -> tuple[TestClient, Seed, Directory]:
    app = create_app(make_settings(tmp_path))
    client = await aiohttp_client(app)
    return client, await seed(app), app[DIRECTORY_KEY]


def token_of(page: str) -> str:
    return re.search(r'data-token="([^"]+)"', page).group(1)


async def test_a_volunteer_sees_today_and_starts_an_activity(site: tuple[TestClient, Seed, Directory]) -> None:
    client, data, directory = site
    web = Web(client)
    await web.login("victor")
    page = await web.get("/host")
    text = text_of(page)
    assert "Vandaag," in text and "Stoelgym" in text and "10:00–11:00" in text
    assert "Start Stoelgym" in text and "1 senior doet mee" in text and "1 senioren" not in text
    # Only their own activities: Bingo is Wim's.
    assert "Bingo" not in text

    response = await web.post(f"/host/activities/{data.activity.id}/start")
    assert response.status == 303 and response.headers["Location"] == f"/host/activities/{data.activity.id}"
    audit = await directory.audit_log()
    assert audit[0]["action"] == "start" and audit[0]["actor"] == data.volunteer.id

    console = await web.get(f"/host/activities/{data.activity.id}")
    grant = client.app[ISSUER_KEY].verify(token_of(console), room=data.activity.id)
    assert grant.role == "host" and grant.may("moderate") and grant.participant_id == data.volunteer.id
    assert grant.name == data.volunteer.name
    for control in ('id="mute-all"', 'id="lock"', 'id="music"', 'id="end"', 'id="lobby-list"', 'id="tiles"',
                    'src="/static/host.js"'):
        assert control in console
    strings = re.search(r'<script type="application/json" id="strings">(.*?)</script>', console, re.S).group(1)
    assert "matig" in strings and "binnenlaten" in strings


async def test_a_volunteer_cannot_host_someone_elses_activity(site: tuple[TestClient, Seed, Directory]) -> None:
    client, data, directory = site
    web = Web(client)
    await web.login("victor")
    await web.get("/host")
    response = await web.post(f"/host/activities/{data.closed_activity.id}/start")
    assert response.status == 403
    page = await web.get(f"/host/activities/{data.closed_activity.id}", status=403)
    assert "Niet uw activiteit" in page and "data-token" not in page
    await web.get("/host/activities/activity-nope", status=404)
    assert not [e for e in await directory.audit_log() if e["action"] == "start"]


async def test_a_coordinator_may_host_any_activity(site: tuple[TestClient, Seed, Directory]) -> None:
    client, data, _ = site
    web = Web(client)
    await web.login("carla")
    text = text_of(await web.get("/host"))
    assert "Stoelgym" in text and "Bingo" in text and "Start Bingo nu" in text
    console = await web.get(f"/host/activities/{data.closed_activity.id}")
    assert client.app[ISSUER_KEY].verify(token_of(console)).room == data.closed_activity.id


async def test_no_activities_today(site: tuple[TestClient, Seed, Directory]) -> None:
    client, data, directory = site
    activity = await directory.get(Activity, data.activity.id)
    activity.host_ids = []
    await directory.put(activity, actor="test")
    web = Web(client)
    await web.login("victor")
    assert "U heeft vandaag geen activiteiten." in text_of(await web.get("/host"))


def invite_for(client: TestClient, contact: Contact, **kw: Any) -> str:
    return issue_invite(named_secret(client.app[SETTINGS_KEY], "invite"), contact, **kw)


async def test_family_call_page_shows_who_and_one_big_button(site: tuple[TestClient, Seed, Directory]) -> None:
    client, data, _ = site
    invite = invite_for(client, data.contact)
    web = Web(client)
    page = await web.get(f"/family/{invite}")
    text = text_of(page)
    assert "Oma Riet" in text and "Hallo Sanne." in text and "Bel Oma Riet" in text
    assert 'id="call-button"' in page and 'class="button huge"' in page
    assert f'data-invite="{invite}"' in page and 'src="/static/family.js"' in page
    assert f'href="/family/{invite}/activities"' in page
    # No staff menu, no session.
    assert "Uitloggen" not in text and "Logboek" not in text
    english = text_of(await web.get(f"/family/{invite}?lang=en"))
    assert "Call Oma Riet" in english


@pytest.mark.parametrize("bad", ["not-a-token", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
async def test_family_pages_refuse_bad_invites(site: tuple[TestClient, Seed, Directory], bad: str) -> None:
    client, _, _ = site
    web = Web(client)
    for path in (f"/family/{bad}", f"/family/{bad}/activities", f"/family/{bad}/activities/activity-stoelgym"):
        page = await web.get(path, status=404)
        assert "Deze link werkt niet meer" in text_of(page) and "data-token" not in page


async def test_expired_and_revoked_invites(site: tuple[TestClient, Seed, Directory]) -> None:
    client, data, directory = site
    web = Web(client)
    expired = invite_for(client, data.contact, ttl_s=1)
    import asyncio

    await asyncio.sleep(1.1)
    await web.get(f"/family/{expired}", status=410)
    current = invite_for(client, data.contact)
    await web.get(f"/family/{current}")
    contact = await directory.get(Contact, data.contact.id)
    contact.invite_version += 1
    await directory.put(contact, actor="test")
    await web.get(f"/family/{current}", status=410)
    # A join token is not an invite.
    join_token = client.app[ISSUER_KEY].issue(role="family", room="x", name="Sanne")
    await web.get(f"/family/{join_token}", status=404)


async def test_family_sees_only_activities_that_welcome_guests(site: tuple[TestClient, Seed, Directory]) -> None:
    client, data, _ = site
    invite = invite_for(client, data.contact)
    web = Web(client)
    text = text_of(await web.get(f"/family/{invite}/activities"))
    assert "Stoelgym" in text and "Bingo" not in text and "Volgende keer:" in text
    page = await web.get(f"/family/{invite}/activities/{data.activity.id}")
    grant = client.app[ISSUER_KEY].verify(token_of(page), room=data.activity.id)
    assert grant.role == "family" and grant.name == "Sanne" and not grant.may("moderate")
    assert 'src="/static/family-activity.js"' in page
    # Bingo takes no guests, and an activity of another senior is not reachable either.
    await web.get(f"/family/{invite}/activities/{data.closed_activity.id}", status=404)
    await web.get(f"/family/{invite}/activities/activity-nope", status=404)


async def test_the_plain_call_page_still_works(site: tuple[TestClient, Seed, Directory]) -> None:
    client, _, _ = site
    web = Web(client)
    page = await web.get("/call?token=abc")
    assert 'data-token="abc"' in page and 'type="module" src="/static/call.js"' in page
    assert "Verbinden…" in page
    assert (await client.get("/call")).status == 400
    for script in ("callcore.js", "call.js", "host.js", "family.js", "family-activity.js", "site.css"):
        response = await client.get(f"/static/{script}")
        assert response.status == 200, script
