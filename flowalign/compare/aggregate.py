"""Per-recipe statistics over seeds: mean ± sample standard deviation (ddof=1) of each held-out metric before
and after training and of its change, the worst and best seed's change (the margin that held for every seed),
samples used, time (the trainer's and the process's), and learning curves (mean, min and max over seeds at each
number of samples seen).

Featured metrics, in this order: held-out accuracy (``eval/shapes``, the verifier as an eval metric, when every
run logs it, else ``eval/reward``), quality (``eval/shapes_quality``), the verifier's per-clause scores (color,
shape, count, position, all_correct, shape[...]), components per image (``num_components``), then any other
``eval/*``. A composite reward logs these under its alias (``eval/shapes/color``): the last path part decides.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from flowalign.compare.collect import ACCURACY_ALIAS, RunResult, add_verifier_alias
from flowalign.compare.plan import ComparePlan
from flowalign.compare.reach import add_reach
from flowalign.compare.runner import FINISHED

QUALITY_KEY = "eval/shapes_quality"
CLAUSES = ("color", "shape", "count", "position", "all_correct")
COMPONENTS = "num_components"
STD_NOTE = "± is the sample standard deviation over seeds (ddof=1); none with fewer than 2 seeds"
TIME_NOTE = ("train s is the trainer's own time (training and held-out evaluation, summed over resumes); process s "
             "is the wall clock of the training processes compare launched, model loading included")


def stats(values: Iterable[float]) -> dict:
    """n, mean, sample std (ddof=1; None for n < 2), min and max of the finite values (Nones when none)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(kept), "mean": statistics.fmean(kept), "std": statistics.stdev(kept) if len(kept) > 1 else None,
            "min": min(kept), "max": max(kept)}


def metric_role(key: str, accuracy_key: str) -> str:
    """accuracy, quality, clause, components or other."""
    last = key.rsplit("/", 1)[-1]
    if key == accuracy_key:
        return "accuracy"
    if key == QUALITY_KEY:
        return "quality"
    if last in CLAUSES or last.startswith("shape["):
        return "clause"
    return "components" if last == COMPONENTS else "other"


def ordered_metrics(keys: Iterable[str], accuracy_key: str) -> list[str]:
    order = ("accuracy", "quality", "clause", "components", "other")
    return sorted(set(keys), key=lambda k: (order.index(metric_role(k, accuracy_key)), k))


def accuracy_key(results: list[RunResult]) -> str:
    """``eval/shapes`` when every finished run has it after training, or some have it and the others were trained
    on the verifier alone (their ``eval/reward`` is the same score); else ``eval/reward``."""
    verifier, reward = ACCURACY_ALIAS
    finished = [r for r in results if r.status == FINISHED]
    if any(verifier in r.after for r in finished) and all(
            verifier in r.after or (r.reward_is_verifier and reward in r.after) for r in finished):
        return verifier
    return reward


def change_stats(before: list[float | None], after: list[float | None]) -> dict:
    """Stats of after − before over the seeds that have both; ``positive``: how many of them rose."""
    changes = [a - b for b, a in zip(before, after) if a is not None and b is not None]
    return {**stats(changes), "positive": sum(c > 0 for c in changes)}


def recipe_summary(name: str, recipe: str, runs: list[RunResult], acc_key: str) -> dict:
    done = [r for r in runs if r.status == FINISHED]
    keys = ordered_metrics((k for r in done for k in (*r.before, *r.after)), acc_key)
    metrics = {}
    for key in keys:
        before, after = [r.before.get(key) for r in done], [r.after.get(key) for r in done]
        metrics[key] = {"role": metric_role(key, acc_key), "before": stats(before), "after": stats(after),
                        "change": change_stats(before, after)}
    curve_keys = [key for key in keys if metrics[key]["role"] in ("accuracy", "quality")]
    return {
        "name": name, "recipe": recipe,
        "seeds": [r.seed for r in runs], "finished": [r.seed for r in done],
        "failed": [r.seed for r in runs if r.status != FINISHED],
        "metrics": metrics,
        "samples_seen": stats(r.samples_seen for r in done),
        "train_s": stats(r.train_s for r in done),
        "process_s": stats(r.process_s for r in done),
        "curves": {key: curve_band(done, key) for key in curve_keys},
        "runs": [{"seed": r.seed, "status": r.status, "run_dir": r.run_dir, "before": r.before, "after": r.after,
                  "samples_seen": r.samples_seen, "train_s": r.train_s, "process_s": r.process_s, "error": r.error,
                  "log_tail": r.log_tail, "reward_is_verifier": r.reward_is_verifier,
                  "curve": curve_rows(r, curve_keys)}
                 for r in runs],
    }


def curve_rows(run: RunResult, keys: list[str]) -> list[dict]:
    """The run's curve restricted to the keys the report draws (what an ``--include`` of this report reads back
    to recompute bands and per-seed samples-to-reach)."""
    rows = ({k: v for k, v in row.items() if k in ("samples", "step") or k in keys} for row in run.curve)
    return [row for row in rows if any(k in row for k in keys)]


def curve_band(runs: list[RunResult], key: str) -> list[dict]:
    """At each number of samples seen that some run evaluated at: mean, min and max of ``key`` over those runs
    (``n`` of them)."""
    at: dict[float, list[float]] = {}
    for run in runs:
        for row in run.curve:
            if key in row:
                at.setdefault(row["samples"], []).append(row[key])
    return [{"samples": x, **{k: v for k, v in stats(at[x]).items() if k != "std"}} for x in sorted(at)]


def aggregate(plan: ComparePlan, results: list[RunResult]) -> dict:
    """The whole comparison as plain data (what compare.json holds and both renderers read): the recipes trained
    now, then those reused from earlier comparisons (``plan.included``, marked ``included_from``)."""
    reused = [run for recipe in plan.included for run in recipe.runs]
    acc = accuracy_key([*results, *reused])
    if acc == ACCURACY_ALIAS[0]:
        for run in (*results, *reused):
            add_verifier_alias(run)
    recipes = []
    for recipe in plan.recipes:
        runs = [r for r in results if r.recipe == str(recipe)]
        recipes.append(recipe_summary(recipe.stem, str(recipe), runs, acc))
    for recipe in plan.included:
        summary = recipe_summary(recipe.name, recipe.recipe, list(recipe.runs), acc)
        if not all(r.curve for r in recipe.runs if r.status == FINISHED):
            # a report without per-seed curves: its bands as they were
            bands = dict(recipe.curves)
            if acc == ACCURACY_ALIAS[0] and any(r.reward_is_verifier for r in recipe.runs):
                bands.setdefault(acc, bands.get(ACCURACY_ALIAS[1], []))
            summary["curves"] = {key: bands.get(key, []) for key in summary["curves"]}
            summary["curves_from_bands"] = True
        summary["included_from"] = recipe.source
        recipes.append(summary)
    data = {"command": plan.command, "out": str(plan.out), "seeds": list(plan.seeds), "std": STD_NOTE,
            "accuracy_key": acc, "quality_key": QUALITY_KEY,
            "failed_runs": sum(len(r["failed"]) for r in recipes), "recipes": recipes}
    if plan.reach is not None:
        runs = {recipe.stem: [r for r in results if r.recipe == str(recipe)] for recipe in plan.recipes}
        runs.update({recipe.name: list(recipe.runs) for recipe in plan.included})
        add_reach(data, runs, plan.reach)
    return data
