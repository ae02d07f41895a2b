"""Batched rollouts that record everything the RL losses need, and the batched log-prob recompute.

Batch layout: ``P`` prompts × ``group_size`` G samples, ordered [p0g0, p0g1, …, p1g0, …] (B = P·G).
With ``share_initial_noise`` a group starts from one noise; the ODE steps before the first stochastic
step are then computed once per group (P rows) and the batch branches to B rows at the window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.models.base import Conditioning, FlowModel, Geometry
from flowalign.sampling.dynamics import DynamicsConfig, StepResult, step
from flowalign.sampling.schedule import SDEWindow


@dataclass
class Trajectory:
    """One batch of sampling trajectories (all float32, batch-first).

    latents (B, N+1, ...): x at σ_0..σ_N (latents[:, -1] is the final sample); means (B, N, ...): μ of each
    step; stds, log_probs (B, N); sigmas (N+1,); trainable (N,): stochastic steps in the window;
    group_index (B,): which prompt group each sample belongs to.
    """

    latents: Tensor
    means: Tensor
    stds: Tensor
    log_probs: Tensor
    sigmas: Tensor
    trainable: Tensor
    prompts: list[str]
    group_index: Tensor
    geometry: Geometry
    dynamics: DynamicsConfig
    guidance_scale: float

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.sigmas.shape[0] - 1

    @property
    def final(self) -> Tensor:
        return self.latents[:, -1]

    def trainable_pairs(self) -> tuple[Tensor, Tensor]:
        """(sample_idx, step_idx), each (K,), for every sample × trainable step (sample-major order)."""
        steps = torch.nonzero(self.trainable).flatten()
        samples = torch.arange(self.batch_size)
        return samples.repeat_interleave(len(steps)), steps.repeat(self.batch_size)


@dataclass
class RolloutHooks:
    """Callbacks into a rollout (both optional), for methods that guide or evaluate while sampling.

    ``mean_shift(i, x, sigma, sigma_next, cond) -> Tensor | None``, on stochastic steps only: a shift added to
    step i's sample, which becomes μ + shift + s·ε (e.g. a reward gradient, Euphonium's guidance); the recorded
    log-prob and mean stay those of the unguided policy, log π(x' | x) under μ, so the trained policy is the
    unguided one. ``cond`` has one row per row of ``x``. ``on_step(i, x, result, cond, velocity)``: called after
    every step with its input x, its ``StepResult``, and the velocity v(x, σ_i) the step used (with the rollout's
    guidance; per-step evaluation, e.g. one-step x̂0 projections to score, without another transformer call).
    """

    mean_shift: Callable[[int, Tensor, Tensor, Tensor, Conditioning], Tensor | None] | None = None
    on_step: Callable[[int, Tensor, StepResult, Conditioning, Tensor], None] | None = None


def make_generators(seeds: list[int] | range, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per sample (what makes a sample depend on its seed only, not on batch composition)."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def rollout(
    model: FlowModel,
    cond: Conditioning,
    geometry: Geometry,
    *,
    num_steps: int,
    dynamics: DynamicsConfig,
    generators: list[torch.Generator],
    guidance_scale: float = 1.0,
    group_size: int = 1,
    window: SDEWindow | None = None,
    share_initial_noise: bool = False,
    hooks: RolloutHooks | None = None,
) -> Trajectory:
    """Sample ``group_size`` trajectories per prompt of ``cond`` (P rows) with ``dynamics``.

    ``generators``: one per output sample (B = P·G); sample i draws its SDE noise from generators[i] and,
    unless the group shares it, its initial noise too (a shared initial noise comes from the group's first).
    Steps outside ``window`` (default: all steps) are ODE steps. ``hooks``: see ``RolloutHooks``.
    """
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
    if group_size < 1:
        raise ConfigError(f"group_size must be >= 1, got {group_size}")
    n_prompts = len(cond)
    batch = n_prompts * group_size
    if len(generators) != batch:
        raise ConfigError(f"need one generator per sample: {n_prompts} prompts × {group_size} = {batch}, "
                          f"got {len(generators)}")
    sigmas = model.schedule(num_steps, geometry)
    stochastic = (window or SDEWindow()).mask(num_steps) & dynamics.is_stochastic
    deterministic = dynamics.deterministic()

    shared = share_initial_noise and group_size > 1
    x = model.initial_noise(geometry, generators[::group_size] if shared else generators)
    rows_cond = cond if shared else cond.repeat_interleave(group_size)
    expanded = not shared
    records: list[StepResult] = []
    latents = [x]
    for i in range(num_steps):
        if not expanded and stochastic[i]:
            x, rows_cond, expanded = x.repeat_interleave(group_size, 0), cond.repeat_interleave(group_size), True
        v = model.velocity(x, sigmas[i], rows_cond, geometry, guidance_scale)
        result = step(dynamics if stochastic[i] else deterministic, v, x, sigmas[i], sigmas[i + 1],
                      generator=generators if stochastic[i] else None)
        if hooks is not None and hooks.mean_shift is not None and stochastic[i]:
            shift = hooks.mean_shift(i, x, sigmas[i], sigmas[i + 1], rows_cond)
            if shift is not None:  # the guided sample, scored under the unguided mean
                result = step(dynamics, v, x, sigmas[i], sigmas[i + 1], prev_sample=result.sample + shift)
        if hooks is not None and hooks.on_step is not None:
            hooks.on_step(i, x, result, rows_cond, v)
        records.append(result)
        x = result.sample
        latents.append(x)

    def stack(tensors: list[Tensor]) -> Tensor:
        full = [t if t.shape[0] == batch else t.repeat_interleave(group_size, 0) for t in tensors]
        return torch.stack(full, 1)

    stds = stack([r.std for r in records])
    return Trajectory(
        latents=stack(latents),
        means=stack([r.mean for r in records]),
        stds=stds,
        log_probs=stack([r.log_prob for r in records]),
        sigmas=sigmas,
        trainable=stochastic & (stds > 0).all(0).cpu(),
        prompts=[p for p in cond.prompts for _ in range(group_size)],
        group_index=torch.arange(n_prompts).repeat_interleave(group_size),
        geometry=geometry,
        dynamics=dynamics,
        guidance_scale=guidance_scale,
    )


def recompute_log_probs(
    model: FlowModel,
    trajectory: Trajectory,
    cond: Conditioning,
    sample_idx: Tensor,
    step_idx: Tensor,
    *,
    dynamics: DynamicsConfig | None = None,
    guidance_scale: float | None = None,
) -> StepResult:
    """log π_θ(x_{t+1} | x_t) for stored transitions, with gradients, in ONE batched forward.

    ``cond`` has one row per trajectory sample (B rows, e.g. ``model.encode_prompts(trajectory.prompts)``);
    ``sample_idx``/``step_idx`` (K,) pick the (sample, step) pairs, which may mix different steps.
    Returns the transitions' StepResult (sample = the stored x_{t+1}, mean with grad, std, log_prob (K,)).
    """
    if len(cond) != trajectory.batch_size:
        raise ValueError(f"cond has {len(cond)} rows, trajectory has {trajectory.batch_size} samples")
    if sample_idx.shape != step_idx.shape or sample_idx.ndim != 1:
        raise ValueError("sample_idx and step_idx must be 1-D tensors of the same length")
    sample_idx, step_idx = sample_idx.to(trajectory.latents.device), step_idx.to(trajectory.latents.device)
    x = trajectory.latents[sample_idx, step_idx]
    x_next = trajectory.latents[sample_idx, step_idx + 1]
    sigmas = trajectory.sigmas.to(x.device)
    sigma, sigma_next = sigmas[step_idx], sigmas[step_idx + 1]
    guidance = trajectory.guidance_scale if guidance_scale is None else guidance_scale
    v = model.velocity(x, sigma, cond.select(sample_idx.cpu()), trajectory.geometry, guidance)
    return step(dynamics or trajectory.dynamics, v, x, sigma, sigma_next, prev_sample=x_next)


def concat_trajectories(parts: list[Trajectory]) -> Trajectory:
    """Join trajectories sampled with the same schedule and settings (group ids are renumbered)."""
    first = parts[0]
    for part in parts[1:]:
        if not torch.equal(part.sigmas, first.sigmas) or not torch.equal(part.trainable, first.trainable):
            raise ValueError("cannot concatenate trajectories with different σ schedules or trainable steps")
    offsets, groups = 0, []
    for part in parts:
        groups.append(part.group_index + offsets)
        offsets += int(part.group_index.max()) + 1
    return Trajectory(
        latents=torch.cat([p.latents for p in parts]),
        means=torch.cat([p.means for p in parts]),
        stds=torch.cat([p.stds for p in parts]),
        log_probs=torch.cat([p.log_probs for p in parts]),
        sigmas=first.sigmas,
        trainable=first.trainable,
        prompts=[prompt for p in parts for prompt in p.prompts],
        group_index=torch.cat(groups),
        geometry=first.geometry,
        dynamics=first.dynamics,
        guidance_scale=first.guidance_scale,
    )
