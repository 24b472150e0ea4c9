"""Small SVG charts drawn on the server: no JavaScript, no build step, readable without a legend hunt.

Each function takes counts and returns one ``<svg>`` element as text; every label is escaped.

>>> svg = bars("Customers by cluster size", [("1", 40), ("2", 12)])
>>> svg.startswith("<svg") and "Customers by cluster size" in svg
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 560, 220
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 44, 30
COLOURS = {"granted": "#2e7d32", "withdrawn": "#c62828", "none": "#b0bec5", "bar": "#3f51b5"}


def _frame(title: str, body: list[str], peak: float, legend: Sequence[tuple[str, str]] = ()) -> str:
    plot_h = HEIGHT - PAD_T - PAD_B
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" preserveAspectRatio="xMinYMin meet" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{PAD_L}" y="16" class="chart-title" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for i in range(5):  # gridlines with their values
        value = peak * i / 4
        y = PAD_T + plot_h - plot_h * i / 4
        label = f"{value:,.0f}"
        parts.append(f'<line x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{escape(label)}</text>')
    parts.extend(body)
    x = PAD_L
    for name, colour in legend:  # a row under the title
        parts.append(f'<rect x="{x}" y="23" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="32" font-size="11">{escape(name)}</text>')
        x += 14 + 7 * len(name) + 16
    parts.append("</svg>")
    return "".join(parts)


def _empty(title: str, message: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} 60" width="100%" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<text x="{PAD_L}" y="16" font-size="13" font-weight="600">{escape(title)}</text>'
        f'<text x="{PAD_L}" y="42" font-size="12" fill="#666">{escape(message)}</text></svg>'
    )


def stacked(title: str, rows: Sequence[tuple[str, Sequence[tuple[str, float]]]], empty: str = "no data yet") -> str:
    """Vertical bars, one per label, each a stack of (series, value) parts."""
    if not rows or not any(v for _, parts in rows for _, v in parts):
        return _empty(title, empty)
    step = max(1, math.ceil(max(sum(v for _, v in parts) for _, parts in rows) / 4))
    peak = step * 4  # four gridlines at whole numbers: these are counts
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    slot = plot_w / len(rows)
    bar = max(min(slot * 0.7, 60), 2)
    body: list[str] = []
    series: dict[str, str] = {}
    for i, (label, parts) in enumerate(rows):
        x = PAD_L + slot * i + (slot - bar) / 2
        y: float = PAD_T + plot_h
        for name, value in parts:
            colour = COLOURS.get(name, COLOURS["bar"])
            series.setdefault(name, colour)
            h = plot_h * value / peak
            y -= h
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{escape(label)} {escape(name)}: {value:,.0f}</title></rect>"
            )
        total = sum(v for _, v in parts)
        body.append(
            f'<text x="{x + bar / 2:.1f}" y="{y - 3:.1f}" font-size="10" text-anchor="middle">{total:,.0f}</text>'
        )
        if len(rows) <= 16 or i % math.ceil(len(rows) / 16) == 0:
            body.append(
                f'<text x="{x + bar / 2:.1f}" y="{PAD_T + plot_h + 14}" font-size="10" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    legend = [(n, c) for n, c in series.items()] if len(series) > 1 else []
    return _frame(title, body, peak, legend)


def bars(title: str, rows: Sequence[tuple[str, float]], empty: str = "no data yet") -> str:
    return stacked(title, [(label, [("bar", value)]) for label, value in rows], empty)


def histogram(title: str, values: Sequence[float], bins: int = 20, empty: str = "no data yet") -> str:
    if not values:
        return _empty(title, empty)
    lo, hi = min(values), max(values)
    if hi == lo:
        return bars(title, [(f"{lo:.1f}", len(values))], empty)
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return bars(title, [(f"{lo + width * i:.0f}", n) for i, n in enumerate(counts)], empty)


def console_charts(data: dict) -> dict[str, str]:  # type: ignore[type-arg]  # cdp.web.service.chart_data
    """The four console pictures from :func:`cdp.web.service.chart_data`."""
    clusters = [("10+" if size >= 10 else str(size), n) for size, n in data["clusters"]]
    consent = [
        (p.replace("_marketing", "").replace("personalised_", ""), [("granted", g), ("withdrawn", w), ("none", n)])
        for p, g, w, n in data["consent"]
    ]
    by_day: dict[str, dict[str, int]] = {}
    for day, kind, n in data["requests"]:
        by_day.setdefault(str(day)[5:], {})[kind] = n
    kinds = sorted({k for d in by_day.values() for k in d})
    palette = ["#3f51b5", "#ef6c00", "#00897b", "#8e24aa", "#6d4c41"]
    for i, k in enumerate(kinds):
        COLOURS.setdefault(k, palette[i % len(palette)])
    requests = [(day, [(k, d.get(k, 0)) for k in kinds]) for day, d in sorted(by_day.items())]
    return {
        "clusters": bars("Customers by number of linked identity units", clusters, "no identities resolved yet"),
        "weights": histogram("Splink match weights of the edges that merged records", data["weights"],
                             empty="no probabilistic matches: every merge came from shared identifiers"),
        "consent": stacked(f"Consent by purpose over {data['customers']:,} customers", consent),
        "requests": stacked("Privacy requests received per day", requests, "no privacy requests yet"),
    }  # fmt: skip
