"""Coordinator pages: every page and form through the real app, good input and bad."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.appkeys import DIRECTORY_KEY, SETTINGS_KEY, STORE_KEY
from server.directory import Account, Activity, Contact, Directory, DirectoryError, Kiosk, Senior
from server.invites import verify_invite, named_secret

from tests.conftest import make_settings
from tests.web_helpers import Seed, Web, jpeg, seed, text_of


@pytest.fixture
async def admin(tmp_path: Path, aiohttp_client: Any) -> tuple[Web, Seed, Directory]:
    app = create_app(make_settings(tmp_path))
    client: TestClient = await aiohttp_client(app)
    data = await seed(app)
    web = Web(client)
    assert (await web.login("carla")).status == 303
    return web, data, app[DIRECTORY_KEY]


def location(response: Any) -> str:
    assert response.status == 303, response.status
    return response.headers["Location"]


async def test_dashboard_and_menu(admin: tuple[Web, Seed, Directory]) -> None:
    web, _, _ = admin
    # The counts moved one level down: /admin itself is "Vandaag" (tests/integration/test_web_engagement.py).
    assert "Vandaag" in text_of(await web.get("/admin"))
    page = text_of(await web.get("/admin/overview"))
    for words in ("Overzicht", "1 senior", "0 van 0 kiosken online", "2 activiteiten", "3 vrijwilligers en coördinatoren"):
        assert words in page
    assert "1 senioren" not in page
    assert 'aria-current="page"' in await web.get("/admin/seniors")


async def test_create_a_senior_with_a_photo_then_edit(admin: tuple[Web, Seed, Directory]) -> None:
    web, data, directory = admin
    page = await web.get("/admin/seniors/new")
    assert 'enctype="multipart/form-data"' in page and 'for="f-name"' in page
    response = await web.post(
        "/admin/seniors/new", {"name": "  Meneer   de Vries ", "language": "en", "auto_join": "on"},
        files={"photo": ("portret.jpg", jpeg(), "image/jpeg")},
    )
    target = location(response)
    senior_id = target.rsplit("/", 1)[1]
    senior = await directory.get(Senior, senior_id)
    assert senior is not None and senior.name == "Meneer de Vries" and senior.language == "en" and senior.auto_join
    assert re.fullmatch(r"/photos/photo-[\w-]+\.jpg", senior.photo_url)
    page = await web.get(target)
    assert "Opgeslagen." in text_of(page) and senior.photo_url in page
    photo = await web.client.get(senior.photo_url)
    assert photo.status == 200 and photo.content_type == "image/jpeg"
    body = await photo.read()
    assert body[:3] == b"\xff\xd8\xff" and b"Exif" not in body
    # Edit: auto-join off, remove the photo; the old photo is gone.
    response = await web.post(target, {"name": "Meneer de Vries", "language": "nl", "remove_photo": "on"},
                              files={"photo": ("", b"", "application/octet-stream")})
    location(response)
    senior = await directory.get(Senior, senior_id)
    assert senior is not None and not senior.auto_join and senior.photo_url == "" and senior.language == "nl"
    assert (await web.client.get(photo.url.path)).status == 404
    listing = text_of(await web.get("/admin/seniors"))
    assert "Meneer de Vries" in listing and data.senior.name in listing


@pytest.mark.parametrize(
    ("fields", "files", "message"),
    [
        ({"name": "   ", "language": "nl"}, None, "Vul een naam in."),
        ({"name": "x" * 81, "language": "nl"}, None, "Een naam heeft hoogstens 80 tekens."),
        ({"name": "Opa", "language": "fr"}, None, "Kies Nederlands (nl) of English (en)."),
        ({"name": "Opa", "language": "nl"}, {"photo": ("cv.txt", b"not a picture", "text/plain")},
         "Dit is geen foto die we kunnen gebruiken"),
        ({"name": "Opa", "language": "nl"}, {"photo": ("broken.jpg", b"\xff\xd8\xff" + b"\0" * 50, "image/jpeg")},
         "Deze foto kon niet worden gelezen"),
    ],
)
async def test_bad_senior_input_is_explained_and_changes_nothing(
    admin: tuple[Web, Seed, Directory], fields: dict[str, str], files: Any, message: str
) -> None:
    web, data, directory = admin
    await web.get("/admin/seniors/new")
    response = await web.post("/admin/seniors/new", fields, files=files)
    assert response.status == 400
    page = await response.text()
    assert message in text_of(page)
    assert 'role="alert"' in page and 'aria-invalid="true"' in page
    assert [s.id for s in await directory.list(Senior)] == [data.senior.id]
    store = web.client.app[STORE_KEY]
    assert not [r for r in await store.list_records("people") if r.get("kind") == "photo"]


async def test_contacts_invite_links_and_their_rules(admin: tuple[Web, Seed, Directory]) -> None:
    web, data, directory = admin
    page = await web.get(f"/admin/seniors/{data.senior.id}")
    assert "Sanne" in page and f"/admin/seniors/{data.senior.id}/contacts/new" in page
    await web.get(f"/admin/seniors/{data.senior.id}/contacts/new")
    # Auto-answer needs trust.
    bad = await web.post(f"/admin/seniors/{data.senior.id}/contacts/new",
                         {"name": "Buurman Henk", "relation": "buurman", "auto_answer": "on"})
    assert bad.status == 400
    assert "Alleen een vertrouwd contact mag automatisch worden opgenomen." in text_of(await bad.text())
    assert len(await directory.contacts_of(data.senior.id)) == 1
    good = await web.post(f"/admin/seniors/{data.senior.id}/contacts/new",
                          {"name": "Buurman Henk", "relation": "buurman", "trusted": "on", "auto_answer": "on"})
    contact_id = location(good).rsplit("/", 1)[1]
    contact = await directory.get(Contact, contact_id)
    assert contact is not None and contact.trusted and contact.auto_answer and contact.relation == "buurman"

    page = await web.get(f"/admin/contacts/{contact_id}")
    link = re.search(r'id="invite-link"[^>]*value="([^"]+)"', page).group(1)
    assert link.startswith("http://127.0.0.1:") and "/family/" in link
    invite = link.rsplit("/family/", 1)[1]
    secret = named_secret(web.client.app[SETTINGS_KEY], "invite")
    assert verify_invite(secret, invite) == (contact_id, 1)
    family_page = text_of(await web.get(f"/family/{invite}"))
    assert "Oma Riet" in family_page and "Bel Oma Riet" in family_page

    # A new link turns the old one off.
    location(await web.post(f"/admin/contacts/{contact_id}/new-invite"))
    assert (await directory.get(Contact, contact_id)).invite_version == 2
    page = await web.get(f"/admin/contacts/{contact_id}")
    assert "Er is een nieuwe uitnodigingslink" in text_of(page)
    gone = await web.get(f"/family/{invite}", status=410)
    assert "Deze link werkt niet meer" in text_of(gone)
    new_invite = re.search(r'id="invite-link"[^>]*value="[^"]+/family/([^"]+)"', page).group(1)
    await web.get(f"/family/{new_invite}")

    # Edit, then remove.
    location(await web.post(f"/admin/contacts/{contact_id}", {"name": "Henk", "relation": "buurman"}))
    contact = await directory.get(Contact, contact_id)
    assert contact.name == "Henk" and not contact.trusted and not contact.auto_answer
    assert "Henk verwijderen?" in await web.get(f"/admin/contacts/{contact_id}/delete")
    assert location(await web.post(f"/admin/contacts/{contact_id}/delete")) == f"/admin/seniors/{data.senior.id}"
    assert await directory.get(Contact, contact_id) is None
    await web.get(f"/family/{new_invite}", status=410)


async def test_invite_links_use_https_when_the_trusted_proxy_says_so(tmp_path: Path, aiohttp_client: Any) -> None:
    """Without a public URL, the link's scheme is the browser's: https behind nginx."""
    app = create_app(make_settings(tmp_path, trusted_proxies=("127.0.0.1", "::1")))
    client: TestClient = await aiohttp_client(app)
    data = await seed(app)
    web = Web(client)
    assert (await web.login("carla")).status == 303
    for headers, scheme in (({"X-Forwarded-Proto": "https"}, "https://"), ({}, "http://")):
        page = await web.get(f"/admin/contacts/{data.contact.id}", headers=headers)
        link = re.search(r'id="invite-link"[^>]*value="([^"]+)"', page).group(1)
        assert link.startswith(scheme + "127.0.0.1:") and "/family/" in link


async def test_the_coordinator_orders_family_for_the_kiosk(admin: tuple[Web, Seed, Directory]) -> None:
    """"Order on the kiosk": lower first, then by name — on the senior's page, in the
    directory's lookup and so in device_welcome; the kiosk's home screen shows them so."""
    web, data, directory = admin
    form_page = await web.get(f"/admin/seniors/{data.senior.id}/contacts/new")
    assert 'name="position"' in form_page and 'type="number"' in form_page
    assert "Volgorde op de kiosk" in text_of(form_page)
    ids = {}
    for name, position in (("Anna", "5"), ("Bram", ""), ("Emma", "1"), ("Lotte", "1")):
        response = await web.post(f"/admin/seniors/{data.senior.id}/contacts/new",
                                  {"name": name, "trusted": "on", "position": position})
        ids[name] = location(response).rsplit("/", 1)[1]
    assert (await directory.get(Contact, ids["Bram"])).position == 0  # left empty: no particular place
    assert (await directory.get(Contact, ids["Anna"])).position == 5
    order = [c.name for c in await directory.contacts_of(data.senior.id)]
    assert order == ["Bram", "Sanne", "Emma", "Lotte", "Anna"]
    page = text_of(await web.get(f"/admin/seniors/{data.senior.id}"))
    assert [page.index(n) for n in order] == sorted(page.index(n) for n in order)
    assert "volgorde 5 op de kiosk" in page
    # The form shows the number again, and a change moves the person.
    assert 'value="5"' in await web.get(f"/admin/contacts/{ids['Anna']}")
    location(await web.post(f"/admin/contacts/{ids['Anna']}", {"name": "Anna", "trusted": "on", "position": "0"}))
    assert [c.name for c in await directory.contacts_of(data.senior.id)][:2] == ["Anna", "Bram"]
    # A form without the field (an older page) keeps the place.
    location(await web.post(f"/admin/contacts/{ids['Emma']}", {"name": "Emma", "trusted": "on"}))
    assert (await directory.get(Contact, ids["Emma"])).position == 1
    # Not a whole number from 0 to 999: refused with plain words, nothing changes.
    for bad in ("-1", "abc", "1.5", "1000", "²"):
        response = await web.post(f"/admin/contacts/{ids['Emma']}", {"name": "Emma", "trusted": "on", "position": bad})
        assert response.status == 400, bad
        body = await response.text()
        assert "De volgorde is een heel getal van 0 tot en met 999." in text_of(body)
        assert 'aria-invalid="true"' in body and f'value="{bad}"' in body
        assert (await directory.get(Contact, ids["Emma"])).position == 1
    with pytest.raises(DirectoryError):
        Contact(id="c", senior_id=data.senior.id, name="X", position=True).validate()  # type: ignore[arg-type]


async def _pair(web: Web, senior_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A kiosk starts pairing over HTTP, the coordinator types its code; returns both ends."""
    started = await (await web.client.post("/api/kiosk/pair")).json()
    await web.get("/admin/kiosks")
    response = await web.post("/admin/kiosks/pair", {"code": started["code"], "senior_id": senior_id})
    assert location(response) == "/admin/kiosks"
    poll = await web.client.get(f"/api/kiosk/pair/{started['pairing_id']}",
                                headers={"X-Pairing-Secret": started["secret"]})
    assert poll.status == 200
    return started, await poll.json()


