"""GRPO and GRPO-Guard losses on fixed batches: hand-computed values and the RatioNorm identity."""

import math

import pytest
import torch

from flowalign.algorithms import PolicyBatch, build_algorithm
from flowalign.algorithms.advantages import group_advantages, signal_fraction
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
    # the diagnostics' values: ratios ≈ [0.997, 0.985, 1.077, 0.913] at steps [2, 2, 5, 5] with ε = 0.01
    ratios = [math.exp(float(batch.new.log_prob[k].detach() - batch.old_log_prob[k])) for k in range(4)]
    above = [float(r > 1 + eps) for r in ratios]
    below = [float(r < 1 - eps) for r in ratios]
    assert above == [0, 0, 1, 0] and below == [0, 1, 0, 1]  # the batch exercises both sides, unevenly
    assert metrics["clip_frac_above"].item() == pytest.approx(0.25)
    assert metrics["clip_frac_below"].item() == pytest.approx(0.5)
    assert metrics["ratio_mean"].item() == pytest.approx(sum(ratios) / 4, rel=1e-6)
    assert metrics["ratio_std"].item() == pytest.approx(float(torch.tensor(ratios).std(unbiased=False)), rel=1e-4)
    for step_id, pairs in ((2, [0, 1]), (5, [2, 3])):
        r = [ratios[k] for k in pairs]
        assert metrics[f"ratio_mean/step_{step_id}"].item() == pytest.approx(sum(r) / 2, rel=1e-6)
        assert metrics[f"ratio_std/step_{step_id}"].item() == pytest.approx(abs(r[0] - r[1]) / 2, rel=1e-4)
        assert metrics[f"clip_above/step_{step_id}"].item() == pytest.approx(sum(above[k] for k in pairs) / 2)
        assert metrics[f"clip_below/step_{step_id}"].item() == pytest.approx(sum(below[k] for k in pairs) / 2)
    assert metrics["clip_above/step_2"].item() == 0.0 and metrics["clip_above/step_5"].item() == 0.5


def test_grpo_on_policy_ratio_is_one_and_gradient_is_minus_advantage_weighted():
    batch = make_batch(shift=0.0)
    loss, metrics = build_algorithm(GRPOConfig()).loss(batch)
    assert metrics["ratio_mean"].item() == 1.0  # exact by construction: shift 0 leaves μ bit-identical to μ_old
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
    assert torch.equal(value, torch.zeros(4))  # exact by construction: Δμ is exactly 0 on policy


def test_guard_reweights_by_minus_dt_and_logs_per_step_grad_norms():
    batch = make_batch(shift=0.0, reduction="mean")
    guard = build_algorithm(GRPOGuardConfig(reweight="dt"))
    loss, metrics = guard.loss(batch)
    dt = batch.sigma - batch.sigma_next
    assert loss.item() == pytest.approx((-batch.advantages / dt).mean().item(), rel=1e-6)
    assert metrics["grad_mu_norm/step_2"] > 0 and metrics["grad_mu_norm/step_5"] > 0
    plain, _ = build_algorithm(GRPOGuardConfig(reweight="none")).loss(batch)
    assert plain.item() == pytest.approx(-batch.advantages.mean().item(), rel=1e-6)


def guard_by_hand(batch: PolicyBatch, eps: float) -> tuple[float, list[float], dict[int, float]]:
    """GRPO-Guard's loss (reweight "dt", sum reduction) built by hand from the RatioNorm quantity reduce(z·Δμ):
    the loss, the per-pair ratios and the per-step mean of ‖∂loss/∂μ‖ (∂ log r/∂μ = z; the gradient is 0 where
    the clipped branch wins)."""
    K, loss, ratios, norms = 4, 0.0, [], {}
    for k in range(K):
        s = float(batch.new.std[k])
        z = (batch.new.sample[k] - batch.old_mean[k]) / s
        delta = batch.new.mean[k].detach() - batch.old_mean[k]
        r = math.exp(float((z * delta).sum()))
        a, w = float(batch.advantages[k]), 1.0 / float(batch.sigma[k] - batch.sigma_next[k])
        clipped = min(max(r, 1 - eps), 1 + eps)
        loss += w * max(-a * r, -a * clipped) / K
        active = clipped == r or -a * r > -a * clipped
        ratios.append(r)
        norms.setdefault(int(batch.step_idx[k]), []).append(abs(a) * w * r * float(z.norm()) / K if active else 0.0)
    return loss, ratios, {step_id: sum(v) / len(v) for step_id, v in norms.items()}


