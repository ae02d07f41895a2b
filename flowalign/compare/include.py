"""Recipes reused from an earlier comparison: ``flowalign compare NEW.yaml --seeds 0 1 2 --include OLD/compare.json``.

A baseline that was already trained at the same budget (the demo recipe, say) need not be trained again to stand
next to a new method: its per-seed held-out metrics before and after, samples used and times are read from the
earlier ``compare.json`` and aggregated with the same code as the runs trained now, per-seed learning curves included
(a report keeps each run's accuracy and quality curve; a one-seed band is that seed's curve). From a report without
per-seed curves, its curve bands (mean, min, max over its seeds) are kept as they were. The reports name the file
each reused recipe came from.

One recipe may come from several reports when their seeds do not overlap (seed 0 from one comparison, seeds 1 and 2
from a later one): its runs are pooled and aggregated as if trained together; bands without per-seed curves are
pooled exactly (n-weighted means, min of mins, max of maxes).

``SPEC`` is ``PATH`` (every recipe in it) or ``PATH:NAME[,NAME...]`` (those recipes, by the name its report uses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flowalign.compare.collect import RunResult, reward_weights_of, trains_on_verifier_alone
from flowalign.errors import ConfigError

RUN_KEYS = ("seed", "status", "run_dir", "before", "after", "samples_seen", "train_s", "process_s")


@dataclass(frozen=True)
class IncludedRecipe:
    """One recipe of an earlier comparison: its runs (without per-seed curves) and its curve bands by metric."""

    source: str
    name: str
    recipe: str
    runs: tuple[RunResult, ...]
    curves: dict[str, list[dict]] = field(default_factory=dict)


def split_spec(spec: str) -> tuple[Path, list[str]]:
    """``PATH`` or ``PATH:NAME,NAME``: the file and the names asked for (empty: all)."""
    if Path(spec).is_file() or ":" not in spec:
        return Path(spec), []
    path, _, names = spec.rpartition(":")
    return Path(path), [n for n in names.split(",") if n]


def load_included(spec: str) -> list[IncludedRecipe]:
    """The recipes ``spec`` names (``ConfigError`` naming the file, the recipe or the field that is wrong)."""
    path, names = split_spec(spec)
    if not path.is_file():
        raise ConfigError(f"--include {spec!r}: {path} is not a file (give the compare.json of an earlier "
                          "comparison, optionally followed by :NAME,NAME)")
    try:
        data = json.loads(path.read_text())
        recipes = {r["name"]: r for r in data["recipes"]}
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"--include {spec!r}: {path} is not a compare.json written by flowalign compare "
                          f"({err!r})") from err
    unknown = [n for n in names if n not in recipes]
    if unknown:
        raise ConfigError(f"--include {spec!r}: {path} has no recipe named {', '.join(map(repr, unknown))}; it has "
                          f"{', '.join(map(repr, recipes))}")
    return [_included(path, recipes[name]) for name in (names or list(recipes))]


def _included(path: Path, recipe: dict) -> IncludedRecipe:
    # reports written before runs kept it: read from the recipe file as it is now
    on_verifier = trains_on_verifier_alone(reward_weights_of(Path(recipe["recipe"])))
    runs = []
    for run in recipe["runs"]:
        missing = [k for k in RUN_KEYS if k not in run]
        if missing:
            raise ConfigError(f"{path}: recipe {recipe['name']!r} seed {run.get('seed')} lacks {', '.join(missing)}")
        result = RunResult(recipe["name"], recipe["recipe"], int(run["seed"]), run["status"], run["run_dir"],
                           dict(run["before"]), dict(run["after"]), samples_seen=run["samples_seen"],
                           train_s=run["train_s"], process_s=run["process_s"], error=run.get("error"),
                           log_tail=run.get("log_tail"),
                           reward_is_verifier=bool(run.get("reward_is_verifier", on_verifier)),
                           curve=[dict(row) for row in run.get("curve", [])])
        runs.append(result)
    curves = {key: list(band) for key, band in recipe.get("curves", {}).items()}
    if len(runs) == 1 and not runs[0].curve:
        runs[0].curve = curve_of_one_seed(curves)
    return IncludedRecipe(str(path), recipe["name"], recipe["recipe"], tuple(runs), curves)


def curve_of_one_seed(curves: dict[str, list[dict]]) -> list[dict]:
    """The per-seed curve behind bands that each hold one seed (``n == 1`` at every point); else empty."""
    points = [p for band in curves.values() for p in band]
    if not points or any(p.get("n") != 1 for p in points):
        return []
    rows: dict[float, dict] = {}
    for key, band in curves.items():
        for p in band:
            rows.setdefault(p["samples"], {"samples": p["samples"]})[key] = p["mean"]
    return [rows[x] for x in sorted(rows)]


def merge_included(included: list[IncludedRecipe], planned: list[str]) -> list[IncludedRecipe]:
    """Reused recipes, those of one name pooled into one (``pool``); none may share a name with one trained now."""
    pooled = []
    for name in dict.fromkeys(r.name for r in included):
        group = [r for r in included if r.name == name]
        if name in planned:
            raise ConfigError(f"--include {group[0].source}: recipe {name!r} is also trained in this comparison; "
                              f"select the others with {group[0].source}:NAME,NAME")
        pooled.append(group[0] if len(group) == 1 else pool(group))
    return pooled


def pool(group: list[IncludedRecipe]) -> IncludedRecipe:
    """One recipe from several reports whose seeds are disjoint (``ConfigError`` naming a repeated seed)."""
    name, sources = group[0].name, [r.source for r in group]
    seeds = [run.seed for r in group for run in r.runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--include: recipe {name!r} is included twice with seed(s) "
                          f"{', '.join(map(str, repeated))} (from {', '.join(sources)}); pool only reports whose "
                          f"seeds differ, or select the others with PATH:NAME,NAME")
    recipes = sorted({r.recipe for r in group})
    if len(recipes) > 1:
        raise ConfigError(f"--include: recipe {name!r} comes from different recipe files ({', '.join(recipes)}) in "
                          f"{', '.join(sources)}; only runs of one recipe can be pooled")
    runs = tuple(sorted((run for r in group for run in r.runs), key=lambda run: run.seed))
    curves: dict[str, list[dict]] = {}
    for recipe in group:
        curves = {key: pool_bands(curves.get(key, []), recipe.curves.get(key, []))
                  for key in dict.fromkeys([*curves, *recipe.curves])}
    return IncludedRecipe(" + ".join(sources), name, recipes[0], runs, curves)


def pool_bands(a: list[dict], b: list[dict]) -> list[dict]:
    """Two curve bands over disjoint seeds as one: at each number of samples, n-weighted mean, min and max."""
    at: dict[float, dict] = {p["samples"]: dict(p) for p in a}
    for p in b:
        q = at.get(p["samples"])
        if q is None or q.get("mean") is None:
            at[p["samples"]] = dict(p)
        elif p.get("mean") is not None:
            n = q["n"] + p["n"]
            at[p["samples"]] = {"samples": p["samples"], "n": n, "mean": (q["mean"] * q["n"] + p["mean"] * p["n"]) / n,
                                "min": min(q["min"], p["min"]), "max": max(q["max"], p["max"])}
    return [at[x] for x in sorted(at)]
