"""Small configs and rewards for trainer tests on tiny pipelines."""

from pathlib import Path

import torch

from flowalign.training.config import (
    CheckpointConfig,
    DataConfig,
    EMAConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    SamplingConfig,
    TrainConfig,
)
from flowalign.training.lora import LoRAConfig
from reward_models.base import RewardModel, RewardOutput, RewardSpec

PROMPTS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"]


class Redness(RewardModel):
    """Mean of (red − green − blue) over the image: a cheap, deterministic reward with real variance."""

    spec = RewardSpec(name="redness", modality="any", needs_prompt=False, differentiable=True,
                      nominal_range=(-2.0, 1.0))

    def forward(self, images, prompts, metadata=None):
        self.check_inputs(images, prompts, metadata)
        channels = images.float().flatten(0, images.ndim - 4) if images.ndim == 5 else images.float()
        score = (channels[:, 0] - channels[:, 1] - channels[:, 2]).flatten(1).mean(1)
        if images.ndim == 5:
            score = score.view(images.shape[0], -1).mean(1)
        return RewardOutput.from_scores(score)


class NaNReward(Redness):
    def forward(self, images, prompts, metadata=None):
        return RewardOutput.from_scores(torch.full((images.shape[0],), float("nan")))


def write_prompts(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def tiny_config(folder: Path, **sections) -> TrainConfig:
    prompts = str(write_prompts(folder))
    defaults = dict(
        seed=3,
        output_dir=str(folder / "run"),
        iterations=1,
        model=ModelConfig(path="unused"),
        lora=LoRAConfig(rank=4, alpha=8),
        data=DataConfig(train_prompts=prompts, eval_prompts=prompts),
        sampling=SamplingConfig(num_steps=2, group_size=2, prompts_per_iteration=2, rollout_batch_size=2),
        optim=OptimConfig(lr=1e-2, micro_batch_size=3, steps_per_iteration=2),
        ema=EMAConfig(enabled=True, decay=0.5),
        eval=EvalConfig(every=1, num_steps=2, max_prompts=2, batch_size=2),
        checkpoint=CheckpointConfig(every=1, keep_last=2),
        logging=LoggingConfig(tensorboard=False, progress_bar=False, report=False),
    )
    defaults.update(sections)
    return TrainConfig(**defaults)


def record_advantages(trainer) -> list[dict]:
    """Wrap ``trainer.algorithm.advantages`` so that each call's rewards, trajectory and result are recorded."""
    calls: list[dict] = []
    original = trainer.algorithm.advantages

    def recording(rewards, trajectory, valid):
        advantages = original(rewards, trajectory, valid)
        calls.append({"rewards": rewards.detach().clone(), "trajectory": trajectory, "valid": valid.clone(),
                      "advantages": advantages.detach().clone()})
        return advantages

    trainer.algorithm.advantages = recording
    return calls