def test_guard_off_policy_loss_uses_ratio_norm():
    """Off-policy (shifted mean), ratio_norm=True is the PPO loss of r = exp(reduce(z·Δμ)), not of π_θ/π_old."""
    batch = make_batch(shift=0.02, reduction="sum")
    eps = 0.01
    expected, ratios, grad_norms = guard_by_hand(batch, eps)
    assert min(ratios) < 1 - eps and max(ratios) > 1 + eps and any(abs(r - 1) < eps for r in ratios)
    loss, metrics = build_algorithm(GRPOGuardConfig(clip_range=eps, ratio_norm=True)).loss(batch)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["ratio_mean"].item() == pytest.approx(sum(ratios) / 4, rel=1e-6)
    assert metrics["clip_frac_above"].item() == pytest.approx(sum(r > 1 + eps for r in ratios) / 4)
    assert metrics["clip_frac_below"].item() == pytest.approx(sum(r < 1 - eps for r in ratios) / 4)
    # per-step ‖∂loss/∂μ‖, averaged over the step's pairs: step 5's two pairs are both clipped out (0)
    assert grad_norms[2] > 0 and grad_norms[5] == 0.0
    for step_id, value in grad_norms.items():
        assert metrics[f"grad_mu_norm/step_{step_id}"].item() == pytest.approx(value, rel=1e-4, abs=1e-9)
    plain, plain_metrics = build_algorithm(GRPOGuardConfig(clip_range=eps, ratio_norm=False)).loss(batch)
    assert abs(plain.item() - loss.item()) > 1e-3  # ≫ the 1e-5 tolerance above
    assert plain_metrics["ratio_std"].item() > 2 * metrics["ratio_std"].item()  # no 1/s blow-up with RatioNorm


def test_group_advantages():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_advantages(rewards, groups)
    first = torch.tensor([1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(adv[:4], (first - first.mean()) / (first.std(unbiased=False) + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4))  # equal rewards carry no signal (exact: a max == min branch)
    batch_scope = group_advantages(rewards, groups, std_scope="batch")
    torch.testing.assert_close(batch_scope[:4], (first - first.mean()) / (rewards.std(unbiased=False) + 1e-4))
    clipped = group_advantages(torch.tensor([0.0, 0.0, 0.0, 100.0]), torch.zeros(4, dtype=torch.long), clip=1.0)
    assert clipped.max() == 1.0  # z = 1.73 clipped; the others keep z = −0.577
    torch.testing.assert_close(clipped[:3], torch.full((3,), -1 / 3**0.5), rtol=1e-4, atol=0)
    masked = group_advantages(torch.tensor([1.0, 3.0, float("nan"), 2.0]), torch.zeros(4, dtype=torch.long),
                              valid=torch.tensor([True, True, False, True]))
    assert masked[2] == 0 and torch.isfinite(masked).all()


def test_signal_fraction_counts_the_samples_that_carry_an_advantage():
    assert signal_fraction(torch.tensor([0.0, 1.0, -2.0, 0.0])) == 0.5
    assert signal_fraction(group_advantages(torch.tensor([1.0, 1.0, 0.0, 2.0]), torch.tensor([0, 0, 1, 1]))) == 0.5
    assert signal_fraction(torch.zeros(0)) == 0.0


def test_advantages_are_clamped_on_both_sides():
    # one low outlier: z = (0 − 75)/43.30 = −1.732 is clamped to −1, the others keep z = +0.577
    adv = group_advantages(torch.tensor([100.0, 100.0, 100.0, 0.0]), torch.zeros(4, dtype=torch.long), clip=1.0)
    assert adv[3].item() == -1.0
    torch.testing.assert_close(adv[:3], torch.full((3,), 1 / 3**0.5), rtol=1e-4, atol=0)
    # both sides in one batch: groups [0, 0, 0, 100] and [100, 100, 100, 0]
    both = group_advantages(torch.tensor([0.0, 0.0, 0.0, 100.0, 100.0, 100.0, 100.0, 0.0]),
                            torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), clip=1.5)
    assert both[3].item() == 1.5 and both[7].item() == -1.5


def test_batch_std_ignores_invalid_rewards():
    """std_scope="batch": the std is that of the valid rewards only; an invalid (even finite) reward counts for
    nothing and gets advantage 0."""
    rewards = torch.tensor([1.0, 3.0, 2.0, 6.0, 50.0])
    groups = torch.tensor([0, 0, 1, 1, 1])
    valid = torch.tensor([True, True, True, True, False])
    adv = group_advantages(rewards, groups, std_scope="batch", valid=valid)
    std = math.sqrt(((1 - 3) ** 2 + 0 + (2 - 3) ** 2 + (6 - 3) ** 2) / 4)  # population std of [1, 3, 2, 6] = √3.5
    expected = torch.tensor([-1 / (std + 1e-4), 1 / (std + 1e-4), -2 / (std + 1e-4), 2 / (std + 1e-4), 0.0])
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-7)
    # a NaN in the invalid slot changes nothing
    rewards[4] = float("nan")
    torch.testing.assert_close(group_advantages(rewards, groups, std_scope="batch", valid=valid), expected,
                               rtol=1e-6, atol=1e-7)


def test_bad_algorithm_settings():
    with pytest.raises(ConfigError, match="std_scope"):
        GRPOConfig(std_scope="global")
    with pytest.raises(ConfigError, match="reweight"):
        GRPOGuardConfig(reweight="sigma")
    with pytest.raises(ConfigError, match="unknown algorithm 'ppo'"):
        build_algorithm(GRPOConfig(name="ppo"))
