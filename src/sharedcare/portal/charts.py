"""Small trend charts (HbA1c, eGFR, blood pressure) drawn as inline SVG on the server.

No JavaScript and no image request: the chart is markup in the page, with a text alternative that says
what it shows, and every value it plots is also in the results table beside it. Each point is coloured
by the organisation that sent it, so a GP sees the hospital's results against their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

from sharedcare.portal.pages import uk_date

# NHS identity colours with at least 3:1 contrast on white (WCAG 1.4.11, graphical objects).
PALETTE = ("#005eb8", "#007f3b", "#330072", "#d5281b", "#ae2573", "#425563")
AXIS, TEXT = "#768692", "#4c6272"
WIDTH, HEIGHT = 360, 170
LEFT, RIGHT, TOP, BOTTOM = 40, 14, 12, 30
# The widest range any chart draws: a value beyond it (or not a number, or infinite) would flatten every
# other point or overflow the scale, and is listed beside the chart instead (the results table has it).
DRAWN = (-1e6, 1e6)


@dataclass(frozen=True)
class Point:
    when: date
    value: float
    source: str
    comparator: str = ""  # "<", ">", "<=" or ">=": the lab gave a limit, not the value (not drawn)


@dataclass(frozen=True)
class Series:
    label: str  # "HbA1c", or "Systolic" and "Diastolic" on one chart
    points: list[Point]
    dashed: bool = False


def _number(value: float) -> str:
    return f"{value:g}"


def _scale(low: float, high: float) -> tuple[float, float]:
    """A y range with a little room above and below, on whole numbers."""
    pad = max((high - low) * 0.1, 1.0)
    return float(math.trunc(low - pad)), float(math.trunc(high + pad) + 1)


def _drawable(value: float, limits: tuple[float, float]) -> bool:
    return math.isfinite(value) and limits[0] <= value <= limits[1]


def describe(title: str, unit: str, series: list[Series]) -> str:
    """The chart in words, for screen readers and as its text alternative."""
    parts = []
    for s in series:
        points = sorted(s.points, key=lambda p: p.when)
        if not points:
            continue
        values = [p.value for p in points]
        latest = points[-1]
        parts.append(f"{s.label}: {len(points)} result{'s' if len(points) != 1 else ''} from "
                     f"{uk_date(points[0].when)} to {uk_date(latest.when)}, lowest {_number(min(values))}, highest "
                     f"{_number(max(values))}, latest {_number(latest.value)} {unit} ({latest.source})")
    return f"{title}. " + "; ".join(parts) + "."


def trend_chart(chart_id: str, title: str, unit: str, series: list[Series],
                limits: tuple[float, float] = DRAWN) -> Markup:
    """A figure: the SVG line chart, a legend of sources, and its description. Empty if no points. A point
    outside `limits` (the range a real result can take; any outside DRAWN) is not drawn but listed under the
    chart, so one absurd value (a unit error) neither flattens the others nor hides; so is a point given as a
    limit (">90"), which has no place on the line."""
    limits = (max(limits[0], DRAWN[0]), min(limits[1], DRAWN[1]))
    ordered = [(s.label, p) for s in series for p in sorted(s.points, key=lambda p: p.when)]
    limited = [(label, p) for label, p in ordered if p.comparator]  # ">90" is not 90: not a point to draw
    left_out = [(label, p) for label, p in ordered if not p.comparator and not _drawable(p.value, limits)]
    series = [Series(s.label, [p for p in s.points if not p.comparator and _drawable(p.value, limits)], s.dashed)
              for s in series]
    points = [p for s in series for p in s.points]
    if not points and not left_out and not limited:
        return Markup("")
    note = ""
    if limited:
        values = "; ".join(f"{escape(label)} {escape(p.comparator)}{_number(p.value)} on {uk_date(p.when)} "
                           f"({escape(p.source)})" for label, p in limited)
        note += (f'<p class="sc-chart__left-out">Not drawn, given as a limit, not a value: {values}. '
                 f'See the results below.</p>')
    if left_out:
        values = "; ".join(f"{escape(label)} {_number(p.value)} on {uk_date(p.when)} ({escape(p.source)})"
                           for label, p in left_out)
        note += (f'<p class="sc-chart__left-out">Not drawn, outside the range this chart shows '
                 f'({_number(limits[0])} to {_number(limits[1])}): {values}. See the results below.</p>')
    if not points:
        return Markup(f'<figure class="sc-chart"><figcaption class="sc-chart__caption">{escape(title)} '  # noqa: S704
                      f'<span class="sc-chart__unit">({escape(unit)})</span></figcaption>{note}</figure>')
    sources = list(dict.fromkeys(p.source for p in sorted(points, key=lambda p: p.when)))
    colour = {source: PALETTE[i % len(PALETTE)] for i, source in enumerate(sources)}
    first, last = min(p.when for p in points).toordinal(), max(p.when for p in points).toordinal()
    low, high = _scale(min(p.value for p in points), max(p.value for p in points))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(when: date) -> float:
        return LEFT + (plot_w / 2 if last == first else (when.toordinal() - first) / (last - first) * plot_w)

    def y(value: float) -> float:
        return TOP + (high - value) / (high - low) * plot_h

    out = [f'<figure class="sc-chart"><figcaption class="sc-chart__caption">{escape(title)} '
           f'<span class="sc-chart__unit">({escape(unit)})</span></figcaption>',
           f'<svg class="sc-chart__svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-labelledby="{chart_id}-title {chart_id}-desc" focusable="false">',
           f'<title id="{chart_id}-title">{escape(title)} trend</title>',
           f'<desc id="{chart_id}-desc">{escape(describe(title, unit, series))}</desc>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="{AXIS}"/>',
           f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="{AXIS}"/>']
    for value in (low, high):
        out.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11" '
                   f'fill="{TEXT}">{_number(value)}</text>')
    days = sorted({p.when for p in points})
    for when, anchor in ((days[0], "start"), (days[-1], "end")) if len(days) > 1 else ((days[0], "middle"),):
        out.append(f'<text x="{x(when):.1f}" y="{HEIGHT - 10}" text-anchor="{anchor}" font-size="11" '
                   f'fill="{TEXT}">{escape(f"{when:%b %Y}")}</text>')
    for s in series:
        line = sorted(s.points, key=lambda p: p.when)
        if len(line) > 1:
            path = " ".join(f"{x(p.when):.1f},{y(p.value):.1f}" for p in line)
            dash = ' stroke-dasharray="5 4"' if s.dashed else ""
            out.append(f'<polyline points="{path}" fill="none" stroke="#212b32" stroke-width="1.5"{dash}/>')
        for p in line:
            out.append(f'<circle cx="{x(p.when):.1f}" cy="{y(p.value):.1f}" r="4.5" fill="{colour[p.source]}">'
                       f'<title>{escape(s.label)} {_number(p.value)} {escape(unit)}, {uk_date(p.when)}, '
                       f'{escape(p.source)}</title></circle>')
    out.append("</svg>")
    legend = "".join(f'<li><svg width="12" height="12" aria-hidden="true" focusable="false"><circle cx="6" cy="6" '
                     f'r="5" fill="{colour[source]}"/></svg> {escape(source)}</li>' for source in sources)
    lines = ", ".join(f"{escape(s.label)} {'dashed' if s.dashed else 'solid'}" for s in series) \
        if len(series) > 1 else ""
    out.append(f'<ul class="sc-chart__legend">{legend}</ul>')
    if lines:
        out.append(f'<p class="sc-chart__lines">Lines: {lines}.</p>')
    out.append(f"{note}</figure>")
    return Markup("".join(out))  # noqa: S704 - every value above is a number or passed through escape()
