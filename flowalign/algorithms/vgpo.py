"""VGPO: value anchoring in the temporal and the group dimension, on GRPO-Guard's PPO-clip loss.

What it samples: group rollouts, and (``dense_every`` > 0) dense rewards R_{k,j} during them: after stochastic
step j, x̂0 = x_{j+1} − σ_{j+1}·v_θ(x_{j+1}, σ_{j+1}) decoded and scored with the training reward
(``flowalign.training.dense_rewards``; batched over the chunk, scored in a worker thread while the rollout goes
on, costs logged under ``dense/``). The final sample's reward r_k is the reward point of the last step.
How it updates: per-step advantages Â (B, N) into GRPO-Guard's loss (``ratio_norm`` and ``reweight`` as there;
``ratio_norm: false, reweight: none`` is GRPO's loss).

Our reconstruction (the paper has no public code; marked as ours in docs/methods.md):
- **Values (TCRM).** For a trained step i, the reward points j ≥ i (the scored steps, then the final reward),
  in order j_1 < … < j_K, give Q_{k,i} = Σ_m w_m·R_{k,j_m} / Σ_m w_m, a discounted average that stays on the
  reward's scale. ``discount_from: end`` (default): w_m = γ^(K−m), points far from the final sample count less
  (γ = 0: Q = r, GRPO's signal; γ = 1: the plain mean of the points to go). ``discount_from: step``:
  w_m = γ^(m−1), METHODS.md's Σ γ^(j−i)·R_j counted in reward points (γ = 0: the nearest point).
- **Temporal weights.** ω_{g,i} = Q⁺_{g,i} / mean_i Q⁺_{g,i} over the trained steps, Q⁺ the group's mean Q
  shifted up by its most negative value (non-negative); ``temporal_weights: false`` sets ω ≡ 1.
- **Anchoring (ADAE).** Â_{k,i} = ω_{g,i}·[(Q_{k,i} − mean_g Q_i)/(std Q_i + 1e-4) + a_i·k_anchor·(Q_{k,i} − b)],
  clipped to ±adv_clip_max, with a_i = 1 for steps i < anchor_fraction·N and b = ``anchor_baseline``. This is
  METHODS.md's [(Q − mean) + α·Q]/(std + ε) with α = k·(std + ε) (with α = k·std the anchor would vanish with
  the std, which is the case it is meant for): a group whose rewards all agree keeps the signal ω·k·(Q − b).
With γ = 0, ω ≡ 1 and k_anchor = 0, Â equals GRPO's advantage at every step, exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flowalign.algorithms.advantages import group_advantages
from flowalign.algorithms.base import register_algorithm
from flowalign.algorithms.grpo_guard import GRPOGuard, GRPOGuardConfig
from flowalign.errors import ConfigError
from flowalign.sampling.rollout import RolloutHooks, Trajectory
from flowalign.training.dense_rewards import DenseProjections, check_reward_instance, check_scores_outputs

if TYPE_CHECKING:
    from flowalign.training.config import TrainConfig
    from flowalign.training.trainer import Trainer

DISCOUNT_FROM = ("end", "step")


@dataclass
class VGPOConfig(GRPOGuardConfig):
    """``dense_every``: score every n-th stochastic step's projection (0: no dense rewards, Q = r);
    ``gamma`` ∈ [0, 1]; ``discount_from``: ``end`` or ``step``; ``temporal_weights``: use ω (else ω ≡ 1);
    ``k_anchor`` ≥ 0; ``anchor_fraction`` ∈ [0, 1]: steps i < fraction·N are anchored; ``anchor_baseline``: b."""

    name: str = "vgpo"
    dense_every: int = 1
    gamma: float = 0.9
    discount_from: str = "end"
    temporal_weights: bool = True
    k_anchor: float = 0.1
    anchor_fraction: float = 0.5
    anchor_baseline: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dense_every < 0:
            raise ConfigError(f"algorithm.dense_every must be >= 0 (0 turns dense rewards off), got {self.dense_every}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"algorithm.gamma must lie in [0, 1], got {self.gamma}")
        if self.discount_from not in DISCOUNT_FROM:
            raise ConfigError(f"algorithm.discount_from must be one of {', '.join(DISCOUNT_FROM)}, "
                              f"got {self.discount_from!r}")
        if not self.k_anchor >= 0:
            raise ConfigError(f"algorithm.k_anchor must be >= 0, got {self.k_anchor}")
        if not 0.0 <= self.anchor_fraction <= 1.0:
            raise ConfigError(f"algorithm.anchor_fraction must lie in [0, 1], got {self.anchor_fraction}")
        if not math.isfinite(self.anchor_baseline):
            raise ConfigError(f"algorithm.anchor_baseline must be a finite number, got {self.anchor_baseline}")


def reward_to_go(rewards: Tensor, dense: Tensor, points: Tensor, trainable: Tensor, gamma: float,
                 discount_from: str = "end") -> tuple[Tensor, Tensor]:
    """Q (B, N) at the trainable steps (0 elsewhere) and whether each Q is finite-valued (B, N).

    ``rewards`` (B,): final rewards; ``dense`` (B, N): projection rewards at the ``points`` (N,) bool steps
    (others ignored); the last step is always a point, valued r. Weights as in the module docstring.
    """
    batch, steps = dense.shape
    values = torch.where(points, dense.float(), torch.zeros_like(dense, dtype=torch.float32))
    values[:, -1] = rewards.float()
    points = points.clone()
    points[-1] = True
    q = torch.zeros(batch, steps)
    ok = torch.zeros(batch, steps, dtype=torch.bool)
    where = torch.nonzero(points).flatten()
    for i in torch.nonzero(trainable).flatten().tolist():
        ahead = where[where >= i]
        count = len(ahead)
        exponent = (count - 1 - torch.arange(count)) if discount_from == "end" else torch.arange(count)
        weights = torch.pow(torch.tensor(float(gamma)), exponent.float())
        used = values[:, ahead]
        counted = weights > 0  # a zero-weight point never enters (its score may be missing or non-finite)
        total = torch.where(counted, weights * used, torch.zeros_like(used)).sum(1)
        q[:, i] = total / weights.sum()
        ok[:, i] = torch.isfinite(used[:, counted]).all(1)
    return q, ok


def temporal_weights(q: Tensor, group_index: Tensor, trainable: Tensor, valid: Tensor) -> Tensor:
    """ω (B, N): each group's mean Q per trained step over the mean over trained steps, made non-negative."""
    omega = torch.ones_like(q)
    steps = torch.nonzero(trainable).flatten()
    for g in torch.unique(group_index):
        members = (group_index == g) & valid
        if not members.any() or not len(steps):
            continue
        mean_q = q[members][:, steps].mean(0)
        shifted = mean_q - torch.clamp(mean_q.min(), max=0.0)
        scale = shifted.mean()
        if scale > 1e-12:
            omega[(group_index == g)[:, None] & trainable[None, :]] = (shifted / scale).repeat(
                int((group_index == g).sum()))
    return omega


