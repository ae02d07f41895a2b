"""``compare.md``: how to rerun, the headline, the overview and per-recipe tables, and failed runs' log tails."""

from __future__ import annotations

from flowalign.compare.aggregate import STD_NOTE, TIME_NOTE
from flowalign.compare.reach import reach_note
from flowalign.compare.tables import budget_note, headline, metric_rows, overview_rows, reused_note, seed_rows


def md_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def featured_keys(data: dict) -> list[str]:
    """Accuracy, quality and components per image, the columns of the per-seed tables."""
    present = {k for recipe in data["recipes"] for k in recipe["metrics"]}
    components = sorted(k for recipe in data["recipes"] for k, m in recipe["metrics"].items()
                        if m["role"] == "components")
    return [k for k in (data["accuracy_key"], data["quality_key"]) if k in present] + components[:1]


def render_markdown(data: dict) -> str:
    acc, quality = data["accuracy_key"], data["quality_key"]
    parts = [f"# flowalign compare: {', '.join(r['name'] for r in data['recipes'])}\n",
             f"Seeds {', '.join(map(str, data['seeds']))}. Held-out accuracy is `{acc}`, quality `{quality}`. "
             f"{STD_NOTE}; \"worst seed\" is the smallest per-seed change (after − before). {TIME_NOTE}.\n",
             "Rerun or resume (finished runs are kept, unfinished ones resumed):\n",
             f"```sh\n{data['command']}\n```\n", "## Headline\n"]
    parts += [f"- {headline(recipe, acc, quality)}" for recipe in data["recipes"]]
    parts += ["", "## Overview\n", md_table(overview_rows(data))]
    if budget_note(data):
        parts.append(f"**{budget_note(data)}**\n")
    if reach_note(data):
        parts.append(f"{reach_note(data)}\n")
    featured = featured_keys(data)
    for recipe in data["recipes"]:
        parts += [f"## {recipe['name']}\n", f"Recipe `{recipe['recipe']}`.{reused_note(recipe)}\n",
                  "Held-out metrics over seeds:\n",
                  md_table(metric_rows(recipe)), "Per seed (before → after):\n",
                  md_table(seed_rows(recipe, featured))]
    failed = [(recipe, run) for recipe in data["recipes"] for run in recipe["runs"] if run["status"] != "finished"]
    if failed:
        parts.append("## Failed runs\n")
        for recipe, run in failed:
            parts += [f"### {recipe['name']} seed {run['seed']}: {run['error'] or 'failed'}\n",
                      f"Run folder `{run['run_dir']}`; last lines of its log:\n",
                      f"```text\n{run['log_tail'] or '(no log)'}\n```\n"]
    return "\n".join(parts)
