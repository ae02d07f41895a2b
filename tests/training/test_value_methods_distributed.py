"""VGPO and AC-Flow on two CPU processes (torchrun + accelerate, gloo): adapter and critic stay identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_two_processes(folder: Path, method: str, port: int) -> list[dict]:
    worker = Path(__file__).with_name("value_ddp_worker.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", str(worker),
         str(folder), method],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_ac_flow_averages_the_critic_and_the_adapter_over_processes(tmp_path):
    ranks = run_two_processes(tmp_path, "ac_flow", port=29541)
    # each process trains on its own rollouts; the averaged gradients (the same all-reduced bits on both ranks)
    # and the same initial weights give the same weights: exact by construction
    assert ranks[0]["critic"] == ranks[1]["critic"] and ranks[0]["critic_sum"] == ranks[1]["critic_sum"]
    assert ranks[0]["critic_steps"] == ranks[1]["critic_steps"] > 0
    assert ranks[0]["lora"] == ranks[1]["lora"] and ranks[0]["lora_sum"] == ranks[1]["lora_sum"]


@pytest.mark.slow
def test_vgpo_with_dense_rewards_stays_in_sync_over_processes(tmp_path):
    ranks = run_two_processes(tmp_path, "vgpo", port=29543)
    assert ranks[0]["lora"] == ranks[1]["lora"] and ranks[0]["lora_sum"] == ranks[1]["lora_sum"]
    # tiny config: 2 prompts × 2 samples per process in 2 chunks, 2 steps of which only step 0 is projected (step 1
    # ends at σ = 0): 4 per process and iteration
    assert ranks[0]["dense_evaluations"] == ranks[1]["dense_evaluations"] == [4.0, 4.0]
