"""Any logged training metric over seeds: first value → last value, mean ± sample std over runs, and the change.

`flowalign compare` aggregates the held-out evaluation (``eval/*``); methods log other numbers of their own (CTRL's
``control/accuracy``, DPO's ``train/implicit_accuracy``). This script reads them from the runs' ``logs/metrics.jsonl``:

    python scripts/metrics_over_seeds.py --runs 'alpha 1=runs/compare-ctrl/toy_ctrl/seed-*' \\
        --metric control/accuracy:control/before/accuracy --metric control/macro_f1:control/before/macro_f1 \\
        --metric train/kl --json runs/ctrl-table.json

``--metric KEY[:BEFORE_KEY]``: "after" is KEY's last logged value; "before" is BEFORE_KEY's first logged value
(default: KEY's first). ``--runs LABEL=GLOB`` (repeatable) names a group of run folders. ± is the sample standard
deviation over runs (ddof=1), as in `flowalign compare`; "worst" is the smallest per-run change. Prints a Markdown
table; ``--json`` also writes the numbers (atomically).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from flowalign.compare.aggregate import stats
from flowalign.compare.render_md import md_table
from flowalign.compare.tables import fmt, mean_std
from flowalign.training.metrics import read_metrics
from flowalign.utils.io import write_text


def parse_group(text: str) -> tuple[str, list[Path]]:
    label, sep, pattern = text.partition("=")
    if not sep or not label or not pattern:
        raise SystemExit(f"--runs {text!r}: expected LABEL=GLOB, e.g. 'alpha 1=runs/compare-ctrl/toy_ctrl/seed-*'")
    folders = sorted(Path(p) for p in glob.glob(pattern) if (Path(p) / "logs").is_dir())
    if not folders:
        raise SystemExit(f"--runs {text!r}: no run folder (with logs/) matches {pattern!r}")
    return label, folders


def first_last(rows: list[dict], key: str, before_key: str) -> tuple[float | None, float | None]:
    """(first logged value of ``before_key``, last logged value of ``key``), None where never logged."""
    before = next((r[before_key] for r in rows if r.get(before_key) is not None), None)
    after = next((r[key] for r in reversed(rows) if r.get(key) is not None), None)
    return before, after


def summarize(groups: list[tuple[str, list[Path]]], metrics: list[tuple[str, str]]) -> list[dict]:
    out = []
    for label, folders in groups:
        logs = {str(f): read_metrics(f / "logs") for f in folders}
        for key, before_key in metrics:
            pairs = {run: first_last(rows, key, before_key) for run, rows in logs.items()}
            changes = [a - b for b, a in pairs.values() if a is not None and b is not None]
            out.append({"runs": label, "metric": key, "before_key": before_key,
                        "before": stats(b for b, _ in pairs.values()), "after": stats(a for _, a in pairs.values()),
                        "change": stats(changes), "per_run": {run: {"before": b, "after": a}
                                                              for run, (b, a) in pairs.items()}})
    return out


def table_rows(summary: list[dict]) -> list[dict]:
    return [{"runs": s["runs"], "metric": s["metric"], "n": str(s["after"]["n"]),
             "before": mean_std(s["before"]), "after": mean_std(s["after"]),
             "change": mean_std(s["change"], signed=True), "worst": fmt(s["change"]["min"], signed=True)}
            for s in summary]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", action="append", required=True, metavar="LABEL=GLOB")
    parser.add_argument("--metric", action="append", required=True, metavar="KEY[:BEFORE_KEY]")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    groups = [parse_group(text) for text in args.runs]
    metrics = [(m.partition(":")[0], m.partition(":")[2] or m.partition(":")[0]) for m in args.metric]
    summary = summarize(groups, metrics)
    sys.stdout.write(md_table(table_rows(summary)))
    if args.json is not None:
        write_text(args.json, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
