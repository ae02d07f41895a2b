"""Run by tests/training/test_value_methods_distributed.py under torchrun (2 CPU processes, gloo)."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flowalign.algorithms.ac_flow import ACFlowConfig  # noqa: E402
from flowalign.algorithms.vgpo import VGPOConfig  # noqa: E402
from flowalign.models.tiny import tiny_sd3_pipeline  # noqa: E402
from flowalign.training.trainer import Trainer  # noqa: E402
from trainer_helpers import Redness, tiny_config  # noqa: E402


def main(folder: str, method: str) -> None:
    accelerator = Accelerator(cpu=True)
    algorithm = ACFlowConfig(critic_warmup=1) if method == "ac_flow" else VGPOConfig(dense_every=1)
    config = tiny_config(Path(folder), iterations=2, algorithm=algorithm)
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), accelerator=accelerator)
    trainer.run()
    params = torch.cat([p.detach().flatten() for p in trainer.params])
    out = {"lora": params[:64].tolist(), "lora_sum": float(params.double().sum())}
    if method == "ac_flow":
        critic = torch.cat([p.detach().flatten() for p in trainer.algorithm.critic.net.parameters()])
        out.update(critic=critic[:64].tolist(), critic_sum=float(critic.double().sum()),
                   critic_steps=trainer.algorithm.critic.steps)
    rows = [r for r in trainer.history if "reward/mean" in r]
    out["dense_evaluations"] = [r.get("dense/evaluations", 0.0) for r in rows]
    Path(folder, f"rank{accelerator.process_index}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