def vgpo_advantages(rewards: Tensor, dense: Tensor, points: Tensor, trainable: Tensor, group_index: Tensor,
                    valid: Tensor, config: VGPOConfig) -> tuple[Tensor, dict[str, float]]:
    """Â (B, N) (0 at untrained steps and invalid samples) and diagnostics; see the module docstring."""
    q, finite = reward_to_go(rewards, dense, points, trainable, config.gamma, config.discount_from)
    steps = torch.nonzero(trainable).flatten()
    valid = valid.bool() & finite[:, steps].all(1)
    omega = (temporal_weights(q, group_index, trainable, valid) if config.temporal_weights
             else torch.ones_like(q))
    anchored = torch.arange(q.shape[1]) < config.anchor_fraction * q.shape[1]
    adv = torch.zeros_like(q)
    for i in steps.tolist():
        z = group_advantages(q[:, i], group_index, std_scope=config.std_scope, clip=float("inf"), valid=valid)
        if config.k_anchor > 0 and anchored[i]:
            z = z + torch.where(valid, config.k_anchor * (q[:, i] - config.anchor_baseline), torch.zeros_like(z))
        adv[:, i] = omega[:, i] * z if config.temporal_weights else z
    adv = adv.clamp(-config.adv_clip_max, config.adv_clip_max)
    flat = rewards.float()
    agree = [bool(flat[group_index == g].max() == flat[group_index == g].min()) for g in torch.unique(group_index)]
    metrics = {"vgpo/equal_reward_groups": float(sum(agree)),
               "vgpo/nonzero_frac": float((adv[:, steps] != 0).float().mean()) if len(steps) else 0.0,
               "vgpo/invalid_values": float((~valid).sum())}
    for i in steps.tolist():
        metrics[f"vgpo/q_mean/step_{i}"] = float(q[valid, i].mean()) if valid.any() else float("nan")
        metrics[f"vgpo/omega/step_{i}"] = float(omega[:, i].mean())
    return adv, metrics


