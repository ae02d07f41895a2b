"""A self-contained HTML report: summary table, SVG line charts, tables and embedded PNG images."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from flowalign.utils.io import to_pil, write_text

Series = list[tuple[float, float]]
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, PAD = 560, 260, 48


def curves_from_metrics(rows: list[dict], keys: Sequence[str]) -> dict[str, Series]:
    """metrics.jsonl rows → {key: [(step, value), ...]}, skipping rows where the key is missing or null."""
    out: dict[str, Series] = {}
    for key in keys:
        series = [(float(r["step"]), float(r[key])) for r in rows if r.get(key) is not None and "step" in r]
        if series:
            out[key] = series
    return out


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi == lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def svg_chart(title: str, series: dict[str, Series]) -> str:
    """One line chart (several named series) as inline SVG with axes, ticks and a legend."""
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    esc = html.escape
    if not points:
        return f'<svg width="{WIDTH}" height="40"><text x="8" y="24">{esc(title)}: no data</text></svg>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    sx = lambda x: PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD)  # noqa: E731
    sy = lambda y: HEIGHT - PAD + (y0 - y) / (y1 - y0) * (HEIGHT - 2 * PAD)  # noqa: E731
    parts = [f'<svg class="chart" width="{WIDTH}" height="{HEIGHT + 20 * len(series)}" role="img">',
             f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{esc(title)}</text>',
             f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#333"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#333"/>']
    for t in _ticks(x0, x1):
        parts.append(f'<text x="{sx(t):.1f}" y="{HEIGHT - PAD + 16}" font-size="10" text-anchor="middle">{t:.4g}</text>')
    for t in _ticks(y0, y1):
        parts.append(f'<text x="{PAD - 4}" y="{sy(t) + 3:.1f}" font-size="10" text-anchor="end">{t:.4g}</text>')
        parts.append(f'<line x1="{PAD}" y1="{sy(t):.1f}" x2="{WIDTH - PAD}" y2="{sy(t):.1f}" stroke="#eee"/>')
    for i, (name, values) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        finite = [(x, y) for x, y in values if math.isfinite(y)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in finite)
        parts.append(f'<polyline data-name="{esc(name)}" fill="none" stroke="{color}" stroke-width="2" '
                     f'points="{coords}"/>')
        ly = HEIGHT + 14 * (i + 1) - 4
        parts.append(f'<rect x="{PAD}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{PAD + 16}" y="{ly + 1}" font-size="12">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _image_uri(image: Path | torch.Tensor) -> str:
    if isinstance(image, torch.Tensor):
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = Path(image).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(path: Path, *, title: str, summary: dict[str, object],
                 curves: dict[str, dict[str, Series]] | dict[str, Series],
                 tables: dict[str, list[dict]] | None = None, images: dict[str, Path | torch.Tensor] | None = None,
                 notes: list[str] | None = None) -> Path:
    """Write one HTML file with no external assets, atomically. ``curves`` maps a chart title to its series
    ({name: [(x, y), ...]}) or directly to one series."""
    esc = html.escape
    sections = [f"<h1>{esc(title)}</h1>", "<h2>Summary</h2>",
                _table([{"metric": k, "value": v} for k, v in summary.items()])]
    for note in notes or []:
        sections.append(f"<p>{esc(note)}</p>")
    if curves:
        sections.append("<h2>Curves</h2>")
        for chart_title, series in curves.items():
            if isinstance(series, list):
                series = {chart_title: series}
            sections.append(svg_chart(chart_title, series))
    for table_title, rows in (tables or {}).items():
        sections += [f"<h2>{esc(table_title)}</h2>", _table(rows)]
    if images:
        sections.append("<h2>Images</h2>")
        for caption, image in images.items():
            sections.append(f'<figure><img src="{_image_uri(image)}" alt="{esc(caption)}" '
                            f'style="image-rendering:pixelated;max-width:100%"><figcaption>{esc(caption)}'
                            "</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}svg.chart{display:block;margin:12px 0}")
    document = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
                f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")
    path = Path(path)
    write_text(path, document)
    return path
