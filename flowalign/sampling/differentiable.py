"""Rollouts differentiated end to end (reparameterized), for reward back-propagation through the sampler (CTRL).

The sampler is the one of ``rollout``: the pipeline's σ schedule, one ``mean_and_std`` transition per step
(``flowalign.sampling.dynamics``), x' = μ + std·z with z drawn from one generator per sample, in the same order
as ``rollout`` draws it (so the same generators give the same samples). Gradients flow through μ (the noise z is
fixed data) and only through the last ``grad_steps`` steps: earlier steps run under ``no_grad`` and their output
is a constant (truncated backpropagation). With ``checkpoint`` each transformer call of a differentiated step is
recomputed in the backward pass instead of keeping its activations (torch.utils.checkpoint, non-reentrant);
the model then counts two ``transformer_calls`` for such a step.

``kl_to_base`` also evaluates the base model (the LoRA adapter disabled) at every visited x and returns its
means, for the per-step KL ‖μ_θ − μ_base‖²/(2·std²) (one extra transformer call per step; on differentiated
steps the base mean keeps its dependence on x, so the KL's pathwise gradient is complete).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from flowalign.errors import ConfigError
from flowalign.models.base import Conditioning, FlowModel, Geometry
from flowalign.sampling.dynamics import DynamicsConfig, draw_noise, kl_divergence, mean_and_std
from flowalign.training.reference import adapter_disabled


@dataclass
class DifferentiableTrajectory:
    """final (B, …): x at σ_N, with a graph through the differentiated steps; means (B, N, …): μ_θ of each step
    (a graph on differentiated steps); stds (B, N); sigmas (N+1,); grad_mask (N,) bool: differentiated steps;
    base_means (B, N, …) or None: μ of the base model at the same x (``kl_to_base``)."""

    final: Tensor
    means: Tensor
    stds: Tensor
    sigmas: Tensor
    grad_mask: Tensor
    base_means: Tensor | None = None

    def kl(self, reduction: str = "mean") -> Tensor:
        """Per-step KL(policy ‖ base) (B, N), reduced over the latent dimensions; 0 on deterministic steps."""
        if self.base_means is None:
            raise ValueError("this rollout has no base means; sample with kl_to_base=True")
        steps = range(self.means.shape[1])
        return torch.stack([kl_divergence(self.means[:, i], self.base_means[:, i], self.stds[:, i], reduction)
                            for i in steps], dim=1)


def _velocity_fn(model: FlowModel, sigma: Tensor, cond: Conditioning, geometry: Geometry, guidance_scale: float,
                 base: bool) -> Callable[[Tensor], Tensor]:
    """x ↦ v(x, σ) of the policy (or of the base model, adapter disabled inside the call so that a
    checkpoint's recomputation also runs on the base)."""
    def velocity(x: Tensor) -> Tensor:
        if not base:
            return model.velocity(x, sigma, cond, geometry, guidance_scale)
        with adapter_disabled(model.trainable_module()):
            return model.velocity(x, sigma, cond, geometry, guidance_scale)
    return velocity


def differentiable_rollout(
    model: FlowModel,
    cond: Conditioning,
    geometry: Geometry,
    noise: Tensor,
    num_steps: int,
    *,
    dynamics: DynamicsConfig = DynamicsConfig("flow_sde"),
    generators: list[torch.Generator] | None = None,
    guidance_scale: float = 1.0,
    grad_steps: int | None = None,
    checkpoint: bool = True,
    kl_to_base: bool = False,
) -> DifferentiableTrajectory:
    """Sample from ``noise`` (B, …) (one row of ``cond`` per sample) in ``num_steps`` steps of ``dynamics``.

    ``generators``: one per sample, for the SDE noise (needed when ``dynamics`` is stochastic). ``grad_steps``:
    differentiate the last K steps only (None: all). ``checkpoint``: recompute each differentiated transformer
    call in the backward pass. ``kl_to_base``: also record the base model's means (see the module docstring).
    """
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
    if grad_steps is not None and not 1 <= grad_steps <= num_steps:
        raise ConfigError(f"grad_steps must lie in [1, num_steps={num_steps}] or be None (all), got {grad_steps}")
    expected = model.latent_shape(geometry)
    if tuple(noise.shape[1:]) != tuple(expected):
        raise ConfigError(f"noise has per-sample shape {tuple(noise.shape[1:])}, the model's latents at "
                          f"{geometry.height}x{geometry.width} are {tuple(expected)}")
    if len(cond) != noise.shape[0]:
        raise ValueError(f"conditioning has {len(cond)} rows but the noise batch has {noise.shape[0]}")
    if dynamics.is_stochastic and (generators is None or len(generators) != noise.shape[0]):
        got = None if generators is None else len(generators)
        raise ConfigError(f"stochastic dynamics {dynamics.name!r} need one generator per sample "
                          f"({noise.shape[0]}), got {got}")
    sigmas = model.schedule(num_steps, geometry)
    first_grad = num_steps - (grad_steps or num_steps)
    grad_mask = torch.arange(num_steps) >= first_grad

    x = noise.float().detach()
    means, stds, base_means = [], [], []
    for i in range(num_steps):
        differentiated = bool(grad_mask[i])
        calls = [False, True] if kl_to_base else [False]
        with torch.set_grad_enabled(differentiated and torch.is_grad_enabled()):
            velocities = []
            for base in calls:
                fn = _velocity_fn(model, sigmas[i], cond, geometry, guidance_scale, base)
                use_checkpoint = checkpoint and differentiated and torch.is_grad_enabled()
                velocities.append(torch_checkpoint(fn, x, use_reentrant=False) if use_checkpoint else fn(x))
            mean, std = mean_and_std(dynamics, velocities[0], x, sigmas[i], sigmas[i + 1])
            if kl_to_base:
                base_means.append(mean_and_std(dynamics, velocities[1], x, sigmas[i], sigmas[i + 1])[0])
            if dynamics.is_stochastic:
                z = draw_noise(tuple(x.shape), generators, x.device)
                x = mean + std.reshape(-1, *([1] * (x.ndim - 1))) * z
            else:
                x = mean
        means.append(mean)
        stds.append(std)
    return DifferentiableTrajectory(
        final=x,
        means=torch.stack(means, 1),
        stds=torch.stack(stds, 1),
        sigmas=sigmas,
        grad_mask=grad_mask,
        base_means=torch.stack(base_means, 1) if kl_to_base else None,
    )
