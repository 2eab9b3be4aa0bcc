"""One translation mechanism for every page, form message and JavaScript string.

Standard library `gettext` with GNU catalogs in `web/locale` (see `web/catalogs.py`).
Message ids are English; Dutch is the default language. Templates call `_()` (Jinja2's
i18n extension, new-style: keyword values fill `%(name)s` placeholders and are escaped);
Python code marks strings with `N_()` and translates them with `gettext_for(lang)`.
"""

from __future__ import annotations

import gettext
import io
import logging
from collections.abc import Callable
from functools import cache
from urllib.parse import urlencode

from aiohttp import web
from markupsafe import escape

logger = logging.getLogger(__name__)

# The same list as web/catalogs.py (imported lazily: `python -m web.catalogs` must not
# find itself imported by the package first).
LANGUAGES = ("nl", "en")
DEFAULT_LANGUAGE = "nl"
LANGUAGE_COOKIE = "vz_lang"
LANGUAGE_NAMES = {"nl": "Nederlands", "en": "English"}


def N_(message: str) -> str:
    """Marks a string for extraction; translated later with `gettext_for`."""
    return message


@cache
def translations(lang: str) -> gettext.GNUTranslations:
    from . import catalogs  # lazily, for `python -m web.catalogs` (see LANGUAGES)

    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}")
    po = catalogs.po_path(lang)
    mo = catalogs.mo_path(lang)
    if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
        data = mo.read_bytes()
    else:
        data = catalogs.compile_mo(catalogs.load_catalog(lang))
    return gettext.GNUTranslations(io.BytesIO(data))


@cache
def known_messages(lang: str) -> frozenset[str]:
    """The message ids `lang`'s catalog translates: the only strings worth translating."""
    from . import catalogs  # lazily, for `python -m web.catalogs` (see LANGUAGES)

    return frozenset(m.msgid for m in catalogs.load_catalog(lang).values() if m.msgid and m.msgstr)


def template_gettext(lang: str) -> Callable[[str], str]:
    """`_()` for templates. Jinja2 marks what it returns as safe HTML and %-formats it, so a
    string that is not one of our message ids (a value that slipped in from outside: a
    kiosk's check name, a stored field) comes back escaped, with its `%` kept literal."""
    table = translations(lang)
    known = known_messages(lang)

    def gettext(message: str) -> str:
        if isinstance(message, str) and message in known:
            return table.gettext(message)
        return escape(message).replace("%", "%%")

    return gettext


def gettext_for(lang: str) -> Callable[..., str]:
    """`_(message, **values)`: the translation, %-formatted with `values` when given."""
    table = translations(lang)

    def _(message: str, **values: object) -> str:
        text = table.gettext(message)
        return text % values if values else text

    return _


def language_of(request: web.Request) -> str:
    """?lang= wins, then the language cookie, then the staff account's, then Dutch."""
    lang = request.query.get("lang")
    if lang in LANGUAGES:
        return lang
    lang = request.cookies.get(LANGUAGE_COOKIE)
    if lang in LANGUAGES:
        return lang
    account = request.get("account")
    if account is not None and getattr(account, "language", None) in LANGUAGES:
        return account.language
    return DEFAULT_LANGUAGE


def other_language(lang: str) -> str:
    return "en" if lang == "nl" else "nl"


def switch_language_url(request: web.Request, lang: str) -> str:
    """The current page in `lang` (other query parameters kept)."""
    query = [(k, v) for k, v in request.query.items() if k != "lang"]
    query.append(("lang", lang))
    return request.path + "?" + urlencode(query)


@web.middleware
async def remember_language(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """A ?lang= choice sticks for the following pages (a cookie, not a tracker)."""
    response = await handler(request)
    lang = request.query.get("lang")
    if lang in LANGUAGES and request.cookies.get(LANGUAGE_COOKIE) != lang:
        if isinstance(response, web.StreamResponse) and not response.prepared:
            response.set_cookie(
                LANGUAGE_COOKIE, lang, max_age=365 * 24 * 3600, httponly=True, samesite="Lax", path="/"
            )
    return response
