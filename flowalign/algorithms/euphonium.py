"""Euphonium: GRPO with rollouts steered by the gradient of a process reward, on the policy-gradient core.

Our flow-model form of the method (its public code covers one video model); the parts marked
[reconstruction] follow docs/methods.md and ../shared/METHODS.md §3, not the authors' code.

- **Process reward model** r_φ(x_σ, σ, pooled text) → score: a small ``AuxiliaryNet`` with its own AdamW,
  trained after every iteration by regression on the iteration's rollouts: every visited state x_{t+1}
  (t = 0 … N−1, σ_{t+1} from the schedule; σ = 1 noise → 0 data) predicts the sample's final reward.
- **Guided rollouts** (``RolloutHooks.mean_shift``): on the steps ``guidance_steps`` (default: every stochastic
  step) from iteration ``guidance_start`` on, the SDE sample moves to μ + λ·(−dt)·∇ₓr + std·z, with r = r_φ
  (``guidance: latent``) or, for a differentiable reward R, R(decode(x̂0)) with the one-step prediction
  x̂0 = x − σ·v_θ(x) (``guidance: pixel``; the gradient goes through the transformer and the VAE). λ = 0 is the
  unguided sampler (the hook is not even installed), so noise level 0 with λ = 0 is the ODE.
- **Log-probs under the unguided mean**: the rollout records log π_θ(x' | x) with the unguided μ (the trained
  policy is the unguided model; guidance only steers exploration), as ``RolloutHooks`` guarantees.
- **Dual-reward advantages** [reconstruction]: ``outcome`` (GRPO's group z-score of the final reward, one
  advantage per sample), ``process`` (per step t: the group z-score of r_φ(x_{t+1}, σ_{t+1})), or ``both``: two
  PPO-clip terms sharing one ratio, L = ppo(A_outcome) + process_weight·ppo(A_process).
- **Distillation** [reconstruction]: with the guided mean written as a velocity change,
  δv = −λ∇r / (1 + g²(1−σ)/(2σ)), and μ affine in v, the term distill_beta·reduce(‖v_θ − sg(v_old + δv)‖²) on
  guided steps equals distill_beta·reduce(((μ_θ − μ_old − shift) / (c·dt))²) with c = 1 + g²(1−σ)/(2σ)
  (flow_sde; c = 1 + a²(1−σ)/(2σ) for dance_sde); it moves the unguided velocity toward the guided one.

The PPO part (ratio, clipping, RatioNorm, −dt reweighting) is GRPO-Guard's (``ratio_norm``/``reweight``;
``ratio_norm: false``, ``reweight: none`` gives plain GRPO): with λ = 0, ``advantages: outcome`` and
``distill_beta: 0`` the rollouts, losses and updates are GRPO-Guard's (resp. GRPO's) exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flowalign.algorithms.advantages import group_advantages
from flowalign.algorithms.base import register_algorithm
from flowalign.algorithms.grpo import ppo_clip_loss
from flowalign.algorithms.grpo_guard import GRPOGuard, GRPOGuardConfig
from flowalign.algorithms.policy_gradient import PolicyBatch
from flowalign.errors import ConfigError
from flowalign.sampling.dynamics import reduce_over_sample
from flowalign.sampling.rollout import RolloutHooks, Trajectory
from flowalign.training.auxiliary import AuxiliaryConfig, AuxiliaryNet, AuxiliaryTrainer
from flowalign.training.seeding import derive_seed, derived_generator

if TYPE_CHECKING:
    from flowalign.training.config import TrainConfig
    from flowalign.training.trainer import Trainer

GUIDANCE_SOURCES = ("latent", "pixel")
ADVANTAGE_MODES = ("outcome", "process", "both")


@dataclass
class EuphoniumConfig(GRPOGuardConfig):
    """``guidance_strength`` λ >= 0; ``guidance_steps``: step indices in [0, num_steps) (null: every stochastic
    step); ``guidance_start``: first iteration with guidance; ``guidance``: latent | pixel; ``advantages``:
    outcome | process | both, ``process_weight`` > 0 for both; ``distill_beta`` >= 0; the process reward model:
    ``prm_hidden``, ``prm_lr``, ``prm_updates`` regression steps per iteration of ``prm_batch_size`` states."""

    name: str = "euphonium"
    guidance_strength: float = 0.0
    guidance_steps: list[int] | None = None
    guidance_start: int = 0
    guidance: str = "latent"
    advantages: str = "outcome"
    process_weight: float = 1.0
    distill_beta: float = 0.0
    prm_hidden: int = 64
    prm_lr: float = 1e-3
    prm_updates: int = 4
    prm_batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.guidance_strength >= 0:
            raise ConfigError(f"algorithm.guidance_strength (λ) must be >= 0, got {self.guidance_strength}")
        if self.guidance_start < 0:
            raise ConfigError(f"algorithm.guidance_start must be >= 0, got {self.guidance_start}")
        if self.guidance not in GUIDANCE_SOURCES:
            raise ConfigError(f"algorithm.guidance must be one of {', '.join(GUIDANCE_SOURCES)}, "
                              f"got {self.guidance!r}")
        if self.advantages not in ADVANTAGE_MODES:
            raise ConfigError(f"algorithm.advantages must be one of {', '.join(ADVANTAGE_MODES)}, "
                              f"got {self.advantages!r}")
        if not self.process_weight > 0:
            raise ConfigError(f"algorithm.process_weight must be > 0, got {self.process_weight}")
        if not self.distill_beta >= 0:
            raise ConfigError(f"algorithm.distill_beta must be >= 0, got {self.distill_beta}")
        for key in ("prm_hidden", "prm_updates", "prm_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"algorithm.{key} must be >= 1, got {getattr(self, key)}")
        if not self.prm_lr > 0:
            raise ConfigError(f"algorithm.prm_lr must be > 0, got {self.prm_lr}")


@register_algorithm("euphonium")
class Euphonium(GRPOGuard):
    Config = EuphoniumConfig

    def validate(self, config: TrainConfig) -> None:
        super().validate(config)
        cfg, n = self.config, config.sampling.num_steps
        outside = [s for s in cfg.guidance_steps or [] if not 0 <= s < n]
        if outside:
            raise ConfigError(f"algorithm.guidance_steps {outside} lie outside the schedule: sampling.num_steps = "
                              f"{n} has steps 0..{n - 1}")
        if cfg.distill_beta > 0 and config.sampling.dynamics not in ("flow_sde", "dance_sde"):
            raise ConfigError("algorithm.distill_beta > 0 writes the guided mean as a velocity change, which holds "
                              f"for flow_sde and dance_sde, not sampling.dynamics {config.sampling.dynamics!r}")

    @property
    def guided(self) -> bool:
        return self.config.guidance_strength > 0

    def setup(self, trainer: Trainer) -> None:
        cfg = self.config
        self.trainer = trainer
        self.prm: AuxiliaryTrainer | None = None
        if (self.guided and cfg.guidance == "latent") or cfg.advantages != "outcome":
            with torch.random.fork_rng(devices=[]):  # the PRM's init leaves the global RNG as it was
                torch.manual_seed(derive_seed(trainer.config.seed, "prm_init"))
                net = AuxiliaryNet.for_model(trainer.model, trainer.geometry,
                                             AuxiliaryConfig(outputs=1, hidden=cfg.prm_hidden, lr=cfg.prm_lr))
            self.prm = AuxiliaryTrainer(net)
        if self.guided and cfg.guidance == "pixel" and not trainer.reward.spec.differentiable:
            raise ConfigError(f"algorithm.guidance: pixel differentiates the reward, but {trainer.reward.spec.name!r} "
                              "is not differentiable; use guidance: latent (the process reward model)")
        self._reset()

    def _reset(self) -> None:
        self._shifts: list[dict[int, Tensor]] = []  # per rollout chunk: step -> shift (rows, ...)
        self._shift_norms: list[float] = []
        self._outcome = self._process = self._traj = self._rewards = None

    # ------------------------------------------------------------------------------------------- guidance
    def rollout_hooks(self, trainer: Trainer, it: int) -> RolloutHooks | None:
        self._reset()
        if not self.guided or it < self.config.guidance_start:
            return None
        return RolloutHooks(mean_shift=self.guidance_shift)

    def guidance_shift(self, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor, cond) -> Tensor | None:
        """λ·(−dt)·∇ₓr on the guided steps (None elsewhere); recorded for the distillation term."""
        cfg = self.config
        if cfg.guidance_steps is not None and i not in cfg.guidance_steps:
            return None
        shift = cfg.guidance_strength * float(sigma - sigma_next) * self.reward_gradient(x, sigma, cond)
        if not self._shifts or i <= max(self._shifts[-1]):  # the first guided step of a new rollout chunk
            self._shifts.append({})
        self._shifts[-1][i] = shift.detach().float()
        self._shift_norms.append(float(shift.flatten(1).norm(dim=1).mean()))
        return shift

    def reward_gradient(self, x: Tensor, sigma: Tensor, cond) -> Tensor:
        """∇ₓ of r_φ(x, σ, text) (latent) or of R(decode(x − σ·v_θ(x))) (pixel), per sample, float32."""
        trainer = self.trainer
        with torch.enable_grad():
            x_in = x.detach().float().requires_grad_(True)
            if self.config.guidance == "latent":
                score = self.prm.net(x_in, sigma, trainer.model.pooled_text(cond))
            else:
                v = trainer.model.velocity(x_in, sigma, cond, trainer.geometry, trainer.config.sampling.guidance_scale)
                pixels = trainer.model.decode(x_in - sigma * v, trainer.geometry)
                score = trainer.reward(pixels.to(trainer.reward.device), cond.prompts).scores
            (grad,) = torch.autograd.grad(score.sum(), x_in)
        return grad

    def shift_table(self, traj: Trajectory) -> Tensor:
        """(B, N, ...) shifts of the iteration (zeros on unguided steps), chunks in rollout order."""
        table = torch.zeros_like(traj.means)
        first = 0
        for chunk in self._shifts:
            rows = next(iter(chunk.values())).shape[0]
            for i, shift in chunk.items():
                table[first : first + rows, i] = shift.to(table.device)
            first += rows
        return table

    # ----------------------------------------------------------------------------------------- advantages
    @torch.no_grad()
    def process_rewards(self, traj: Trajectory) -> Tensor:
        """r_φ(x_{t+1}, σ_{t+1}, text) for every sample and step → (B, N)."""
        model, device = self.trainer.model, self.trainer.device
        text = model.pooled_text(model.encode_prompts(traj.prompts)).to(device)
        sigmas = traj.sigmas.to(device)
        return torch.stack([self.prm.net(traj.latents[:, t + 1].to(device), sigmas[t + 1], text)
                            for t in range(traj.num_steps)], dim=1).float().cpu()

    def advantages(self, rewards: Tensor, trajectory: Trajectory, valid: Tensor) -> Tensor:
        cfg = self.config
        outcome = super().advantages(rewards, trajectory, valid)
        self._traj, self._rewards, self._outcome = trajectory, rewards.float().cpu(), outcome.float().cpu()
        if cfg.advantages == "outcome":
            return outcome
        scores, groups = self.process_rewards(trajectory), trajectory.group_index
        self._process = torch.stack([group_advantages(scores[:, t], groups, std_scope=cfg.std_scope,
                                                      clip=cfg.adv_clip_max, valid=valid.cpu())
                                     for t in range(trajectory.num_steps)], dim=1)
        if cfg.advantages == "process":
            return self._process
        # the PPO core keeps the pairs where this is non-zero; loss() splits the two terms again
        return self._outcome[:, None].abs() + self._process.abs()

    # ----------------------------------------------------------------------------------------------- loss
    def loss(self, batch: PolicyBatch) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        if batch.sample_idx is None:
            raise ValueError("euphonium: PolicyBatch.sample_idx is None; its per-sample advantages and guidance "
                             "shifts need the trajectory row of each pair")
        s, t = batch.sample_idx.cpu(), batch.step_idx.cpu()
        if cfg.advantages == "both":
            device = batch.advantages.device
            batch = replace(batch, advantages=self._outcome[s].to(device))
            loss, metrics = super().loss(batch)
            process, _ = ppo_clip_loss(self._process[s, t].to(device), self.log_ratio(batch), cfg.clip_range)
            process_loss = (process * self.pair_weights(batch)).mean()
            loss = loss + cfg.process_weight * process_loss
            metrics["process_loss"] = process_loss.detach()
        else:
            loss, metrics = super().loss(batch)
        if cfg.distill_beta > 0 and self._shifts:
            distill = self.distillation(batch, s, t)
            loss = loss + cfg.distill_beta * distill
            metrics["distill"] = distill.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics

    def distillation(self, batch: PolicyBatch, s: Tensor, t: Tensor) -> Tensor:
        """Mean over the pairs of reduce(((μ_θ − μ_old − shift)/(c·dt))²) on guided steps (0 elsewhere)."""
        shift = self._shift_table[s, t].to(batch.new.mean.device)
        guided = shift.flatten(1).abs().amax(1) > 0
        sigma, dt = batch.sigma, batch.sigma_next - batch.sigma
        g2 = batch.new.std**2 / (-dt)
        safe_sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
        c = 1 + g2 * (1 - sigma) / (2 * safe_sigma)
        scale = (c * dt).reshape(-1, *([1] * (shift.ndim - 1)))
        diff = (batch.new.mean - batch.old_mean.float() - shift) / scale
        per_pair = reduce_over_sample(diff**2, batch.reduction)
        return torch.where(guided, per_pair, torch.zeros_like(per_pair)).mean()

    # ------------------------------------------------------------------------------------------ iteration
    def train_iteration(self, trainer: Trainer, it: int) -> dict[str, float]:
        self._shift_table = None
        metrics = super().train_iteration(trainer, it)
        if self._shift_norms:
            metrics["guidance/shift_norm"] = sum(self._shift_norms) / len(self._shift_norms)
        if self.prm is not None and self._traj is not None:
            metrics.update(self.train_prm(trainer, it))
        return metrics

    def optimize(self, trainer, traj, cond, advantages, it):
        if self.config.distill_beta > 0 and self._shifts:
            self._shift_table = self.shift_table(traj)
        return super().optimize(trainer, traj, cond, advantages, it)

    def train_prm(self, trainer: Trainer, it: int) -> dict[str, float]:
        """``prm_updates`` regression steps of r_φ(x_{t+1}, σ_{t+1}, text) on the final reward of the sample."""
        cfg, traj, device = self.config, self._traj, trainer.device
        states = traj.latents[:, 1:].flatten(0, 1)
        sigmas = traj.sigmas[1:].repeat(traj.batch_size)
        text = trainer.model.pooled_text(trainer.model.encode_prompts(traj.prompts))
        rows = torch.arange(traj.batch_size).repeat_interleave(traj.num_steps)
        targets = self._rewards[rows]
        average = None if trainer.world == 1 else self._average_gradients
        gen = derived_generator(trainer.config.seed, "prm", it, trainer.rank)
        losses = []
        for _ in range(cfg.prm_updates):
            pick = torch.randint(len(states), (min(cfg.prm_batch_size, len(states)),), generator=gen)
            out = self.prm.regression_step(states[pick].to(device), sigmas[pick].to(device),
                                           text[rows[pick].to(text.device)].to(device), targets[pick].to(device),
                                           average_gradients=average)
            losses.append(out["loss"])
        return {"prm/loss": sum(losses) / len(losses)}

    def _average_gradients(self, params) -> None:
        for p in params:
            p.grad = self.trainer.accelerator.reduce(p.grad, reduction="mean")

    def state_dict(self) -> dict:
        return {"prm": self.prm.state_dict()} if self.prm is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.prm is None:
            super().load_state_dict(state)
        else:
            self.prm.load_state_dict(state["prm"])
