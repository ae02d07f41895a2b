"""GRPO for flow models (Flow-GRPO / DanceGRPO): group-relative advantages and a PPO-clipped ratio.

Per (sample, step) pair: ratio = exp(log π_θ − log π_old) (computed as a stable log ratio, see
``gaussian_log_ratio``); L = mean(max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε))) + β·KL(π_θ ‖ π_ref), KL in closed
form with the exact step std. The clip range ε depends on the log-prob reduction: ~1e-4 for ``mean``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowalign.algorithms.advantages import STD_SCOPES, group_advantages
from flowalign.algorithms.base import AlgorithmConfig, register_algorithm
from flowalign.algorithms.policy_gradient import PolicyBatch, PolicyGradient
from flowalign.errors import ConfigError
from flowalign.sampling.dynamics import gaussian_log_ratio, kl_divergence
from flowalign.sampling.rollout import Trajectory


@dataclass
class GRPOConfig(AlgorithmConfig):
    name: str = "grpo"
    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    std_scope: str = "group"
    kl_beta: float = 0.0

    def __post_init__(self) -> None:
        if self.clip_range <= 0:
            raise ConfigError(f"algorithm.clip_range must be > 0, got {self.clip_range}")
        if self.adv_clip_max <= 0:
            raise ConfigError(f"algorithm.adv_clip_max must be > 0, got {self.adv_clip_max}")
        if self.std_scope not in STD_SCOPES:
            raise ConfigError(f"algorithm.std_scope must be one of {', '.join(STD_SCOPES)}, got {self.std_scope!r}")
        if self.kl_beta < 0:
            raise ConfigError(f"algorithm.kl_beta must be >= 0, got {self.kl_beta}")


def ppo_clip_loss(advantages: Tensor, log_ratio: Tensor, clip_range: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-pair PPO loss max(−A·r, −A·clip(r, 1−ε, 1+ε)) (K,) and clip statistics."""
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_pair = torch.maximum(-advantages * ratio, -advantages * clipped)
    stats = {
        "ratio": ratio.detach(),
        "clip_above": (ratio > 1.0 + clip_range).float().detach(),
        "clip_below": (ratio < 1.0 - clip_range).float().detach(),
    }
    return per_pair, stats


@register_algorithm("grpo")
class GRPO(PolicyGradient):
    Config = GRPOConfig

    def __init__(self, config: GRPOConfig):
        super().__init__(config)
        self.needs_reference = config.kl_beta > 0

    def advantages(self, rewards: Tensor, trajectory: Trajectory, valid: Tensor) -> Tensor:
        return group_advantages(rewards, trajectory.group_index.to(rewards.device), std_scope=self.config.std_scope,
                                clip=self.config.adv_clip_max, valid=valid)

    def log_ratio(self, batch: PolicyBatch) -> Tensor:
        return gaussian_log_ratio(batch.new.sample, batch.new.mean, batch.old_mean, batch.new.std, batch.reduction)

    def pair_weights(self, batch: PolicyBatch) -> Tensor:
        """Per-pair weights of the policy loss (1 for GRPO)."""
        return torch.ones_like(batch.advantages)

    def loss(self, batch: PolicyBatch) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = self.log_ratio(batch)
        per_pair, stats = ppo_clip_loss(batch.advantages, log_ratio, self.config.clip_range)
        policy_loss = (per_pair * self.pair_weights(batch)).mean()
        metrics = {
            "policy_loss": policy_loss.detach(),
            "ratio_mean": stats["ratio"].mean(),
            "ratio_std": stats["ratio"].std(unbiased=False),
            "clip_frac_above": stats["clip_above"].mean(),
            "clip_frac_below": stats["clip_below"].mean(),
        }
        metrics.update(per_step_ratio_stats(stats, batch.step_idx))
        loss = policy_loss
        if self.config.kl_beta > 0:
            if batch.ref_mean is None:
                raise ValueError("kl_beta > 0 needs the reference mean in the batch")
            kl = kl_divergence(batch.new.mean, batch.ref_mean, batch.new.std, batch.reduction).mean()
            loss = loss + self.config.kl_beta * kl
            metrics["kl"] = kl.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics


def per_step_ratio_stats(stats: dict[str, Tensor], step_idx: Tensor) -> dict[str, Tensor]:
    """Per sampling step: ratio mean/std and clip fractions above/below (the regulated-clipping diagnostic)."""
    out = {}
    for s in torch.unique(step_idx):
        mask = step_idx == s
        ratio = stats["ratio"][mask]
        out[f"ratio_mean/step_{int(s)}"] = ratio.mean()
        out[f"ratio_std/step_{int(s)}"] = ratio.std(unbiased=False)
        out[f"clip_above/step_{int(s)}"] = stats["clip_above"][mask].mean()
        out[f"clip_below/step_{int(s)}"] = stats["clip_below"][mask].mean()
    return out
