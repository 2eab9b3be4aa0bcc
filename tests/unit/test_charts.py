"""Server-drawn bar charts: axis ends and bar geometry (the SVG itself is checked by axe in
tests/e2e/test_web_engagement_browser.py)."""

from __future__ import annotations

from web.charts import HEIGHT, axis_top, bar_chart, horizontal_bar_chart, nice_ceiling


def test_axis_ends_are_nice_and_split_counts_into_whole_steps() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 12, 260, 999)] == [1.0, 1.0, 5.0, 10.0, 20.0, 500.0, 1000.0]
    assert axis_top([2, 1]) == 4  # not 2.5 (ticks 0.625 …)
    assert axis_top([10]) == 12 and axis_top([1000]) == 1000
    assert axis_top([0.5, 1.5]) == 2.0


def test_bars_scale_to_the_axis_and_labels_thin_out() -> None:
    chart = bar_chart("c", "Titel", "Beschrijving", [str(i) for i in range(26)], [i % 5 for i in range(26)])
    tallest = max(chart.bars, key=lambda b: b.height)
    assert tallest.value == 4 and tallest.y == chart.ticks[-1][0]
    assert all(b.y + b.height == chart.baseline for b in chart.bars)
    assert sum(b.show_label for b in chart.bars) == 13  # every second of 26
    assert chart.baseline < HEIGHT and chart.ticks[0] == (chart.baseline, "0")


def test_horizontal_bars_one_row_each_with_shortened_names() -> None:
    chart = horizontal_bar_chart("h", "T", "D", ["Almere Stad", "Een heel erg lange naam van een activiteit"], [3, 0])
    assert [b.label for b in chart.bars] == ["Almere Stad", "Een heel erg lange naam…"]
    assert chart.bars[1].width == 0 and chart.bars[0].width > 0
    assert chart.height > chart.bottom
