"""Helpers for the web page tests: seeded directory, a logged-in client, forms with CSRF."""

from __future__ import annotations

import datetime as dt
import fractions
import html
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import av
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.appkeys import DIRECTORY_KEY
from server.directory import Account, Activity, Contact, Directory, Senior
from server.schedule import AMSTERDAM, WEEKDAYS
from web.auth import hash_password

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Seed:
    coordinator: Account
    volunteer: Account
    other_volunteer: Account
    senior: Senior
    contact: Contact
    activity: Activity
    closed_activity: Activity


async def seed(app: web.Application) -> Seed:
    """Two volunteers, a coordinator, a senior with a trusted contact, two activities."""
    directory: Directory = app[DIRECTORY_KEY]
    password_hash = await hash_password(PASSWORD)
    coordinator = Account(id="staff-carla", name="Carla Coördinator", username="carla", role="coordinator",
                          password_hash=password_hash)
    volunteer = Account(id="staff-victor", name="Victor Vrijwilliger", username="victor", role="volunteer",
                        password_hash=password_hash)
    other = Account(id="staff-wim", name="Wim", username="wim", role="volunteer", password_hash=password_hash)
    senior = Senior(id="senior-riet", name="Oma Riet", language="nl")
    contact = Contact(id="contact-sanne", senior_id=senior.id, name="Sanne", relation="kleindochter", trusted=True)
    weekday = dt.datetime.now(AMSTERDAM).weekday()
    today = WEEKDAYS[weekday]
    # Bingo is never today, whatever day the tests run: pages list it under "later".
    not_today = WEEKDAYS[(weekday + 3) % 7]
    activity = Activity(
        id="activity-stoelgym", title="Stoelgym", description="Bewegen op een stoel.",
        host_ids=[volunteer.id], enrolled=[senior.id], capacity=10, guests_allowed=True,
        slots=[{"weekday": today, "start": "10:00", "duration_min": 60}],
    )
    closed = Activity(
        id="activity-bingo", title="Bingo", host_ids=[other.id], enrolled=[senior.id],
        guests_allowed=False, slots=[{"weekday": not_today, "start": "14:00", "duration_min": 90}],
    )
    for record in (coordinator, volunteer, other, senior, contact, activity, closed):
        await directory.put(record, actor="test")
    return Seed(coordinator, volunteer, other, senior, contact, activity, closed)


def csrf_of(page: str) -> str:
    match = _CSRF.search(page)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def text_of(page: str) -> str:
    """The page's visible-ish text: tags dropped, entities decoded, spaces collapsed."""
    without_scripts = re.sub(r"<script.*?</script>", " ", page, flags=re.S)
    # Inline elements join their text; every other tag separates words.
    inline = re.sub(r"</?(?:span|strong|em|a|q|abbr|b|i)\b[^>]*>", "", without_scripts)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


class Web:
    """A browser without JavaScript: keeps cookies, fills in the CSRF token."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.token: str | None = None

    async def get(self, path: str, *, status: int = 200, **kw: Any) -> str:
        response = await self.client.get(path, allow_redirects=False, **kw)
        body = await response.text()
        assert response.status == status, f"GET {path}: {response.status} (wanted {status})\n{text_of(body)[:600]}"
        match = _CSRF.search(body)
        if match:
            self.token = match.group(1)
        return body

    async def csrf(self) -> str:
        if self.token is None:
            await self.get("/login")
        assert self.token is not None
        return self.token

    async def post(
        self, path: str, data: dict[str, Any] | list[tuple[str, Any]] | None = None, *,
        csrf: bool = True, files: dict[str, tuple[str, bytes, str]] | None = None, headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        items = list(data.items()) if isinstance(data, dict) else list(data or [])
        if csrf:
            items.append(("csrf_token", await self.csrf()))
        if files:
            form = aiohttp.FormData()
            for key, value in items:
                form.add_field(key, str(value))
            for key, (filename, content, content_type) in files.items():
                form.add_field(key, content, filename=filename, content_type=content_type)
            body: Any = form
        else:
            body = items
        response = await self.client.post(path, data=body, allow_redirects=False, headers=headers)
        await response.read()
        return response

    async def login(self, username: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
        await self.get("/login")
        response = await self.post("/login", {"username": username, "password": password})
        # The session (and its CSRF token) is new after login.
        self.token = None
        return response


def jpeg(width: int = 640, height: int = 480) -> bytes:
    """A real JPEG picture, made with PyAV (no image library needed)."""
    frame = av.VideoFrame(width, height, "yuvj420p")
    for plane, value in zip(frame.planes, (180, 100, 160)):
        plane.update(bytes([value]) * plane.buffer_size)
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    codec.time_base = fractions.Fraction(1, 1)
    return b"".join(bytes(p) for p in codec.encode(frame) + codec.encode(None))
