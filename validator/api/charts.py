"""Server-rendered SVG charts for the dashboard: lines with an optional band, and bars.

No JavaScript and no CDN: each function returns a complete ``<svg>`` element as markup
that the Jinja templates embed, so the pages work with scripts disabled and load in one
request. Points carry ``<title>`` tooltips; every chart carries ``data-points`` (the number
of data points drawn) so tests can tell a chart with data from an empty frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
STATUS_COLORS = {"accepted": "#16a34a", "rejected": "#dc2626", "missing": "#9ca3af", "unevaluated": "#f59e0b"}
PAD_L, PAD_R, PAD_T, PAD_B = 56, 12, 24, 28


@dataclass
class Series:
    """One line: ``points`` are (x, y) with ``y=None`` for a gap; ``band`` is (x, low, high)."""

    name: str
    points: Sequence[tuple[float, float | None]]
    color: str = PALETTE[0]
    band: Sequence[tuple[float, float, float]] = field(default_factory=tuple)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 or a < 0.01:
        return f"{v:.2e}"
    return f"{v:.3g}"


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def _frame(width: int, height: int, title: str, n: int, body: list[str]) -> Markup:
    label = escape(title)
    return Markup(
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{label}" data-points="{n}">'
        f'<text x="{PAD_L}" y="15" class="chart-title">{label}</text>{"".join(body)}</svg>'
    )


def line_chart(title: str, series: Sequence[Series], *, width: int = 560, height: int = 200) -> Markup:
    """Lines over windows (x) with a shared y axis; bands are drawn under their line."""
    xs = [x for s in series for x, y in s.points if _finite(y)] + [x for s in series for x, _, _ in s.band]
    ys = [y for s in series for _, y in s.points if _finite(y)]
    ys += [v for s in series for _, lo, hi in s.band for v in (lo, hi) if math.isfinite(v)]
    if not xs or not ys:
        return _frame(width, height, title, 0, [f'<text x="{width // 2}" y="{height // 2}" '
                                                'text-anchor="middle" class="chart-empty">no data</text>'])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 or 1), y1 + (abs(y1) * 0.1 or 1)
    iw, ih = width - PAD_L - PAD_R, height - PAD_T - PAD_B

    def px(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * iw

    def py(y: float) -> float:
        return PAD_T + (1 - (y - y0) / (y1 - y0)) * ih

    body = []
    for t in _ticks(y0, y1):
        body.append(f'<line x1="{PAD_L}" x2="{width - PAD_R}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                    f'<text x="{PAD_L - 4}" y="{py(t) + 3:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    for t in (x0, (x0 + x1) / 2, x1):
        body.append(f'<text x="{px(t):.1f}" y="{height - 8}" text-anchor="middle" class="tick">{round(t)}</text>')
    n = 0
    for s in series:
        band = [(x, lo, hi) for x, lo, hi in s.band if math.isfinite(lo) and math.isfinite(hi)]
        if band:
            upper = " ".join(f"{px(x):.1f},{py(hi):.1f}" for x, _, hi in band)
            lower = " ".join(f"{px(x):.1f},{py(lo):.1f}" for x, lo, _ in reversed(band))
            body.append(f'<polygon points="{upper} {lower}" fill="{s.color}" fill-opacity="0.15" '
                        f'class="band"><title>{escape(s.name)} \u00b1 1\u03c3</title></polygon>')
        pts = [(x, y) for x, y in s.points if _finite(y)]
        n += len(pts)
        if len(pts) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)  # type: ignore[arg-type]
            body.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="1.8" class="line"/>')
        if len(pts) <= 120:
            for x, y in pts:
                body.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{s.color}">'  # type: ignore[arg-type]
                            f'<title>{escape(s.name)} @ window {round(x)}: {_fmt(y)}</title></circle>')  # type: ignore[arg-type]
    if len(series) > 1:
        lx = width - PAD_R
        for i, s in enumerate(reversed(series)):
            body.append(f'<text x="{lx - i * 110}" y="15" text-anchor="end" class="legend" '
                        f'fill="{s.color}">■ {escape(s.name)}</text>')
    return _frame(width, height, title, n, body)


def bar_chart(title: str, bars: Sequence[tuple[str, float]], *, width: int = 560, color: str = PALETTE[1]) -> Markup:
    """Horizontal bars (e.g. rejections by reason), longest first as given."""
    row_h = 22
    height = PAD_T + row_h * max(len(bars), 1) + 8
    if not bars:
        return _frame(width, height, title, 0, [f'<text x="{PAD_L}" y="{PAD_T + 14}" class="chart-empty">none</text>'])
    label_w = 170
    top = max(v for _, v in bars) or 1
    body = []
    for i, (label, value) in enumerate(bars):
        y = PAD_T + i * row_h
        w = (width - label_w - 60) * value / top
        body.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" class="tick">{escape(label)}</text>'
                    f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{color}">'
                    f'<title>{escape(label)}: {_fmt(value)}</title></rect>'
                    f'<text x="{label_w + w + 4:.1f}" y="{y + 15}" class="tick">{_fmt(value)}</text>')
    return _frame(width, height, title, len(bars), body)


def stacked_columns(
    title: str, columns: Sequence[tuple[int, dict[str, int]]], *, width: int = 1000, height: int = 180
) -> Markup:
    """One column per window, stacked by receipt status (the window timeline)."""
    if not columns:
        return _frame(width, height, title, 0, [f'<text x="{PAD_L}" y="{PAD_T + 14}" class="chart-empty">none</text>'])
    iw, ih = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    top = max(sum(c.values()) for _, c in columns) or 1
    col_w = iw / len(columns)
    body = [f'<text x="{PAD_L - 4}" y="{PAD_T + 4}" text-anchor="end" class="tick">{top}</text>',
            f'<text x="{PAD_L - 4}" y="{PAD_T + ih}" text-anchor="end" class="tick">0</text>']
    # One group and one tooltip per column: at 200 windows x 4 statuses, a tooltip per segment
    # would double the page.
    for i, (window, counts) in enumerate(columns):
        x, y = PAD_L + i * col_w, PAD_T + ih
        rects = []
        for status, color in STATUS_COLORS.items():
            h = ih * counts.get(status, 0) / top
            if h > 0:
                y -= h
                rects.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(col_w - 1, 0.5):.1f}" height="{h:.1f}" '
                             f'fill="{color}"/>')
        if rects:
            tip = ", ".join(f"{counts[s]} {s}" for s in STATUS_COLORS if counts.get(s))
            body.append(f'<g><title>window {window}: {tip}</title>{"".join(rects)}</g>')
    for i in sorted({0, len(columns) // 2, len(columns) - 1}):
        body.append(f'<text x="{PAD_L + (i + 0.5) * col_w:.1f}" y="{height - 8}" text-anchor="middle" '
                    f'class="tick">{columns[i][0]}</text>')
    # Legend right-aligned, each entry as wide as its label (11 px bold is at most ~7 px a character).
    lx = float(width - PAD_R)
    for status, color in reversed(STATUS_COLORS.items()):
        body.append(f'<text x="{lx:.0f}" y="15" text-anchor="end" class="legend" fill="{color}">■ {status}</text>')
        lx -= 7 * (len(status) + 2) + 12
    return _frame(width, height, title, len(columns), body)
