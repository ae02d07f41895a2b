"""Two CPU processes (torchrun + accelerate, gloo): distinct samples, identical parameters after a step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_processes_sample_distinct_noise_and_stay_in_sync(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(worker),
         str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    noise = [tuple(map(tuple, r["initial_noise"])) for r in ranks]
    members = noise[0] + noise[1]
    assert len(set(members)) == len(members), "every group member on every process must get its own noise"
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]
