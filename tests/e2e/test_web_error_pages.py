"""Unknown addresses and failures get a page in the site's style and language (issue 12,
item 8), while programs (API, health, metrics) keep their plain answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from server.app import create_app
from server.appkeys import STORE_KEY

from tests.conftest import make_settings
from tests.web_helpers import Web, seed, text_of


async def test_an_unknown_address_gets_the_site_s_404_page_in_its_language(tmp_path: Path, aiohttp_client: Any) -> None:
    client: TestClient = await aiohttp_client(create_app(make_settings(tmp_path)))
    response = await client.get("/no-such-page")
    page = await response.text()
    assert response.status == 404
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Pagina niet gevonden" in page and 'href="/static/site.css"' in page and "404: Not Found" not in page
    english = await client.get("/no-such-page?lang=en")
    assert english.status == 404 and "Page not found" in await english.text()
    # Programs keep plain answers.
    api = await client.get("/api/no-such-thing")
    assert api.status == 404 and "Pagina niet gevonden" not in await api.text()


async def test_a_fault_gets_the_site_s_500_page_not_a_bare_error(tmp_path: Path, aiohttp_client: Any) -> None:
    app = create_app(make_settings(tmp_path))
    client: TestClient = await aiohttp_client(app)
    data = await seed(app)
    web = Web(client)
    assert (await web.login("victor")).status == 303
    # A record a program wrote wrong (not through the forms): the host page cannot read it.
    record = await app[STORE_KEY].get_record("activities", data.activity.id)
    assert record is not None
    record["slots"] = [{"weekday": "someday", "start": "25:99", "duration_min": 60}]
    await app[STORE_KEY].put_record("activities", data.activity.id, record)
    response = await client.get("/host")
    page = await response.text()
    assert response.status == 500
    assert "Er ging iets mis" in text_of(page) and "Internal Server Error" not in page
    assert 'href="/static/site.css"' in page


async def test_the_404_page_in_chromium(tmp_path: Path) -> None:
    from tests.browser_helpers import PHONE, launch, open_tab, start_site

    site, runner = await start_site(tmp_path / "data")
    try:
        async for browser in launch():
            context = await browser.new_context(locale="nl-NL", viewport=PHONE)
            tab = await open_tab(context, f"{site.url}/oude-link", status=404)
            assert await tab.text("h1") == "Pagina niet gevonden"
            assert await tab.page.get_by_role("link", name="Naar de beginpagina").count() == 1
            await tab.screenshot("not-found")
            await context.close()
    finally:
        await runner.cleanup()
