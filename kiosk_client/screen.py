"""Draws the kiosk's screens with pygame-ce (SDL2) from the state machine in `appliance.py`.

`Renderer.render(surface, kiosk)` draws one frame onto any surface and returns a `Layout`:
the buttons it drew (id and rectangle, for touches) and every piece of text (size and
colours), so tests can check the rules without looking at pixels:

- text at least 32 px high, contrast at least 4.5:1 (WCAG AA for normal text);
- touch targets at least 15 mm on each side at the screen's DPI (96 unless configured);
- everything fits: no scrolling, nothing hidden behind a gesture.

`Display` owns the window (full screen on KMS/DRM, X11 or Wayland; SDL's dummy driver in
tests), turns presses into button ids, and saves screenshots.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pygame

from .appliance import JOIN_LIT_BEFORE, Appliance, ContactCard, Mode
from .texts import Texts

if TYPE_CHECKING:
    from .video import VideoWall

Color = tuple[int, int, int]

MIN_TEXT_PX = 32
MIN_TARGET_MM = 15.0
DEFAULT_DPI = 96.0

BACKGROUND: Color = (247, 243, 234)
CARD: Color = (255, 255, 255)
TEXT: Color = (26, 26, 26)
SOFT_TEXT: Color = (68, 68, 68)
WHITE: Color = (255, 255, 255)
GREEN: Color = (27, 94, 32)
RED: Color = (176, 26, 26)
NAVY: Color = (31, 58, 95)
DISABLED: Color = (222, 217, 205)
NOTE: Color = (255, 240, 190)
ALERT: Color = (255, 224, 178)
DARK: Color = (20, 20, 20)
TILE: Color = (45, 45, 45)
VOLUME_ON: Color = (31, 58, 95)
VOLUME_OFF: Color = (200, 194, 180)
# Initials circles: each carries white text at well over 4.5:1.
AVATAR_COLORS: tuple[Color, ...] = ((31, 58, 95), (106, 27, 154), (0, 105, 92), (142, 36, 48), (55, 71, 79), (27, 94, 32))


def relative_luminance(color: Color) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in color[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: Color, b: Color) -> float:
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def mm_to_px(mm: float, dpi: float) -> int:
    return math.ceil(mm * dpi / 25.4)


@dataclass(frozen=True)
class Button:
    id: str
    rect: pygame.Rect


@dataclass(frozen=True)
class TextItem:
    text: str
    size: int
    fg: Color
    bg: Color
    rect: pygame.Rect


@dataclass
class Layout:
    size: tuple[int, int]
    buttons: list[Button] = field(default_factory=list)
    texts: list[TextItem] = field(default_factory=list)

    def hit(self, pos: tuple[int, int]) -> str | None:
        for button in reversed(self.buttons):
            if button.rect.collidepoint(pos):
                return button.id
        return None

    def button(self, button_id: str) -> Button | None:
        return next((b for b in self.buttons if b.id == button_id), None)

    def text_shown(self, fragment: str) -> bool:
        """Whether the words appear, also when wrapped over several lines."""
        return any(fragment in t.text for t in self.texts) or fragment in " ".join(t.text for t in self.texts)


def _font_path(bold: bool) -> str | None:
    names = "dejavusans" if not bold else "dejavusansbold"
    path = pygame.font.match_font(names, bold=bold)
    if path is None:
        path = pygame.font.match_font("liberationsans,freesans,arial", bold=bold)
    return path


class Fonts:
    """Font objects and rendered text, cached (a frame redraws the same words many times)."""

    def __init__(self) -> None:
        if not pygame.font.get_init():
            pygame.font.init()
        self._paths = {False: _font_path(False), True: _font_path(True)}
        self._fonts: dict[tuple[bool, int], pygame.font.Font] = {}
        self._rendered: OrderedDict[tuple[str, int, bool, Color], pygame.Surface] = OrderedDict()

    def font(self, size: int, bold: bool = False) -> pygame.font.Font:
        key = (bold, size)
        if key not in self._fonts:
            self._fonts[key] = pygame.font.Font(self._paths[bold], size)
        return self._fonts[key]

    def render(self, text: str, size: int, color: Color, bold: bool = False) -> pygame.Surface:
        key = (text, size, bold, color)
        surface = self._rendered.get(key)
        if surface is None:
            surface = self.font(size, bold).render(text, True, color)
            self._rendered[key] = surface
            if len(self._rendered) > 400:
                self._rendered.popitem(last=False)
        else:
            self._rendered.move_to_end(key)
        return surface


class Renderer:
    def __init__(
        self,
        *,
        dpi: float = DEFAULT_DPI,
        photos: Callable[[ContactCard], pygame.Surface | None] | None = None,
    ) -> None:
        self.dpi = dpi
        self.min_target = mm_to_px(MIN_TARGET_MM, dpi)
        self.fonts = Fonts()
        self.photos = photos or (lambda contact: None)
        self._qr_cache: tuple[str, list[list[bool]]] | None = None

    # --- primitives ---------------------------------------------------------------------

    def _text(
        self,
        surface: pygame.Surface,
        layout: Layout,
        text: str,
        size: int,
        fg: Color,
        bg: Color,
        *,
        center: tuple[int, int] | None = None,
        topleft: tuple[int, int] | None = None,
        midleft: tuple[int, int] | None = None,
        max_width: int | None = None,
        bold: bool = False,
    ) -> pygame.Rect:
        size = max(MIN_TEXT_PX, size)
        if max_width is not None:
            while size > MIN_TEXT_PX and self.fonts.font(size, bold).size(text)[0] > max_width:
                size -= 2
            size = max(MIN_TEXT_PX, size)
            if self.fonts.font(size, bold).size(text)[0] > max_width:
                while len(text) > 1 and self.fonts.font(size, bold).size(text + "…")[0] > max_width:
                    text = text[:-1]
                text = text.rstrip() + "…"
        rendered = self.fonts.render(text, size, fg, bold)
        rect = rendered.get_rect()
        if center is not None:
            rect.center = center
        elif midleft is not None:
            rect.midleft = midleft
        elif topleft is not None:
            rect.topleft = topleft
        surface.blit(rendered, rect)
        layout.texts.append(TextItem(text, size, fg, bg, rect))
        return rect

    def _wrapped(
        self,
        surface: pygame.Surface,
        layout: Layout,
        text: str,
        size: int,
        fg: Color,
        bg: Color,
        box: pygame.Rect,
        *,
        bold: bool = False,
        align_center: bool = True,
        middle: bool = False,
    ) -> int:
        """Draws text wrapped to the box width (vertically centred in the box with
        `middle`); returns the bottom y."""
        size = max(MIN_TEXT_PX, size)
        font = self.fonts.font(size, bold)
        lines: list[str] = []
        for paragraph in text.split("\n"):
            words, line = paragraph.split(), ""
            for word in words:
                candidate = f"{line} {word}".strip()
                if font.size(candidate)[0] <= box.width or not line:
                    line = candidate
                else:
                    lines.append(line)
                    line = word
            lines.append(line)
        line_height = font.get_linesize()
        y = box.top
        if middle:
            y = box.centery - len(lines) * line_height // 2
        for line in lines:
            if align_center:
                self._text(surface, layout, line, size, fg, bg, center=(box.centerx, y + line_height // 2), max_width=box.width, bold=bold)
            else:
                self._text(surface, layout, line, size, fg, bg, topleft=(box.left, y), max_width=box.width, bold=bold)
            y += line_height
        return y

    def _button(
        self,
        surface: pygame.Surface,
        layout: Layout,
        button_id: str,
        rect: pygame.Rect,
        label: str,
        color: Color,
        text_color: Color = WHITE,
        size: int = 48,
        enabled: bool = True,
    ) -> None:
        rect = pygame.Rect(rect)
        if rect.width < self.min_target:
            rect.inflate_ip(self.min_target - rect.width, 0)
        if rect.height < self.min_target:
            rect.inflate_ip(0, self.min_target - rect.height)
        pygame.draw.rect(surface, color, rect, border_radius=min(24, rect.height // 4))
        self._text(surface, layout, label, size, text_color, color, center=rect.center, max_width=rect.width - 24, bold=True)
        if enabled:
            layout.buttons.append(Button(button_id, rect))

    def _avatar(self, surface: pygame.Surface, layout: Layout, contact: ContactCard, center: tuple[int, int], diameter: int) -> None:
        photo = self.photos(contact)
        rect = pygame.Rect(0, 0, diameter, diameter)
        rect.center = center
        if photo is not None:
            square = _square(photo)
            if square.get_bitsize() not in (24, 32):
                converted = pygame.Surface(square.get_size(), pygame.SRCALPHA)
                converted.blit(square, (0, 0))
                square = converted
            scaled = pygame.transform.smoothscale(square, (diameter, diameter))
            round_photo = pygame.Surface((diameter, diameter), pygame.SRCALPHA)
            round_photo.blit(scaled, (0, 0))
            mask = pygame.Surface((diameter, diameter), pygame.SRCALPHA)
            pygame.draw.circle(mask, (255, 255, 255, 255), (diameter // 2, diameter // 2), diameter // 2)
            round_photo.blit(mask, (0, 0), special_flags=pygame.BLEND_RGBA_MIN)
            surface.blit(round_photo, rect)
            return
        color = AVATAR_COLORS[sum(map(ord, contact.name)) % len(AVATAR_COLORS)]
        pygame.draw.circle(surface, color, center, diameter // 2)
        self._text(surface, layout, contact.initials, int(diameter * 0.42), WHITE, color, center=center, bold=True)

    def _qr(self, surface: pygame.Surface, url: str, rect: pygame.Rect) -> None:
        if self._qr_cache is None or self._qr_cache[0] != url:
            import qrcode

            qr = qrcode.QRCode(border=0, error_correction=qrcode.constants.ERROR_CORRECT_M)
            qr.add_data(url)
            qr.make(fit=True)
            self._qr_cache = (url, qr.get_matrix())
        matrix = self._qr_cache[1]
        quiet = 4
        modules = len(matrix) + 2 * quiet
        cell = max(1, min(rect.width, rect.height) // modules)
        side = cell * modules
        box = pygame.Rect(0, 0, side, side)
        box.center = rect.center
        pygame.draw.rect(surface, WHITE, box)
        for y, row in enumerate(matrix):
            for x, dark in enumerate(row):
                if dark:
                    pygame.draw.rect(surface, (0, 0, 0), (box.left + (x + quiet) * cell, box.top + (y + quiet) * cell, cell, cell))

    def _status_bar(self, surface: pygame.Surface, layout: Layout, text: str) -> pygame.Rect:
        w, h = surface.get_size()
        bar_h = max(int(h * 0.09), 64)
        bar = pygame.Rect(0, h - bar_h, w, bar_h)
        pygame.draw.rect(surface, ALERT, bar)
        self._text(surface, layout, text, int(h * 0.05), TEXT, ALERT, center=bar.center, max_width=w - 40, bold=True)
        return bar

    def _volume(self, surface: pygame.Surface, layout: Layout, kiosk: Appliance, t: Texts, rect: pygame.Rect, bg: Color) -> None:
        """Softer [bars] Louder: two big buttons with the level between them."""
        gap = max(12, rect.height // 8)
        size = max(MIN_TEXT_PX, min(44, rect.height // 3))
        labels = (f"− {t('volume_down')}", f"+ {t('volume_up')}")
        # Wide enough for the words at the smallest readable size ("Lou…" helps nobody);
        # the level bars between the buttons give way first.
        widest = max(self.fonts.font(MIN_TEXT_PX, True).size(label)[0] for label in labels) + 32
        button_w = max(self.min_target, int(rect.width * 0.36), min(widest, int(rect.width * 0.45)))
        down = pygame.Rect(rect.left, rect.top, button_w, rect.height)
        up = pygame.Rect(rect.right - button_w, rect.top, button_w, rect.height)
        self._button(surface, layout, "volume_down", down, labels[0], NAVY, size=size)
        self._button(surface, layout, "volume_up", up, labels[1], NAVY, size=size)
        bars = pygame.Rect(down.right + gap, rect.top, up.left - down.right - 2 * gap, rect.height)
        n = 10
        bar_w = max(2, (bars.width - (n - 1) * 4) // n)
        for i in range(n):
            bar_h = int(bars.height * (0.3 + 0.7 * (i + 1) / n))
            r = pygame.Rect(bars.left + i * (bar_w + 4), bars.bottom - bar_h, bar_w, bar_h)
            pygame.draw.rect(surface, VOLUME_ON if i < kiosk.volume else VOLUME_OFF, r, border_radius=3)

    # --- screens ------------------------------------------------------------------------

    def render(self, surface: pygame.Surface, kiosk: Appliance, video: "VideoWall | None" = None) -> Layout:
        layout = Layout(surface.get_size())
        t = Texts(kiosk.language)
        mode = kiosk.mode
        session = kiosk.session
        # Every screen draws over a fresh background: the call's dark stage, or the light one.
        if mode is Mode.IN_CALL and not (session is not None and session.outgoing and session.phase in ("requesting", "ringing")):
            surface.fill(DARK)
            self._in_call(surface, layout, kiosk, t, video)
            return layout
        surface.fill(BACKGROUND)
        if mode is Mode.PAIRING:
            self._pairing(surface, layout, kiosk, t)
        elif mode in (Mode.HOME, Mode.OFFLINE):
            self._home(surface, layout, kiosk, t)
        elif mode is Mode.FAMILY:
            self._family(surface, layout, kiosk, t)
        elif mode is Mode.COUNTDOWN:
            self._countdown(surface, layout, kiosk, t)
        elif mode is Mode.INVITED:
            self._invited(surface, layout, kiosk, t)
        elif mode in (Mode.INCOMING, Mode.RINGING):
            self._incoming(surface, layout, kiosk, t)
        elif mode is Mode.IN_CALL:
            self._calling(surface, layout, kiosk, t)
        return layout

    def _pairing(self, surface: pygame.Surface, layout: Layout, kiosk: Appliance, t: Texts) -> None:
        w, h = surface.get_size()
        m = int(h * 0.05)
        self._text(surface, layout, t("pairing_title"), int(h * 0.075), TEXT, BACKGROUND, topleft=(m, m), max_width=w - 2 * m, bold=True)
        pairing = kiosk.pairing
        left = pygame.Rect(m, int(h * 0.2), int(w * 0.58) - m, int(h * 0.62))
        if pairing.done:
            self._wrapped(surface, layout, t("pairing_done"), int(h * 0.07), TEXT, BACKGROUND, left, bold=True)
        elif pairing.code:
            y = self._wrapped(surface, layout, t("pairing_body"), int(h * 0.05), TEXT, BACKGROUND, left, align_center=False)
            code = f"{pairing.code[:3]} {pairing.code[3:]}"
            code_box = pygame.Rect(left.left, y + int(h * 0.03), left.width, int(h * 0.26))
            pygame.draw.rect(surface, CARD, code_box, border_radius=24)
            self._text(surface, layout, code, int(h * 0.2), TEXT, CARD, center=code_box.center, max_width=code_box.width - 40, bold=True)
            minutes = max(1, math.ceil((pairing.expires_at - kiosk.clock.monotonic()) / 60))
            self._wrapped(
                surface, layout, t("pairing_expires", minutes=minutes), int(h * 0.042), SOFT_TEXT, BACKGROUND,
                pygame.Rect(left.left, code_box.bottom + int(h * 0.03), left.width, int(h * 0.15)), align_center=False,
            )
            qr_side = min(int(w * 0.34), int(h * 0.55))
            qr_rect = pygame.Rect(0, 0, qr_side, qr_side)
            qr_rect.topright = (w - m, int(h * 0.2))
            self._qr(surface, pairing.url, qr_rect)
            self._wrapped(
                surface, layout, t("pairing_qr"), int(h * 0.042), SOFT_TEXT, BACKGROUND,
                pygame.Rect(qr_rect.left - 20, qr_rect.bottom + 12, qr_rect.width + 40, int(h * 0.14)),
            )
        else:
            self._wrapped(surface, layout, t("pairing_fetching"), int(h * 0.06), TEXT, BACKGROUND, left, align_center=False)
        if pairing.problem:
            self._status_bar(surface, layout, t("offline"))

    def _home(self, surface: pygame.Surface, layout: Layout, kiosk: Appliance, t: Texts) -> None:
        w, h = surface.get_size()
        m = max(16, int(h * 0.03))
        now = kiosk.local_now()
        # Clock and date, top left.
        clock_rect = self._text(surface, layout, t.clock(now), int(h * 0.19), TEXT, BACKGROUND, topleft=(m, m // 2), bold=True)
        self._text(surface, layout, t.date(now), int(h * 0.055), TEXT, BACKGROUND, topleft=(m + 6, clock_rect.bottom - int(h * 0.02)), max_width=int(w * 0.5))
        # Volume, top right.
        volume_rect = pygame.Rect(0, 0, int(w * 0.44), max(self.min_target, int(h * 0.14)))
        volume_rect.topright = (w - m, m)
        self._volume(surface, layout, kiosk, t, volume_rect, BACKGROUND)
        top = int(h * 0.32)
        bottom_limit = h
        if kiosk.mode is Mode.OFFLINE:
            bar = self._status_bar(surface, layout, t("offline") if kiosk.ever_online else t("connecting"))
            bottom_limit = bar.top
        # The next activity, with the Join button.
        card = pygame.Rect(m, top, w - 2 * m, int(h * 0.27))
        pygame.draw.rect(surface, CARD, card, border_radius=20)
        activity = kiosk.next_activity()
        pad = max(16, card.height // 10)
        join_rect = pygame.Rect(0, 0, int(w * 0.3), card.height - 2 * pad)
        join_rect.midright = (card.right - pad, card.centery)
        text_w = join_rect.left - card.left - 3 * pad
        if activity is None:
            self._text(surface, layout, t("no_activity"), int(h * 0.05), SOFT_TEXT, CARD, midleft=(card.left + pad, card.centery), max_width=card.width - 2 * pad)
        else:
            start_local = kiosk.to_local(activity.start)
            seconds = (activity.start - kiosk.clock.now()).total_seconds()
            heading = t("activity_now") if seconds <= 0 else t("next_activity")
            self._text(surface, layout, heading, int(h * 0.042), SOFT_TEXT, CARD, topleft=(card.left + pad, card.top + pad // 2), max_width=text_w)
            title = self._text(surface, layout, activity.title, int(h * 0.075), TEXT, CARD, topleft=(card.left + pad, card.top + pad // 2 + int(h * 0.05)), max_width=text_w, bold=True)
            if seconds <= 0:
                status = t("running") if kiosk.join_lit(activity) and kiosk.mode is Mode.HOME else ""
            elif seconds < 60:
                status = t("starts_now")
            else:
                status = f"{t.when(start_local, now)} · {t('starts_in', duration=t.duration(seconds))}"
            self._wrapped(surface, layout, status, int(h * 0.045), TEXT, CARD, pygame.Rect(card.left + pad, title.bottom + 4, text_w, card.bottom - title.bottom), align_center=False)
            if kiosk.join_lit(activity) and kiosk.mode is Mode.HOME:
                self._button(surface, layout, "join", join_rect, t("join"), GREEN, size=int(h * 0.075))
            else:
                lit_from = kiosk.to_local(activity.start - JOIN_LIT_BEFORE)
                label = t("join_from", time=t.clock(lit_from)) if kiosk.mode is Mode.HOME else t("join")
                pygame.draw.rect(surface, DISABLED, join_rect, border_radius=20)
                self._wrapped(surface, layout, label, int(h * 0.042), TEXT, DISABLED, join_rect.inflate(-24, -24), bold=True, middle=True)
        y = card.bottom + m
        # The newest note (missed call, why something ended), with its buttons.
        if kiosk.notes:
            note = kiosk.notes[0]
            note_rect = pygame.Rect(m, y, w - 2 * m, max(self.min_target + 16, int(h * 0.13)))
            pygame.draw.rect(surface, NOTE, note_rect, border_radius=16)
            bh = note_rect.height - 16
            dismiss = pygame.Rect(0, 0, int(w * 0.15), bh)
            dismiss.midright = (note_rect.right - 8, note_rect.centery)
            right = dismiss.left
            self._button(surface, layout, "dismiss", dismiss, t("dismiss"), NAVY, size=int(h * 0.045))
            if note.contact_id and kiosk.mode is Mode.HOME:
                back = pygame.Rect(0, 0, int(w * 0.2), bh)
                back.midright = (dismiss.left - 16, note_rect.centery)
                self._button(surface, layout, f"call_back:{note.contact_id}", back, t("call_back"), GREEN, size=int(h * 0.045))
                right = back.left
            text_box = pygame.Rect(note_rect.left + 20, note_rect.top + 4, right - note_rect.left - 40, note_rect.height - 8)
            self._wrapped(surface, layout, t(note.key, **note.params), int(h * 0.045), TEXT, NOTE, text_box, bold=True, align_center=False, middle=True)
            y = note_rect.bottom + m
        # Trusted family, each with a call button; the last place becomes "More family"
        # when there are more than fit, so nobody is out of reach.
        contacts = kiosk.trusted_contacts
        if contacts and kiosk.mode is Mode.HOME:
            gap = m
            per_row = max(1, min(4, (w - 2 * m + gap) // (300 + gap)))
            more = len(contacts) > per_row
            shown = contacts[: per_row - 1] if more else contacts
            slots = len(shown) + (1 if more else 0)
            card_h = min(bottom_limit - y - m, int(h * 0.24))
            if card_h >= self.min_target + 8:
                card_w = (w - 2 * m - (slots - 1) * gap) // slots if slots > 1 else min(w - 2 * m, int(w * 0.4))
                for i, contact in enumerate(shown):
                    c = pygame.Rect(m + i * (card_w + gap), y, card_w, card_h)
                    self._contact_card(surface, layout, contact, c, t, int(h * 0.045))
                if more:
                    c = pygame.Rect(m + len(shown) * (card_w + gap), y, card_w, card_h)
                    label = t("more_family", count=len(contacts) - len(shown))
                    self._big_button(surface, layout, "more_family", c, label, NAVY, int(h * 0.045))

    def _contact_card(self, surface: pygame.Surface, layout: Layout, contact: ContactCard, c: pygame.Rect, t: Texts, text_size: int) -> None:
        """A white card: photo (or initials), the name, and a green Call button."""
        pygame.draw.rect(surface, CARD, c, border_radius=20)
        d = min(c.height - 24, int(c.width * 0.4))
        self._avatar(surface, layout, contact, (c.left + 12 + d // 2, c.centery), d)
        inner_left = c.left + 24 + d
        inner_w = c.right - 12 - inner_left
        self._text(surface, layout, contact.name, text_size, TEXT, CARD, topleft=(inner_left, c.top + 10), max_width=inner_w, bold=True)
        call_h = max(self.min_target, int(c.height * 0.45))
        call = pygame.Rect(inner_left, c.bottom - 12 - call_h, inner_w, call_h)
        self._button(surface, layout, f"call:{contact.id}", call, t("call"), GREEN, size=text_size)

    def _big_button(self, surface: pygame.Surface, layout: Layout, button_id: str, rect: pygame.Rect, label: str, color: Color, size: int) -> None:
        """A button whose label may wrap over lines instead of being cut short."""
        pygame.draw.rect(surface, color, rect, border_radius=min(24, rect.height // 4))
        self._wrapped(surface, layout, label, size, WHITE, color, rect.inflate(-24, -16), bold=True, middle=True)
        layout.buttons.append(Button(button_id, pygame.Rect(rect)))

    # --- the family screen ----------------------------------------------------------------

    def _family_frame(self, size: tuple[int, int]) -> tuple[int, int, pygame.Rect, int, int]:
        """(margin, bar height, the grid's area, columns, rows) of the family screen."""
        w, h = size
        m = max(16, int(h * 0.03))
        bar_h = max(self.min_target, int(h * 0.14))
        grid = pygame.Rect(m, 2 * m + bar_h, w - 2 * m, h - 4 * m - 2 * bar_h)
        gap = m
        name_line = self.fonts.font(max(MIN_TEXT_PX, int(h * 0.045)), True).get_linesize()
        min_card_h = max(int(h * 0.22), self.min_target + name_line + 40)
        cols = max(1, min(3, (grid.width + gap) // (400 + gap)))
        rows = max(1, (grid.height + gap) // (min_card_h + gap))
        return m, bar_h, grid, cols, rows

    def family_page_size(self, size: tuple[int, int]) -> int:
        """How many contacts one page of the family screen holds at this screen size."""
        _, _, _, cols, rows = self._family_frame(size)
        return cols * rows

    def _family(self, surface: pygame.Surface, layout: Layout, kiosk: Appliance, t: Texts) -> None:
        """Every trusted contact as a big card with a Call button, in pages: Back at the
        top, Previous / Next and "1 of 2" at the bottom. No scrolling, no swiping."""
        w, h = surface.get_size()
        m, bar_h, grid, cols, rows = self._family_frame((w, h))
        page, pages, contacts = kiosk.family_page_contacts(cols * rows)
        back = pygame.Rect(m, m, max(self.min_target, int(w * 0.22)), bar_h)
        self._button(surface, layout, "back", back, f"‹ {t('back')}", NAVY, size=int(h * 0.06))
        self._text(
            surface, layout, t("family_title"), int(h * 0.065), TEXT, BACKGROUND,
            midleft=(back.right + 2 * m, back.centery), max_width=w - back.right - 3 * m, bold=True,
        )
        gap = m
        card_w = (grid.width - (cols - 1) * gap) // cols
        card_h = min((grid.height - (rows - 1) * gap) // rows, int(h * 0.34))
        for i, contact in enumerate(contacts):
            row, col = divmod(i, cols)
            c = pygame.Rect(grid.left + col * (card_w + gap), grid.top + row * (card_h + gap), card_w, card_h)
            self._contact_card(surface, layout, contact, c, t, int(h * 0.05))
        if pages > 1:
            nav_w = max(self.min_target, int(w * 0.3))
            prev = pygame.Rect(m, h - m - bar_h, nav_w, bar_h)
            nxt = pygame.Rect(w - m - nav_w, h - m - bar_h, nav_w, bar_h)
            size = int(h * 0.06)
            if page > 0:
                self._button(surface, layout, "family_prev", prev, f"‹ {t('previous')}", NAVY, size=size)
            else:
                self._button(surface, layout, "family_prev", prev, f"‹ {t('previous')}", DISABLED, TEXT, size=size, enabled=False)
            if page < pages - 1:
                self._button(surface, layout, "family_next", nxt, f"{t('next')} ›", NAVY, size=size)
            else:
                self._button(surface, layout, "family_next", nxt, f"{t('next')} ›", DISABLED, TEXT, size=size, enabled=False)
            self._text(
                surface, layout, t("page_of", page=page + 1, pages=pages), int(h * 0.06), TEXT, BACKGROUND,
                center=(w // 2, prev.centery), max_width=nxt.left - prev.right - 2 * m, bold=True,
            )

    def _countdown(self, surface: pygame.Surface, layout: Layout, kiosk: Appliance, t: Texts) -> None:
        w, h = surface.get_size()
        assert kiosk.countdown is not None
        seconds = kiosk.seconds_left()
        self._title(surface, layout, t("countdown_title", title=kiosk.countdown.activity.title), size=0.08)
        center = (w // 2, int(h * 0.44))
        radius = int(h * 0.16)
        pygame.draw.circle(surface, GREEN, center, radius)
        self._text(surface, layout, str(seconds), int(h * 0.18), WHITE, GREEN, center=center, bold=True)
        self._wrapped(surface, layout, t("countdown_body", seconds=seconds), int(h * 0.055), TEXT, BACKGROUND, pygame.Rect(40, center[1] + radius + 16, w - 80, int(h * 0.1)))
        self._bottom_button(surface, layout, "not_now", t("not_now"), NAVY, (0.5, 0.17), margin=0.04, size=0.075)

    def _invited(self, surface: pygame.Surface, layout: Layout, kiosk: Appliance, t: Texts) -> None:
        """The host rings: what starts, and one big button to join. No camera until tapped."""
        w, h = surface.get_size()
        invite = kiosk.invite
        assert invite is not None
        y = self._title(surface, layout, t("invite_title"), size=0.09)
        body = t("invite_body_host", title=invite.title, host=invite.host) if invite.host else t("invite_body", title=invite.title)
        self._wrapped(surface, layout, body, int(h * 0.06), TEXT, BACKGROUND, pygame.Rect(40, y + 12, w - 80, int(h * 0.16)))
        join = pygame.Rect(0, 0, int(w * 0.7), int(h * 0.3))
        join.center = (w // 2, int(h * 0.6))
        self._big_button(surface, layout, "join_invite", join, t("invite_join"), GREEN, size=int(h * 0.09))
        self._bottom_button(surface, layout, "not_now", t("not_now"), NAVY, (0.36, 0.13), margin=0.03, size=0.06)

    def _incoming(self, surface: pygame.Surface, layout: Layout, kiosk: Appliance, t: Texts) -> None:
        w, h = surface.get_size()
        incoming = kiosk.incoming
        assert incoming is not None
        contact = incoming.contact
        if kiosk.mode is Mode.INCOMING:
            body = t("incoming_trusted_body", seconds=kiosk.seconds_left())
        else:
            body = t("incoming_body")
        self._person_header(surface, layout, contact, t("incoming_title", name=contact.name), body)
        # Two big buttons, far apart so a shaking hand does not hit the wrong one.
        bh = int(h * 0.2)
        bw = int(w * 0.38)
        bottom = h - int(h * 0.05)
        answer = pygame.Rect(0, 0, bw, bh)
        answer.bottomleft = (int(w * 0.06), bottom)
        other = pygame.Rect(0, 0, bw, bh)
        other.bottomright = (w - int(w * 0.06), bottom)
        self._button(surface, layout, "answer", answer, t("answer"), GREEN, size=int(h * 0.075))
        if kiosk.mode is Mode.INCOMING:
            self._button(surface, layout, "not_now", other, t("not_now"), NAVY, size=int(h * 0.075))
        else:
            self._button(surface, layout, "decline", other, t("decline"), RED, size=int(h * 0.07))

    def _title(self, surface: pygame.Surface, layout: Layout, text: str, *, size: float) -> int:
        """A bold title at the top of the screen, wrapped over lines; its text `size` is a
        fraction of the screen height. Returns where the text ends."""
        w, h = surface.get_size()
        return self._wrapped(surface, layout, text, int(h * size), TEXT, BACKGROUND, pygame.Rect(40, int(h * 0.06), w - 80, int(h * 0.2)), bold=True)

    def _bottom_button(
        self, surface: pygame.Surface, layout: Layout, name: str, label: str, color: Color,
        box: tuple[float, float], *, margin: float, size: float,
    ) -> None:
        """A button centred at the bottom of the screen; `box` (width, height), `margin` and
        the text `size` are fractions of the screen, so every screen size looks the same."""
        w, h = surface.get_size()
        rect = pygame.Rect(0, 0, int(w * box[0]), int(h * box[1]))
        rect.midbottom = (w // 2, h - int(h * margin))
        self._button(surface, layout, name, rect, label, color, size=int(h * size))

    def _person_header(
        self, surface: pygame.Surface, layout: Layout, contact: ContactCard, title: str, body: str | None
    ) -> None:
        """The top of a call screen, whoever calls: a big photo (or initials), the title, a line below."""
        w, h = surface.get_size()
        d = int(h * 0.3)
        self._avatar(surface, layout, contact, (w // 2, int(h * 0.05) + d // 2), d)
        y = self._wrapped(
            surface, layout, title, int(h * 0.08), TEXT, BACKGROUND,
            pygame.Rect(40, int(h * 0.07) + d, w - 80, int(h * 0.12)), bold=True,
        )
        if body:
            self._wrapped(surface, layout, body, int(h * 0.055), TEXT, BACKGROUND, pygame.Rect(40, y + 8, w - 80, int(h * 0.1)))

    def _calling(self, surface: pygame.Surface, layout: Layout, kiosk: Appliance, t: Texts) -> None:
        """The senior calls family: who, that it rings, and one big way to stop. No camera yet."""
        session = kiosk.session
        assert session is not None
        contact = next((c for c in kiosk.contacts if c.id == session.contact_id), None) or ContactCard(
            session.contact_id or "?", session.title
        )
        ringing = t("calling_ringing", name=contact.name) if session.phase == "ringing" else None
        self._person_header(surface, layout, contact, t("calling_out", name=contact.name), ringing)
        self._bottom_button(surface, layout, "hang_up", t("hang_up"), RED, (0.6, 0.2), margin=0.05, size=0.08)

    def _in_call(self, surface: pygame.Surface, layout: Layout, kiosk: Appliance, t: Texts, video: "VideoWall | None") -> None:
        w, h = surface.get_size()
        session = kiosk.session
        assert session is not None
        bar_h = max(self.min_target + 24, int(h * 0.16))
        stage = pygame.Rect(0, 0, w, h - bar_h)
        others = session.others
        # The host large (in a call: the family member); everyone else as tiles on the right.
        main = next((p for p in others if p.role in ("host", "admin")), others[0] if others else None)
        tiles = [p for p in others if p is not main]
        self_view = video is not None and video.has("self")
        side_count = len(tiles) + (1 if self_view else 0)
        main_rect = pygame.Rect(stage) if side_count == 0 else pygame.Rect(0, 0, int(w * 0.74), stage.height)
        if main is not None:
            self._tile(surface, layout, main.id, main.name, main_rect.inflate(-12, -12), video)
        if side_count:
            column = pygame.Rect(main_rect.right, 0, w - main_rect.width, stage.height)
            rows = max(side_count, 3)
            tile_h = (column.height - 8) // rows
            entries = [(p.id, p.name) for p in tiles[: rows - (1 if self_view else 0)]]
            if self_view:
                entries.append(("self", t("you")))
            for i, (pid, name) in enumerate(entries):
                rect = pygame.Rect(column.left + 4, 4 + i * tile_h, column.width - 12, tile_h - 8)
                self._tile(surface, layout, pid, name, rect, video)
        # What is happening, in words, when there is no picture yet.
        message = None
        if session.phase == "requesting" or session.phase == "connecting":
            message = t("calling_out", name=session.title) if session.outgoing else t("joining", title=session.title)
        elif session.phase == "lobby":
            message = t("lobby")
        elif session.phase == "reconnecting":
            message = t("reconnecting")
        elif session.phase == "connected" and not others:
            # In, and nobody else yet: say so, or a senior thinks the kiosk is stuck.
            message = t("waiting_for", name=session.title) if session.kind == "call" else t("in_waiting_for_host", title=session.title)
        if message:
            box = pygame.Rect(0, 0, int(w * 0.8), int(h * 0.22))
            box.center = stage.center
            pygame.draw.rect(surface, CARD, box, border_radius=24)
            self._wrapped(surface, layout, message, int(h * 0.06), TEXT, CARD, box.inflate(-40, -24), bold=True, middle=True)
        # The bar: what this is, the volume, and the way out.
        bar = pygame.Rect(0, h - bar_h, w, bar_h)
        pygame.draw.rect(surface, BACKGROUND, bar)
        pad = 12
        leave = pygame.Rect(0, 0, int(w * 0.2), bar_h - 2 * pad)
        leave.midright = (w - pad, bar.centery)
        label = t("leave") if session.kind == "activity" else t("hang_up")
        self._button(surface, layout, "leave" if session.kind == "activity" else "hang_up", leave, label, RED, size=int(h * 0.06))
        volume = pygame.Rect(0, 0, int(w * 0.46), bar_h - 2 * pad)
        volume.midright = (leave.left - 3 * pad, bar.centery)
        self._volume(surface, layout, kiosk, t, volume, BACKGROUND)
        self._text(surface, layout, session.title, int(h * 0.05), TEXT, BACKGROUND, midleft=(pad * 2, bar.centery), max_width=volume.left - 5 * pad, bold=True)

    def _tile(self, surface: pygame.Surface, layout: Layout, pid: str, name: str, rect: pygame.Rect, video: "VideoWall | None") -> None:
        pygame.draw.rect(surface, TILE, rect, border_radius=12)
        picture = video.surface(pid, rect.size) if video is not None else None
        if picture is not None:
            pr = picture.get_rect()
            scale = min(rect.width / pr.width, rect.height / pr.height)
            size = (max(1, int(pr.width * scale)), max(1, int(pr.height * scale)))
            if size != pr.size:
                picture = pygame.transform.scale(picture, size)
            target = picture.get_rect(center=rect.center)
            surface.blit(picture, target)
        label_size = max(MIN_TEXT_PX, min(44, rect.height // 6))
        text_w, text_h = self.fonts.font(label_size, True).size(name)
        if picture is None and rect.height - text_h - 16 >= 2 * MIN_TEXT_PX:
            # No picture (yet): initials in the space above the name.
            initials = ContactCard(pid, name).initials
            free = pygame.Rect(rect.left, rect.top, rect.width, rect.height - text_h - 16)
            d = min(free.width, free.height) * 3 // 4
            color = AVATAR_COLORS[sum(map(ord, name)) % len(AVATAR_COLORS)]
            pygame.draw.circle(surface, color, free.center, d // 2)
            if d >= 2 * MIN_TEXT_PX:
                self._text(surface, layout, initials, int(d * 0.4), WHITE, color, center=free.center, bold=True)
        # The name on a dark label, readable over any picture.
        label = pygame.Rect(rect.left + 8, rect.bottom - text_h - 16, min(text_w + 24, rect.width - 16), text_h + 8)
        pygame.draw.rect(surface, DARK, label, border_radius=8)
        self._text(surface, layout, name, label_size, WHITE, DARK, midleft=(label.left + 12, label.centery), max_width=label.width - 24, bold=True)


def _square(surface: pygame.Surface) -> pygame.Surface:
    w, h = surface.get_size()
    side = min(w, h)
    return surface.subsurface(pygame.Rect((w - side) // 2, (h - side) // 2, side, side))


# SDL's drivers that draw nowhere: chosen on purpose (tests), or SDL's last resort when it
# found no screen at all.
INVISIBLE_DRIVERS = ("offscreen", "dummy")


class NoScreen(RuntimeError):
    """SDL found no screen to draw on (and none was chosen on purpose)."""


def _any_screen() -> bool:
    """Whether a screen may exist, asked before SDL, whose probing prints its own errors."""
    if os.environ.get("SDL_VIDEODRIVER") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return True
    return any(Path("/dev/dri").glob("card*"))


class Display:
    """The window: full screen on the kiosk, a window for development, dummy in tests."""

    def __init__(self, size: tuple[int, int] = (1024, 600), fullscreen: bool = True, caption: str = "Verzilvering") -> None:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        if not _any_screen():
            raise NoScreen("there is no desktop session (DISPLAY, WAYLAND_DISPLAY) and no display device (/dev/dri)")
        try:
            pygame.display.init()
        except pygame.error as exc:
            raise NoScreen(str(exc)) from None
        driver = pygame.display.get_driver()
        if driver in INVISIBLE_DRIVERS and os.environ.get("SDL_VIDEODRIVER") != driver:
            pygame.display.quit()
            raise NoScreen(f"SDL found no screen and fell back to its {driver!r} driver")
        pygame.font.init()
        if fullscreen:
            self.surface = pygame.display.set_mode((0, 0), pygame.FULLSCREEN)
        else:
            self.surface = pygame.display.set_mode(size)
        pygame.display.set_caption(caption)
        if fullscreen:
            pygame.mouse.set_visible(False)
        self.layout: Layout | None = None
        self.quit_requested = False
        # A shaking hand taps twice: the same button within this time counts once.
        self.debounce_s = 0.6
        self._pressed_at: dict[str, float] = {}

    @property
    def size(self) -> tuple[int, int]:
        return self.surface.get_size()

    def presses(self) -> list[str]:
        """Button ids pressed since the last call (a touch arrives as a mouse press in SDL)."""
        pressed: list[str] = []
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                self.quit_requested = True
            elif event.type == pygame.MOUSEBUTTONDOWN and event.button == 1 and self.layout is not None:
                button = self.layout.hit(event.pos)
                now = time.monotonic()
                if button is not None and now - self._pressed_at.get(button, -1e9) >= self.debounce_s:
                    self._pressed_at[button] = now
                    pressed.append(button)
        return pressed

    def show(self, layout: Layout) -> None:
        self.layout = layout
        pygame.display.flip()

    def save(self, path: Path | str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pygame.image.save(self.surface, str(path))

    def close(self) -> None:
        pygame.display.quit()


def describe(layout: Layout) -> dict[str, Any]:
    """A plain summary of a frame (for logs and test failure messages)."""
    return {
        "buttons": [(b.id, tuple(b.rect)) for b in layout.buttons],
        "texts": [(t.text, t.size) for t in layout.texts],
    }
