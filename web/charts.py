"""Bar charts as plain numbers for an SVG template (web/templates/admin/_chart.html).

Drawn on the server: no script, no external library. The template gives each chart a
title and a description, and the page shows the same figures in a table below it, so the
chart is never the only way to read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

WIDTH = 640
HEIGHT = 260
LEFT = 48  # room for the value axis
BOTTOM = 40  # room for the labels
TOP = 12


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
class Chart:
    """What the template needs of every chart: its words, its bars and the value axis."""

    id: str
    title: str
    description: str
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)  # (y or x along the value axis, text)
    width: int = WIDTH


@dataclass
class BarChart(Chart):
    """A series (weeks on the trends page): one column each, left to right."""

    height: int = HEIGHT
    left: int = LEFT
    baseline: float = HEIGHT - BOTTOM


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
                label=label,
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


ROW_HEIGHT = 30
LABEL_CHARS = 24


def horizontal_bar_chart(chart_id: str, title: str, description: str, labels: list[str], values: list[float]) -> HorizontalBarChart:
    chart = HorizontalBarChart(chart_id, title, description)
    top = axis_top(values)
    plot_width = WIDTH - chart.left - 16
    for i, (label, value) in enumerate(zip(labels, values)):
        y = chart.top + i * ROW_HEIGHT
        short = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"
        chart.bars.append(Bar(chart.left, y + 5, round(plot_width * value / top, 1), ROW_HEIGHT - 10, short, value, True))
    chart.bottom = chart.top + max(1, len(values)) * ROW_HEIGHT
    chart.height = int(chart.bottom + 24)
    for step in range(5):
        tick = top * step / 4
        chart.ticks.append((round(chart.left + plot_width * step / 4, 1), f"{tick:g}"))
    return chart
