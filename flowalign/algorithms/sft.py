"""Supervised flow-matching fine-tuning (SFT) on an offline dataset of images and prompts.

What it samples: ``batch_size`` (prompt, image) examples per iteration from ``data.dataset`` (no rollouts, no
reward: the held-out evaluation still scores the model). Extra networks: none. How it updates: each image is
encoded to its latent x0 (the VAE mean, frozen), re-noised at σ drawn per example (``sigma_sampling``; σ = 1 is
pure noise) as x_σ = (1 − σ)·x0 + σ·ε, and the adapter regresses the flow-matching target v* = ε − x0:

    L = mean over examples of mean over latent elements of (v_θ(x_σ, σ, prompt) − v*)²,

the conditional velocity without guidance, as in pretraining. The iteration's examples are split into
``optim.steps_per_iteration`` optimizer steps of ``optim.micro_batch_size``-example forwards; each step's
gradient is the per-example mean. This is the baseline that preference and actor-critic methods are compared
with at equal samples: one dataset example counts as one sample seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from flowalign.algorithms.base import Algorithm, AlgorithmConfig, register_algorithm
from flowalign.errors import ConfigError
from flowalign.training.flow_matching import SigmaSamplingFields, flow_matching_error, sample_sigmas
from flowalign.training.seeding import derived_generator

if TYPE_CHECKING:
    from flowalign.training.trainer import Trainer


@dataclass
class SFTConfig(SigmaSamplingFields, AlgorithmConfig):
    """``batch_size``: examples per iteration and process (one sample each, for budgets); the σ density
    (``sigma_sampling``, ``logit_mean``, ``logit_std``) as ``SigmaSamplingFields``."""

    name: str = "sft"
    batch_size: int = 48

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"algorithm.batch_size must be >= 1, got {self.batch_size}")
        self.check_sigma_sampling()


@register_algorithm("sft")
class SFT(Algorithm):
    Config = SFTConfig
    uses_dataset = True

    def train_iteration(self, trainer: Trainer, it: int) -> dict[str, float]:
        cfg, model = self.config, trainer.model
        prompts, pixels, _ = trainer.dataset_batch(cfg.batch_size, it)
        gen = derived_generator(trainer.config.seed, "sft", it, trainer.rank)
        sigma = sample_sigmas(len(prompts), gen, cfg.sigma_density, device=trainer.device)
        with torch.no_grad():
            x0 = model.encode_pixels(pixels, trainer.geometry)
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        order = torch.arange(len(prompts))
        for chunk in torch.tensor_split(order, trainer.config.optim.steps_per_iteration):
            if len(chunk) and not self._optimizer_step(trainer, prompts, x0, noise, sigma, chunk, totals, counts):
                return trainer.skip(it, "non-finite loss or gradient", {})
        metrics = {f"train/{k}": v / counts[k] for k, v in totals.items()}
        metrics["train/sigma_mean"] = float(sigma.mean())
        return metrics

    def _optimizer_step(self, trainer: Trainer, prompts, x0, noise, sigma, chunk, totals, counts) -> bool:
        """One optimizer step on the examples ``chunk``: the per-example mean flow-matching error."""
        trainer.optimizer.zero_grad(set_to_none=True)
        finite = True
        size = trainer.config.optim.micro_batch_size
        for first in range(0, len(chunk), size):
            idx = chunk[first : first + size]
            cond = trainer.model.encode_prompts([prompts[i] for i in idx.tolist()])
            error = flow_matching_error(trainer.model, x0[idx], cond, trainer.geometry, sigma[idx], noise[idx])
            loss = error.mean()
            if not torch.isfinite(loss):
                finite = False
                break
            (loss * len(idx) / len(chunk)).backward()
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * len(idx)
            counts["loss"] = counts.get("loss", 0) + len(idx)
        return trainer.apply_update(finite, totals, counts)
