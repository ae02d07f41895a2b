"""`flowalign compare --reach NAME`: samples each recipe needed to reach NAME's final mean accuracy."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fabricate import FakeLauncher, fabricate_run, write_recipe  # noqa: E402

from flowalign.compare.outputs import run_comparison  # noqa: E402
from flowalign.compare.plan import build_plan  # noqa: E402
from flowalign.compare.reach import first_reaching  # noqa: E402
from flowalign.errors import ConfigError  # noqa: E402

# (before, middle, after) of eval/reward at samples 0, 10, 20
CURVES = {"base": {0: (0.40, 0.44, 0.50), 1: (0.40, 0.42, 0.46)},   # final mean 0.48
          "fast": {0: (0.40, 0.49, 0.52), 1: (0.40, 0.47, 0.50)},   # mean 0.48 at 10: reaches there
          "slow": {0: (0.40, 0.41, 0.49), 1: (0.40, 0.41, 0.45)}}   # mean 0.47 at 20: never


def compare(tmp_path, reach="base", includes=()):
    recipes = [write_recipe(tmp_path / "recipes", name) for name in CURVES]
    plan = build_plan([str(r) for r in recipes], [0, 1], str(tmp_path / "out"), includes=list(includes), reach=reach)
    for run in plan.runs:
        b, m, a = ({"eval/reward": v} for v in CURVES[run.name][run.seed])
        fabricate_run(run, b, a, m, samples=[0, 10, 20])
    return run_comparison(plan, FakeLauncher(list(plan.runs), lambda seed, argv: (0, None)), echo=lambda line: None)


def test_first_reaching_takes_points_in_order_and_counts_equality():
    assert first_reaching([(20, 0.5), (0, 0.1), (10, 0.48)], 0.48) == 10
    assert first_reaching([(0, 0.1)], 0.2) is None


def test_samples_to_reach_the_baselines_final_accuracy(tmp_path):
    data = compare(tmp_path)
    assert data["reach"]["recipe"] == "base" and data["reach"]["target"] == pytest.approx(0.48)
    base, fast, slow = (r["reach"] for r in data["recipes"])
    assert fast == {"samples": 10.0, "seeds": {"0": 10.0, "1": 20.0}}  # mean 0.48 at 10; seed 1's 0.47 is not
    assert slow["samples"] is None and slow["seeds"] == {"0": 20.0, "1": None}
    assert base["samples"] == 20.0
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| samples to reach base's final accuracy | samples used |" in md  # an overview column
    assert "| fast | 2/2 |" in md and "| 10 (seeds: 2/2 reached, at 10, 20) |" in md
    assert "not reached (seeds: 1/2 reached, at 20)" in md and "--reach base" in data["command"]
    assert json.loads((tmp_path / "out" / "compare.json").read_text()) == data


def test_an_unknown_reach_name_fails_before_anything_runs(tmp_path):
    recipe = write_recipe(tmp_path / "recipes", "a")
    with pytest.raises(ConfigError, match=r"--reach 'zz': no recipe.*'a'"):
        build_plan([str(recipe)], [0], str(tmp_path / "out"), reach="zz")
    assert not (tmp_path / "out").exists()
