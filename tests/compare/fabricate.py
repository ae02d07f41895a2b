"""Fabricated recipes and run folders for the compare tests: what a finished `flowalign train` leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

from flowalign.compare.plan import RunSpec, run_config
from flowalign.compare.runner import Launch
from flowalign.config import dump_yaml


def write_recipe(folder: Path, name: str, prompts_per_iteration: int = 3, group_size: int = 4) -> Path:
    """A recipe file that loads as a TrainConfig (nothing trains from it in these tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"iterations: 2\nsampling: {{prompts_per_iteration: {prompts_per_iteration}, "
                    f"group_size: {group_size}}}\neval: {{every: 1, metrics: [shapes_quality]}}\n")
    return path


def fabricate_run(run: RunSpec, before: dict, after: dict, middle: dict | None = None,
                  samples: list[float] | None = None, train_s: float | None = 2.0) -> None:
    """A finished run: config.yaml as the trainer dumps it, metrics.jsonl with eval rows at steps 0, 1 (``middle``,
    when given) and 2, and summary.json. ``samples``: the logged ``samples/seen`` of the eval rows, or None for
    none logged (and no ``samples_seen`` in the summary)."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(run_config(run), run.run_dir / "config.yaml")
    evals = [(0, before), *([(1, middle)] if middle is not None else []), (2, after)]
    rows = []
    for i, (step, values) in enumerate(evals):
        row = {"step": step, **{k: (None if v != v else v) for k, v in values.items()}}  # NaN is logged as null
        if samples is not None:
            row["samples/seen"] = samples[i]
        rows.append(row)
    (run.run_dir / "logs").mkdir(exist_ok=True)
    (run.run_dir / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"iterations": 2, "output_dir": str(run.run_dir), "eval_before": before, "eval_after": after}
    if samples is not None:
        summary["samples_seen"] = samples[-1]
    if train_s is not None:
        summary["wall_time_s"] = train_s
    (run.run_dir / "summary.json").write_text(json.dumps(summary))  # NaN written as NaN, as json.dumps does


class FakeLauncher:
    """Records each launch; ``outcome(seed, argv)`` returns (returncode, metrics to fabricate or None)."""

    def __init__(self, runs: list[RunSpec], outcome):
        self.by_dir = {str(r.run_dir): r for r in runs}
        self.outcome = outcome
        self.launches: list[Launch] = []

    def __call__(self, launch: Launch) -> int:
        self.launches.append(launch)
        out_dir = next(a.split("=", 1)[1] for a in launch.argv if a.startswith("output_dir="))
        run = self.by_dir[out_dir]
        code, metrics = self.outcome(run.seed, launch.argv)
        with open(launch.log_path, "a") as log:
            log.write(f"training {run.name} seed {run.seed}\n" + ("Traceback: boom\n" if code else ""))
        if metrics is not None:
            fabricate_run(run, *metrics)
        return code

    def seeds(self) -> list[int]:
        return sorted(self.by_dir[next(a.split("=", 1)[1] for a in launch.argv if a.startswith("output_dir="))].seed
                      for launch in self.launches)
