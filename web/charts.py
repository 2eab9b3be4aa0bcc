"""Bar charts as plain numbers for an SVG template (web/templates/admin/_chart.html): the
bars, and the lines and texts around them.

Drawn on the server: no script, no external library. The template gives each chart a
title and a description, and the page shows the same figures in a table below it, so the
chart is never the only way to read them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

WIDTH = 640
HEIGHT = 260
LEFT = 48  # room for the value axis
BOTTOM = 40  # room for the labels
TOP = 12
# How much of a name fits under a column, and beside a row.
COLUMN_LABEL_CHARS = 12
ROW_LABEL_CHARS = 24


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float
    show_label: bool


@dataclass
class Line:
    x1: float
    x2: float
    y1: float
    y2: float


@dataclass
class Text:
    x: float
    y: float
    anchor: str  # SVG text-anchor
    kind: str  # "tick" (a value on the axis) or "label" (a bar's name): its CSS class
    text: str


@dataclass
class Chart(ABC):
    """What the template needs of every chart: its words, its bars and the value axis; a
    kind of chart places the grid, the texts and the axis."""

    id: str
    title: str
    description: str
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)  # (y or x along the value axis, text)
    width: int = WIDTH
    height: int = HEIGHT

    @property
    @abstractmethod
    def grid(self) -> list[Line]: ...

    @property
    @abstractmethod
    def texts(self) -> list[Text]: ...

    @property
    @abstractmethod
    def axis(self) -> Line: ...


def _shortened(label: str, chars: int) -> str:
    return label if len(label) <= chars else label[: chars - 1] + "…"


@dataclass
class BarChart(Chart):
    """A series (weeks on the trends page): one column each, left to right."""

    left: int = LEFT
    baseline: float = HEIGHT - BOTTOM

    @property
    def grid(self) -> list[Line]:
        return [Line(self.left, self.width - 4, y, y) for y, _ in self.ticks]

    @property
    def texts(self) -> list[Text]:
        return [Text(self.left - 6, y + 4, "end", "tick", text) for y, text in self.ticks] + [
            Text(bar.x + bar.width / 2, self.baseline + 16, "middle", "label", bar.label)
            for bar in self.bars
            if bar.show_label
        ]

    @property
    def axis(self) -> Line:
        return Line(self.left, self.width - 4, self.baseline, self.baseline)


def nice_ceiling(value: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, at least `value` (and at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def axis_top(values: list[float]) -> float:
    """The value axis' end: a nice number that four whole-number steps divide, for counts."""
    highest = max(values, default=0)
    if all(float(v).is_integer() for v in values):
        return 4.0 * math.ceil(nice_ceiling(highest / 4))
    return nice_ceiling(highest)


def bar_chart(chart_id: str, title: str, description: str, labels: list[str], values: list[float]) -> BarChart:
    chart = BarChart(chart_id, title, description)
    top = axis_top(values)
    plot_height = chart.baseline - TOP
    slot = (WIDTH - LEFT - 8) / max(1, len(values))
    # At most ~13 labels fit under the bars; show every n-th.
    every = max(1, math.ceil(len(values) / 13))
    for i, (label, value) in enumerate(zip(labels, values)):
        height = plot_height * value / top
        chart.bars.append(
            Bar(
                x=round(LEFT + i * slot + slot * 0.15, 1),
                y=round(chart.baseline - height, 1),
                width=round(slot * 0.7, 1),
                height=round(height, 1),
                label=_shortened(label, COLUMN_LABEL_CHARS),
                value=value,
                show_label=i % every == 0,
            )
        )
    for step in range(5):
        tick = top * step / 4
        text = f"{tick:g}" if tick < 10_000 else f"{tick / 1000:g}k"
        chart.ticks.append((round(chart.baseline - plot_height * step / 4, 1), text))
    return chart


@dataclass
class HorizontalBarChart(Chart):
    """Categories (activities, districts): one row each, the name left of its bar."""

    height: int = 0
    left: int = 200
    top: int = 8
    bottom: float = 0.0

    @property
    def grid(self) -> list[Line]:
        return [Line(x, x, self.top, self.bottom) for x, _ in self.ticks]

    @property
    def texts(self) -> list[Text]:
        return [Text(x, self.bottom + 18, "middle", "tick", text) for x, text in self.ticks] + [
            Text(self.left - 8, bar.y + bar.height / 2 + 5, "end", "label", bar.label) for bar in self.bars
        ]

    @property
    def axis(self) -> Line:
        return Line(self.left, self.left, self.top, self.bottom)


ROW_HEIGHT = 30


def horizontal_bar_chart(chart_id: str, title: str, description: str, labels: list[str], values: list[float]) -> HorizontalBarChart:
    chart = HorizontalBarChart(chart_id, title, description)
    top = axis_top(values)
    plot_width = WIDTH - chart.left - 16
    for i, (label, value) in enumerate(zip(labels, values)):
        y = chart.top + i * ROW_HEIGHT
        width = round(plot_width * value / top, 1)
        chart.bars.append(Bar(chart.left, y + 5, width, ROW_HEIGHT - 10, _shortened(label, ROW_LABEL_CHARS), value, True))
    chart.bottom = chart.top + max(1, len(values)) * ROW_HEIGHT
    chart.height = int(chart.bottom + 24)
    for step in range(5):
        tick = top * step / 4
        chart.ticks.append((round(chart.left + plot_width * step / 4, 1), f"{tick:g}"))
    return chart
