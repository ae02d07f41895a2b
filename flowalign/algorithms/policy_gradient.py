"""The online policy-gradient family: PPO over the SDE's (sample, step) transitions (GRPO and its kin).

What it samples: group rollouts of the training prompts (``Trainer.sample_iteration``). Extra networks: none.
How it updates: the method's ``advantages`` from the rewards, then ``inner_epochs`` shuffles of the iteration's
trainable (sample, step) pairs, each split into ``steps_per_iteration`` optimizer steps; every micro-batch
recomputes log π_θ with gradients (``recompute_log_probs``: one forward for many pairs, mixed steps) and the
method's ``loss(PolicyBatch)`` is back-propagated with weight len(micro-batch)/len(step), so that a step's
gradient is the per-pair mean. Subclasses supply ``advantages`` and ``loss`` (and may override
``rollout_hooks`` for guided or per-step-evaluated rollouts).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flowalign.algorithms.advantages import signal_fraction
from flowalign.algorithms.base import Algorithm
from flowalign.errors import ConfigError
from flowalign.sampling.dynamics import StepResult
from flowalign.sampling.rollout import RolloutHooks, Trajectory, recompute_log_probs
from flowalign.training.seeding import derived_generator

if TYPE_CHECKING:
    from flowalign.training.config import TrainConfig
    from flowalign.training.trainer import Trainer


@dataclass
class PolicyBatch:
    """One micro-batch of K (sample, step) transitions, new quantities with gradients.

    ``new``: StepResult of the current policy (mean (K, ...) with grad, std (K,), log_prob (K,), sample = x').
    ``old_mean`` (K, ...), ``old_log_prob`` (K,): from the rollout. ``advantages`` (K,).
    ``ref_mean`` (K, ...) or None: reference policy's mean (for KL). ``sigma``/``sigma_next`` (K,).
    ``step_idx`` (K,): which sampling step each pair is (for per-step statistics). ``sample_idx`` (K,): which
    rollout sample (trajectory row) each pair is, for methods that keep per-sample tables; None in batches built
    outside the trainer.
    """

    new: StepResult
    old_mean: Tensor
    old_log_prob: Tensor
    advantages: Tensor
    sigma: Tensor
    sigma_next: Tensor
    step_idx: Tensor
    reduction: str
    ref_mean: Tensor | None = None
    sample_idx: Tensor | None = None


class PolicyGradient(Algorithm):
    """Base of GRPO-style methods; see the module docstring for the update."""

    #: whether the trainer must compute the reference policy's mean for each pair
    needs_reference: bool = False

    @abstractmethod
    def advantages(self, rewards: Tensor, trajectory: Trajectory, valid: Tensor) -> Tensor:
        """(B,) or (B, N) advantages for the trajectory's samples (0 where ``valid`` is False)."""

    @abstractmethod
    def loss(self, batch: PolicyBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss of one micro-batch (mean over its pairs) and detached metrics."""

    def validate(self, config: TrainConfig) -> None:
        super().validate(config)
        if self.needs_reference and not config.lora.enabled:
            raise ConfigError("a KL term (algorithm.kl_beta > 0) needs LoRA (lora.enabled: true): the reference "
                              "policy is the transformer with its adapter disabled")

    def rollout_hooks(self, trainer: Trainer, it: int) -> RolloutHooks | None:
        """Hooks for this iteration's rollouts (guidance, per-step evaluation); none by default."""
        return None

    def train_iteration(self, trainer: Trainer, it: int) -> dict[str, float]:
        start = time.perf_counter()
        traj, scored, cond = trainer.sample_iteration(it, hooks=self.rollout_hooks(trainer, it))
        rollout_time = time.perf_counter() - start
        rewards, valid = scored.rewards, scored.valid
        metrics = trainer.reward_metrics(scored)
        if not trainer.on_every_process(bool(valid.all())):
            invalid = int(trainer.accelerator.reduce((~valid).sum().to(trainer.device), reduction="sum"))
            return trainer.skip(it, f"{invalid} non-finite or invalid rewards", metrics)
        advantages = self.advantages(rewards, traj, valid)
        train_start = time.perf_counter()
        opt_metrics, pairs = self.optimize(trainer, traj, cond, advantages, it)
        if opt_metrics is None:
            return trainer.skip(it, "non-finite loss or gradient", metrics)
        metrics.update(opt_metrics)
        metrics["advantage/nonzero_frac"] = signal_fraction(advantages)
        metrics["speed/rollout_images_per_s"] = traj.batch_size * trainer.world / max(rollout_time, 1e-9)
        metrics["speed/train_pairs_per_s"] = pairs * trainer.world / max(time.perf_counter() - train_start, 1e-9)
        return metrics

    # ---------------------------------------------------------------------------------------- optimisation
    def optimize(self, trainer: Trainer, traj: Trajectory, cond, advantages: Tensor, it: int):
        """PPO-style updates over the iteration's (sample, step) pairs; returns (metrics | None, #pairs)."""
        cfg = trainer.config
        samples, steps = traj.trainable_pairs()
        per_sample = advantages if advantages.ndim == 1 else advantages.abs().sum(1)
        keep = per_sample[samples] != 0  # groups with equal rewards carry no signal: skip their compute
        samples, steps = samples[keep], steps[keep]
        if cfg.sampling.train_step_fraction < 1.0 and len(samples):
            draw = torch.rand(len(samples), generator=derived_generator(cfg.seed, "steps", it, trainer.rank))
            keep = draw < cfg.sampling.train_step_fraction
            samples, steps = samples[keep], steps[keep]
        plan = self.update_plan(trainer, samples, steps, it)
        old = (self.recomputed_old_policy(trainer, traj, cond, plan) if trainer.recompute_old_policy
               else [None] * len(plan))
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        n_pairs = 0
        for (chunk_samples, chunk_steps), chunk_old in zip(plan, old):
            ok = self.optimizer_step(trainer, traj, cond, advantages, chunk_samples, chunk_steps, totals, counts,
                                     chunk_old)
            if not ok:
                return None, n_pairs
            n_pairs += len(chunk_samples)
        metrics = {f"train/{k}": v / counts[k] for k, v in totals.items()}
        metrics["train/pairs"] = float(n_pairs)
        return metrics, n_pairs

    def update_plan(self, trainer: Trainer, samples: Tensor, steps: Tensor, it: int) -> list[tuple]:
        """(samples, steps) of each optimizer step: ``inner_epochs`` shuffles of the pairs, each split into
        ``steps_per_iteration`` chunks; an empty chunk is kept only with several processes (each process takes
        part in every all-reduce)."""
        optim, plan = trainer.config.optim, []
        for epoch in range(optim.inner_epochs):
            order = torch.randperm(len(samples), generator=derived_generator(trainer.config.seed, "order", it,
                                                                               epoch, trainer.rank))
            plan += [(samples[c], steps[c]) for c in torch.tensor_split(order, optim.steps_per_iteration)
                     if trainer.world > 1 or len(c)]
        return plan

    @torch.no_grad()
    def recomputed_old_policy(self, trainer: Trainer, traj, cond, plan) -> list[list | None]:
        """μ_old and log π_old of every planned micro-batch, computed now (before any update) in the very batch
        the update will use. The first optimizer step is None: its own forward runs at these weights."""
        return [None] + [[(r.mean, r.log_prob) for r in (recompute_log_probs(trainer.model, traj, cond, s, t)
                                                          for s, t in trainer.micro_batches(*chunk))]
                         for chunk in plan[1:]]

    def optimizer_step(self, trainer: Trainer, traj, cond, advantages, samples, steps, totals, counts,
                       old=None) -> bool:
        """One optimizer step over the pairs (samples, steps); ``old`` as from ``recomputed_old_policy``
        (None with ``optim.old_policy`` rollout: the rollout's means)."""
        trainer.optimizer.zero_grad(set_to_none=True)
        # the per-pair mean over all processes, after the gradients' mean over processes
        total = trainer.mean_over_processes(len(samples))
        if total == 0:  # no process has a pair; an Adam step on zero gradients would still move the weights
            return True
        finite = True
        for m, (s, t) in enumerate(trainer.micro_batches(samples, steps)):
            # no autocast: recomputing in another precision than the rollout's breaks ratio == 1 on-policy
            new = recompute_log_probs(trainer.model, traj, cond, s, t)
            if not trainer.recompute_old_policy:
                old_mean = traj.means[s, t].to(trainer.device)
                old_log_prob = traj.log_probs[s, t].to(trainer.device)
            elif old is None:  # the iteration's first step: nothing has changed since the rollout
                old_mean, old_log_prob = new.mean.detach(), new.log_prob.detach()
            else:
                old_mean, old_log_prob = old[m]
            ref_mean = trainer.reference_step(traj, cond, s, t).mean if self.needs_reference else None
            sig = traj.sigmas.to(trainer.device)
            adv = advantages[s] if advantages.ndim == 1 else advantages[s, t]
            step_idx = t.to(trainer.device)
            batch = PolicyBatch(new=new, old_mean=old_mean, old_log_prob=old_log_prob,
                                advantages=adv.to(trainer.device), sigma=sig[step_idx], sigma_next=sig[step_idx + 1],
                                step_idx=t, reduction=trainer.dynamics.log_prob_reduction, ref_mean=ref_mean,
                                sample_idx=s)
            loss, metrics = self.loss(batch)
            if not torch.isfinite(loss):
                finite = False
                break
            (loss * len(s) / total).backward()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(s)
                counts[k] = counts.get(k, 0) + len(s)
        return trainer.apply_update(finite, totals, counts)
