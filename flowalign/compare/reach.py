"""Samples needed to reach a baseline's final accuracy (``flowalign compare ... --reach NAME``).

The target is the baseline recipe's mean held-out accuracy after training. For each recipe: the first number of
samples seen at which its mean accuracy curve (the mean over seeds at each evaluation) is at least the target, and
per seed (for runs whose curves are at hand: trained in this comparison, or reused from a report that kept them) the
first evaluation at which that seed is.
Resolution: the evaluation interval (``eval.every`` iterations); None when the target is never reached. A claim of
faster convergence reads these next to the curves.
"""

from __future__ import annotations

from flowalign.compare.collect import RunResult
from flowalign.errors import ConfigError


def check_reach(name: str | None, recipe_names: list[str]) -> None:
    if name is not None and name not in recipe_names:
        raise ConfigError(f"--reach {name!r}: no recipe of this comparison has that name; give one of "
                          f"{', '.join(map(repr, recipe_names))} (a recipe file's stem, or a reused recipe's name)")


def first_reaching(points: list[tuple[float, float]], target: float) -> float | None:
    """The smallest x of ``(x, value)`` points, taken in order of x, whose value is at least ``target``."""
    return next((x for x, value in sorted(points) if value >= target), None)


def reach_summary(recipe: dict, runs: list[RunResult], acc: str, target: float) -> dict:
    """``{"samples": mean curve's first x at the target, "seeds": {seed: x or None}}`` (seeds with curves only)."""
    band = recipe["curves"].get(acc, [])
    seeds = {str(run.seed): first_reaching([(row["samples"], row[acc]) for row in run.curve if acc in row], target)
             for run in runs if run.curve}
    return {"samples": first_reaching([(p["samples"], p["mean"]) for p in band], target), "seeds": seeds}


def reach_note(data: dict) -> str | None:
    """The sentence under the overview that says what the reach column counts."""
    reach = data.get("reach")
    if not reach:
        return None
    target = "—" if reach["target"] is None else f"{reach['target']:.4f}"
    return (f"Samples to reach: the first evaluation at which the mean {reach['accuracy_key']} over seeds is at least "
            f"{target}, {reach['recipe']}'s final mean (per seed in brackets, for runs with per-seed curves); "
            "resolution: the evaluation interval.")


def add_reach(data: dict, runs_by_recipe: dict[str, list[RunResult]], name: str) -> None:
    """Set ``data["reach"]`` (target recipe and value) and each recipe's ``reach`` in place."""
    acc = data["accuracy_key"]
    baseline = next(r for r in data["recipes"] if r["name"] == name)
    target = baseline["metrics"].get(acc, {}).get("after", {}).get("mean")
    data["reach"] = {"recipe": name, "accuracy_key": acc, "target": target}
    for recipe in data["recipes"]:
        recipe["reach"] = (reach_summary(recipe, runs_by_recipe.get(recipe["name"], []), acc, target)
                           if target is not None else {"samples": None, "seeds": {}})
