"""Inline SVG plots with shaded bands and scatter points, on the report module's ticks, palette and sizes.

``Plot(title, x_label, y_label, xs, ys)`` fixes the axes from every x and y it will show; ``band``, ``line`` and
``dots`` draw in data coordinates (y up); ``render`` closes the figure with a legend.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from flowalign.training.report import BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH, _span, nice_ticks

esc = html.escape


def _padded(span: tuple[float, float], pad: float) -> tuple[float, float]:
    lo, hi = span
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


class Plot:
    def __init__(self, title: str, x_label: str, y_label: str, xs: Sequence[float], ys: Sequence[float],
                 pad: float = 0.0):
        """``pad``: a margin on every side, as a fraction of each axis's range (points off the axis lines)."""
        self.title = title
        self.x0, self.x1 = _padded(_span(list(xs)) if xs else (0.0, 1.0), pad)
        self.y0, self.y1 = _padded(_span(list(ys)) if ys else (0.0, 1.0), pad)
        self.legend: list[tuple[str, str]] = []
        self.parts = [f'<title>{esc(title)}</title>',
                      f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{esc(title)}</text>']
        self._axes(x_label, y_label)

    def sx(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def sy(self, y: float) -> float:
        return HEIGHT - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)

    def _axes(self, x_label: str, y_label: str) -> None:
        base = HEIGHT - BOTTOM
        for t in nice_ticks(self.x0, self.x1):
            self.parts.append(f'<line x1="{self.sx(t):.1f}" y1="{base}" x2="{self.sx(t):.1f}" y2="{base + 4}" '
                              f'stroke="#333"/><text x="{self.sx(t):.1f}" y="{base + 16}" font-size="10" '
                              f'text-anchor="middle">{t:.4g}</text>')
        for t in nice_ticks(self.y0, self.y1):
            self.parts.append(f'<line x1="{LEFT}" y1="{self.sy(t):.1f}" x2="{WIDTH - RIGHT}" y2="{self.sy(t):.1f}" '
                              f'stroke="#eee"/><text x="{LEFT - 6}" y="{self.sy(t) + 3:.1f}" font-size="10" '
                              f'text-anchor="end">{t:.4g}</text>')
        mid_y = (TOP + base) / 2
        self.parts += [
            f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" stroke="#333"/>',
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{base}" stroke="#333"/>',
            f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" font-size="12" text-anchor="middle">'
            f'{esc(x_label)}</text>',
            f'<text x="14" y="{mid_y}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {mid_y})">'
            f'{esc(y_label)}</text>']

    def band(self, xs: Sequence[float], lo: Sequence[float], hi: Sequence[float], color: str) -> None:
        """The region between ``lo`` and ``hi`` over ``xs``, lightly shaded."""
        if not xs:
            return
        outline = [(x, y) for x, y in zip(xs, hi)] + [(x, y) for x, y in zip(reversed(xs), reversed(lo))]
        coords = " ".join(f"{self.sx(x):.1f},{self.sy(y):.1f}" for x, y in outline)
        self.parts.append(f'<polygon points="{coords}" fill="{color}" fill-opacity="0.18" stroke="none"/>')

    def line(self, points: Sequence[tuple[float, float]], color: str, name: str) -> None:
        coords = " ".join(f"{self.sx(x):.1f},{self.sy(y):.1f}" for x, y in points)
        self.parts.append(f'<polyline data-name="{esc(name)}" fill="none" stroke="{color}" stroke-width="2" '
                          f'points="{coords}"/>')
        self.parts += [f'<circle cx="{self.sx(x):.1f}" cy="{self.sy(y):.1f}" r="2.5" fill="{color}"/>'
                       for x, y in points]

    def dot(self, x: float, y: float, color: str, tip: str, hollow: bool = False) -> None:
        fill = f'fill="white" stroke="{color}" stroke-width="1.5"' if hollow else f'fill="{color}"'
        self.parts.append(f'<circle cx="{self.sx(x):.1f}" cy="{self.sy(y):.1f}" r="4" {fill}>'
                          f'<title>{esc(tip)}</title></circle>')

    def key(self, name: str, color: str) -> None:
        self.legend.append((name, color))

    def render(self) -> str:
        rows = [f'<rect x="{LEFT}" y="{HEIGHT + 18 * i + 6}" width="10" height="10" fill="{color}"/>'
                f'<text x="{LEFT + 16}" y="{HEIGHT + 18 * i + 15}" font-size="12">{esc(name)}</text>'
                for i, (name, color) in enumerate(self.legend)]
        return (f'<svg class="chart" width="{WIDTH}" height="{HEIGHT + 18 * len(self.legend)}" role="img">'
                + "".join(self.parts + rows) + "</svg>")
