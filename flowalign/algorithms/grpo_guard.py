"""GRPO-Guard: regulated clipping for flow-SDE policies.

With the flow SDE the importance ratio's mean sits below 1 (worst at low-noise steps) and its spread differs
by step, so positive-advantage samples rarely reach the upper clip. Guard replaces the log ratio by
**RatioNorm**: with s the step std, z = (x' − μ_old)/s and Δμ = μ_θ − μ_old,

    log r_norm = (log π_θ − log π_old + reduce(Δμ²)/(2s²))·s = reduce(z·Δμ),

computed in the right-hand form (no 1/s blow-up; exactly 0 on-policy; zero mean under the old policy).
``reduce`` is the configured log-prob reduction (mean or sum). **Gradient reweighting** divides each pair's
policy loss by (−dt) (``reweight="dt"``, the paper's choice for the flow SDE) to balance noise levels; for
other dynamics the right factor is uncertain, so it is a setting (``"none"`` disables it) and the
per-step gradient norm with respect to μ is logged (``grad_mu_norm/step_i``) to check the balance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowalign.algorithms.base import register_algorithm
from flowalign.algorithms.policy_gradient import PolicyBatch
from flowalign.algorithms.grpo import GRPO, GRPOConfig
from flowalign.errors import ConfigError
from flowalign.sampling.dynamics import reduce_over_sample

REWEIGHTS = ("dt", "none")


@dataclass
class GRPOGuardConfig(GRPOConfig):
    name: str = "grpo_guard"
    clip_range: float = 3e-6
    ratio_norm: bool = True
    reweight: str = "dt"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reweight not in REWEIGHTS:
            raise ConfigError(f"algorithm.reweight must be one of {', '.join(REWEIGHTS)}, got {self.reweight!r}")


def ratio_norm_log_ratio(sample: Tensor, mean: Tensor, old_mean: Tensor, std: Tensor, reduction: str) -> Tensor:
    """reduce(z·Δμ) with z = (x' − μ_old)/s, Δμ = μ − μ_old → (K,); 0 where s == 0."""
    s = std.reshape(-1, *([1] * (mean.ndim - 1)))
    safe = torch.where(s > 0, s, torch.ones_like(s))
    z = (sample.detach().float() - old_mean.detach().float()) / safe
    value = reduce_over_sample(z * (mean - old_mean.detach().float()), reduction)
    return torch.where(std > 0, value, torch.zeros_like(value))


@register_algorithm("grpo_guard")
class GRPOGuard(GRPO):
    Config = GRPOGuardConfig

    def log_ratio(self, batch: PolicyBatch) -> Tensor:
        if not self.config.ratio_norm:
            return super().log_ratio(batch)
        return ratio_norm_log_ratio(batch.new.sample, batch.new.mean, batch.old_mean, batch.new.std, batch.reduction)

    def pair_weights(self, batch: PolicyBatch) -> Tensor:
        if self.config.reweight == "dt":
            return 1.0 / (batch.sigma - batch.sigma_next)
        return torch.ones_like(batch.advantages)

    def loss(self, batch: PolicyBatch) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = super().loss(batch)
        if batch.new.mean.requires_grad:
            (grad_mu,) = torch.autograd.grad(loss, batch.new.mean, retain_graph=True)
            norms = grad_mu.flatten(1).norm(dim=1)
            for s in torch.unique(batch.step_idx):
                metrics[f"grad_mu_norm/step_{int(s)}"] = norms[batch.step_idx == s].mean().detach()
        return loss, metrics