async def test_pairing_a_kiosk_by_its_code(admin: tuple[Web, Seed, Directory]) -> None:
    web, data, directory = admin
    started = await (await web.client.post("/api/kiosk/pair")).json()
    page = await web.get(f"/admin/kiosks?senior={data.senior.id}")
    assert f'<option value="{data.senior.id}" selected>' in page
    # A wrong code, a missing senior: a clear message, and no kiosk.
    wrong = "000000" if started["code"] != "000000" else "111111"
    bad = await web.post("/admin/kiosks/pair", {"code": wrong, "senior_id": data.senior.id})
    assert bad.status == 400 and "Geen enkele kiosk toont deze code" in text_of(await bad.text())
    no_senior = await web.post("/admin/kiosks/pair", {"code": started["code"], "senior_id": ""})
    assert no_senior.status == 400 and "Kies de senior bij wie deze kiosk hoort." in text_of(await no_senior.text())
    assert await directory.list(Kiosk) == []
    waiting = await web.client.get(f"/api/kiosk/pair/{started['pairing_id']}",
                                   headers={"X-Pairing-Secret": started["secret"]})
    assert waiting.status == 202

    # The right code (typed with a space, as people do).
    code = started["code"][:3] + " " + started["code"][3:]
    location(await web.post("/admin/kiosks/pair", {"code": code, "senior_id": data.senior.id}))
    kiosks = await directory.list(Kiosk)
    assert len(kiosks) == 1 and kiosks[0].senior_id == data.senior.id
    credentials = await (await web.client.get(f"/api/kiosk/pair/{started['pairing_id']}",
                                              headers={"X-Pairing-Secret": started["secret"]})).json()
    assert credentials["kiosk_id"] == kiosks[0].id
    page = text_of(await web.get("/admin/kiosks"))
    assert "De kiosk is gekoppeld." in page and "Oma Riet" in page and "offline" in page
    assert "nog geen" in page  # no self-test yet


