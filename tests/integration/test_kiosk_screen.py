"""Every kiosk screen keeps the rules: text ≥ 32 px, WCAG AA contrast, touch targets
≥ 15 mm at the screen's DPI, everything on screen at once, and no technical words."""

from __future__ import annotations

import datetime as dt
import inspect
import os
from pathlib import Path

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import pygame  # noqa: E402
import pytest  # noqa: E402

from kiosk_client.appliance import Appliance, Mode, Participant  # noqa: E402
from kiosk_client.clock import FakeClock  # noqa: E402
from kiosk_client.screen import MIN_TEXT_PX, Layout, Renderer, contrast_ratio, mm_to_px  # noqa: E402

from tests.support import START, big_family, incoming, welcome  # noqa: E402

JARGON = ("ice", "error", "server", "token", "websocket", "sdp", "peer", "4001", "timeout", "failed")


def _states(language: str) -> dict[str, Appliance]:
    """One kiosk per screen, built through the state machine's own inputs."""
    clock = FakeClock(START - dt.timedelta(minutes=8))
    states: dict[str, Appliance] = {}

    def fresh() -> Appliance:
        k = Appliance(clock, language=language)
        k.start(paired=True)
        return k

    def home(directory: dict | None = None) -> Appliance:
        k = fresh()
        k.device_online(directory or welcome())
        return k

    def missed_call(directory: dict | None = None) -> Appliance:
        k = home(directory)
        k.device_message(incoming("c-piet", ring_ms=1000))
        clock.advance(2)
        k.tick()
        return k

    def in_activity(event: str, **details: object) -> Appliance:
        k = home()
        k.tap("join")
        k.device_message({"type": "activity_token", "activity_id": "a-gym", "room": "a-gym", "token": "t"})
        k.room_event(event, **details)
        return k

    pairing = Appliance(clock, language=language)
    pairing.start(paired=False)
    pairing.pairing_code("482913", "https://verzilvering.example.nl/admin/kiosks/pair?code=482913", 900)
    states["pairing"] = pairing
    states["connecting"] = fresh()
    states["home"] = home()
    offline = home()
    offline.device_offline()
    states["offline"] = offline
    states["missed"] = missed_call()
    trusted = home()
    trusted.device_message(incoming("c-sanne"))
    states["incoming"] = trusted
    ringing = home()
    ringing.device_message(incoming("c-piet"))
    states["ringing"] = ringing
    countdown = Appliance(FakeClock(START), language=language)
    countdown.start(paired=True)
    countdown.device_online(welcome())
    assert countdown.mode is Mode.COUNTDOWN
    states["countdown"] = countdown
    states["in_activity"] = in_activity(
        "joined",
        self_id="s-1",
        participants=[Participant("s-1", "Mevrouw Jansen", "senior"), Participant("h", "Ingrid (begeleider)", "host")]
        + [Participant(f"p{i}", f"Deelnemer {i}", "senior") for i in range(5)],
    )
    states["lobby"] = in_activity("lobby")
    states["in_activity_alone"] = in_activity(
        "joined", self_id="s-1", participants=[Participant("s-1", "Mevrouw Jansen", "senior")]
    )
    running = Appliance(FakeClock(START + dt.timedelta(minutes=20)), language=language)
    running.start(paired=True)
    running.device_online(welcome(auto_join=False))
    states["home_activity_running"] = running
    calling = home()
    calling.tap("call:c-kees")
    states["calling"] = calling
    calling_ringing = home()
    request = calling_ringing.tap("call:c-kees")[0].message
    calling_ringing.device_message({"type": "call_ringing", "ref": request["id"], "call_id": "x", "ring_timeout_ms": 45000})
    states["calling_ringing"] = calling_ringing
    states["home_more_family"] = home(big_family())
    states["home_more_family_missed"] = missed_call(big_family())
    family = home(big_family())
    family.tap("more_family")
    states["family"] = family
    family_last = home(big_family())
    family_last.tap("more_family")
    clock.advance(1)  # past the guard against a double tap
    for _ in range(5):
        family_last.tap("family_next")
    states["family_last_page"] = family_last
    invited = home()
    invited.device_message({"type": "activity_invite", "activity_id": "a-gym", "title": "Stoelgym met een lange naam",
                            "host": "Ingrid"})
    assert invited.mode is Mode.INVITED
    states["invited"] = invited
    return states


