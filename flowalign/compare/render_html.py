"""``compare.html``: one self-contained page. Learning curves of held-out accuracy and quality against samples
seen (mean over seeds, min–max band, one colour per recipe), the accuracy-vs-quality scatter of every seed
(hollow: before training, filled: after; accuracy bought with quality shows as points moving up and left), and
the tables of compare.md."""

from __future__ import annotations

import html

from flowalign.compare.aggregate import STD_NOTE, TIME_NOTE
from flowalign.compare.reach import reach_note
from flowalign.compare.render_md import featured_keys
from flowalign.compare.svg import Plot
from flowalign.compare.tables import budget_note, headline, label, metric_rows, overview_rows, reused_note, seed_rows
from flowalign.training.report import PALETTE, STYLE, _table

esc = html.escape


def colors(data: dict) -> dict[str, str]:
    return {r["name"]: PALETTE[i % len(PALETTE)] for i, r in enumerate(data["recipes"])}


def curve_chart(data: dict, key: str) -> str:
    """Mean over seeds of ``key`` against samples seen, with the min–max band of the seeds."""
    color = colors(data)
    bands = {r["name"]: r["curves"].get(key, []) for r in data["recipes"]}
    xs = [p["samples"] for band in bands.values() for p in band]
    ys = [p[k] for band in bands.values() for p in band for k in ("min", "max")]
    plot = Plot(f"held-out {label(key)} (mean over seeds, band: min–max)", "samples seen", label(key), xs, ys)
    for name, band in bands.items():
        plot.band([p["samples"] for p in band], [p["min"] for p in band], [p["max"] for p in band], color[name])
    for name, band in bands.items():
        plot.line([(p["samples"], p["mean"]) for p in band], color[name], name)
        plot.key(name if band else f"{name} (no data)", color[name])
    return plot.render()


def frontier_chart(data: dict) -> str:
    """Every finished seed's (quality, accuracy) before (hollow) and after (filled) training."""
    acc, quality = data["accuracy_key"], data["quality_key"]
    color = colors(data)
    points = [(r["name"], run["seed"], when, run[when][quality], run[when][acc])
              for r in data["recipes"] for run in r["runs"] for when in ("before", "after")
              if quality in run[when] and acc in run[when]]
    plot = Plot("accuracy against quality, per seed (hollow: before, filled: after)", f"quality ({label(quality)})",
                f"accuracy ({label(acc)})", [p[3] for p in points], [p[4] for p in points], pad=0.06)
    for name, seed, when, x, y in points:
        plot.dot(x, y, color[name], f"{name} seed {seed} {when}: accuracy {y:.4f}, quality {x:.4f}",
                 hollow=when == "before")
    for r in data["recipes"]:
        plot.key(r["name"], color[r["name"]])
    return plot.render()


def render_html(data: dict) -> str:
    acc, quality = data["accuracy_key"], data["quality_key"]
    title = f"flowalign compare: {', '.join(r['name'] for r in data['recipes'])}"
    sections = [f"<h1>{esc(title)}</h1>",
                f"<p>Seeds {esc(', '.join(map(str, data['seeds'])))}. Held-out accuracy is <code>{esc(acc)}</code>, "
                f"quality <code>{esc(quality)}</code>. {esc(STD_NOTE)}; worst seed is the smallest per-seed change "
                f"(after − before). {esc(TIME_NOTE)}.</p>",
                f"<p>Rerun or resume (finished runs are kept):</p><pre>{esc(data['command'])}</pre>",
                "<h2>Headline</h2><ul>"
                + "".join(f"<li>{esc(headline(r, acc, quality))}</li>" for r in data["recipes"]) + "</ul>",
                "<h2>Overview</h2>", _table(overview_rows(data)),
                f"<p><b>{esc(budget_note(data))}</b></p>" if budget_note(data) else "",
                f"<p>{esc(reach_note(data))}</p>" if reach_note(data) else "",
                "<h2>Learning curves</h2>", curve_chart(data, acc), curve_chart(data, quality),
                "<h2>Reward-hacking frontier</h2>", frontier_chart(data)]
    featured = featured_keys(data)
    for recipe in data["recipes"]:
        sections += [f"<h2>{esc(recipe['name'])}</h2><p>Recipe <code>{esc(recipe['recipe'])}</code>."
                     f"{esc(reused_note(recipe))}</p>",
                     "<h3>Held-out metrics over seeds</h3>", _table(metric_rows(recipe)),
                     "<h3>Per seed (before → after)</h3>", _table(seed_rows(recipe, featured))]
        for run in recipe["runs"]:
            if run["status"] != "finished":
                sections += [f"<h3>seed {run['seed']} failed: {esc(run['error'] or '')}</h3>",
                             f"<pre>{esc(run['log_tail'] or '(no log)')}</pre>"]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}pre{{white-space:pre-wrap;background:#f6f6f6;padding:6px}}</style></head>"
            f"<body>{''.join(sections)}</body></html>\n")