async def test_kiosk_online_selftest_and_revoke(admin: tuple[Web, Seed, Directory]) -> None:
    web, data, directory = admin
    _, credentials = await _pair(web, data.senior.id)
    kiosk_id = credentials["kiosk_id"]

    # Offline: a self-test cannot be asked for.
    location(await web.post(f"/admin/kiosks/{kiosk_id}/selftest"))
    assert "De kiosk is offline" in text_of(await web.get("/admin/kiosks"))

    # The kiosk connects as a device: online.
    ws = await web.client.ws_connect("/ws")
    await ws.send_json({"type": "hello", "v": 1, "device": credentials})
    welcome = await ws.receive_json(timeout=5)
    assert welcome["type"] == "device_welcome", welcome
    page = await web.get("/admin/kiosks")
    assert re.search(rf'data-kiosk-id="{kiosk_id}".*?<span class="state online">', page, re.S)

    location(await web.post(f"/admin/kiosks/{kiosk_id}/selftest"))
    assert "Zelftest gevraagd" in text_of(await web.get("/admin/kiosks"))
    request = await _next_of(ws, "selftest_request")
    assert request["type"] == "selftest_request"
    result = {
        "version": 1, "ok": False,
        "checks": {
            "camera": {"status": "ok", "message": {"nl": "Beeld is goed.", "en": "Picture is fine."}},
            "microphone": {"status": "failed", "message": {"nl": "Geen geluid.", "en": "No sound."}},
        },
    }
    await ws.send_json({"type": "selftest_result", "result": result})
    await _next_of(ws, "selftest_saved")
    page = text_of(await web.get("/admin/kiosks"))
    assert "mislukt" in page and "Camera: in orde — Beeld is goed." in page
    assert "Microfoon: werkt niet — Geen geluid." in page
    english = text_of(await web.get("/admin/kiosks?lang=en"))
    assert "failed" in english and "Microphone: not working — No sound." in english
    await web.get("/admin/kiosks?lang=nl")

    # Switching it off: confirmation, then the kiosk is told and disconnected.
    assert "Ja, zet deze kiosk uit" in text_of(await web.get(f"/admin/kiosks/{kiosk_id}/revoke"))
    location(await web.post(f"/admin/kiosks/{kiosk_id}/revoke"))
    assert (await directory.get(Kiosk, kiosk_id)).revoked
    assert (await _next_of(ws, "revoked"))["type"] == "revoked"
    page = text_of(await web.get("/admin/kiosks"))
    assert "uitgezet" in page
    await ws.close()
    # A switched-off kiosk cannot come back with its old credential.
    again = await web.client.ws_connect("/ws")
    await again.send_json({"type": "hello", "v": 1, "device": credentials})
    refused = await again.receive_json(timeout=5)
    assert refused["type"] == "error" and refused["code"] == "device_invalid"
    await again.close()


