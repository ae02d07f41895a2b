"""Self-contained HTML report for ``evaluate_preferences`` (inline SVG histograms, no scripts)."""

from __future__ import annotations

from html import escape
from typing import Any

from reward_models.evaluate import EvalReport


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
    return escape(str(value))


def histogram_svg(edges: list[float], counts: list[int], width: int = 360, height: int = 120) -> str:
    """Bar chart of a histogram as an inline ``<svg>`` element."""
    if not counts:
        return "<p>no scores</p>"
    top = max(counts) or 1
    bar_w = width / len(counts)
    bars = []
    for i, count in enumerate(counts):
        h = (height - 20) * count / top
        bars.append(f'<rect x="{i * bar_w:.1f}" y="{height - 20 - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                    f'fill="#4a7ab5"><title>[{edges[i]:.4g}, {edges[i + 1]:.4g}): {count}</title></rect>')
    labels = (f'<text x="0" y="{height - 5}" font-size="10">{edges[0]:.4g}</text>'
              f'<text x="{width}" y="{height - 5}" font-size="10" text-anchor="end">{edges[-1]:.4g}</text>')
    return f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{"".join(bars)}{labels}</svg>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: EvalReport, max_prompts: int = 50) -> str:
    parts = [f"<h1>Reward evaluation</h1><p>Manifest: <code>{escape(report.manifest)}</code> — "
             f"{report.n_pairs} pairs, {report.n_ties} ties, tie margin {report.tie_margin:g}.</p>",
             "<h2>Pairwise accuracy</h2>",
             _table(["reward", "accuracy (ties dropped)", "accuracy (ties counted)", "pairs", "ties", "invalid"],
                    [[name, m.accuracy, m.accuracy_with_ties, m.n_pairs, m.n_ties, m.n_invalid]
                     for name, m in report.rewards.items()]),
             "<h2>Score distributions</h2>"]
    for name, m in report.rewards.items():
        d = m.distribution
        parts.append(f"<h3>{escape(name)}</h3>")
        if d.get("count"):
            parts.append(f"<p>n={d['count']}, mean {_fmt(d['mean'])}, std {_fmt(d['std'])}, "
                         f"min {_fmt(d['min'])}, max {_fmt(d['max'])}</p>")
            parts.append(histogram_svg(d["histogram"]["edges"], d["histogram"]["counts"]))
        else:
            parts.append("<p>no valid scores</p>")
    if report.agreement:
        parts.append("<h2>Agreement between rewards</h2>")
        parts.append(_table(["rewards", "same preference", "pairs", "Pearson", "Spearman"],
                            [[k, v["preference_agreement"], v["pairs"], v["pearson"], v["spearman"]]
                             for k, v in report.agreement.items()]))
    parts.append(f"<h2>Per-prompt accuracy (first {max_prompts} prompts)</h2>")
    for name, m in report.rewards.items():
        rows = [[p, v["n"], v["accuracy"]] for p, v in list(m.per_prompt.items())[:max_prompts]]
        parts.append(f"<h3>{escape(name)}</h3>" + _table(["prompt", "pairs", "accuracy"], rows))
    if report.skipped:
        parts.append(f"<h2>Skipped rows ({len(report.skipped)})</h2>")
        parts.append(_table(["row", "error"], [[s["source"], s["error"]] for s in report.skipped]))
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Reward evaluation</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
