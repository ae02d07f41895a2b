"""One sampling step σ → σ' of the flow ODE or of an SDE with the same marginals, with exact log-probs.

Conventions: σ runs 1 (noise) → 0 (data), x_σ = (1−σ)·x0 + σ·ε, v ≈ ε − x0, dt = σ' − σ < 0,
x̂0 = x − σ·v, ε̂ = x + (1−σ)·v. ``sigma`` and ``sigma_next`` may be per sample (shape (B,)), so that one
batch can mix different steps. All math is float32. A step whose std is 0 (ODE, noise level 0, or the last
CPS step) is deterministic: its log-prob is reported as 0 and it cannot be trained.

Dynamics (a = noise level):
- ``ode``:        x' = x + v·dt.
- ``flow_sde``:   g = a·√(σ/(1−σ)) (σ within ``SIGMA_ONE_TOLERANCE`` of 1 uses σ' in the denominator: the
                  schedule's start, which UniPC (Wan) puts at 1 − 1e-6); μ = x + [v + g²/(2σ)·(x + (1−σ)·v)]·dt;
                  std = g·√(−dt)                                                        (Flow-GRPO)
- ``dance_sde``:  the same mean with constant g = a; std = a·√(−dt)                      (DanceGRPO)
- ``cps``:        s = σ'·sin(aπ/2); μ = (1−σ')·x̂0 + σ'·cos(aπ/2)·ε̂; std = s      (coefficients-preserving)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowalign.errors import ConfigError

DYNAMICS = ("ode", "flow_sde", "dance_sde", "cps")
REDUCTIONS = ("mean", "sum")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# flow_sde's g² = a²σ/(1−σ) diverges at σ = 1; a step starting this close to 1 is the schedule's first step
SIGMA_ONE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class DynamicsConfig:
    """Which step to take and how its log-prob is reduced.

    ``log_prob_reduction``: ``mean`` averages the per-dimension log-density over all non-batch dimensions
    (Flow-GRPO's convention; PPO clip ranges become ~1e-4), ``sum`` is the true log-density.
    """

    name: str = "flow_sde"
    noise_level: float = 0.7
    log_prob_reduction: str = "mean"

    def __post_init__(self) -> None:
        if self.name not in DYNAMICS:
            raise ConfigError(f"unknown dynamics {self.name!r}; expected one of {', '.join(DYNAMICS)}")
        if not math.isfinite(self.noise_level) or self.noise_level < 0:
            raise ConfigError(f"noise_level must be a finite number >= 0, got {self.noise_level!r}")
        if self.name == "cps" and self.noise_level > 1:
            raise ConfigError(f"cps noise_level must lie in [0, 1] (it is an angle fraction), got {self.noise_level}")
        if self.log_prob_reduction not in REDUCTIONS:
            raise ConfigError(
                f"unknown log_prob_reduction {self.log_prob_reduction!r}; expected one of {', '.join(REDUCTIONS)}"
            )

    @property
    def is_stochastic(self) -> bool:
        return self.name != "ode" and self.noise_level > 0

    def deterministic(self) -> DynamicsConfig:
        """The ODE with the same log-prob reduction (used outside an SDE window)."""
        return DynamicsConfig("ode", 0.0, self.log_prob_reduction)


@dataclass
class StepResult:
    """x' (B, ...), its Gaussian mean μ (B, ...), std (B,) and log π(x'|x) (B,), all float32."""

    sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor


def per_sample(value: float | Tensor, batch: int, device: torch.device) -> Tensor:
    """σ given as a float, a 0-d or a (B,) tensor → a (B,) float32 tensor."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t