async def test_a_kiosks_selftest_cannot_put_markup_on_the_kiosks_page(admin: tuple[Web, Seed, Directory]) -> None:
    """Check names and statuses come from the kiosk: unknown ones are shown as escaped text,
    never translated (the translation's output is trusted markup) and never %-formatted."""
    web, data, _ = admin
    _, credentials = await _pair(web, data.senior.id)
    ws = await web.client.ws_connect("/ws")
    await ws.send_json({"type": "hello", "v": 1, "device": credentials})
    assert (await ws.receive_json(timeout=5))["type"] == "device_welcome"
    hostile = {
        "version": 1, "ok": False,
        "checks": {
            "<b>x</b>": {"status": "<i>ok</i>", "message": {"nl": "<script>alert(1)</script>", "en": "x"}},
            "100% %(name)s %s": {"status": "failed", "message": "plain"},
            "camera": {"status": "ok", "message": {"nl": "Beeld is goed.", "en": "Picture is fine."}},
        },
    }
    await ws.send_json({"type": "selftest_result", "result": hostile})
    await _next_of(ws, "selftest_saved")
    await ws.close()
    for lang in ("nl", "en"):
        page = await web.get(f"/admin/kiosks?lang={lang}")
        assert "<b>x</b>" not in page and "<i>ok</i>" not in page and "<script>alert(1)" not in page
        assert "&lt;b&gt;x&lt;/b&gt;" in page
        assert "100% %(name)s %s" in text_of(page)
    page = text_of(await web.get("/admin/kiosks?lang=nl"))
    # Known names and statuses are still translated.
    assert "Camera: in orde — Beeld is goed." in page and "100% %(name)s %s: werkt niet — plain" in page


