"""The browser side: a landing page and the call page for family members and hosts.

Pages are server-rendered with Jinja2; the call itself runs in `static/call.js`, which
speaks the signalling protocol in `docs/protocol.md` over `/ws`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import jinja2
from aiohttp import web

LANGUAGES = ("nl", "en")
DEFAULT_LANGUAGE = "nl"
STATIC_DIR = Path(__file__).parent / "static"

# Every user-visible string, per language, in one place so that gettext catalogs can
# replace this table later without touching templates or JavaScript. Keys starting with
# "js_" are handed to call.js.
STRINGS: dict[str, dict[str, str]] = {
    "nl": {
        "html_lang": "nl",
        "title": "Verzilvering — samen in beeld",
        "call_title": "Verzilvering — groepsgesprek",
        "landing_heading": "Verzilvering",
        "landing_intro": (
            "Hier doet u met anderen mee aan een groepsactiviteit, met beeld en geluid."
        ),
        "landing_howto": (
            "U heeft een link nodig om mee te doen. U krijgt die van de begeleider, "
            "bijvoorbeeld per e-mail of sms. Open die link op deze computer, tablet of "
            "telefoon."
        ),
        "other_language": "English",
        "missing_token_heading": "Deze link is niet compleet",
        "missing_token_body": (
            "Er ontbreekt een stukje aan de link. Open de link precies zoals u die "
            "heeft gekregen, of vraag de begeleider om een nieuwe link."
        ),
        "to_start": "Naar de beginpagina",
        "leave": "Verlaten",
        "self_label": "U",
        "js_connecting": "Verbinden…",
        "js_connected": "Verbonden",
        "js_waiting": "Verbonden. Wachten op de anderen…",
        "js_reconnecting": "Geen verbinding — we proberen het opnieuw",
        "js_left": "U heeft de groep verlaten.",
        "js_removed": "De begeleider heeft u uit de groep gehaald.",
        "js_replaced": "U doet nu mee in een ander venster of op een ander apparaat.",
        "js_link_invalid": "Deze link werkt niet (meer). Vraag de begeleider om een nieuwe link.",
        "js_room_full": "De groep is vol. Probeer het later nog eens.",
        "js_forbidden": "Dat mag met deze link niet.",
        "js_unavailable": "Het lukt nu even niet. We proberen het opnieuw.",
        "js_no_media": "Uw camera en microfoon werken niet. U kunt wel kijken en luisteren.",
        "js_no_camera": "Uw camera werkt niet. De anderen horen u wel.",
        "js_no_microphone": "Uw microfoon werkt niet. De anderen zien u wel.",
        "js_muted_by_host": "De begeleider heeft uw microfoon uitgezet.",
        "play_sound": "Tik hier om het geluid aan te zetten",
        "rejoin": "Opnieuw meedoen",
        "js_mic_on": "Microfoon staat aan",
        "js_mic_off": "Microfoon staat uit",
        "js_camera_on": "Camera staat aan",
        "js_camera_off": "Camera staat uit",
        "js_muted_badge": "geluid uit",
        "js_away_badge": "verbinding weg",
    },
    "en": {
        "html_lang": "en",
        "title": "Verzilvering — together on screen",
        "call_title": "Verzilvering — group call",
        "landing_heading": "Verzilvering",
        "landing_intro": "Here you take part in a group activity with others, with video and sound.",
        "landing_howto": (
            "You need a link to take part. The host sends it to you, for example by "
            "e-mail or text message. Open that link on this computer, tablet or phone."
        ),
        "other_language": "Nederlands",
        "missing_token_heading": "This link is incomplete",
        "missing_token_body": (
            "Part of the link is missing. Open the link exactly as you received it, or "
            "ask the host for a new link."
        ),
        "to_start": "To the start page",
        "leave": "Leave",
        "self_label": "You",
        "js_connecting": "Connecting…",
        "js_connected": "Connected",
        "js_waiting": "Connected. Waiting for the others…",
        "js_reconnecting": "No connection — trying again",
        "js_left": "You have left the group.",
        "js_removed": "The host removed you from the group.",
        "js_replaced": "You are now taking part in another window or on another device.",
        "js_link_invalid": "This link does not work (any more). Ask the host for a new link.",
        "js_room_full": "The group is full. Please try again later.",
        "js_forbidden": "This link does not allow that.",
        "js_unavailable": "This is not working right now. We are trying again.",
        "js_no_media": "Your camera and microphone do not work. You can still watch and listen.",
        "js_no_camera": "Your camera does not work. The others can still hear you.",
        "js_no_microphone": "Your microphone does not work. The others can still see you.",
        "js_muted_by_host": "The host turned your microphone off.",
        "play_sound": "Tap here to turn the sound on",
        "rejoin": "Join again",
        "js_mic_on": "Microphone is on",
        "js_mic_off": "Microphone is off",
        "js_camera_on": "Camera is on",
        "js_camera_off": "Camera is off",
        "js_muted_badge": "sound off",
        "js_away_badge": "connection lost",
    },
}

# The token sits in the call URL, so it must not leak to other sites via Referer, and
# the page must not be framed or cached.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("web", "templates"),
    autoescape=True,
)


def setup(app: web.Application) -> None:
    app.router.add_get("/", landing_page)
    app.router.add_get("/call", call_page)
    app.router.add_static("/static/", STATIC_DIR, name="static")


def language_of(request: web.Request) -> str:
    lang = request.query.get("lang", DEFAULT_LANGUAGE)
    return lang if lang in LANGUAGES else DEFAULT_LANGUAGE


def other_language(lang: str) -> str:
    return "en" if lang == "nl" else "nl"


def _render(template: str, *, status: int = 200, **context: object) -> web.Response:
    body = _templates.get_template(template).render(**context)
    return web.Response(
        text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS
    )


async def landing_page(request: web.Request) -> web.Response:
    lang = language_of(request)
    return _render(
        "index.html",
        t=STRINGS[lang],
        other_language_url="/?" + urlencode({"lang": other_language(lang)}),
    )


async def call_page(request: web.Request) -> web.Response:
    lang = language_of(request)
    strings = STRINGS[lang]
    token = request.query.get("token", "").strip()
    if not token:
        return _render(
            "missing_token.html",
            status=400,
            t=strings,
            start_url="/?" + urlencode({"lang": lang}),
            other_language_url="/call?" + urlencode({"lang": other_language(lang)}),
        )
    return _render(
        "call.html",
        t=strings,
        token=token,
        js_strings={key[3:]: value for key, value in strings.items() if key.startswith("js_")},
        other_language_url="/call?" + urlencode({"token": token, "lang": other_language(lang)}),
    )
