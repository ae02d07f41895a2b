"""Recipes reused from an earlier comparison: ``flowalign compare NEW.yaml --seeds 0 1 2 --include OLD/compare.json``.

A baseline that was already trained at the same budget (the demo recipe, say) need not be trained again to stand
next to a new method: its per-seed held-out metrics before and after, samples used and times are read from the
earlier ``compare.json`` and aggregated with the same code as the runs trained now. Per-seed learning curves are not
in a ``compare.json``; the earlier report's curve bands (mean, min, max over its seeds) are kept as they were.
The reports name the file each reused recipe came from.

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
    on_verifier = trains_on_verifier_alone(reward_weights_of(Path(recipe["recipe"])))
    runs = []
    for run in recipe["runs"]:
        missing = [k for k in RUN_KEYS if k not in run]
        if missing:
            raise ConfigError(f"{path}: recipe {recipe['name']!r} seed {run.get('seed')} lacks {', '.join(missing)}")
        result = RunResult(recipe["name"], recipe["recipe"], int(run["seed"]), run["status"], run["run_dir"],
                           dict(run["before"]), dict(run["after"]), samples_seen=run["samples_seen"],
                           train_s=run["train_s"], process_s=run["process_s"], error=run.get("error"),
                           log_tail=run.get("log_tail"), reward_is_verifier=on_verifier)
        runs.append(result)
    curves = {key: list(band) for key, band in recipe.get("curves", {}).items()}
    return IncludedRecipe(str(path), recipe["name"], recipe["recipe"], tuple(runs), curves)


def check_names(included: list[IncludedRecipe], planned: list[str]) -> None:
    """A reused recipe may not share its name with a recipe trained now, nor with another reused one."""
    seen = set(planned)
    for recipe in included:
        if recipe.name in seen:
            raise ConfigError(f"--include {recipe.source}: recipe {recipe.name!r} is also "
                              f"{'trained in this comparison' if recipe.name in planned else 'included twice'}; "
                              f"select the others with {recipe.source}:NAME,NAME")
        seen.add(recipe.name)
