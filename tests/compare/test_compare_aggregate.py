"""compare's collection and aggregation against hand-computed values, on fabricated finished run folders."""

import json
import math
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fabricate import FakeLauncher, fabricate_run, write_recipe  # noqa: E402

from flowalign.compare.aggregate import stats  # noqa: E402
from flowalign.compare.outputs import run_comparison  # noqa: E402
from flowalign.compare.plan import build_plan  # noqa: E402

NAN = float("nan")
# per seed: (before, middle, after); position is NaN (no held-out prompt has a relation) and must be left out
SEEDS = {
    0: ({"eval/reward": 0.40, "eval/shapes_quality": 0.60, "eval/color": 0.8, "eval/position": NAN,
         "eval/num_components": 2.0},
        {"eval/reward": 0.45, "eval/shapes_quality": 0.59},
        {"eval/reward": 0.50, "eval/shapes_quality": 0.58, "eval/color": 0.9, "eval/position": NAN,
         "eval/num_components": 2.5}),
    1: ({"eval/reward": 0.40, "eval/shapes_quality": 0.60, "eval/color": 0.8, "eval/num_components": 2.0},
        {"eval/reward": 0.41, "eval/shapes_quality": 0.62},
        {"eval/reward": 0.46, "eval/shapes_quality": 0.61, "eval/color": 0.85, "eval/num_components": 2.0}),
    2: ({"eval/reward": 0.40, "eval/shapes_quality": 0.60, "eval/color": 0.8, "eval/num_components": 2.0},
        {"eval/reward": 0.43, "eval/shapes_quality": 0.60},
        {"eval/reward": 0.43, "eval/shapes_quality": 0.59, "eval/color": 0.8, "eval/num_components": 3.0}),
}


@pytest.fixture()
def compared(tmp_path):
    """Recipe a logs samples/seen (0, 10, 20); recipe b does not (fallback: step × 3 prompts × 4 per group)."""
    recipes = [write_recipe(tmp_path / "recipes", "a"), write_recipe(tmp_path / "recipes", "b")]
    plan = build_plan([str(r) for r in recipes], [0, 1, 2], str(tmp_path / "out"))
    for run in plan.runs:
        before, middle, after = SEEDS[run.seed]
        fabricate_run(run, before, after, middle, samples=[0, 10, 20] if run.name == "a" else None)
    launcher = FakeLauncher(list(plan.runs), lambda seed, argv: (0, None))
    data = run_comparison(plan, launcher, echo=lambda line: None)
    assert launcher.launches == [], "every run was finished: nothing may be launched"
    return plan, data


def test_stats_are_mean_and_sample_std():
    s = stats([0.10, 0.06, 0.03, NAN, None])
    # by hand: mean 0.19 / 3; deviations 0.03667, -0.00333, -0.03333; sum of squares 0.0024667 / (3 - 1)
    assert s["n"] == 3 and s["min"] == 0.03 and s["max"] == 0.10
    assert s["mean"] == pytest.approx(0.0633333, abs=1e-6)  # float sums: 1e-6 is far below the values' 1e-2 grain
    assert s["std"] == pytest.approx(0.0351188, abs=1e-6)
    assert stats([0.5])["std"] is None and stats([])["mean"] is None


def test_aggregate_matches_hand_computed_values(compared):
    plan, data = compared
    a = data["recipes"][0]
    assert data["accuracy_key"] == "eval/reward" and a["finished"] == [0, 1, 2] and a["failed"] == []
    assert list(a["metrics"]) == ["eval/reward", "eval/shapes_quality", "eval/color", "eval/num_components"]
    reward = a["metrics"]["eval/reward"]
    assert reward["before"]["mean"] == pytest.approx(0.40) and reward["before"]["std"] == pytest.approx(0.0)
    assert reward["after"]["mean"] == pytest.approx(1.39 / 3)
    change = reward["change"]
    assert change["mean"] == pytest.approx(0.19 / 3) and change["std"] == pytest.approx(0.0351188, abs=1e-6)
    assert (change["min"], change["max"], change["positive"]) == (pytest.approx(0.03), pytest.approx(0.10), 3)
    quality = a["metrics"]["eval/shapes_quality"]["change"]  # -0.02, +0.01, -0.01
    assert quality["min"] == pytest.approx(-0.02) and quality["positive"] == 1
    assert quality["mean"] == pytest.approx(-0.02 / 3) and quality["std"] == pytest.approx(0.0152753, abs=1e-6)
    assert a["metrics"]["eval/color"]["change"]["positive"] == 2  # +0.1, +0.05, 0: no change is not positive
    components = a["metrics"]["eval/num_components"]
    assert components["role"] == "components" and components["after"]["mean"] == pytest.approx(2.5)
    assert components["after"]["std"] == pytest.approx(0.5)
    assert a["samples_seen"]["mean"] == 20 and a["train_s"]["mean"] == 2.0


def test_learning_curves_against_samples_seen(compared):
    _, data = compared
    a, b = data["recipes"]
    curve = a["curves"]["eval/reward"]
    assert [p["samples"] for p in curve] == [0, 10, 20]  # logged samples/seen
    assert (curve[1]["mean"], curve[1]["min"], curve[1]["max"], curve[1]["n"]) == (
        pytest.approx(0.43), 0.41, 0.45, 3)
    assert [p["samples"] for p in b["curves"]["eval/shapes_quality"]] == [0, 12, 24]  # step × 3 × 4
    assert b["samples_seen"]["mean"] == 24  # 2 iterations × 12


def test_reports_are_written(compared):
    plan, data = compared
    assert json.loads((plan.out / "compare.json").read_text()) == data
    md = (plan.out / "compare.md").read_text()
    row = "| reward | accuracy | 0.4000 ± 0.0000 | 0.4633 ± 0.0351 | +0.0633 ± 0.0351 | +0.0300 | +0.1000 | 3/3 |"
    assert row in md
    assert "| a | 3/3 | 0.4000 → 0.4633 ± 0.0351 | +0.0633 ± 0.0351 (+0.0300) | 0.6000 → 0.5933 ± 0.0153 |" in md
    assert "every seed positive (worst seed +3.0)" in md and "quality fell by at most 2.0 points" in md
    assert plan.command in md and "--seeds 0 1 2" in plan.command
    assert "Not at equal budget: samples used differ (a 20, b 24)" in md  # a logs 20 samples, b falls back to 24
    page = (plan.out / "compare.html").read_text()
    assert page.count("<svg") == 3 and "src=" not in page  # self-contained
    assert page.count("<polygon") == 4  # a min–max band per recipe in each of the two learning curves
    scatter = re.findall(r"<svg.*?</svg>", page)[2]
    assert len(re.findall(r"<circle[^>]*fill=\"white\"", scatter)) == 6  # before: 2 recipes × 3 seeds
    assert scatter.count("<circle") == 12 and "b seed 2 after: accuracy 0.4300, quality 0.5900" in scatter
    assert math.isfinite(data["recipes"][1]["metrics"]["eval/reward"]["after"]["mean"])