async def test_templates_translate_only_their_own_message_ids() -> None:
    """Every template's `_()`: a value that is not a message id comes back escaped."""
    from web.rendering import environment

    for lang, kiosks in (("nl", "Kiosken"), ("en", "Kiosks")):
        template = environment(lang).from_string('{{ _(value) }}|{{ _("Kiosks") }}|{{ _("Start %(title)s", title=t) }}')
        rendered = template.render(value="<b>x</b> 100% %(y)s", t="<i>")
        assert rendered.split("|") == ["&lt;b&gt;x&lt;/b&gt; 100% %(y)s", kiosks, "Start &lt;i&gt;"]


async def _next_of(ws: Any, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            message = await ws.receive()
            if message.type.name != "TEXT":
                raise AssertionError(f"socket {message.type.name} before {kind}")
            data = json.loads(message.data)
            if data.get("type") == kind:
                return data


async def test_staff_accounts(admin: tuple[Web, Seed, Directory]) -> None:
    web, data, directory = admin
    page = text_of(await web.get("/admin/accounts"))
    assert "Victor Vrijwilliger" in page and "Vrijwilliger (begeleider)" in page
    await web.get("/admin/accounts/new")
    for fields, message in [
        ({"name": "Ans", "username": "victor", "role": "volunteer", "language": "nl", "password": "x" * 12},
         "Deze gebruikersnaam bestaat al."),
        ({"name": "Ans", "username": "ans", "role": "volunteer", "language": "nl", "password": "short"},
         "Een wachtwoord heeft minstens 10 tekens."),
        ({"name": "Ans", "username": "a", "role": "volunteer", "language": "nl", "password": "x" * 12},
         "Een gebruikersnaam heeft 3 tot 64 tekens."),
        ({"name": "Ans", "username": "ans", "role": "king", "language": "nl", "password": "x" * 12},
         "Kies coördinator of vrijwilliger."),
    ]:
        response = await web.post("/admin/accounts/new", fields)
        assert response.status == 400, fields
        assert message in text_of(await response.text())
    assert await directory.account_by_username("ans") is None

    created = await web.post("/admin/accounts/new", {"name": "Ans de Gastvrouw", "username": "Ans",
                                                     "role": "volunteer", "language": "en", "password": "ans-password-1"})
    assert location(created) == "/admin/accounts"
    ans = await directory.account_by_username("ans")
    assert ans is not None and ans.role == "volunteer" and ans.password_hash.startswith("$argon2id$")
    assert "ans-password-1" not in json.dumps([e for e in await directory.audit_log()])
    # Ans logs in, in English (her language).
    other = Web(await _client_like(web))
    assert (await other.login("ans", "ans-password-1")).headers["Location"] == "/host"
    assert '<html lang="en">' in await other.get("/host")

    # Editing without a password keeps it; a coordinator cannot demote themself.
    location(await web.post(f"/admin/accounts/{ans.id}", {"name": "Ans", "role": "coordinator", "language": "nl"}))
    updated = await directory.get(Account, ans.id)
    assert updated.role == "coordinator" and updated.password_hash == ans.password_hash
    demote = await web.post(f"/admin/accounts/{data.coordinator.id}",
                            {"name": data.coordinator.name, "role": "volunteer", "language": "nl"})
    assert demote.status == 400 and "U kunt uw eigen rol als coördinator niet afnemen." in text_of(await demote.text())
    await web.get(f"/admin/accounts/{data.coordinator.id}/delete", status=400)

    # Removing Victor also takes him off the activities he hosted.
    assert "Victor Vrijwilliger verwijderen?" in await web.get(f"/admin/accounts/{data.volunteer.id}/delete")
    location(await web.post(f"/admin/accounts/{data.volunteer.id}/delete"))
    assert await directory.get(Account, data.volunteer.id) is None
    assert (await directory.get(Activity, data.activity.id)).host_ids == []


async def _client_like(web: Web) -> TestClient:
    from aiohttp.test_utils import TestClient as Client

    client = Client(web.client.server)
    await client.start_server()
    return client


async def test_activities_with_weekly_times(admin: tuple[Web, Seed, Directory]) -> None:
    web, data, directory = admin
    page = await web.get("/admin/activities/new")
    assert 'name="slot-0-weekday"' in page and 'name="slot-2-start"' in page and "Europe/Amsterdam" in page
    fields = [
        ("title", "Koor"), ("description", "Samen zingen."), ("capacity", "12"), ("guests_allowed", "on"),
        ("slot_rows", "3"),
        ("slot-0-weekday", "thursday"), ("slot-0-start", "14:30"), ("slot-0-duration", "90"),
        ("slot-1-weekday", ""), ("slot-1-start", ""), ("slot-1-duration", ""),
        ("slot-2-weekday", "monday"), ("slot-2-start", "09:15"), ("slot-2-duration", "45"),
        ("host_ids", data.volunteer.id), ("host_ids", data.other_volunteer.id), ("enrolled", data.senior.id),
    ]
    assert location(await web.post("/admin/activities/new", fields)) == "/admin/activities"
    koor = next(a for a in await directory.list(Activity) if a.title == "Koor")
    assert koor.slots == [
        {"weekday": "thursday", "start": "14:30", "duration_min": 90},
        {"weekday": "monday", "start": "09:15", "duration_min": 45},
    ]
    assert koor.host_ids == [data.volunteer.id, data.other_volunteer.id] and koor.enrolled == [data.senior.id]
    assert koor.guests_allowed and koor.capacity == 12
    listing = text_of(await web.get("/admin/activities"))
    assert "donderdag 14:30 (90 min.)" in listing and "maandag 09:15 (45 min.)" in listing
    assert "Volgende keer:" in listing and "1 van 12 plaatsen bezet" in listing

    edit = await web.get(f"/admin/activities/{koor.id}")
    assert 'value="14:30"' in edit and f'value="{data.volunteer.id}" checked' in edit


async def test_a_large_activity_form_goes_through(admin: tuple[Web, Seed, Directory]) -> None:
    """Forms are parsed with a cap on fields; an activity with every senior and host ticked
    in a large municipality stays well under it."""
    web, data, directory = admin
    hosts = [Account(id=f"staff-h{i}", name=f"Host {i}", username=f"host{i}", role="volunteer") for i in range(200)]
    seniors = [Senior(id=f"senior-s{i}", name=f"Senior {i}") for i in range(100)]
    for record in (*hosts, *seniors):
        await directory.put(record, actor="test")
    await web.get("/admin/activities/new")
    fields = [("title", "Groot koor"), ("capacity", "100"), ("slot_rows", "1"),
              ("slot-0-weekday", "friday"), ("slot-0-start", "10:00"), ("slot-0-duration", "60"),
              *(("host_ids", h.id) for h in hosts), *(("enrolled", s.id) for s in seniors)]
    assert location(await web.post("/admin/activities/new", fields)) == "/admin/activities"
    koor = next(a for a in await directory.list(Activity) if a.title == "Groot koor")
    assert len(koor.host_ids) == 200 and len(koor.enrolled) == 100


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"slot-0-start": "25:00"}, "Vul een begintijd in, zoals 10:00."),
        ({"slot-0-start": ""}, "Vul een begintijd in, zoals 10:00."),
        ({"slot-0-weekday": "someday"}, "Kies een dag."),
        ({"slot-0-duration": "600"}, "De duur moet tussen 5 en 480 minuten liggen."),
        ({"capacity": "0"}, "Het aantal plaatsen moet tussen 1 en 100 liggen."),
        ({"capacity": "lots"}, "Het aantal plaatsen moet tussen 1 en 100 liggen."),
        ({"title": ""}, "Vul een naam in."),
        ({"host_ids": "staff-nobody"}, "Kies begeleiders uit de lijst."),
        ({"enrolled": "senior-nobody"}, "Kies senioren uit de lijst."),
    ],
)
async def test_bad_activity_input_is_explained_and_changes_nothing(
    admin: tuple[Web, Seed, Directory], changes: dict[str, str], message: str
) -> None:
    web, data, directory = admin
    before = await directory.get(Activity, data.activity.id)
    await web.get(f"/admin/activities/{data.activity.id}")
    fields = {"title": "Stoelgym", "description": "", "capacity": "10", "slot_rows": "1",
              "slot-0-weekday": "monday", "slot-0-start": "10:00", "slot-0-duration": "60",
              "host_ids": data.volunteer.id, "enrolled": data.senior.id}
    fields.update(changes)
    response = await web.post(f"/admin/activities/{data.activity.id}", fields)
    assert response.status == 400
    page = await response.text()
    assert message in text_of(page)
    # The form keeps what was typed.
    assert f'value="{fields["slot-0-start"]}"' in page
    assert await directory.get(Activity, data.activity.id) == before


