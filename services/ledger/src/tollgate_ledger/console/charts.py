"""Charts as inline SVG, rendered on the server: no JavaScript, nothing to build, readable by a
screen reader (<title>/<desc> on the chart, a <title> tooltip on every mark, and the same numbers
as a table beside it). Colours are CSS classes (s0..s7 in console.css) so the page's
Content-Security-Policy needs no inline styles."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from html import escape

from markupsafe import Markup

PALETTE_SIZE = 8  # s0..s6 for the largest series, s7 for "other"
WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 70, 10, 12, 30

Formatter = Callable[[int], str]


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    values: list[int]

    @property
    def total(self) -> int:
        return sum(self.values)


def top_series(by_label: dict[str, list[int]], limit: int = PALETTE_SIZE - 1) -> list[Series]:
    """The largest series by total, the rest summed into "other" so the palette stays readable."""
    ranked = sorted((Series(k, v) for k, v in by_label.items()), key=lambda s: (-s.total, s.label))
    if len(ranked) <= limit + 1:
        return ranked
    rest = ranked[limit:]
    other = [sum(col) for col in zip(*(s.values for s in rest), strict=True)]
    return [*ranked[:limit], Series(f"other ({len(rest)} models)", other)]


def nice_ceiling(value: int, ticks: int = 4) -> tuple[int, int]:
    """An axis maximum and step of the form {1, 2, 2.5, 5} x 10^k covering `value`."""
    if value <= 0:
        return 1, 1
    raw = value / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * power
        if step >= raw:
            break
    step_int = max(1, math.ceil(step))
    return step_int * ticks, step_int


def _short_day(day: date) -> str:
    return f"{day.strftime('%b')} {day.day}"


def stacked_bars(
    chart_id: str, title: str, days: Sequence[date], series: Sequence[Series], fmt: Formatter, *,
    unit_label: str,
) -> Markup:
    """Bars per day, stacked by series; returns the figure: SVG, legend and a data table."""
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    grand = sum(totals)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top, step = nice_ceiling(max(totals, default=0))
    parts: list[str] = []
    if grand:
        peak = max(range(len(days)), key=lambda i: totals[i])
        desc = (f"{fmt(grand)} in total over {len(days)} days; the highest day was "
                f"{_short_day(days[peak])} with {fmt(totals[peak])}.")
    else:
        desc = f"No {unit_label} in these {len(days)} days."
    parts.append(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" preserveAspectRatio="xMidYMid meet" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d"><title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(desc)}</desc>'
    )
    for value in range(0, top + 1, step):
        y = TOP + plot_h - plot_h * value / top
        parts.append(f'<line class="gridline" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(value))}</text>')
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.72, 1.0)
    for i, day in enumerate(days):
        x = LEFT + slot * i + (slot - bar_w) / 2
        y_base: float = TOP + plot_h
        for colour, s in enumerate(series):
            value = s.values[i]
            if value <= 0:
                continue
            h = plot_h * value / top
            y_base -= h
            parts.append(
                f'<rect class="s{_colour(colour, s, series)}" x="{x:.1f}" y="{y_base:.1f}" width="{bar_w:.1f}" '
                f'height="{max(h, 0.5):.1f}"><title>{escape(_short_day(day))} · {escape(s.label)}: '
                f"{escape(fmt(value))}</title></rect>"
            )
        if i % 5 == 0 or i == len(days) - 1:
            parts.append(
                f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
                f"{escape(_short_day(day))}</text>"
            )
    if not grand:
        parts.append(
            f'<text class="empty" x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" text-anchor="middle">'
            f"No {escape(unit_label)} in the last {len(days)} days</text>"
        )
    parts.append("</svg>")
    parts.append(_legend(series, fmt))
    parts.append(_table(chart_id, title, days, series, totals, fmt))
    return Markup(f'<figure class="chart-figure" id="{chart_id}">{"".join(parts)}</figure>')  # noqa: S704


def _colour(index: int, s: Series, series: Sequence[Series]) -> int:
    if s.label.startswith("other (") and index == len(series) - 1:
        return PALETTE_SIZE - 1
    return index % (PALETTE_SIZE - 1)


def _legend(series: Sequence[Series], fmt: Formatter) -> str:
    # The legend shows each series' total with the axis formatter (compact: whole cents or k/M).
    if not series:
        return ""
    items = "".join(
        f'<li><span class="swatch s{_colour(i, s, series)}" aria-hidden="true"></span>{escape(s.label)} '
        f'<span class="muted">{escape(fmt(s.total))}</span></li>'
        for i, s in enumerate(series)
    )
    return f'<ul class="legend" aria-label="Legend">{items}</ul>'


def _table(
    chart_id: str, title: str, days: Sequence[date], series: Sequence[Series], totals: list[int], fmt: Formatter
) -> str:
    head = "".join(f'<th scope="col">{escape(s.label)}</th>' for s in series)
    rows = "".join(
        f'<tr><th scope="row">{day.isoformat()}</th>'
        + "".join(f'<td class="num">{escape(fmt(s.values[i]))}</td>' for s in series)
        + f'<td class="num">{escape(fmt(totals[i]))}</td></tr>'
        for i, day in enumerate(days)
        if totals[i]
    )
    if not rows:
        return ""
    return (
        f'<details class="chart-data"><summary>{escape(title)}: the numbers</summary>'
        f'<div class="scroll"><table aria-describedby="{chart_id}-t"><thead><tr><th scope="col">Day (UTC)</th>'
        f'{head}<th scope="col">Total</th></tr></thead><tbody>{rows}</tbody></table></div></details>'
    )


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    points: list[tuple[datetime, int]]  # ascending by time


def line_chart(
    chart_id: str, title: str, lines: Sequence[Line], fmt: Formatter, *, start: datetime, end: datetime,
    empty_text: str,
) -> Markup:
    """Step lines over time around a zero axis (drift is signed: Dodo above or below Tollgate)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [v for line in lines for _, v in line.points]
    extent, step = nice_ceiling(max((abs(v) for v in values), default=0))
    span = max((end - start).total_seconds(), 1.0)

    def x_of(t: datetime) -> float:
        return LEFT + plot_w * min(max((t - start).total_seconds() / span, 0.0), 1.0)

    def y_of(v: int) -> float:
        return TOP + plot_h / 2 - (plot_h / 2) * v / extent

    if values:
        worst = max(values, key=abs)
        desc = f"{len(lines)} series; the largest difference was {fmt(worst)}."
    else:
        desc = empty_text
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{chart_id}-t {chart_id}-d">'
        f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(desc)}</desc>'
    ]
    for value in range(-extent, extent + 1, step):
        y = y_of(value)
        cls = "zero" if value == 0 else "gridline"
        parts.append(f'<line class="{cls}" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(value))}</text>')
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        t = start + (end - start) * frac
        parts.append(
            f'<text class="axis" x="{LEFT + plot_w * frac:.1f}" y="{HEIGHT - 10}" '
            f'text-anchor="{"start" if frac == 0 else "end" if frac == 1 else "middle"}">'
            f"{escape(t.strftime('%b %d %H:%M'))}</text>"
        )
    for i, line in enumerate(lines):
        colour = i % (PALETTE_SIZE - 1)
        # A step line: a value holds until the next check changes it (checks are sparse).
        steps: list[tuple[datetime, int]] = []
        for t, v in line.points:
            if steps:
                steps.append((t, steps[-1][1]))
            steps.append((t, v))
        coords = " ".join(f"{x_of(t):.1f},{y_of(v):.1f}" for t, v in steps)
        parts.append(f'<polyline class="l{colour}" points="{coords}"><title>{escape(line.label)}</title></polyline>')
        for t, v in line.points:
            parts.append(
                f'<circle class="s{colour}" cx="{x_of(t):.1f}" cy="{y_of(v):.1f}" r="2.5"><title>'
                f"{escape(line.label)} at {escape(t.strftime('%Y-%m-%d %H:%M UTC'))}: {escape(fmt(v))}</title></circle>"
            )
    if not values:
        parts.append(
            f'<text class="empty" x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2 - 8:.1f}" text-anchor="middle">'
            f"{escape(empty_text)}</text>"
        )
    parts.append("</svg>")
    legend = "".join(
        f'<li><span class="swatch s{i % (PALETTE_SIZE - 1)}" aria-hidden="true"></span>{escape(line.label)}</li>'
        for i, line in enumerate(lines)
    )
    if legend:
        parts.append(f'<ul class="legend" aria-label="Legend">{legend}</ul>')
    return Markup(f'<figure class="chart-figure" id="{chart_id}">{"".join(parts)}</figure>')  # noqa: S704
