"""Read what one finished run wrote: held-out metrics before and after, its held-out curve against samples seen,
the samples it used and its time: ``train_s`` (summary.json's ``wall_time_s``: training and evaluation, all
sessions) and ``process_s`` (the launches' wall clock, model loading included, from compare_run.json).

Samples seen: ``summary.json``'s ``samples_seen`` and each metrics row's cumulative ``samples/seen`` when the
trainer logs them; otherwise iteration × ``sampling.prompts_per_iteration`` × ``sampling.group_size`` from the
run's ``config.yaml`` (one process: compare launches single-process runs). Non-finite values (a clause no
held-out prompt has, e.g. ``position``) are left out.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flowalign.compare.plan import RunSpec
from flowalign.compare.runner import FAILED, FINISHED, RunRecord
from flowalign.errors import FlowAlignError
from flowalign.training.metrics import read_metrics

SAMPLES_KEY = "samples/seen"
#: the verifier, the accuracy every toy comparison reports
VERIFIER = "shapes"
#: (the verifier as an eval metric, the run's own reward): the same numbers for a run trained on the verifier alone
ACCURACY_ALIAS = (f"eval/{VERIFIER}", "eval/reward")
LOG_TAIL_LINES = 30


@dataclass
class RunResult:
    """One run as the report sees it. ``curve``: eval rows ``{"samples": x, "step": s, "eval/...": v}``."""

    name: str
    recipe: str
    seed: int
    status: str
    run_dir: str
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    samples_seen: float | None = None
    train_s: float | None = None
    process_s: float | None = None
    error: str | None = None
    log_tail: str | None = None
    #: trained on the verifier alone: its ``eval/reward`` is the verifier's score (see ``add_verifier_alias``)
    reward_is_verifier: bool = False


def collect_run(run: RunSpec, record: RunRecord) -> RunResult:
    """The result of ``run``; a failed run (or a finished one whose files cannot be read) comes back with status
    failed, its error and the tail of its log."""
    result = RunResult(run.name, str(run.recipe), run.seed, record.status, str(run.run_dir), error=record.error,
                       process_s=record.wall_s)
    if record.status == FINISHED:
        try:
            _read_finished(run.run_dir, result)
            return result
        except (FlowAlignError, OSError, ValueError, KeyError, TypeError) as err:
            result.status, result.error = FAILED, f"its outputs could not be read: {err}"
    result.log_tail = log_tail(run.log_path)
    return result


def _read_finished(run_dir: Path, result: RunResult) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())  # NaN is read as float("nan")
    result.before = _finite(summary.get("eval_before", {}))
    result.after = _finite(summary.get("eval_after", {}))
    if not result.after:
        raise FlowAlignError(f"{run_dir / 'summary.json'} has no eval_after metrics")
    per_iteration = samples_per_iteration(run_dir / "config.yaml")
    rows = read_metrics(run_dir / "logs")
    result.curve = [
        {"samples": float(row.get(SAMPLES_KEY) if row.get(SAMPLES_KEY) is not None else row["step"] * per_iteration),
         "step": float(row["step"]), **_finite({k: v for k, v in row.items() if k.startswith("eval/")})}
        for row in rows if any(k.startswith("eval/") for k in row)]
    samples = summary.get("samples_seen")
    if samples is None:
        samples = next((row[SAMPLES_KEY] for row in reversed(rows) if row.get(SAMPLES_KEY) is not None), None)
    if samples is None:
        samples = int(summary.get("iterations", rows[-1]["step"] if rows else 0)) * per_iteration
    result.samples_seen = float(samples)
    if summary.get("wall_time_s") is not None:
        result.train_s = float(summary["wall_time_s"])
    result.reward_is_verifier = trains_on_verifier_alone(reward_weights_of(run_dir / "config.yaml"))


def reward_weights_of(config_file: Path) -> dict | None:
    """``reward.weights`` of a recipe or a run's saved ``config.yaml`` (``base:`` followed); None when the file is
    missing or does not load."""
    from flowalign.config import load_config
    from flowalign.training.config import TrainConfig

    try:
        return dict(load_config(TrainConfig, config_file).reward.weights)
    except (FlowAlignError, OSError, ValueError, TypeError):
        return None


def trains_on_verifier_alone(weights: dict | None) -> bool:
    """Whether the run's reward is the verifier with weight 1, so that its ``eval/reward`` is the verifier's score."""
    return weights is not None and set(weights) == {VERIFIER} and float(weights[VERIFIER]) == 1.0


def add_verifier_alias(result: RunResult) -> None:
    """A run trained on the verifier alone logs its score as ``eval/reward``; give it the name ``eval/shapes``
    too (when not logged under it), so that it stands next to runs that train on another reward (reward backprop
    on ``shapes_soft``) and log the verifier as an extra metric."""
    if not result.reward_is_verifier:
        return
    verifier, reward = ACCURACY_ALIAS
    for values in (result.before, result.after, *result.curve):
        if reward in values and verifier not in values:
            values[verifier] = values[reward]


def samples_per_iteration(config_file: Path) -> int:
    """``sampling.prompts_per_iteration × sampling.group_size`` of a run's saved ``config.yaml``."""
    if not config_file.is_file():
        raise FlowAlignError(f"{config_file} is missing")
    sampling = (yaml.safe_load(config_file.read_text()) or {}).get("sampling") or {}
    try:
        return int(sampling["prompts_per_iteration"]) * int(sampling["group_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise FlowAlignError(f"{config_file}: sampling.prompts_per_iteration and sampling.group_size must be "
                             f"integers ({err!r})") from err


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str | None:
    """The last ``lines`` lines of a log; progress-bar redraws (carriage returns) count as line breaks."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    kept = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    return "\n".join(kept[-lines:])


def _finite(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