async def test_capacity_below_enrolment_is_refused(admin: tuple[Web, Seed, Directory]) -> None:
    web, data, directory = admin
    second = Senior(id="senior-kees", name="Opa Kees")
    await directory.put(second, actor="test")
    await web.get(f"/admin/activities/{data.activity.id}")
    response = await web.post(f"/admin/activities/{data.activity.id}", [
        ("title", "Stoelgym"), ("capacity", "1"), ("slot_rows", "1"), ("slot-0-weekday", "monday"),
        ("slot-0-start", "10:00"), ("slot-0-duration", "60"),
        ("enrolled", data.senior.id), ("enrolled", second.id),
    ])
    assert response.status == 400
    assert "Er doen meer senioren mee dan er plaatsen zijn." in text_of(await response.text())
    assert (await directory.get(Activity, data.activity.id)).enrolled == [data.senior.id]


async def test_removing_an_activity_and_a_senior(admin: tuple[Web, Seed, Directory]) -> None:
    web, data, directory = admin
    await _pair(web, data.senior.id)
    assert "Bingo verwijderen?" in await web.get(f"/admin/activities/{data.closed_activity.id}/delete")
    location(await web.post(f"/admin/activities/{data.closed_activity.id}/delete"))
    assert await directory.get(Activity, data.closed_activity.id) is None

    confirm = text_of(await web.get(f"/admin/seniors/{data.senior.id}/delete"))
    assert "Oma Riet verwijderen?" in confirm and "Nee, ga terug" in confirm
    location(await web.post(f"/admin/seniors/{data.senior.id}/delete"))
    assert await directory.get(Senior, data.senior.id) is None
    assert await directory.contacts_of(data.senior.id) == []
    assert all(k.revoked for k in await directory.list(Kiosk))
    assert (await directory.get(Activity, data.activity.id)).enrolled == []
    await web.get(f"/admin/seniors/{data.senior.id}", status=404)


