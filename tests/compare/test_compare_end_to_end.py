"""`flowalign compare` for real: two seeds of a one-iteration recipe on the shipped toy model, in subprocesses."""

import json
import re
from pathlib import Path

import pytest

from flowalign import cli

TOY_MODEL = Path(__file__).resolve().parents[2] / "assets" / "toy-sd3"
RECIPE = f"""\
iterations: 1
model: {{path: {TOY_MODEL}, adapter_kwargs: {{collapse_zero_padding: true}}}}
lora: {{rank: 4, alpha: 8}}
sampling: {{num_steps: 2, group_size: 2, prompts_per_iteration: 2, rollout_batch_size: 4}}
optim: {{lr: 1.0e-3, micro_batch_size: 4, steps_per_iteration: 1}}
eval: {{every: 1, num_steps: 2, max_prompts: 4, batch_size: 4, metrics: [shapes_quality]}}
checkpoint: {{every: 1, keep_last: 1}}
logging: {{tensorboard: false, progress_bar: false, report: false}}
"""


@pytest.mark.slow
def test_compare_trains_two_seeds_and_keeps_them_on_a_rerun(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    argv = ["compare", str(recipe), "--seeds", "0", "1", "--parallel", "2", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr()

    data = json.loads((out / "compare.json").read_text())
    (tiny,) = data["recipes"]
    assert tiny["finished"] == [0, 1] and data["failed_runs"] == 0
    for key in ("eval/reward", "eval/shapes_quality", "eval/color", "eval/count", "eval/num_components"):
        assert tiny["metrics"][key]["after"]["n"] == 2, key
    assert tiny["samples_seen"]["mean"] == 4  # 1 iteration × 2 prompts × 2 per group
    assert [p["samples"] for p in tiny["curves"]["eval/reward"]] == [0, 4]
    record = json.loads((out / "tiny" / "seed-1.compare_run.json").read_text())
    assert record["status"] == "finished" and record["returncode"] == 0 and record["threads"] == 1
    assert record["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", record["git_commit"])
    log = out / "tiny" / "seed-1.log"
    assert "outputs in" in log.read_text()
    assert "<svg" in (out / "compare.html").read_text() and "## Headline" in (out / "compare.md").read_text()

    size = log.stat().st_size
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.count("finished (kept)") == 2
    assert log.stat().st_size == size, "a finished run must not be launched again"
