"""The comparison's tables and headline sentences as formatted strings, shared by the Markdown and HTML reports.

Values are shown as logged (accuracy and quality in [0, 1]); headlines state changes in points (× 100).
"""

from __future__ import annotations


def fmt(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def mean_std(s: dict, digits: int = 4, signed: bool = False) -> str:
    """``mean ± std`` (std omitted with one value, — with none)."""
    if not s or s.get("mean") is None:
        return "—"
    text = fmt(s["mean"], digits, signed)
    return text + (f" ± {s['std']:.{digits}f}" if s.get("std") is not None else "")


def points(value: float | None, signed: bool = True) -> str:
    return "—" if value is None else (f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}")


def _metric(recipe: dict, key: str) -> dict:
    return recipe["metrics"].get(key) or {"before": {}, "after": {}, "change": {}}


def label(key: str) -> str:
    return key.removeprefix("eval/")


def reused_note(recipe: dict) -> str:
    """For a recipe reused with ``--include``: where its runs came from (empty for one trained here)."""
    source = recipe.get("included_from")
    if not source:
        return ""
    bands = "; its learning curves are that report's bands" if recipe.get("curves_from_bands") else ""
    return f" Reused from `{source}` (not trained in this comparison{bands})."


def reach_cell(reach: dict) -> str:
    """The mean curve's first evaluation at the target, and how many seeds (with curves) reached it."""
    text = "not reached" if reach["samples"] is None else fmt(reach["samples"], 0)
    seeds = reach["seeds"]
    if seeds:
        reached = sorted(x for x in seeds.values() if x is not None)
        text += f" (seeds: {len(reached)}/{len(seeds)} reached" + (
            f", at {', '.join(fmt(x, 0) for x in reached)})" if reached else ")")
    return text


def overview_rows(data: dict) -> list[dict]:
    """One row per recipe: accuracy and quality, mean before → mean ± std after, their change and worst seed's
    change; samples used and time."""
    acc, quality = data["accuracy_key"], data["quality_key"]
    rows = []
    for recipe in data["recipes"]:
        row = {"recipe": recipe["name"] + (" (reused)" if recipe.get("included_from") else ""),
               "seeds": f"{len(recipe['finished'])}/{len(recipe['seeds'])}"}
        for key, title in ((acc, f"accuracy ({label(acc)})"), (quality, f"quality ({label(quality)})")):
            m = _metric(recipe, key)
            row[f"{title} before → after"] = f"{fmt(m['before'].get('mean'))} → {mean_std(m['after'])}"
            row[f"{title} change (worst seed)"] = (f"{mean_std(m['change'], signed=True)} "
                                                   f"({fmt(m['change'].get('min'), signed=True)})")
        if "reach" in data:
            row[f"samples to reach {data['reach']['recipe']}'s final accuracy"] = reach_cell(recipe["reach"])
        row["samples used"] = mean_std(recipe["samples_seen"], 0)
        row["train s"] = mean_std(recipe["train_s"], 1)
        row["process s"] = mean_std(recipe["process_s"], 1)
        rows.append(row)
    return rows


def metric_rows(recipe: dict) -> list[dict]:
    """One row per held-out metric of one recipe."""
    rows = []
    for key, m in recipe["metrics"].items():
        change = m["change"]
        rows.append({"metric": label(key), "kind": m["role"], "before": mean_std(m["before"]),
                     "after": mean_std(m["after"]), "change": mean_std(change, signed=True),
                     "worst seed": fmt(change["min"], signed=True), "best seed": fmt(change["max"], signed=True),
                     "seeds up": f"{change['positive']}/{change['n']}"})
    return rows


def seed_rows(recipe: dict, featured: list[str]) -> list[dict]:
    """One row per seed: status, ``featured`` metrics before → after, samples and wall time."""
    rows = []
    for run in recipe["runs"]:
        row = {"seed": str(run["seed"]), "status": run["status"]}
        for key in featured:
            before, after = run["before"].get(key), run["after"].get(key)
            row[label(key)] = f"{fmt(before)} → {fmt(after)}" if after is not None else "—"
        row["samples used"] = fmt(run["samples_seen"], 0)
        row["train s"] = fmt(run["train_s"], 1)
        row["process s"] = fmt(run["process_s"], 1)
        rows.append(row)
    return rows


def budget_note(data: dict) -> str | None:
    """A warning when the recipes did not use the same number of samples (mean over their finished seeds)."""
    used = {r["name"]: r["samples_seen"]["mean"] for r in data["recipes"] if r["samples_seen"]["mean"] is not None}
    if len(set(used.values())) <= 1:
        return None
    return ("Not at equal budget: samples used differ (" + ", ".join(f"{n} {v:.0f}" for n, v in used.items())
            + "); compare the learning curves at equal samples seen.")


def headline(recipe: dict, acc: str, quality: str) -> str:
    """A sentence a README can quote: accuracy's mean change and its worst seed, quality's worst fall."""
    a, q = _metric(recipe, acc)["change"], _metric(recipe, quality)["change"]
    if not a.get("n"):
        return f"{recipe['name']}: no finished seed"
    seeds = "every seed positive" if a["positive"] == a["n"] else f"{a['positive']} of {a['n']} seeds positive"
    text = (f"{recipe['name']}: held-out accuracy {fmt(_metric(recipe, acc)['before']['mean'], 3)} → "
            f"{fmt(_metric(recipe, acc)['after']['mean'], 3)}, {points(a['mean'])} points (mean over {a['n']} "
            f"seeds), {seeds} (worst seed {points(a['min'])})")
    if q.get("n"):
        held = (f"quality fell by at most {points(-q['min'], signed=False)} points" if q["min"] < 0
                else f"quality did not fall on any seed (worst {points(q['min'])})")
        text += f"; quality {points(q['mean'])} points on average, {held}"
    return text