async def test_audit_log_shows_who_changed_what(admin: tuple[Web, Seed, Directory]) -> None:
    web, data, directory = admin
    await web.get(f"/admin/seniors/{data.senior.id}")
    location(await web.post(f"/admin/seniors/{data.senior.id}", {"name": "Oma Riet", "language": "en"}))
    page = await web.get("/admin/audit")
    rows = re.findall(r"<tr>(.*?)</tr>", page, re.S)
    newest = text_of(rows[1])
    assert "Carla Coördinator" in newest and "wijzigde persoon" in newest and "Oma Riet" in newest
    assert "taal" in newest and "language" not in newest
    assert 'tabindex="0"' in page and "<caption" in page
    # Secrets never appear: the seeded accounts' password hashes were audited as a field name only.
    assert "$argon2" not in page


async def test_unknown_records_give_404(admin: tuple[Web, Seed, Directory]) -> None:
    web, _, _ = admin
    for path in ("/admin/seniors/senior-nope", "/admin/contacts/contact-nope", "/admin/accounts/staff-nope",
                 "/admin/activities/activity-nope", "/admin/kiosks/kiosk-nope/revoke"):
        page = await web.get(path, status=404)
        assert "Niet gevonden" in page
    assert (await web.post("/admin/kiosks/kiosk-nope/selftest")).status == 404


