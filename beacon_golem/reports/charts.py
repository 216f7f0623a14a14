"""Inline SVG line charts, drawn in Python: axes, ticks, grid, series with markers, a legend.

No JavaScript and nothing fetched: the SVG text goes straight into a self-contained HTML
report. Every chart is an `<svg class="chart">`; every series a `<polyline class="series">`
(with `data-series` and `data-points`) plus one `<circle class="point">` per point, whose
`<title>` shows the value on hover.

The x axis turns logarithmic (base 2) when every x is positive and they span a factor of 8
or more (concurrency sweeps: 1, 2, 4, ..., 256); with ten distinct x values or fewer, the
ticks sit on the values themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from pydantic import BaseModel, Field

#: Tableau 10: tells ten series apart, colour-blind friendly enough, prints well.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip
#: Line styles, e.g. for percentiles of one node: solid, dashed, dotted, dash-dot.
DASHES = ("", "7 4", "2 3", "8 3 2 3")

FONT = 12
CHAR_W = 6.6  # average glyph width at FONT px, to size the legend without a font metric


class Series(BaseModel):
    name: str
    points: list[tuple[float, float]]
    color: str = PALETTE[0]
    dash: str = ""
    #: Shown in a point's tooltip after the value (e.g. "tok/s").
    unit: str = ""


class LegendEntry(BaseModel):
    name: str
    color: str = "#555"
    dash: str = ""


class ChartSpec(BaseModel):
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    #: Legend entries; default: one per series.
    legend: list[LegendEntry] | None = None
    width: int = 720
    height: int = 360
    #: None: decide from the data (log2 when the positive x values span 8x or more).
    x_log: bool | None = None
    chart_id: str = Field(default="chart")


def fmt_num(value: float) -> str:
    """Compact tick and tooltip numbers: 0.25, 12.5, 1,250, 12.5k, 3.2M."""
    if value == 0:
        return "0"
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e4:
        return f"{value / 1e3:.3g}k"
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.3g}"
    if a >= 0.01:
        return f"{value:.3g}"
    return f"{value:.2e}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 times a power of ten."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _log2_ticks(lo: float, hi: float) -> list[float]:
    first, last = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    ticks = [2.0**e for e in range(first, last + 1)]
    while len(ticks) > 10:
        ticks = ticks[::2]
    return ticks


def _legend_rows(entries: Sequence[LegendEntry], width: float) -> list[list[tuple[LegendEntry, float]]]:
    rows: list[list[tuple[LegendEntry, float]]] = [[]]
    used = 0.0
    for entry in entries:
        w = 30 + len(entry.name) * CHAR_W + 18
        if rows[-1] and used + w > width:
            rows.append([])
            used = 0.0
        rows[-1].append((entry, w))
        used += w
    return rows


def line_chart(spec: ChartSpec) -> str:
    """One SVG line chart as text; an empty series list draws the axes and says 'no data'."""
    series = [s for s in spec.series if s.points]
    xs = [x for s in series for x, _ in s.points if math.isfinite(x)]
    ys = [y for s in series for _, y in s.points if math.isfinite(y)]
    distinct_x = sorted(set(xs))
    x_log = spec.x_log
    if x_log is None:
        x_log = bool(distinct_x) and distinct_x[0] > 0 and distinct_x[-1] / distinct_x[0] >= 8
    # ---- scales -----------------------------------------------------------------------
    if x_log and distinct_x and distinct_x[0] > 0:
        x_ticks = distinct_x if len(distinct_x) <= 10 else _log2_ticks(distinct_x[0], distinct_x[-1])
        lo, hi = math.log2(min(x_ticks[0], distinct_x[0])), math.log2(max(x_ticks[-1], distinct_x[-1]))
        pad = 0.25 if hi > lo else 1.0
        x_dom = (lo - pad, hi + pad)

        def xv(x: float) -> float:
            return math.log2(x)
    else:
        x_log = False
        if len(distinct_x) == 1:
            x_ticks = distinct_x
            x_dom = (distinct_x[0] - 1, distinct_x[0] + 1)
        elif distinct_x:
            x_ticks = distinct_x if len(distinct_x) <= 10 else nice_ticks(distinct_x[0], distinct_x[-1], 6)
            span = distinct_x[-1] - distinct_x[0]
            x_dom = (min(x_ticks[0], distinct_x[0]) - span * 0.04, max(x_ticks[-1], distinct_x[-1]) + span * 0.04)
        else:
            x_ticks, x_dom = [0.0, 1.0], (0.0, 1.0)

        def xv(x: float) -> float:
            return x

    y_hi = max(ys) if ys else 1.0
    y_lo = min(0.0, min(ys)) if ys else 0.0
    y_ticks = nice_ticks(y_lo, y_hi * 1.05 if y_hi > 0 else 1.0, 5)
    y_dom = (y_ticks[0], y_ticks[-1])

    # ---- layout -----------------------------------------------------------------------
    width = spec.width
    left, right, top = 66, 18, 40
    legend = spec.legend if spec.legend is not None else [LegendEntry(name=s.name, color=s.color, dash=s.dash) for s in series]
    rows = _legend_rows(legend, width - left - right)
    legend_h = 0 if not legend else 20 * len(rows) + 8
    plot_h = spec.height - top - 46
    height = spec.height + legend_h
    plot_w = width - left - right

    def px(x: float) -> float:
        return left + (xv(x) - x_dom[0]) / ((x_dom[1] - x_dom[0]) or 1.0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y_dom[0]) / ((y_dom[1] - y_dom[0]) or 1.0) * plot_h

    cid = escape(spec.chart_id, quote=True)
    out: list[str] = [
        f'<svg class="chart" id="{cid}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-labelledby="{cid}-title" font-size="{FONT}">',
        f'<title id="{cid}-title">{escape(spec.title)}</title>',
        f'<text class="chart-title" x="{left}" y="22" font-size="14" font-weight="600">{escape(spec.title)}</text>',
        f'<rect class="plot" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff"/>',
    ]
    # grid and y ticks
    for t in y_ticks:
        y = py(t)
        out.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e8eb"/>')
        out.append(f'<text class="tick" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" fill="#5b6470">{fmt_num(t)}</text>')
    for t in x_ticks:
        x = px(t)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#f0f1f3"/>')
        out.append(f'<line class="tick-mark" x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 5}" stroke="#8a939e"/>')
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle" fill="#5b6470">{fmt_num(t)}</text>'
        )
    # axes
    out.append(f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#8a939e"/>')
    out.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#8a939e"/>')
    x_title = spec.x_label + (" (log scale)" if x_log else "")
    out.append(
        f'<text class="axis-label" x="{left + plot_w / 2:.1f}" y="{top + plot_h + 38}" text-anchor="middle" '
        f'fill="#2b3138">{escape(x_title)}</text>'
    )
    out.append(
        f'<text class="axis-label" transform="translate(16 {top + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f'fill="#2b3138">{escape(spec.y_label)}</text>'
    )
    if not series:
        out.append(
            f'<text class="no-data" x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            f'fill="#8a939e">no data</text>'
        )
    # series
    for s in series:
        pts = sorted((x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y) and (not x_log or x > 0))
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        name = escape(s.name, quote=True)
        out.append(
            f'<polyline class="series" data-series="{name}" data-points="{len(pts)}" points="{coords}" fill="none" '
            f'stroke="{s.color}" stroke-width="2" stroke-linejoin="round" stroke-linecap="round"{dash}/>'
        )
        for x, y in pts:
            unit = f" {escape(s.unit)}" if s.unit else ""
            out.append(
                f'<circle class="point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.2" fill="#fff" stroke="{s.color}" '
                f'stroke-width="1.8"><title>{escape(s.name)}: x={fmt_num(x)}, {fmt_num(y)}{unit}</title></circle>'
            )
    # legend
    if legend:
        y0 = top + plot_h + 58
        for r, row in enumerate(rows):
            x = float(left)
            y = y0 + r * 20
            for entry, w in row:
                dash = f' stroke-dasharray="{entry.dash}"' if entry.dash else ""
                out.append(
                    f'<g class="legend-item"><line x1="{x:.1f}" x2="{x + 22:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{entry.color}" stroke-width="2.5"{dash}/>'
                    f'<text x="{x + 28:.1f}" y="{y + 4:.1f}" fill="#2b3138">{escape(entry.name)}</text></g>'
                )
                x += w
    out.append("</svg>")
    return "\n".join(out)