@register_algorithm("vgpo")
class VGPO(GRPOGuard):
    Config = VGPOConfig

    def __init__(self, config: VGPOConfig):
        super().__init__(config)
        self._dense: DenseProjections | None = None
        self._metrics: dict[str, float] = {}

    def validate(self, config: TrainConfig) -> None:
        super().validate(config)
        if not config.sampling.dynamics_config.is_stochastic:
            raise ConfigError(f"vgpo trains stochastic steps, but sampling.dynamics {config.sampling.dynamics!r} with "
                              f"noise_level {config.sampling.noise_level} is deterministic")
        if self.config.dense_every > 0:
            check_scores_outputs(list(config.reward.weights), config.model.num_frames is not None,
                                 "algorithm.dense_every")

    def setup(self, trainer: Trainer) -> None:
        if self.config.dense_every > 0:
            video = len(trainer.model.latent_shape(trainer.geometry)) == 4
            check_reward_instance(trainer.reward, video, "algorithm.dense_every")

    def rollout_hooks(self, trainer: Trainer, it: int) -> RolloutHooks | None:
        if self.config.dense_every == 0:
            return None
        s = trainer.config.sampling
        _, metadata = trainer.iteration_prompts(it)  # what sample_iteration will draw; one entry per sample below
        self._dense = DenseProjections(trainer.model, trainer.reward, trainer.geometry,
                                       trainer.model.schedule(s.num_steps, trainer.geometry), self.config.dense_every, [m for m in metadata for _ in range(s.group_size)])
        return RolloutHooks(on_step=self._dense.on_step)

    def advantages(self, rewards: Tensor, trajectory: Trajectory, valid: Tensor) -> Tensor:
        batch, steps = trajectory.batch_size, trajectory.num_steps
        dense = torch.full((batch, steps), float("nan"))
        points = torch.zeros(steps, dtype=torch.bool)
        self._metrics = {}
        if self._dense is not None:
            got = self._dense.collect(steps)
            self._dense = None
            if got.scores.shape[0] != batch:
                raise ValueError(f"dense rewards cover {got.scores.shape[0]} samples, the rollout has {batch}")
            dense, points = got.scores, got.scored.any(0)
            self._metrics = {"dense/evaluations": float(got.evaluations), "dense/forward_s": got.forward_s,
                             "dense/score_s": got.score_s, "dense/wait_s": got.wait_s,
                             "dense/invalid": float((got.scored & ~got.valid).sum())}
            for i in torch.nonzero(points).flatten().tolist():
                self._metrics[f"dense/reward_mean/step_{i}"] = float(dense[got.valid[:, i], i].mean())
            dense = torch.where(got.valid | ~got.scored, dense, torch.full_like(dense, float("nan")))
        adv, metrics = vgpo_advantages(rewards.cpu(), dense, points, trajectory.trainable.cpu(),
                                       trajectory.group_index.cpu(), valid.cpu(), self.config)
        self._metrics.update(metrics)
        return adv.to(rewards.device)

    def train_iteration(self, trainer: Trainer, it: int) -> dict[str, float]:
        try:
            metrics = super().train_iteration(trainer, it)
        finally:
            if self._dense is not None:  # the iteration ended before its advantages were computed
                self._dense.close()
                self._dense = None
        metrics.update(self._metrics)
        return metrics
