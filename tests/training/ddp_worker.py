"""Run by tests/training/test_distributed.py under torchrun (2 CPU processes, gloo)."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flowalign.models.tiny import tiny_sd3_pipeline  # noqa: E402
from flowalign.training.trainer import Trainer  # noqa: E402
from trainer_helpers import Redness, tiny_config  # noqa: E402


def main(folder: str) -> None:
    accelerator = Accelerator(cpu=True)
    config = tiny_config(Path(folder), iterations=1)
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), accelerator=accelerator)
    prompts, metadata = trainer.train_set.sample(2, torch.Generator().manual_seed(0))
    traj, _, _ = trainer.sample(prompts, metadata, it=0)
    trainer.run()
    params = torch.cat([p.detach().flatten() for p in trainer.params])
    out = {"rank": accelerator.process_index, "world": accelerator.num_processes,
           "initial_noise": traj.latents[:, 0].flatten(1)[:, :8].tolist(), "params": params[:64].tolist(),
           "param_sum": float(params.double().sum())}
    Path(folder, f"rank{accelerator.process_index}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