def _expand(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def reduce_over_sample(t: Tensor, reduction: str) -> Tensor:
    """Sum or mean over all non-batch dimensions → (B,)."""
    flat = t.flatten(1)
    return flat.mean(1) if reduction == "mean" else flat.sum(1)


def mean_and_std(
    config: DynamicsConfig, velocity: Tensor, x: Tensor, sigma: float | Tensor, sigma_next: float | Tensor
) -> tuple[Tensor, Tensor]:
    """The Gaussian transition N(μ, std²) of one step; μ keeps the graph of ``velocity``."""
    v = velocity.float()
    x = x.float()
    s = per_sample(sigma, x.shape[0], x.device)
    s_next = per_sample(sigma_next, x.shape[0], x.device)
    dt = _expand(s_next - s, x)
    a = config.noise_level
    if not config.is_stochastic:
        return x + dt * v, torch.zeros_like(s)
    if config.name == "cps":
        angle = a * math.pi / 2
        s_next_b = _expand(s_next, x)
        s_b = _expand(s, x)
        x0_hat = x - s_b * v
        eps_hat = x + (1 - s_b) * v
        mean = (1 - s_next_b) * x0_hat + s_next_b * math.cos(angle) * eps_hat
        return mean, s_next * math.sin(angle)
    if config.name == "flow_sde":
        denominator = 1 - torch.where(1 - s < SIGMA_ONE_TOLERANCE, s_next, s)
        g = a * torch.sqrt(s / denominator)
    else:  # dance_sde
        g = torch.full_like(s, a)
    g_b = _expand(g, x)
    s_b = _expand(s, x)
    mean = x + (v + g_b**2 / (2 * s_b) * (x + (1 - s_b) * v)) * dt
    return mean, g * torch.sqrt(s - s_next)


def gaussian_log_prob(sample: Tensor, mean: Tensor, std: Tensor, reduction: str = "mean") -> Tensor:
    """log N(sample; mean, std²·I) reduced over non-batch dims → (B,); 0 where std == 0.

    Gradients flow through ``mean`` only (``sample`` is treated as data).
    """
    std_b = _expand(std, mean)
    safe = torch.where(std_b > 0, std_b, torch.ones_like(std_b))
    per_dim = -((sample.detach().float() - mean) ** 2) / (2 * safe**2) - torch.log(safe) - _LOG_SQRT_2PI
    return torch.where(std > 0, reduce_over_sample(per_dim, reduction), torch.zeros_like(std))


def kl_divergence(mean: Tensor, ref_mean: Tensor, std: Tensor, reduction: str = "mean") -> Tensor:
    """KL(N(mean, std²) ‖ N(ref_mean, std²)) = ‖μ − μ_ref‖²/(2·std²), reduced → (B,); 0 where std == 0.

    std is the exact step std (it includes √(−dt); Flow-GRPO's code omits that factor).
    """
    std_b = _expand(std, mean)
    safe = torch.where(std_b > 0, std_b, torch.ones_like(std_b))
    per_dim = (mean.float() - ref_mean.float()) ** 2 / (2 * safe**2)
    return torch.where(std > 0, reduce_over_sample(per_dim, reduction), torch.zeros_like(std))


def gaussian_log_ratio(sample: Tensor, mean: Tensor, old_mean: Tensor, std: Tensor, reduction: str = "mean") -> Tensor:
    """log N(x'; μ, s²) − log N(x'; μ_old, s²) without forming either log-density → (B,); 0 where std == 0.

    Written as Σ (μ − μ_old)·(2x' − μ − μ_old) / (2s²), which avoids the cancellation of two large sums
    (with ``sum`` reduction each log-density is O(D) and float32 would lose ~1e-4 in their difference).
    """
    std_b = _expand(std, mean)
    safe = torch.where(std_b > 0, std_b, torch.ones_like(std_b))
    x = sample.detach().float()
    old = old_mean.detach().float()
    per_dim = (mean - old) * (2 * x - mean - old) / (2 * safe**2)
    return torch.where(std > 0, reduce_over_sample(per_dim, reduction), torch.zeros_like(std))


def step(
    config: DynamicsConfig,
    velocity: Tensor,
    x: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    prev_sample: Tensor | None = None,
) -> StepResult:
    """Take one step (or score a given ``prev_sample``) and return x', μ, std and log π(x'|x).

    ``noise`` (standard normal, shape of x) or ``generator`` (one, or one per sample) supply z in
    x' = μ + std·z; with ``prev_sample`` no noise is drawn and its log-prob is returned.
    """
    mean, std = mean_and_std(config, velocity, x, sigma, sigma_next)
    if prev_sample is None:
        if not config.is_stochastic:
            sample = mean.detach()
        else:
            if noise is None:
                noise = draw_noise(mean.shape, generator, mean.device)
            sample = (mean + _expand(std, mean) * noise.float()).detach()
    else:
        sample = prev_sample.float()
    return StepResult(sample, mean, std, gaussian_log_prob(sample, mean, std, config.log_prob_reduction))


def draw_noise(
    shape: tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None, device: torch.device
) -> Tensor:
    """Standard normal float32 noise; a list of generators draws sample i from generator i (like diffusers)."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)
