"""Run a comparison end to end and write ``compare.json``, ``compare.md`` and ``compare.html`` into its folder."""

from __future__ import annotations

import json
from collections.abc import Callable

from flowalign.compare.aggregate import aggregate
from flowalign.compare.collect import collect_run
from flowalign.compare.plan import ComparePlan
from flowalign.compare.render_html import render_html
from flowalign.compare.render_md import render_markdown
from flowalign.compare.runner import Launcher, execute, subprocess_launcher
from flowalign.utils.io import write_text


def run_comparison(plan: ComparePlan, launcher: Launcher | None = None,
                   echo: Callable[[str], None] = print) -> dict:
    """Train what is not finished (``launcher``: ``subprocess_launcher`` unless given), collect every run,
    aggregate, and write the three reports (atomically); returns the aggregated data (compare.json's contents)."""
    records = execute(plan, launcher or subprocess_launcher, echo)
    results = [collect_run(run, record) for run, record in zip(plan.runs, records)]
    data = aggregate(plan, results)
    write_text(plan.out / "compare.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    write_text(plan.out / "compare.md", render_markdown(data))
    write_text(plan.out / "compare.html", render_html(data))
    return data
