"""The flow-matching loss on re-noised samples: σ sampling, re-noising, the velocity target and its error.

Conventions (as in ``flowalign.sampling.dynamics``): σ runs 1 (noise) → 0 (data), x_σ = (1−σ)·x0 + σ·ε, and
the model predicts v ≈ ε − x0, so that an ODE step x' = x + v·dt with dt = σ' − σ < 0 moves towards the data.
Latents may have any layout (SD3 (B, C, H, W), Flux packed (B, L, D), video (B, C, T, H, W)); errors are reduced
over all non-batch dimensions. Everything here is float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.models.base import Conditioning, FlowModel, Geometry
from flowalign.sampling.dynamics import REDUCTIONS, draw_noise, per_sample, reduce_over_sample

SIGMA_SCHEMES = ("logit_normal", "uniform")


@dataclass(frozen=True)
class SigmaSampling:
    """How training σ are drawn.

    ``logit_normal``: σ = sigmoid(N(logit_mean, logit_std²)) (SD3's training density; mean 0, std 1 puts most
    weight on mid-range σ). ``uniform``: σ ~ U(0, 1). Either is then clamped to [min_sigma, max_sigma].
    """

    scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    min_sigma: float = 0.0
    max_sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.scheme not in SIGMA_SCHEMES:
            raise ConfigError(f"unknown sigma scheme {self.scheme!r}; expected one of {', '.join(SIGMA_SCHEMES)}")
        if not math.isfinite(self.logit_mean):
            raise ConfigError(f"logit_mean must be finite, got {self.logit_mean!r}")
        if not (math.isfinite(self.logit_std) and self.logit_std > 0):
            raise ConfigError(f"logit_std must be a finite number > 0, got {self.logit_std!r}")
        if not 0.0 <= self.min_sigma < self.max_sigma <= 1.0:
            raise ConfigError(f"need 0 <= min_sigma < max_sigma <= 1, got min_sigma={self.min_sigma}, "
                              f"max_sigma={self.max_sigma}")


@dataclass
class SigmaSamplingFields:
    """Mixin for method configs that train on re-noised samples: the training σ density's YAML keys.

    σ runs 1 (noise) → 0 (data). ``sigma_sampling``: ``logit_normal`` (σ = sigmoid(m + s·n), n ~ N(0, 1), m =
    ``logit_mean``, s = ``logit_std``; the toy model's and SD3's pretraining density) or ``uniform``. The keys
    stay flat under ``algorithm:``. A config's ``__post_init__`` calls ``check_sigma_sampling()``.
    """

    sigma_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def check_sigma_sampling(self) -> None:
        """Reject an unknown scheme or a logit_std that is not a finite number > 0 (errors name the key)."""
        if self.sigma_sampling not in SIGMA_SCHEMES:
            raise ConfigError(f"algorithm.sigma_sampling must be one of {', '.join(SIGMA_SCHEMES)}, "
                              f"got {self.sigma_sampling!r}")
        if not (math.isfinite(self.logit_std) and self.logit_std > 0):
            raise ConfigError(f"algorithm.logit_std must be a finite number > 0, got {self.logit_std}")

    @property
    def sigma_density(self) -> SigmaSampling:
        """The configured σ density, as ``sample_sigmas`` and ``shared_noise_pair`` take it."""
        return SigmaSampling(self.sigma_sampling, self.logit_mean, self.logit_std)


def sample_sigmas(n: int, generator: torch.Generator | None, sampling: SigmaSampling = SigmaSampling(),
                  device: str | torch.device = "cpu") -> Tensor:
    """``n`` training σ, (n,) float32 on ``device``, drawn from ``generator`` (on the generator's device)."""
    if n < 1:
        raise ConfigError(f"the number of sigmas must be >= 1, got {n}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if sampling.scheme == "uniform":
        sigma = torch.rand(n, generator=generator, device=gen_device)
    else:
        normal = torch.randn(n, generator=generator, device=gen_device)
        sigma = torch.sigmoid(sampling.logit_mean + sampling.logit_std * normal)
    return sigma.clamp(sampling.min_sigma, sampling.max_sigma).to(device, torch.float32)


def _per_sample_broadcast(sigma: float | Tensor, like: Tensor) -> Tensor:
    """σ as a float, 0-d or (B,) tensor → shape (B, 1, …, 1) broadcastable against ``like``."""
    return per_sample(sigma, like.shape[0], like.device).reshape(-1, *([1] * (like.ndim - 1)))


def renoise(x0: Tensor, noise: Tensor, sigma: float | Tensor) -> Tensor:
    """x_σ = (1−σ)·x0 + σ·noise (σ = 1 is pure noise), float32; σ a float or per sample (B,)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    s = _per_sample_broadcast(sigma, x0)
    return (1 - s) * x0.float() + s * noise.float()


def flow_matching_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The velocity target v* = noise − x0 (d x_σ / dσ along the straight path), float32."""
    return noise.float() - x0.float()


def velocity_error(velocity: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """‖velocity − target‖² per sample → (B,), reduced over all non-batch dimensions (``mean`` or ``sum``)."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}")
    return reduce_over_sample((velocity.float() - target.float()) ** 2, reduction)


@dataclass
class FlowMatchingTerms:
    """One flow-matching evaluation: x_σ (B, …), the model's velocity there (with graph), the target and the
    per-sample error (B,)."""

    x_sigma: Tensor
    velocity: Tensor
    target: Tensor
    error: Tensor


def flow_matching_terms(model: FlowModel, x0: Tensor, cond: Conditioning, geometry: Geometry,
                        sigma: float | Tensor, noise: Tensor, guidance_scale: float = 1.0,
                        reduction: str = "mean") -> FlowMatchingTerms:
    """Re-noise ``x0`` to σ with ``noise``, call the model once (CFG-guided velocity when ``guidance_scale``
    asks for it), and return x_σ, v_θ(x_σ, σ), v* = noise − x0 and ‖v_θ − v*‖² reduced per sample."""
    x_sigma = renoise(x0, noise, sigma)
    velocity = model.velocity(x_sigma, sigma, cond, geometry, guidance_scale)
    target = flow_matching_target(x0, noise)
    return FlowMatchingTerms(x_sigma, velocity, target, velocity_error(velocity, target, reduction))


def flow_matching_error(model: FlowModel, x0: Tensor, cond: Conditioning, geometry: Geometry,
                        sigma: float | Tensor, noise: Tensor, guidance_scale: float = 1.0,
                        reduction: str = "mean") -> Tensor:
    """Per-sample flow-matching error (B,): ‖v_θ(x_σ, σ) − (noise − x0)‖², the mean (default) or sum over
    all non-batch dimensions. Differentiable in the model's trainable parameters."""
    return flow_matching_terms(model, x0, cond, geometry, sigma, noise, guidance_scale, reduction).error


def shared_noise_pair(winners: Tensor, losers: Tensor, generator: torch.Generator | list[torch.Generator] | None,
                      sampling: SigmaSampling = SigmaSampling()) -> tuple[Tensor, Tensor]:
    """σ (B,) and noise (B, …) drawn once and used for both images of each pair (Diffusion-DPO / SePPO).

    ``generator``: one generator, or one per pair (then pair i's σ and noise depend on generators[i] only).
    """
    if winners.shape != losers.shape:
        raise ValueError(f"winners {tuple(winners.shape)} and losers {tuple(losers.shape)} must have the same shape")
    if isinstance(generator, list):
        if len(generator) != winners.shape[0]:
            raise ValueError(f"got {len(generator)} generators for {winners.shape[0]} pairs")
        sigma = torch.cat([sample_sigmas(1, g, sampling, winners.device) for g in generator])
    else:
        sigma = sample_sigmas(winners.shape[0], generator, sampling, winners.device)
    return sigma, draw_noise(tuple(winners.shape), generator, winners.device)


def pair_flow_matching_errors(model: FlowModel, winners: Tensor, losers: Tensor, cond: Conditioning,
                              geometry: Geometry, sigma: Tensor, noise: Tensor, guidance_scale: float = 1.0,
                              reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """Errors (B,), (B,) of the winners and the losers re-noised with the same σ and noise, in ONE batched
    forward over [winners; losers] (``cond``: one row per pair)."""
    if winners.shape != losers.shape:
        raise ValueError(f"winners {tuple(winners.shape)} and losers {tuple(losers.shape)} must have the same shape")
    batch = winners.shape[0]
    both = flow_matching_error(model, torch.cat([winners, losers]), cond.select(list(range(batch)) * 2), geometry,
                               torch.cat([per_sample(sigma, batch, winners.device)] * 2),
                               torch.cat([noise, noise]), guidance_scale, reduction)
    return both[:batch], both[batch:]
