"""A self-contained HTML report: summary table, SVG line charts, tables and embedded PNG images."""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from flowalign.utils.io import to_pil, write_text

Series = list[tuple[float, float]]
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 600, 280, 64, 16, 28, 44
STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:auto;padding:0 12px}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}"
         "svg.chart{display:block;margin:12px 0}figure{display:inline-block;margin:8px}"
         "img{image-rendering:pixelated;max-width:100%}img.sheet{image-rendering:auto}"
         "ul.headline{font-size:18px;line-height:1.6}")


def curves_from_metrics(rows: list[dict], keys: Sequence[str]) -> dict[str, Series]:
    """metrics.jsonl rows → {key: [(step, value), ...]}, skipping rows where the key is missing or null."""
    out: dict[str, Series] = {}
    for key in keys:
        series = [(float(r["step"]), float(r[key])) for r in rows
                  if r.get(key) is not None and r.get("step") is not None and math.isfinite(float(r[key]))]
        if series:
            out[key] = series
    return out


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 × 10^k apart) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, k = [], 0
    while first + k * step <= hi + step * 1e-9:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def svg_chart(title: str, series: Mapping[str, Series], x_label: str = "step") -> str:
    """One line chart (several named series) as inline SVG with axes, ticks, axis labels and a legend."""
    esc = html.escape
    clean = {name: [(float(x), float(y)) for x, y in values if math.isfinite(x) and math.isfinite(y)]
             for name, values in series.items()}
    points = [p for values in clean.values() for p in values]
    if not points:
        return (f'<svg class="chart" width="{WIDTH}" height="40" role="img">'
                f'<text x="8" y="24">{esc(title)}: no data</text></svg>')
    x0, x1 = _span([p[0] for p in points])
    y0, y1 = _span([p[1] for p in points])
    sx = lambda x: LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)  # noqa: E731
    sy = lambda y: HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM)  # noqa: E731
    parts = [f'<svg class="chart" width="{WIDTH}" height="{HEIGHT + 18 * len(clean)}" role="img">',
             f'<title>{esc(title)}</title>',
             f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{esc(title)}</text>']
    x_ticks = nice_ticks(x0, x1)
    if all(p[0].is_integer() for p in points):  # steps: no fractional ticks
        x_ticks = [t for t in x_ticks if float(t).is_integer()] or x_ticks
    for t in x_ticks:
        parts.append(f'<line x1="{sx(t):.1f}" y1="{HEIGHT - BOTTOM}" x2="{sx(t):.1f}" y2="{HEIGHT - BOTTOM + 4}" '
                     f'stroke="#333"/><text x="{sx(t):.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="10" '
                     f'text-anchor="middle">{t:.4g}</text>')
    for t in nice_ticks(y0, y1):
        parts.append(f'<line x1="{LEFT}" y1="{sy(t):.1f}" x2="{WIDTH - RIGHT}" y2="{sy(t):.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 6}" y="{sy(t) + 3:.1f}" font-size="10" text-anchor="end">{t:.4g}</text>')
    parts += [f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="#333"/>',
              f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#333"/>',
              f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" font-size="12" '
              f'text-anchor="middle">{esc(x_label)}</text>']
    for i, (name, values) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        if values:
            parts.append(f'<polyline data-name="{esc(name)}" fill="none" stroke="{color}" stroke-width="2" '
                         f'points="{coords}"/>')
        if 0 < len(values) <= 40:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in values]
        ly = HEIGHT + 18 * i + 6
        label = name if values else f"{name} (no data)"
        parts.append(f'<rect x="{LEFT}" y="{ly}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{LEFT + 16}" y="{ly + 9}" font-size="12">{esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.05 or 1.0
    return lo - pad, hi + pad


def _image_uri(image: Path | str | torch.Tensor) -> str:
    """A PNG data URI from a (3, H, W) or (N, 3, H, W) tensor in [0, 1], or an image file (re-encoded if not PNG)."""
    if isinstance(image, torch.Tensor):
        if image.ndim == 4:
            image = make_grid(image.detach().float().cpu(), nrow=min(len(image), 8), padding=2, pad_value=1.0)
        pil = to_pil(image)
    else:
        data = Path(image).read_bytes()
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return "data:image/png;base64," + base64.b64encode(data).decode()
        pil = Image.open(io.BytesIO(data)).convert("RGB")
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(value: object) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int)):
        value = f"{float(value):.6g}"
    return html.escape(str(value))


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_cell(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(caption: str, image: Path | str | torch.Tensor, css_class: str = "") -> str:
    esc = html.escape
    cls = f' class="{css_class}"' if css_class else ""
    return (f'<figure><img{cls} src="{_image_uri(image)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def write_report(path: Path, *, title: str, summary: dict[str, object],
                 curves: dict[str, dict[str, Series]] | dict[str, Series],
                 tables: dict[str, list[dict]] | None = None, images: dict[str, Path | torch.Tensor] | None = None,
                 notes: list[str] | None = None, headline: list[str] | None = None,
                 headline_images: dict[str, Path] | None = None) -> Path:
    """Write one HTML file with no external assets, atomically; returns its path.

    ``curves`` maps a chart title to its series ({name: [(x, y), ...]}) or directly to one series. ``headline``
    (lines) and ``headline_images`` (sheets already upscaled, so scaled smoothly, not as pixel art) open the page,
    before the summary."""
    esc = html.escape
    sections = [f"<h1>{esc(title)}</h1>"]
    if headline:
        sections.append("<ul class='headline'>" + "".join(f"<li>{esc(line)}</li>" for line in headline) + "</ul>")
    sections += [_figure(caption, image, "sheet") for caption, image in (headline_images or {}).items()]
    sections += ["<h2>Summary</h2>", _table([{"key": k, "value": v} for k, v in summary.items()])]
    sections += [f"<p class='note'>{esc(str(note))}</p>" for note in notes or []]
    if curves:
        sections.append("<h2>Curves</h2>")
        for chart_title, series in curves.items():
            sections.append(svg_chart(chart_title, {chart_title: series} if isinstance(series, list) else series))
    for table_title, rows in (tables or {}).items():
        sections += [f"<h2>{esc(table_title)}</h2>", _table(rows)]
    if images:
        sections.append("<h2>Images</h2>")
        sections += [_figure(caption, image) for caption, image in images.items()]
    document = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
                f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>\n")
    path = Path(path)
    write_text(path, document)
    return path
