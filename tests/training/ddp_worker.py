"""Run by tests/training/test_distributed.py under torchrun (2 CPU processes, gloo)."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flowalign.models.tiny import tiny_sd3_pipeline  # noqa: E402
from flowalign.training.trainer import Trainer, TrainingError  # noqa: E402
from trainer_helpers import Redness, tiny_config  # noqa: E402


class NaNOnRankOne(Redness):
    """Finite rewards on rank 0, NaN on rank 1: both processes must skip the update together."""

    def forward(self, images, prompts, metadata=None):
        out = super().forward(images, prompts, metadata)
        if torch.distributed.get_rank() == 1:
            out.scores.fill_(float("nan"))
        return out


class ZeroOnRankOne(Redness):
    """Redness on rank 0; a constant on rank 1, whose groups then carry no advantage and train no pair."""

    def forward(self, images, prompts, metadata=None):
        out = super().forward(images, prompts, metadata)
        if torch.distributed.get_rank() == 1:
            out.scores.zero_()
        return out


def uneven_pairs(folder: str) -> None:
    accelerator = Accelerator(cpu=True)
    trainer = Trainer(tiny_config(Path(folder)), model=tiny_sd3_pipeline(seed=0), reward=ZeroOnRankOne(),
                      accelerator=accelerator)
    trainer.run()
    (row,) = [r for r in trainer.history if "train/grad_norm" in r]
    Path(folder, f"rank{accelerator.process_index}.json").write_text(
        json.dumps({"grad_norm": row["train/grad_norm"], "pairs": row["train/pairs"]}))


def skip_together(folder: str) -> None:
    accelerator = Accelerator(cpu=True)
    config = tiny_config(Path(folder), iterations=3, max_skipped_iterations=1)
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=NaNOnRankOne(), accelerator=accelerator)
    try:
        trainer.run()
        error = None
    except TrainingError as e:
        error = str(e)
    Path(folder, f"rank{accelerator.process_index}.json").write_text(json.dumps({"error": error}))


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
    {"skip": skip_together, "uneven": uneven_pairs, "sync": main}[sys.argv[2] if len(sys.argv) > 2 else "sync"](
        sys.argv[1])