def _check(name: str, layout: Layout, size: tuple[int, int], dpi: float) -> None:
    w, h = size
    target = mm_to_px(15, dpi)
    assert layout.texts, name
    for item in layout.texts:
        assert item.size >= MIN_TEXT_PX, (name, item.text, item.size)
        assert contrast_ratio(item.fg, item.bg) >= 4.5, (name, item.text, item.fg, item.bg)
        assert not any(word in item.text.lower().split() for word in JARGON), (name, item.text)
        assert item.rect.right <= w + 1 and item.rect.bottom <= h + 1 and item.rect.left >= -1, (name, item.text, item.rect)
    for button in layout.buttons:
        r = button.rect
        assert r.width >= target and r.height >= target, (name, button.id, r, target)
        assert r.left >= 0 and r.top >= 0 and r.right <= w and r.bottom <= h, (name, button.id, r)
    for i, a in enumerate(layout.buttons):
        for b in layout.buttons[i + 1 :]:
            assert not a.rect.colliderect(b.rect), (name, a.id, b.id)


@pytest.mark.parametrize("language", ["nl", "en"])
@pytest.mark.parametrize(("size", "dpi"), [((1280, 800), 96.0), ((1024, 600), 96.0), ((1920, 1080), 160.0)])
def test_every_screen_keeps_the_rules(language: str, size: tuple[int, int], dpi: float) -> None:
    pygame.display.init()
    pygame.font.init()
    renderer = Renderer(dpi=dpi)
    surface = pygame.Surface(size)
    for name, kiosk in _states(language).items():
        layout = renderer.render(surface, kiosk)
        _check(name, layout, size, dpi)


@pytest.mark.parametrize(("language", "words"), [("nl", ("− Zachter", "+ Harder")), ("en", ("− Softer", "+ Louder"))])
@pytest.mark.parametrize(("size", "dpi"), [((1280, 800), 96.0), ((1024, 600), 96.0), ((1920, 1080), 160.0)])
def test_volume_buttons_say_their_whole_word(
    language: str, words: tuple[str, str], size: tuple[int, int], dpi: float
) -> None:
    pygame.display.init()
    pygame.font.init()
    home = Renderer(dpi=dpi).render(pygame.Surface(size), _states(language)["home"])
    shown = {t.text for t in home.texts}
    assert set(words) <= shown, (size, sorted(shown))


def test_the_words_follow_the_language() -> None:
    pygame.display.init()
    renderer = Renderer()
    surface = pygame.Surface((1280, 800))
    nl = renderer.render(surface, _states("nl")["ringing"])
    en = renderer.render(surface, _states("en")["ringing"])
    assert nl.text_shown("Buurman Piet belt u") and nl.text_shown("Niet opnemen")
    assert en.text_shown("Buurman Piet is calling you") and en.text_shown("Don't answer")
    home = renderer.render(surface, _states("en")["home"])
    assert home.text_shown("Louder") and home.text_shown("Starts in 8 minutes") and home.button("join")


def test_home_shows_what_matters() -> None:
    pygame.display.init()
    renderer = Renderer()
    surface = pygame.Surface((1280, 800))
    states = _states("nl")
    home = renderer.render(surface, states["home"])
    clock_text = max(home.texts, key=lambda t: t.size)
    assert clock_text.text == "09:52" and clock_text.size >= 120, "a large clock"
    assert home.text_shown("Dinsdag 24 november")
    assert home.text_shown("Begint over 8 minuten")
    assert {b.id for b in home.buttons} == {"join", "volume_down", "volume_up", "call:c-sanne", "call:c-kees"}
    offline = renderer.render(surface, states["offline"])
    assert offline.text_shown("Geen verbinding — we proberen het opnieuw")
    assert offline.button("join") is None and offline.button("call:c-sanne") is None
    connecting = renderer.render(surface, states["connecting"])
    assert connecting.text_shown("Verbinden…")
    missed = renderer.render(surface, states["missed"])
    assert missed.text_shown("Gemiste oproep van Buurman Piet om 09:52")
    assert missed.button("call_back:c-piet") and missed.button("dismiss")
    activity = renderer.render(surface, states["in_activity"])
    assert activity.button("leave") and not activity.button("hang_up")
    assert activity.text_shown("Ingrid (begeleider)") and activity.text_shown("Deelnemer 0")
    lobby = renderer.render(surface, states["lobby"])
    assert lobby.text_shown("De begeleider laat u zo binnen")


