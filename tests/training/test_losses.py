"""GRPO and GRPO-Guard losses on fixed batches: hand-computed values and the RatioNorm identity."""

import math

import pytest
import torch

from flowalign.algorithms import PolicyBatch, build_algorithm
from flowalign.algorithms.advantages import group_advantages
from flowalign.algorithms.grpo import GRPOConfig
from flowalign.algorithms.grpo_guard import GRPOGuardConfig, ratio_norm_log_ratio
from flowalign.errors import ConfigError
from flowalign.sampling.dynamics import DynamicsConfig, gaussian_log_prob, step


def make_batch(shift: float = 0.0, reduction: str = "sum", seed: int = 0) -> PolicyBatch:
    """4 transitions of 2×3 latents at two steps, old policy = the rollout's, new mean = old + shift."""
    g = torch.Generator().manual_seed(seed)
    x, v = torch.randn(4, 2, 3, generator=g), torch.randn(4, 2, 3, generator=g)
    sigma, sigma_next = torch.tensor([0.8, 0.8, 0.5, 0.5]), torch.tensor([0.6, 0.6, 0.3, 0.3])
    old = step(DynamicsConfig("flow_sde", 0.7, reduction), v, x, sigma, sigma_next, generator=g)
    new_mean = (old.mean + shift * torch.linspace(-1, 1, 6).reshape(1, 2, 3)).requires_grad_(True)
    new = type(old)(old.sample, new_mean, old.std, gaussian_log_prob(old.sample, new_mean, old.std, reduction))
    return PolicyBatch(new=new, old_mean=old.mean, old_log_prob=old.log_prob,
                       advantages=torch.tensor([1.5, -0.5, 0.7, -2.0]), sigma=sigma, sigma_next=sigma_next,
                       step_idx=torch.tensor([2, 2, 5, 5]), reduction=reduction)


def test_grpo_loss_equals_hand_computation():
    batch = make_batch(shift=0.02)
    eps = 0.01
    loss, metrics = build_algorithm(GRPOConfig(clip_range=eps)).loss(batch)
    expected = 0.0
    for k in range(4):
        r = math.exp(float(batch.new.log_prob[k].detach() - batch.old_log_prob[k]))
        a = float(batch.advantages[k])
        expected += max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
    assert loss.item() == pytest.approx(expected / 4, rel=1e-5)
    assert set(metrics) >= {"ratio_mean", "clip_frac_above", "clip_frac_below", "ratio_mean/step_2",
                            "clip_above/step_5"}


def test_grpo_on_policy_ratio_is_one_and_gradient_is_minus_advantage_weighted():
    batch = make_batch(shift=0.0)
    loss, metrics = build_algorithm(GRPOConfig()).loss(batch)
    assert metrics["ratio_mean"].item() == 1.0
    assert loss.item() == pytest.approx(-batch.advantages.mean().item(), abs=1e-7)


def test_grpo_kl_term_uses_the_closed_form():
    batch = make_batch(shift=0.0)
    batch.ref_mean = batch.old_mean + 0.05
    beta = 0.3
    loss, metrics = build_algorithm(GRPOConfig(kl_beta=beta)).loss(batch)
    s = batch.new.std.reshape(-1, 1, 1)
    kl = ((batch.new.mean - batch.ref_mean) ** 2 / (2 * s**2)).flatten(1).sum(1).mean()
    assert metrics["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert loss.item() == pytest.approx(-batch.advantages.mean().item() + beta * kl.item(), rel=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_ratio_norm_equals_reduced_z_times_delta_mu(reduction):
    batch = make_batch(shift=0.03, reduction=reduction)
    s = batch.new.std.reshape(-1, 1, 1)
    z = (batch.new.sample - batch.old_mean) / s
    delta = batch.new.mean - batch.old_mean
    value = ratio_norm_log_ratio(batch.new.sample, batch.new.mean, batch.old_mean, batch.new.std, reduction)
    expected = (z * delta).flatten(1)
    expected = expected.sum(1) if reduction == "sum" else expected.mean(1)
    torch.testing.assert_close(value, expected)
    # the defining form: (log π_θ − log π_old + reduce(Δμ²)/(2s²))·s
    sq = (delta**2).flatten(1)
    sq = sq.sum(1) if reduction == "sum" else sq.mean(1)
    defining = (batch.new.log_prob - batch.old_log_prob + sq / (2 * batch.new.std**2)) * batch.new.std
    torch.testing.assert_close(value, defining, rtol=1e-3, atol=1e-5)


def test_ratio_norm_is_exactly_zero_on_policy():
    batch = make_batch(shift=0.0)
    value = ratio_norm_log_ratio(batch.new.sample, batch.new.mean, batch.old_mean, batch.new.std, "mean")
    assert torch.equal(value, torch.zeros(4))


def test_guard_reweights_by_minus_dt_and_logs_per_step_grad_norms():
    batch = make_batch(shift=0.0, reduction="mean")
    guard = build_algorithm(GRPOGuardConfig(reweight="dt"))
    loss, metrics = guard.loss(batch)
    dt = batch.sigma - batch.sigma_next
    assert loss.item() == pytest.approx((-batch.advantages / dt).mean().item(), rel=1e-6)
    assert metrics["grad_mu_norm/step_2"] > 0 and metrics["grad_mu_norm/step_5"] > 0
    plain, _ = build_algorithm(GRPOGuardConfig(reweight="none")).loss(batch)
    assert plain.item() == pytest.approx(-batch.advantages.mean().item(), rel=1e-6)


def test_group_advantages():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_advantages(rewards, groups)
    first = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(adv[:4], (first - first.mean()) / (first.std(unbiased=False) + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4))  # equal rewards carry no signal
    batch_scope = group_advantages(rewards, groups, std_scope="batch")
    torch.testing.assert_close(batch_scope[:4], (first - first.mean()) / (rewards.std(unbiased=False) + 1e-4))
    clipped = group_advantages(torch.tensor([0.0, 0.0, 0.0, 100.0]), torch.zeros(4, dtype=torch.long), clip=1.0)
    assert clipped.max() == 1.0  # z = 1.73 clipped; the others keep z = −0.577
    torch.testing.assert_close(clipped[:3], torch.full((3,), -1 / 3**0.5), rtol=1e-4, atol=0)
    masked = group_advantages(torch.tensor([1.0, 3.0, float("nan"), 2.0]), torch.zeros(4, dtype=torch.long),
                              valid=torch.tensor([True, True, False, True]))
    assert masked[2] == 0 and torch.isfinite(masked).all()


def test_bad_algorithm_settings():
    with pytest.raises(ConfigError, match="std_scope"):
        GRPOConfig(std_scope="global")
    with pytest.raises(ConfigError, match="reweight"):
        GRPOGuardConfig(reweight="sigma")
    with pytest.raises(ConfigError, match="unknown algorithm 'ppo'"):
        build_algorithm(GRPOConfig(name="ppo"))
