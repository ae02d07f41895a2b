"""scripts/metrics_over_seeds.py: first → last logged value of any metric, mean ± sample std over runs."""

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "metrics_over_seeds.py"))


def write_run(folder: Path, rows: list[dict]) -> None:
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_before_key_first_value_and_key_last_value_over_runs(tmp_path, capsys):
    # CTRL-like logs: the before value under its own key at step 1, the metric at steps 20 and 40
    for seed, (before, mid, last) in enumerate([(0.50, 0.60, 0.70), (0.48, 0.55, 0.58)]):
        write_run(tmp_path / f"seed-{seed}", [{"step": 1, "control/before/accuracy": before, "train/kl": 0.0},
                                              {"step": 20, "control/accuracy": mid, "train/kl": 0.3},
                                              {"step": 40, "control/accuracy": last, "train/kl": 0.2}])
    out = tmp_path / "table.json"
    assert SCRIPT["main"](["--runs", f"a={tmp_path}/seed-*", "--metric", "control/accuracy:control/before/accuracy",
                           "--metric", "train/kl", "--json", str(out)]) == 0
    accuracy, kl = json.loads(out.read_text())
    assert accuracy["before"]["mean"] == pytest.approx(0.49) and accuracy["after"]["mean"] == pytest.approx(0.64)
    # changes 0.20 and 0.10: mean 0.15, sample std 0.0707
    assert accuracy["change"]["mean"] == pytest.approx(0.15) and accuracy["change"]["std"] == pytest.approx(0.070711,
                                                                                                            abs=1e-6)
    assert accuracy["change"]["min"] == pytest.approx(0.10)
    assert (kl["before"]["mean"], kl["after"]["mean"]) == (0.0, pytest.approx(0.2))
    assert "| a | control/accuracy | 2 | 0.4900 ± 0.0141 | 0.6400 ± 0.0849 | +0.1500 ± 0.0707 | +0.1000 |" in (
        capsys.readouterr().out)


def test_a_pattern_without_runs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no run folder"):
        SCRIPT["main"](["--runs", f"a={tmp_path}/nothing-*", "--metric", "x"])
    with pytest.raises(SystemExit, match="expected LABEL=GLOB"):
        SCRIPT["main"](["--runs", "just-a-glob", "--metric", "x"])
