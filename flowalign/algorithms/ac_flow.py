"""AC-Flow: actor-critic for flow models, a critic-weighted flow-matching actor with a W2 bound to the reference.

What it samples: group rollouts of the training prompts (``Trainer.sample_iteration``); rewards r. Extra network:
a critic V(x_σ, σ, pooled text) (``training/auxiliary.py``, its own AdamW), in every checkpoint. How it updates:

1. **Shaping**: r̃ = clip((r − mean_prompt r)/(std_prompt r + 1e-4), ±``shaping_clip``) (per prompt's group).
2. **Actor** (before the critic sees this iteration): each final sample x0 is re-noised ``renoise_per_sample``
   times, x_σ = (1−σ)·x0 + σ·ε (σ from ``sigma_sampling``; σ = 1 noise → 0 data). Advantage per example:
   A = clip(r̃ − V(x_σ, σ), ±``adv_clip``) (``advantage: final``) or clip(V(x_σ') − V(x_σ)) with
   σ' = max(σ − ``td_step``, 0) (``advantage: td``); during the ``critic_warmup`` first iterations, or with
   ``critic: false``, A = clip(r̃). Weights w = exp(A/τ) / mean(exp(A/τ)) over the iteration's examples (mean 1;
   τ = inf gives w ≡ 1). Loss per example, each norm a mean over latent elements:

       L = w·‖v_θ(x_σ, σ) − (ε − x0)‖² + α·‖v_θ(x_σ, σ) − v_ref(x_σ, σ)‖²,

   v_ref = the adapter disabled (no gradient), the W2 bound between the flows; both at ``train_guidance_scale``.
   The examples are split into ``optim.steps_per_iteration`` optimizer steps (per-example mean).
3. **Critic**: ``critic_epochs`` passes over every rollout state (x_{σ_i}, σ_i) for i < N, regressing r̃ of
   the sample (mini-batches of ``critic_batch_size``, shuffled by a seeded generator).

Our reconstruction (no public code; docs/methods.md): the weighting (ORW-CFM-style normalized exp(A/τ)), the
advantage forms, the order actor-then-critic and the critic's training states are our choices from the
paper's stated parts. With α = 0, τ = inf and no critic the loss is plain flow matching on the re-noised samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flowalign.algorithms.advantages import group_advantages
from flowalign.algorithms.base import Algorithm, AlgorithmConfig, register_algorithm
from flowalign.errors import ConfigError
from flowalign.training.auxiliary import AuxiliaryConfig, AuxiliaryNet, AuxiliaryTrainer
from flowalign.training.flow_matching import SigmaSamplingFields, flow_matching_terms, renoise, sample_sigmas
from flowalign.training.reference import reference_velocity
from flowalign.training.seeding import derived_generator

if TYPE_CHECKING:
    from flowalign.training.config import TrainConfig
    from flowalign.training.trainer import Trainer

ADVANTAGES = ("final", "td")


@dataclass
class ACFlowConfig(SigmaSamplingFields, AlgorithmConfig):
    """Knobs in the module docstring's order; ``critic_hidden``/``critic_lr``: the critic's width and AdamW lr;
    the σ density as ``SigmaSamplingFields``."""

    name: str = "ac_flow"
    shaping_clip: float = 3.0
    critic: bool = True
    critic_warmup: int = 10
    critic_hidden: int = 64
    critic_lr: float = 1e-3
    critic_epochs: int = 2
    critic_batch_size: int = 64
    advantage: str = "final"
    td_step: float = 0.1
    adv_clip: float = 2.0
    temperature: float = 1.0
    w2_weight: float = 0.1
    renoise_per_sample: int = 1
    train_guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        positive = {"shaping_clip": self.shaping_clip, "adv_clip": self.adv_clip, "critic_lr": self.critic_lr}
        for key, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"algorithm.{key} must be a finite number > 0, got {value}")
        if not self.temperature > 0:  # NaN fails too; inf is allowed (uniform weights)
            raise ConfigError(f"algorithm.temperature (τ) must be > 0 (inf for uniform weights), got {self.temperature}")
        for key in ("critic_warmup", "critic_hidden", "critic_epochs", "critic_batch_size", "renoise_per_sample"):
            low = 0 if key == "critic_warmup" else 1
            if getattr(self, key) < low:
                raise ConfigError(f"algorithm.{key} must be >= {low}, got {getattr(self, key)}")
        if self.advantage not in ADVANTAGES:
            raise ConfigError(f"algorithm.advantage must be one of {', '.join(ADVANTAGES)}, got {self.advantage!r}")
        if not 0 < self.td_step <= 1:
            raise ConfigError(f"algorithm.td_step must lie in (0, 1], got {self.td_step}")
        if not (math.isfinite(self.w2_weight) and self.w2_weight >= 0):
            raise ConfigError(f"algorithm.w2_weight (α) must be a finite number >= 0, got {self.w2_weight}")
        self.check_sigma_sampling()
        if not self.train_guidance_scale >= 1:
            raise ConfigError(f"algorithm.train_guidance_scale must be >= 1, got {self.train_guidance_scale}")


def exp_weights(advantages: Tensor, temperature: float) -> Tensor:
    """exp(A/τ) normalized to mean 1 (computed as exp((A − max A)/τ), the same ratio without overflow)."""
    logits = (advantages.float() - advantages.max()) / temperature
    weights = torch.exp(logits)
    return weights / weights.mean()


@dataclass
class ActorTerms:
    """Per-example terms (K,): the flow-matching error, the W2 term (zeros when α = 0) and the loss."""

    fm_error: Tensor
    w2: Tensor
    loss: Tensor


def actor_terms(model, x0: Tensor, cond, geometry, sigma: Tensor, noise: Tensor, weights: Tensor,
                w2_weight: float, guidance_scale: float = 1.0) -> ActorTerms:
    """w·‖v_θ − (ε − x0)‖² + α·‖v_θ − v_ref‖² per example, at x_σ = (1−σ)·x0 + σ·ε (v_ref: adapter off)."""
    terms = flow_matching_terms(model, x0, cond, geometry, sigma, noise, guidance_scale)
    w2 = torch.zeros_like(terms.error)
    if w2_weight > 0:
        v_ref = reference_velocity(model, terms.x_sigma, sigma, cond, geometry, guidance_scale)
        w2 = (terms.velocity - v_ref).flatten(1).pow(2).mean(1)
    return ActorTerms(terms.error, w2, weights * terms.error + w2_weight * w2)


@register_algorithm("ac_flow")
class ACFlow(Algorithm):
    Config = ACFlowConfig

    def __init__(self, config: ACFlowConfig):
        super().__init__(config)
        self.critic: AuxiliaryTrainer | None = None

    def validate(self, config: TrainConfig) -> None:
        super().validate(config)
        if self.config.critic and self.config.critic_warmup >= config.iterations:
            raise ConfigError(f"algorithm.critic_warmup ({self.config.critic_warmup} iterations) must be shorter than "
                              f"the run (iterations = {config.iterations}): the critic would never drive the actor")
        if self.config.w2_weight > 0 and not config.lora.enabled:
            raise ConfigError("algorithm.w2_weight > 0 needs LoRA (lora.enabled: true): the reference flow is the "
                              "transformer with its adapter disabled")

    def setup(self, trainer: Trainer) -> None:
        if self.config.critic:
            aux = AuxiliaryConfig(hidden=self.config.critic_hidden, lr=self.config.critic_lr)
            self.critic = AuxiliaryTrainer(AuxiliaryNet.for_model(trainer.model, trainer.geometry, aux))

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict()} if self.critic is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if (self.critic is None) != ("critic" not in state):
            raise ConfigError(f"ac_flow checkpoint {'has' if 'critic' in state else 'lacks'} a critic, but "
                              f"algorithm.critic is {self.config.critic}")
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])

    # ------------------------------------------------------------------------------------------- iteration
    def train_iteration(self, trainer: Trainer, it: int) -> dict[str, float]:
        cfg = self.config
        traj, scored, cond = trainer.sample_iteration(it)
        metrics = trainer.reward_metrics(scored)
        if not trainer.on_every_process(bool(scored.valid.all())):
            return trainer.skip(it, "non-finite or invalid rewards", metrics)
        group = traj.group_index.to(scored.rewards.device)
        shaped = group_advantages(scored.rewards, group, std_scope="group", clip=cfg.shaping_clip).to(trainer.device)
        text = trainer.model.pooled_text(cond).to(trainer.device)
        gen = derived_generator(trainer.config.seed, "ac_flow", it, trainer.rank)
        reps = cfg.renoise_per_sample
        rows = torch.arange(traj.batch_size).repeat_interleave(reps)
        x0 = traj.final.to(trainer.device)[rows]
        sigma = sample_sigmas(len(rows), gen, cfg.sigma_density, device=trainer.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        advantages, driven = self.advantages(shaped[rows], x0, noise, sigma, text[rows], it)
        weights = exp_weights(advantages, cfg.temperature)
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for chunk in torch.tensor_split(torch.randperm(len(rows), generator=gen), trainer.config.optim.steps_per_iteration):
            if len(chunk) and not self.actor_step(trainer, cond, rows, x0, sigma, noise, weights, chunk, totals,
                                                  counts):
                return trainer.skip(it, "non-finite loss or gradient", metrics)
        metrics.update({f"train/{k}": v / counts[k] for k, v in totals.items()})
        metrics.update({"ac_flow/critic_drives": float(driven), "ac_flow/adv_mean": float(advantages.mean()),
                        "ac_flow/adv_std": float(advantages.std(unbiased=False)),
                        "ac_flow/weight_max": float(weights.max()),
                        "ac_flow/weight_ess_frac": float(weights.sum() ** 2 / (weights**2).sum() / len(weights))})
        if self.critic is not None:
            metrics.update(self.train_critic(trainer, traj, text, shaped, it))
        return metrics

    @torch.no_grad()
    def advantages(self, shaped: Tensor, x0: Tensor, noise: Tensor, sigma: Tensor, text: Tensor,
                   it: int) -> tuple[Tensor, bool]:
        """A per example (K,) and whether the critic produced it (False: warm-up or no critic → clip(r̃))."""
        cfg = self.config
        if self.critic is None or it < cfg.critic_warmup:
            return shaped.float().clamp(-cfg.adv_clip, cfg.adv_clip), False
        critic = self.critic.net
        value = critic(renoise(x0, noise, sigma), sigma, text)
        if cfg.advantage == "final":
            raw = shaped.float() - value
        else:
            sigma_next = (sigma - cfg.td_step).clamp(min=0.0)
            raw = critic(renoise(x0, noise, sigma_next), sigma_next, text) - value
        return raw.clamp(-cfg.adv_clip, cfg.adv_clip), True

    def actor_step(self, trainer: Trainer, cond, rows, x0, sigma, noise, weights, chunk, totals, counts) -> bool:
        """One optimizer step on the examples ``chunk``: their mean actor loss."""
        trainer.optimizer.zero_grad(set_to_none=True)
        finite, size = True, trainer.config.optim.micro_batch_size
        for first in range(0, len(chunk), size):
            idx = chunk[first : first + size]
            terms = actor_terms(trainer.model, x0[idx], cond.select(rows[idx]), trainer.geometry, sigma[idx],
                                noise[idx], weights[idx], self.config.w2_weight, self.config.train_guidance_scale)
            loss = terms.loss.mean()
            if not torch.isfinite(loss):
                finite = False
                break
            (loss * len(idx) / len(chunk)).backward()
            for key, value in (("loss", terms.loss), ("fm_error", terms.fm_error), ("w2", terms.w2)):
                totals[key] = totals.get(key, 0.0) + float(value.detach().sum())
                counts[key] = counts.get(key, 0) + len(idx)
        return trainer.apply_update(finite, totals, counts)

    def train_critic(self, trainer: Trainer, traj, text: Tensor, shaped: Tensor, it: int) -> dict[str, float]:
        """``critic_epochs`` shuffled passes over the rollout states (x_{σ_i}, σ_i), i < N, targets r̃."""
        cfg, critic = self.config, self.critic
        steps = traj.num_steps
        latents = traj.latents[:, :steps].flatten(0, 1).to(trainer.device)  # (B·N, ...), sample-major
        sigmas = traj.sigmas.to(trainer.device)[:steps].repeat(traj.batch_size)
        samples = torch.arange(traj.batch_size, device=trainer.device).repeat_interleave(steps)
        with torch.no_grad():
            before = float((critic.net(latents, sigmas, text[samples]) - shaped[samples]).pow(2).mean())
        gen = derived_generator(trainer.config.seed, "critic", it, trainer.rank)
        average = None if trainer.world == 1 else _gradient_averager(trainer)
        losses = []
        for _ in range(cfg.critic_epochs):
            order = torch.randperm(len(samples), generator=gen).to(trainer.device)
            for batch in order.split(cfg.critic_batch_size):
                out = critic.regression_step(latents[batch], sigmas[batch], text[samples[batch]],
                                             shaped[samples[batch]], average_gradients=average)
                losses.append(out["loss"])
        return {"critic/loss_before": before, "critic/loss": sum(losses) / len(losses),
                "critic/steps": float(critic.steps)}


def _gradient_averager(trainer: Trainer):
    """Averages the critic's gradients over processes (every process takes the same number of critic steps)."""

    def average(params) -> None:
        for p in params:
            p.grad.copy_(trainer.accelerator.reduce(p.grad, reduction="mean"))

    return average
