"""Preference optimization on flow-matching errors (Diffusion-DPO and SePPO): the loss and its update.

Convention (``flow_matching.py``): σ = 1 is noise, σ = 0 data; x_σ = (1−σ)·x0 + σ·ε; e(x) = ‖v(x_σ, σ) − (ε − x0)‖²
reduced (mean by default) over all non-batch dimensions. Both images of a pair are re-noised with ONE σ and ONE ε
(``shared_noise_pair``), so that their error difference measures the model, not the noise draw.

With Δ_w = e_θ(w) − e_ref(w) and Δ_l = e_θ(l) − e_ref(l) (velocity units, β likewise):

    logit = −β·(Δ_w − s·Δ_l),   loss = −log sigmoid(logit) = softplus(−logit),

where s = +1 for Diffusion-DPO (the loser is pushed away). SePPO's anchor criterion (AAF, our flow-matching reading)
sets s per pair without gradient: +1 when e_ref(w) ≥ e_θ(w) (the policy already fits the winner at least as well as
the reference, so the reference's sample is taken as a loser and pushed away), else −1 (the reference is still
better on the winner, so its sample is taken as good and both errors are lowered). At θ = ref every Δ is 0: the
logit is 0, the loss log 2, s = +1, and d loss / d e_θ(w) = +β/2, d loss / d e_θ(l) = −β/2.

The implicit preference accuracy counts a pair as right when the policy's implicit reward prefers the winner
(logit with s = +1 above 0) and half when it is exactly 0, as ``reward_models.evaluate`` counts ties.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from flowalign.training.flow_matching import pair_flow_matching_errors

if TYPE_CHECKING:
    from flowalign.training.trainer import Trainer

CRITERIA = ("dpo", "aaf")


def anchor_sign(policy_w: Tensor, ref_w: Tensor) -> Tensor:
    """SePPO's AAF per pair (no gradient): +1.0 where e_ref(w) ≥ e_θ(w) (push the reference sample away), else −1.0."""
    return torch.where(ref_w.detach() >= policy_w.detach(), 1.0, -1.0).to(policy_w.dtype)


def preference_logit(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float,
                     sign: Tensor | float = 1.0) -> Tensor:
    """−β·((e_θ(w) − e_ref(w)) − s·(e_θ(l) − e_ref(l))), per pair (B,)."""
    return -beta * ((policy_w - ref_w) - sign * (policy_l - ref_l))


def preference_loss(logit: Tensor) -> Tensor:
    """−log sigmoid(logit) per pair (B,), computed stably as softplus(−logit)."""
    return F.softplus(-logit)


def implicit_accuracy(logit: Tensor) -> Tensor:
    """Per pair: 1 where the implicit reward prefers the winner (logit > 0), 0.5 at a tie, else 0."""
    logit = logit.detach()
    return (logit > 0).float() + 0.5 * (logit == 0).float()


@dataclass
class PreferenceTerms:
    """Per-pair quantities of one micro-batch: policy errors (with graph), reference errors, AAF sign, DPO logit
    (s = +1, detached, for accuracy), the trained logit and loss (with graph)."""

    policy_w: Tensor
    policy_l: Tensor
    ref_w: Tensor
    ref_l: Tensor
    sign: Tensor
    dpo_logit: Tensor
    logit: Tensor
    loss: Tensor

    def metrics(self) -> dict[str, Tensor]:
        """Means over the micro-batch of the logged quantities (detached)."""
        return {"loss": self.loss.detach().mean(), "logit": self.logit.detach().mean(),
                "implicit_accuracy": implicit_accuracy(self.dpo_logit).mean(),
                "aaf_rate": (self.sign > 0).float().mean(),
                "error_winner": self.policy_w.detach().mean(), "error_loser": self.policy_l.detach().mean(),
                "ref_error_winner": self.ref_w.mean(), "ref_error_loser": self.ref_l.mean()}


def preference_terms(trainer: Trainer, winners: Tensor, losers: Tensor, prompts: list[str], sigma: Tensor,
                     noise: Tensor, beta: float, criterion: str,
                     reference: Callable[[], AbstractContextManager]) -> PreferenceTerms:
    """Errors of winners and losers (latents x0, (B, …)) re-noised with the shared ``sigma`` (B,) and ``noise``;
    the reference's under ``reference()`` without gradient, in the same batch layout as the policy's."""
    model = trainer.model
    cond = model.encode_prompts(prompts)
    with torch.no_grad(), reference():
        ref_w, ref_l = pair_flow_matching_errors(model, winners, losers, cond, trainer.geometry, sigma, noise)
    policy_w, policy_l = pair_flow_matching_errors(model, winners, losers, cond, trainer.geometry, sigma, noise)
    sign = anchor_sign(policy_w, ref_w) if criterion == "aaf" else torch.ones_like(ref_w)
    dpo_logit = preference_logit(policy_w.detach(), policy_l.detach(), ref_w, ref_l, beta)
    logit = preference_logit(policy_w, policy_l, ref_w, ref_l, beta, sign)
    return PreferenceTerms(policy_w, policy_l, ref_w, ref_l, sign, dpo_logit, logit, preference_loss(logit))


def preference_update(trainer: Trainer, winners: Tensor, losers: Tensor, prompts: list[str], sigma: Tensor,
                      noise: Tensor, beta: float, criterion: str,
                      reference: Callable[[], AbstractContextManager]) -> dict[str, float] | None:
    """Train on the iteration's pairs: ``optim.steps_per_iteration`` optimizer steps over consecutive chunks,
    each the per-pair mean loss over all processes in micro-batches of ``optim.micro_batch_size`` pairs. Returns
    the pair-weighted mean metrics (``train/…``), or None when a step met a non-finite loss or gradient."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    steps = trainer.config.optim.steps_per_iteration
    for chunk in torch.tensor_split(torch.arange(len(prompts)), steps):
        if not len(chunk) and trainer.world == 1:
            continue
        trainer.optimizer.zero_grad(set_to_none=True)
        total = trainer.mean_over_processes(len(chunk))
        if total == 0:
            continue
        finite = True
        for idx, _ in trainer.micro_batches(chunk, chunk):
            terms = preference_terms(trainer, winners[idx], losers[idx], [prompts[i] for i in idx.tolist()],
                                     sigma[idx], noise[idx], beta, criterion, reference)
            loss = terms.loss.mean()
            if not torch.isfinite(loss):
                finite = False
                break
            (loss * len(idx) / total).backward()
            for key, value in terms.metrics().items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(idx)
                counts[key] = counts.get(key, 0) + len(idx)
        if not trainer.apply_update(finite, totals, counts):
            return None
    metrics = {f"train/{k}": v / counts[k] for k, v in totals.items()}
    metrics["train/pairs"] = float(len(prompts))
    return metrics