async def test_the_staff_form_refuses_weak_passwords_for_new_accounts_and_changes(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    app = create_app(make_settings(tmp_path))
    client = await aiohttp_client(app)
    data = await seed(app)
    web = Web(client)
    assert (await web.login("carla")).status == 303
    directory = app[DIRECTORY_KEY]
    await web.get("/admin/accounts/new")
    fields = {"name": "Ans de Gastvrouw", "username": "ans", "role": "volunteer", "language": "nl"}
    for password, message in [
        (" " * 12, "Dit wachtwoord is een patroon dat makkelijk te raden is"),
        ("ansxx123456", "Een wachtwoord mag niet gemaakt zijn van uw gebruikersnaam of naam."),
        ("welkom12345", "Dit wachtwoord gebruiken veel mensen"),
    ]:
        response = await web.post("/admin/accounts/new", {**fields, "password": password})
        assert response.status == 400 and message in text_of(await response.text()), password
    assert await directory.account_by_username("ans") is None
    # A password change on an existing account follows the same rules, in English too.
    before = (await directory.get(Account, data.volunteer.id)).password_hash
    change = {"name": data.volunteer.name, "role": "volunteer", "language": "nl", "password": "rotciv!!2024"}
    response = await web.post(f"/admin/accounts/{data.volunteer.id}?lang=en", change)
    assert response.status == 400
    assert "A password may not be made from your username or name." in text_of(await response.text())
    assert (await directory.get(Account, data.volunteer.id)).password_hash == before
    page = text_of(await web.get("/admin/accounts/new?lang=nl"))
    assert "geen bekend wachtwoord en niet uw naam" in page
