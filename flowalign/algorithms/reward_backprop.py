"""Reward back-propagation through the sampler (the DRaFT / AlignProp family), on the shared trainer.

What it samples: each iteration ``sampling.prompts_per_iteration`` training prompts × ``sampling.group_size``
seeds (the same prompts, seeds and initial noise as a GRPO rollout of that iteration), sampled by
``differentiable_rollout`` with ``sampling.dynamics`` over ``sampling.num_steps`` steps (σ: 1 noise → 0 data).
The noise z of every step is fixed data, so the final latent x0 is a reparameterized function of the adapter.
Extra networks: none. How it updates: per sample

    L = −reward_scale · r(decode(x0), prompt) + kl_beta · Σ_steps KL(π_θ(·|x_t) ‖ π_base(·|x_t)),

the reward r from the run's reward model, which must be differentiable (``RewardSpec.differentiable``); the KL
per step in closed form ‖μ_θ − μ_base‖²/(2·std²), reduced over the latent by ``kl_reduction`` (``sum``: the
true KL; ``mean``: per element) and summed over the steps (0 on ODE steps). The gradient flows only through the
last K steps (truncated backpropagation: ``grad_steps``, or K drawn uniformly per iteration in
[``grad_steps``, ``grad_steps_max``], DRaFT-LV-style random truncation), with gradient checkpointing of the
transformer calls (``checkpoint``). The iteration's samples are split into ``optim.steps_per_iteration``
optimizer steps of ``optim.micro_batch_size``-sample differentiable rollouts; a step's gradient is the
per-sample mean. Subclasses (CTRL) change the per-sample reward (``sample_reward``) and what is active while a
micro-batch is sampled and back-propagated (``sampling_context``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flowalign.algorithms.base import Algorithm, AlgorithmConfig, register_algorithm
from flowalign.errors import ConfigError
from flowalign.sampling import make_generators
from flowalign.sampling.differentiable import DifferentiableTrajectory, differentiable_rollout
from flowalign.sampling.dynamics import REDUCTIONS
from flowalign.training.seeding import derive_seed, derived_generator

if TYPE_CHECKING:
    from flowalign.training.config import TrainConfig
    from flowalign.training.trainer import Trainer

DIFFERENTIABLE_EXAMPLES = "shapes_soft, pickscore, hpsv2, aesthetic, clipscore, imagereward"


@dataclass
class RewardBackpropConfig(AlgorithmConfig):
    """``grad_steps``: K, the last steps differentiated (>= 1); ``grad_steps_max``: when set, K is drawn
    uniformly in [grad_steps, grad_steps_max] per iteration; ``kl_beta`` (>= 0) and ``kl_reduction`` (sum | mean)
    weigh the per-step KL to the base model (the adapter disabled); ``checkpoint``: recompute differentiated
    transformer calls in backward; ``reward_scale`` (> 0) multiplies the reward in the loss."""

    name: str = "reward_backprop"
    grad_steps: int = 1
    grad_steps_max: int | None = None
    kl_beta: float = 0.0
    kl_reduction: str = "sum"
    checkpoint: bool = True
    reward_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.grad_steps < 1:
            raise ConfigError(f"algorithm.grad_steps must be >= 1, got {self.grad_steps}")
        if self.grad_steps_max is not None and self.grad_steps_max < self.grad_steps:
            raise ConfigError(f"algorithm.grad_steps_max must be >= algorithm.grad_steps ({self.grad_steps}) or "
                              f"null, got {self.grad_steps_max}")
        if not self.kl_beta >= 0:
            raise ConfigError(f"algorithm.kl_beta must be >= 0, got {self.kl_beta}")
        if self.kl_reduction not in REDUCTIONS:
            raise ConfigError(f"algorithm.kl_reduction must be one of {', '.join(REDUCTIONS)}, "
                              f"got {self.kl_reduction!r}")
        if not self.reward_scale > 0:
            raise ConfigError(f"algorithm.reward_scale must be > 0, got {self.reward_scale}")


@dataclass
class SampledObjective:
    """One micro-batch: ``loss`` (B,) per sample with a graph, ``reward`` (B,) detached, ``valid`` (B,),
    ``kl`` (B,) detached (summed over steps; zeros without a KL term), the trajectory."""

    loss: Tensor
    reward: Tensor
    valid: Tensor
    kl: Tensor
    trajectory: DifferentiableTrajectory


@register_algorithm("reward_backprop")
class RewardBackprop(Algorithm):
    Config = RewardBackpropConfig

    def validate(self, config: TrainConfig) -> None:
        super().validate(config)
        cfg, steps = self.config, config.sampling.num_steps
        name = config.algorithm.name
        for key in ("grad_steps", "grad_steps_max"):
            value = getattr(cfg, key)
            if value is not None and value > steps:
                raise ConfigError(f"algorithm.{key} = {value} exceeds sampling.num_steps = {steps}: at most every "
                                  "step can be differentiated")
        if config.sampling.sde_window_size is not None:
            raise ConfigError(f"{name} samples every step with sampling.dynamics; sampling.sde_window_size "
                              f"({config.sampling.sde_window_size}) is not used by it: set it to null")
        if self.uses_kl:
            if not config.lora.enabled:
                raise ConfigError(f"{name}: a KL term needs LoRA (lora.enabled: true): the base model is the "
                                  "transformer with its adapter disabled")
            if not config.sampling.dynamics_config.is_stochastic:
                raise ConfigError(f"{name}: a KL term needs a stochastic sampler (sampling.dynamics "
                                  f"{config.sampling.dynamics!r} with noise_level {config.sampling.noise_level} "
                                  "has no transition density)")

    def kl_weight(self) -> float:
        """The weight of the summed per-step KL in the loss (``kl_beta``)."""
        return self.config.kl_beta

    @property
    def uses_kl(self) -> bool:
        return self.kl_weight() > 0

    def setup(self, trainer: Trainer) -> None:
        spec = trainer.reward.spec
        if not spec.differentiable:
            raise ConfigError(f"{trainer.config.algorithm.name} back-propagates the reward through the sampler, "
                              f"but reward {spec.name!r} is not differentiable (its RewardSpec says "
                              f"differentiable=False); use a differentiable one, e.g. {DIFFERENTIABLE_EXAMPLES}")

    # ------------------------------------------------------------------------------------------ objective
    def grad_steps_for(self, trainer: Trainer, it: int) -> int:
        """K of iteration ``it``: fixed, or drawn uniformly in [grad_steps, grad_steps_max] (same on every
        process)."""
        low, high = self.config.grad_steps, self.config.grad_steps_max
        if high is None or high == low:
            return low
        gen = derived_generator(trainer.config.seed, "truncation", it)
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    def sampling_context(self, trainer: Trainer, rows: Tensor, it: int) -> contextlib.AbstractContextManager:
        """What is active while micro-batch ``rows`` (indices into the iteration's samples) is sampled and
        back-propagated; nothing here (CTRL: the requested controls)."""
        return contextlib.nullcontext()

    def sample_reward(self, trainer: Trainer, final: Tensor, prompts: list[str], metadata: list[dict],
                      rows: Tensor, it: int) -> tuple[Tensor, Tensor]:
        """Per-sample reward (B,) with a graph to ``final`` (B, ...) and its validity (B,)."""
        pixels = trainer.model.decode(final, trainer.geometry)
        out = trainer.reward(pixels.to(trainer.reward.device), prompts, metadata)
        return out.scores.to(final.device), out.valid.to(final.device) & torch.isfinite(out.scores.detach())

    def objective(self, trainer: Trainer, prompts: list[str], metadata: list[dict], seeds: list[int],
                  grad_steps: int, rows: Tensor, it: int) -> SampledObjective:
        """Sample ``prompts`` (one row per sample) from ``seeds`` differentiably and score them."""
        cfg, model, sampling = self.config, trainer.model, trainer.config.sampling
        use_cfg = model.uses_cfg(sampling.guidance_scale)
        negative = trainer.config.data.negative_prompt if use_cfg else None
        cond = model.encode_prompts(prompts, negative, with_negative=use_cfg)
        generators = make_generators(seeds, trainer.device)
        noise = model.initial_noise(trainer.geometry, generators)
        traj = differentiable_rollout(model, cond, trainer.geometry, noise, sampling.num_steps,
                                      dynamics=trainer.dynamics, generators=generators,
                                      guidance_scale=sampling.guidance_scale, grad_steps=grad_steps,
                                      checkpoint=cfg.checkpoint, kl_to_base=self.uses_kl)
        reward, valid = self.sample_reward(trainer, traj.final, prompts, metadata, rows, it)
        loss = -cfg.reward_scale * reward
        kl = torch.zeros_like(reward)
        if self.uses_kl:
            kl = traj.kl(cfg.kl_reduction).sum(1)
            loss = loss + self.kl_weight() * kl
        return SampledObjective(loss, reward.detach(), valid, kl.detach(), traj)

    # ---------------------------------------------------------------------------------------------- update
    def iteration_samples(self, trainer: Trainer, it: int) -> tuple[list[str], list[dict], list[int]]:
        """The iteration's prompts, metadata and seeds, one per sample, as ``Trainer.sample_iteration`` draws
        them (prompt p's group is rows p·G … p·G + G − 1)."""
        s, seed, rank = trainer.config.sampling, trainer.config.seed, trainer.rank
        prompts, metadata = trainer.iteration_prompts(it)
        prompts = [p for p in prompts for _ in range(s.group_size)]
        metadata = [m for m in metadata for _ in range(s.group_size)]
        seeds = [derive_seed(seed, "rollout", it, rank, j) for j in range(len(prompts))]
        return prompts, metadata, seeds

    def train_iteration(self, trainer: Trainer, it: int) -> dict[str, float]:
        from flowalign.training.rewarding import ScoredBatch  # not at the top: rewarding imports the configs

        prompts, metadata, seeds = self.iteration_samples(trainer, it)
        n = len(prompts)
        trainer.count_samples(n)
        grad_steps = self.grad_steps_for(trainer, it)
        rewards, valid = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        size = trainer.config.optim.micro_batch_size
        for chunk in torch.tensor_split(torch.arange(n), trainer.config.optim.steps_per_iteration):
            if not len(chunk):
                continue
            trainer.optimizer.zero_grad(set_to_none=True)
            self.zero_extra_grads()
            finite = True
            for first in range(0, len(chunk), size):
                rows = chunk[first : first + size]
                pick = rows.tolist()
                with self.sampling_context(trainer, rows, it):
                    out = self.objective(trainer, [prompts[i] for i in pick], [metadata[i] for i in pick],
                                         [seeds[i] for i in pick], grad_steps, rows, it)
                    rewards[rows], valid[rows] = out.reward.float().cpu(), out.valid.cpu()
                    loss = out.loss.mean()
                    if not (bool(out.valid.all()) and torch.isfinite(loss)):
                        finite = False
                        break
                    (loss * len(rows) / len(chunk)).backward()
                for key, value in (("loss", loss), ("reward", out.reward.mean()), ("kl", out.kl.mean())):
                    totals[key] = totals.get(key, 0.0) + float(value.detach()) * len(rows)
                    counts[key] = counts.get(key, 0) + len(rows)
            if not self.apply_update(trainer, finite, totals, counts):
                scored = ScoredBatch(rewards, valid, {}, torch.empty(0))
                return trainer.skip(it, "non-finite reward, loss or gradient", trainer.reward_metrics(scored))
        metrics = trainer.reward_metrics(ScoredBatch(rewards, valid, {}, torch.empty(0)))
        metrics.update({f"train/{k}": v / counts[k] for k, v in totals.items()})
        metrics["train/grad_steps"] = float(grad_steps)
        return metrics

    def zero_extra_grads(self) -> None:
        """Clear the gradients of networks the method trains besides the adapter (none here)."""

    def apply_update(self, trainer: Trainer, finite: bool, totals: dict, counts: dict) -> bool:
        """The adapter's optimizer step (``Trainer.apply_update``); subclasses add their own networks."""
        return trainer.apply_update(finite, totals, counts)