def test_presses_become_button_ids() -> None:
    pygame.display.init()
    renderer = Renderer()
    layout = renderer.render(pygame.Surface((1280, 800)), _states("nl")["ringing"])
    answer = layout.button("answer")
    assert answer is not None
    assert layout.hit(answer.rect.center) == "answer"
    assert layout.hit((2, 2)) is None


def _family_kiosk(size: tuple[int, int], renderer: Renderer) -> Appliance:
    kiosk = Appliance(FakeClock(START - dt.timedelta(minutes=8)))
    kiosk.start(paired=True)
    kiosk.device_online(big_family())
    kiosk.family_page_size = renderer.family_page_size(size)  # as the runner does
    return kiosk


@pytest.mark.parametrize(("size", "dpi"), [((1280, 800), 96.0), ((1024, 600), 96.0), ((1920, 1080), 160.0)])
def test_more_family_than_fit_are_all_reachable(size: tuple[int, int], dpi: float) -> None:
    """Home shows the first ones in the coordinator's order and "More family (n)" in the
    last place; the family screen pages through all of them with big buttons."""
    pygame.display.init()
    pygame.font.init()
    renderer = Renderer(dpi=dpi)
    surface = pygame.Surface(size)
    kiosk = _family_kiosk(size, renderer)
    everyone = [c.id for c in kiosk.trusted_contacts]
    assert len(everyone) == 7
    home = renderer.render(surface, kiosk)
    _check("home", home, size, dpi)
    on_home = [b.id.split(":", 1)[1] for b in home.buttons if b.id.startswith("call:")]
    assert on_home and on_home == everyone[: len(on_home)], "the most important people first"
    more = home.button("more_family")
    assert more is not None
    assert home.text_shown(f"Meer familie ({len(everyone) - len(on_home)})")
    cards = [b for b in home.buttons if b.id.startswith("call:")]
    assert all(more.rect.top >= c.rect.top - more.rect.height for c in cards)  # on the same row
    kiosk.tap(home.hit(more.rect.center) or "")
    assert kiosk.mode is Mode.FAMILY
    kiosk.clock.advance(1)  # type: ignore[attr-defined]  # past the guard against a double tap
    seen: list[str] = []
    target = mm_to_px(15, dpi)
    for page in range(kiosk.family_pages):
        layout = renderer.render(surface, kiosk)
        _check(f"family page {page + 1}", layout, size, dpi)
        assert layout.button("back") is not None and layout.text_shown("Terug")
        assert layout.text_shown("Wie wilt u bellen?")
        assert layout.text_shown(f"{page + 1} van {kiosk.family_pages}")
        calls = [b for b in layout.buttons if b.id.startswith("call:")]
        assert calls and len(calls) <= kiosk.family_page_size
        for call in calls:
            assert call.rect.width >= target and call.rect.height >= target
        seen += [b.id.split(":", 1)[1] for b in calls]
        # Previous only from the second page, Next only before the last: dead ones are not targets.
        assert (layout.button("family_prev") is not None) == (page > 0)
        assert (layout.button("family_next") is not None) == (page < kiosk.family_pages - 1)
        names = [t.text for t in layout.texts if t.size >= MIN_TEXT_PX]
        assert all(c.name in names for c in kiosk.family_page_contacts()[2])
        if page < kiosk.family_pages - 1:
            nxt = layout.button("family_next")
            assert nxt is not None
            kiosk.tap(layout.hit(nxt.rect.center) or "")
    assert seen == everyone, "every trusted contact once, in order"
    back = renderer.render(surface, kiosk).button("back")
    assert back is not None
    kiosk.tap("back")
    assert kiosk.mode is Mode.HOME


def test_family_that_fits_needs_no_more_button() -> None:
    pygame.display.init()
    layout = Renderer().render(pygame.Surface((1280, 800)), _states("nl")["home"])
    assert layout.button("more_family") is None and not layout.text_shown("Meer familie")


