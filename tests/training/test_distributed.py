"""Two CPU processes (torchrun + accelerate, gloo): distinct samples, identical parameters after a step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_helpers import Redness, tiny_config  # noqa: E402

from flowalign.models.tiny import tiny_sd3_pipeline  # noqa: E402
from flowalign.training.trainer import Trainer  # noqa: E402


def run_two_processes(folder: Path, *args: str, port: int, timeout: int = 600) -> list[dict]:
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", str(worker),
         str(folder), *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_processes_sample_distinct_noise_and_stay_in_sync(tmp_path):
    ranks = run_two_processes(tmp_path, port=29517)
    assert [r["world"] for r in ranks] == [2, 2]
    noise = [tuple(map(tuple, r["initial_noise"])) for r in ranks]
    members = noise[0] + noise[1]
    assert len(set(members)) == len(members), "every group member on every process must get its own noise"
    # exact by construction: the same initial weights, and the all-reduce hands both ranks the same gradient bits
    # (a + b == b + a in float), so the same optimizer step gives the same parameters
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]


@pytest.mark.slow
def test_invalid_rewards_on_one_process_skip_the_update_on_both(tmp_path):
    """A process that skipped alone would leave the other waiting in the gradient all-reduce for ever."""
    ranks = run_two_processes(tmp_path, "skip", port=29518, timeout=300)
    for rank in ranks:
        assert rank["error"] is not None and "2 consecutive iterations" in rank["error"]
        assert "non-finite or invalid rewards" in rank["error"]


@pytest.mark.slow
def test_gradients_are_the_per_pair_mean_over_all_processes(tmp_path):
    """Rank 1 trains no pair, so the two-process step is rank 0's alone: the same gradient as one process with
    rank 0's seeds (a plain mean over processes would halve it)."""
    ranks = run_two_processes(tmp_path / "two", "uneven", port=29519)
    assert ranks[0]["pairs"] > 0 and ranks[1]["pairs"] == 0
    alone = Trainer(tiny_config(tmp_path / "one"), model=tiny_sd3_pipeline(seed=0), reward=Redness())
    alone.run()
    (row,) = [r for r in alone.history if "train/grad_norm" in r]
    # rel 1e-5: float32 rounding of the same gradient reduced in another layout (DDP buckets, all-reduce) against
    # one process; the mistake this test guards against (a mean over processes) would be off by a factor of 2
    for rank in ranks:
        assert rank["grad_norm"] == pytest.approx(row["train/grad_norm"], rel=1e-5)
