"""The end-of-run HTML report: a headline (each held-out metric before → after), the held-out samples before and
after side by side, reward and held-out curves, per-step ratio statistics."""

from __future__ import annotations

import math
import re
from pathlib import Path

from flowalign.training.eval_images import write_before_after
from flowalign.training.metrics import read_metrics
from flowalign.training.report import curves_from_metrics, write_report

_STEP_KEY = re.compile(r"^train/(ratio_mean|ratio_std|clip_above|clip_below|grad_mu_norm)/step_(\d+)$")


def per_step_table(rows: list[dict]) -> list[dict]:
    """Average of each per-step statistic over the run, one row per sampling step."""
    sums: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            match = _STEP_KEY.match(key)
            if match and value is not None:
                sums.setdefault(int(match.group(2)), {}).setdefault(match.group(1), []).append(value)
    table = []
    for step in sorted(sums):
        entry = {"step": step}
        entry.update({k: f"{sum(v) / len(v):.6g}" for k, v in sorted(sums[step].items())})
        table.append(entry)
    return table


def split_unit_range(rows: list[dict], keys: list[str]) -> tuple[list[str], list[str]]:
    """``keys`` whose logged values all lie in [0, 1] (accuracies, scores), and the others (counts, ...), so
    that each chart keeps a readable scale; all keys in one group when either group would be empty."""
    unit = [k for k in keys if all(0.0 <= r[k] <= 1.0 for r in rows if r.get(k) is not None)]
    other = [k for k in keys if k not in unit]
    return (unit, other) if unit and other else (list(keys), [])


def _headline_rank(key: str) -> int:
    """Accuracies first, then the training reward (on the toy world, the verifier's accuracy), then the rest."""
    return 0 if "accuracy" in key else (1 if key == "eval/reward" else 2)


def headline(summary: dict) -> list[dict]:
    """One row per held-out metric of ``summary["eval_before"]`` / ``["eval_after"]``: name (without ``eval/``),
    before, after and change (after − before; None where either side is missing or not finite), accuracy first,
    otherwise in the summary's order."""
    before, after = summary.get("eval_before", {}), summary.get("eval_after", {})
    keys = sorted(dict.fromkeys([*before, *after]), key=_headline_rank)  # stable: keeps the summary's order
    rows = []
    for key in keys:
        b, a = (_finite(side.get(key)) for side in (before, after))
        rows.append({"metric": key.removeprefix("eval/"), "before": b, "after": a,
                     "change": a - b if a is not None and b is not None else None})
    return rows


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def headline_lines(summary: dict) -> list[str]:
    """``"<metric>: before → after (change)"``, four decimals, ``n/a`` for a missing or non-finite value."""
    return [f"{r['metric']}: {_show(r['before'])} → {_show(r['after'])} ({_show(r['change'], '+.4f')})"
            for r in headline(summary)]


def _show(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def write_run_report(output_dir: Path, summary: dict) -> Path:
    rows = read_metrics(output_dir / "logs")
    unit, other = split_unit_range(rows, sorted({k for r in rows for k in r if k.startswith("eval/")}))
    curves = {
        "reward": curves_from_metrics(rows, ["reward/mean"]),
        "held-out (ODE, fixed seeds)": curves_from_metrics(rows, unit),
        "importance ratio": curves_from_metrics(rows, ["train/ratio_mean", "train/clip_frac_above",
                                                       "train/clip_frac_below"]),
        "speed": curves_from_metrics(rows, ["speed/rollout_images_per_s", "speed/train_pairs_per_s"]),
    }
    if other:
        curves["held-out, other scales"] = curves_from_metrics(rows, other)
    flat = {"iterations": summary.get("iterations")}
    for key, value in summary.get("eval_before", {}).items():
        flat[f"before {key}"] = f"{value:.4f}"
    for key, value in summary.get("eval_after", {}).items():
        flat[f"after {key}"] = f"{value:.4f}"
    pairs = write_before_after(output_dir)
    lead = {"held-out samples before and after training (same prompts and seeds)": pairs} if pairs else {}
    images = {name: output_dir / f"eval_{tag}.png" for name, tag in
              (("held-out before training", "before"), ("held-out after training", "after"))
              if (output_dir / f"eval_{tag}.png").is_file()}
    return write_report(output_dir / "report.html", title=f"flowalign run: {output_dir.name}", summary=flat,
                        curves=curves, tables={"per-step ratio statistics (mean over the run)": per_step_table(rows)},
                        images={} if pairs else images, headline=headline_lines(summary), headline_images=lead)