def test_family_screen_in_english_on_one_page() -> None:
    pygame.display.init()
    renderer = Renderer()
    kiosk = _family_kiosk((1920, 1080), Renderer(dpi=96.0))
    kiosk.device_online(welcome(language="en"))
    kiosk.tap("more_family")
    layout = renderer.render(pygame.Surface((1280, 800)), kiosk)
    assert layout.text_shown("Who would you like to call?") and layout.text_shown("Back")
    # Everyone fits: no Previous / Next, no page indicator.
    assert layout.button("family_prev") is None and layout.button("family_next") is None
    assert not layout.text_shown("1 of 1") and not layout.text_shown("Previous")
    assert {b.id for b in layout.buttons} == {"back", "call:c-kees", "call:c-sanne"}


def test_family_screenshots() -> None:
    """docs/screenshots/kiosk-home-more-family.png and kiosk-family.png."""
    from tests.kiosk_support import SCREENSHOTS, check_screenshot

    pygame.display.init()
    renderer = Renderer()
    surface = pygame.Surface((1280, 800))
    kiosk = _family_kiosk((1280, 800), renderer)
    renderer.render(surface, kiosk)
    pygame.image.save(surface, str(SCREENSHOTS / "kiosk-home-more-family.png"))
    check_screenshot(SCREENSHOTS / "kiosk-home-more-family.png")
    kiosk.tap("more_family")
    kiosk.clock.advance(1)  # type: ignore[attr-defined]
    kiosk.tap("family_next")
    renderer.render(surface, kiosk)
    pygame.image.save(surface, str(SCREENSHOTS / "kiosk-family.png"))
    check_screenshot(SCREENSHOTS / "kiosk-family.png")


def test_a_running_activity_says_now_not_next() -> None:
    """A started activity is not "Next activity … Happening now": it is happening, tap Join."""
    pygame.display.init()
    renderer = Renderer()
    surface = pygame.Surface((1024, 600))
    for language, now, tap, upcoming in (("nl", "Nu bezig", "Tik op Meedoen om mee te doen.", "Volgende activiteit"),
                                         ("en", "Happening now", "Tap Join to take part.", "Next activity")):
        states = _states(language)
        running = renderer.render(surface, states["home_activity_running"])
        assert running.text_shown(now) and running.text_shown(tap) and running.button("join")
        assert not running.text_shown(upcoming)
        home = renderer.render(surface, states["home"])
        assert home.text_shown(upcoming) and not home.text_shown(now)


def test_alone_in_the_activity_the_kiosk_says_it_is_in_and_waiting_for_the_host() -> None:
    pygame.display.init()
    renderer = Renderer()
    surface = pygame.Surface((1024, 600))
    alone = renderer.render(surface, _states("nl")["in_activity_alone"])
    assert alone.text_shown("U bent binnen bij Stoelgym. We wachten op de begeleider.")
    assert not alone.text_shown("Verbinden met")
    english = renderer.render(surface, _states("en")["in_activity_alone"])
    assert english.text_shown("You are in Stoelgym. We are waiting for the host.")

    from tests.kiosk_support import SCREENSHOTS, check_screenshot

    for state, name in (("in_activity_alone", "in-activity-alone"), ("home_activity_running", "home-activity-running")):
        renderer.render(surface, _states("nl")[state])
        path = SCREENSHOTS / f"kiosk-{name}.png"
        pygame.image.save(surface, str(path))
        check_screenshot(path)


def test_windowed_kiosk_fits_the_1024_by_600_screens_by_default() -> None:
    from kiosk_client.cli import build_parser, window_size

    args = build_parser().parse_args(["run", "--server", "http://127.0.0.1:1", "--windowed"])
    assert window_size(args) == (1024, 600)
    args = build_parser().parse_args(["run", "--server", "http://127.0.0.1:1", "--windowed", "--size", "1280x800"])
    assert window_size(args) == (1280, 800)
    from kiosk_client.runner import KioskConfig
    from kiosk_client.screen import Display

    assert KioskConfig(server="x", state_dir=Path("/nonexistent")).window_size == (1024, 600)
    assert inspect.signature(Display).parameters["size"].default == (1024, 600)
