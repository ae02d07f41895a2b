"""What ``flowalign compare`` will run: every recipe × seed, each in ``<out>/<recipe stem>/seed-<S>``.

Every input is checked before anything runs: recipe files exist and load with the overrides (each seed's
config is built exactly as ``flowalign train`` will build it), seeds are distinct, ``parallel`` and ``threads``
are at least 1, and a run folder left by an earlier comparison was trained with the config it would get now.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from flowalign.config import load_config, parse_override, to_dict
from flowalign.errors import ConfigError

#: keys the comparison sets for each run; an override may not set them
RESERVED = ("seed", "output_dir")


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``recipe`` (as given) with ``seed`` into ``run_dir``; its log and record lie beside
    ``run_dir`` (``seed-0.log``, ``seed-0.compare_run.json``) because the trainer claims the run folder."""

    recipe: Path
    name: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...] = ()

    @property
    def log_path(self) -> Path:
        return self.run_dir.with_name(f"{self.run_dir.name}.log")

    @property
    def record_path(self) -> Path:
        return self.run_dir.with_name(f"{self.run_dir.name}.compare_run.json")

    def train_args(self, resume: bool) -> list[str]:
        """``flowalign train`` arguments; ``--resume`` goes last, where it cannot take the recipe as its value."""
        args = ["train", str(self.recipe), f"seed={self.seed}", f"output_dir={self.run_dir}", *self.overrides]
        return args + (["--resume"] if resume else [])


@dataclass(frozen=True)
class ComparePlan:
    recipes: tuple[Path, ...]
    seeds: tuple[int, ...]
    out: Path
    parallel: int
    threads: int
    overrides: tuple[str, ...]
    runs: tuple[RunSpec, ...]
    #: ``--include`` specs as given, and the recipes they reuse (``flowalign.compare.include``)
    include_specs: tuple[str, ...] = ()
    included: tuple = field(default=())
    #: ``--reach NAME``: report the samples each recipe needed to reach NAME's final accuracy
    reach: str | None = None

    @property
    def command(self) -> str:
        """The shell command that reruns (or resumes) this comparison."""
        argv = ["flowalign", "compare", *map(str, self.recipes), "--seeds", *map(str, self.seeds),
                "--parallel", str(self.parallel), "--threads", str(self.threads), "--out", str(self.out),
                *(word for spec in self.include_specs for word in ("--include", spec)),
                *(["--reach", self.reach] if self.reach else []), *self.overrides]
        return shlex.join(argv)


def build_plan(recipes: list[str], seeds: list[int], out: str, overrides: list[str] = (), parallel: int = 1,
               threads: int = 1, includes: list[str] = (), reach: str | None = None) -> ComparePlan:
    """Check the inputs (``ConfigError`` naming the bad one) and lay out the runs, recipe-major; ``includes``:
    earlier compare.json files whose recipes are reused, not trained (``flowalign.compare.include``); ``reach``:
    the recipe whose final accuracy the others are timed to (``flowalign.compare.reach``)."""
    from flowalign.compare.include import load_included, merge_included
    from flowalign.compare.reach import check_reach

    included = merge_included([recipe for spec in includes for recipe in load_included(spec)],
                           [Path(r).stem for r in recipes])
    check_reach(reach, [Path(r).stem for r in recipes] + [r.name for r in included])
    if not recipes and not included:
        raise ConfigError("no recipe given: name at least one YAML recipe, e.g. "
                          "`flowalign compare configs/toy_grpo_guard.yaml --seeds 0 1 2`")
    missing = [r for r in recipes if not Path(r).is_file()]
    if missing:
        raise ConfigError(f"recipe file(s) not found: {', '.join(repr(r) for r in missing)}")
    _check_names([Path(r) for r in recipes])
    if not seeds:
        raise ConfigError("no seed given: pass --seeds, e.g. --seeds 0 1 2")
    repeated = sorted(s for s, n in Counter(seeds).items() if n > 1)
    if repeated:
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))} repeats seed(s) {', '.join(map(str, repeated))}; "
                          "each seed must be given once")
    for flag, value in (("--parallel", parallel), ("--threads", threads)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    for item in overrides:
        key, _ = parse_override(item)
        if key in RESERVED:
            raise ConfigError(f"override {item!r}: compare sets {key} for each run (use --seeds / --out)")
    runs = tuple(RunSpec(Path(r), Path(r).stem, s, Path(out) / Path(r).stem / f"seed-{s}", tuple(overrides))
                 for r in recipes for s in seeds)
    for run in runs:
        check_run_config(run)
    return ComparePlan(tuple(map(Path, recipes)), tuple(seeds), Path(out), parallel, threads, tuple(overrides), runs,
                       tuple(includes), tuple(included), reach)


def _check_names(paths: list[Path]) -> None:
    """Each recipe gets the folder named after its file's stem: two recipes may not share one."""
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(path.stem, []).append(path)
    for name, same in by_name.items():
        if len(same) > 1:
            raise ConfigError(f"recipes {', '.join(repr(str(p)) for p in same)} would share the run folder "
                              f"{name!r} (named after the file); give each recipe its own file name")


def run_config(run: RunSpec):
    """The ``TrainConfig`` that ``flowalign train`` builds for ``run`` (errors name the recipe)."""
    from flowalign.training.config import TrainConfig

    return load_config(TrainConfig, run.recipe, [*run.overrides, f"seed={run.seed}", f"output_dir={run.run_dir}"])


def check_run_config(run: RunSpec) -> None:
    """Build ``run``'s config; when its folder holds an earlier run, that run's ``config.yaml`` must match it
    (a kept or resumed run trained with other settings would be compared as if it had these)."""
    from flowalign.training.config import TrainConfig

    wanted = _flat(to_dict(run_config(run)))
    saved_file = run.run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = _flat(to_dict(load_config(TrainConfig, saved_file)))
    differ = [k for k in sorted(set(wanted) | set(saved)) if k != "output_dir" and wanted.get(k) != saved.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:5])
        raise ConfigError(f"{saved_file} was trained with another config than {str(run.recipe)!r} seed={run.seed} "
                          f"gives now ({shown}{'; …' if len(differ) > 5 else ''}); delete {run.run_dir} to "
                          "train it again, or pass another --out")


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """Nested mappings → {"section.key": value} (lists stay values)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
