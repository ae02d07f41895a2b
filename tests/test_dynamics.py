"""Math invariants of one sampling step: log-probs, KL, noise level 0, configuration errors."""

import math

import pytest
import torch
from torch.distributions import Normal

from flowalign.errors import ConfigError
from flowalign.sampling.dynamics import (
    DYNAMICS,
    DynamicsConfig,
    gaussian_log_prob,
    gaussian_log_ratio,
    kl_divergence,
    mean_and_std,
    step,
)

SHAPES = [(3, 4, 5, 6), (3, 7, 16), (3, 4, 2, 3, 3)]  # SD3 latents, Flux packed tokens, video latents


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    v = torch.randn(shape, generator=g)
    return x, v


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["flow_sde", "dance_sde", "cps"])
def test_log_prob_matches_torch_normal(shape, name):
    x, v = _inputs(shape)
    sigma, sigma_next = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.8, 0.3, 0.1])
    res = step(DynamicsConfig(name, 0.7, "sum"), v, x, sigma, sigma_next, generator=torch.Generator().manual_seed(1))
    std = res.std.reshape(-1, *[1] * (len(shape) - 1)).expand(shape)
    reference = Normal(res.mean, std).log_prob(res.sample).flatten(1)
    torch.testing.assert_close(res.log_prob, reference.sum(1), rtol=1e-5, atol=1e-3)
    mean_form = gaussian_log_prob(res.sample, res.mean, res.std, "mean")
    torch.testing.assert_close(mean_form, reference.mean(1), rtol=1e-5, atol=1e-5)


def test_flow_sde_std_and_mean_formula():
    x, v = _inputs((2, 3))
    sigma, sigma_next, a = 0.6, 0.4, 0.7
    mean, std = mean_and_std(DynamicsConfig("flow_sde", a), v, x, sigma, sigma_next)
    g = a * math.sqrt(sigma / (1 - sigma))
    dt = sigma_next - sigma
    expected = x + (v + g**2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(std, torch.full((2,), g * math.sqrt(-dt)))


def test_flow_sde_at_sigma_one_uses_next_sigma():
    x, v = _inputs((2, 3))
    _, std = mean_and_std(DynamicsConfig("flow_sde", 0.5), v, x, 1.0, 0.75)
    expected = 0.5 * math.sqrt(1.0 / (1 - 0.75)) * math.sqrt(0.25)
    torch.testing.assert_close(std, torch.full((2,), expected))
    assert torch.isfinite(std).all()


def test_flow_sde_starting_just_below_one_is_the_first_step():
    """UniPC (Wan) starts at σ = 1 − 1e-6; without the tolerance g = a·√(σ/1e-6) would be ~700·a."""
    x, v = _inputs((2, 3))
    config = DynamicsConfig("flow_sde", 0.5)
    mean_at_one, std_at_one = mean_and_std(config, v, x, 1.0, 0.75)
    mean, std = mean_and_std(config, v, x, 1.0 - 1e-6, 0.75)
    torch.testing.assert_close(std, std_at_one, rtol=1e-5, atol=0)
    torch.testing.assert_close(mean, mean_at_one, rtol=1e-4, atol=1e-5)
    _, std_inside = mean_and_std(config, v, x, 0.99, 0.75)  # an ordinary step keeps its own σ
    torch.testing.assert_close(std_inside, torch.full((2,), 0.5 * math.sqrt(0.99 / 0.01) * math.sqrt(0.24)))


def test_dance_sde_std_is_constant_eta_times_sqrt_dt():
    x, v = _inputs((2, 3))
    _, std = mean_and_std(DynamicsConfig("dance_sde", 0.3), v, x, 0.5, 0.25)
    torch.testing.assert_close(std, torch.full((2,), 0.3 * 0.5))


def test_cps_preserves_coefficients():
    """x' = (1−σ')·x̂0 + σ'·(cos·ε̂ + sin·z): the noise coefficient is σ' whatever the angle."""
    x, v = _inputs((4, 8))
    sigma, sigma_next, a = 0.7, 0.4, 0.6
    mean, std = mean_and_std(DynamicsConfig("cps", a), v, x, sigma, sigma_next)
    x0_hat, eps_hat = x - sigma * v, x + (1 - sigma) * v
    torch.testing.assert_close(mean, (1 - sigma_next) * x0_hat + sigma_next * math.cos(a * math.pi / 2) * eps_hat)
    torch.testing.assert_close(std**2 + (sigma_next * math.cos(a * math.pi / 2)) ** 2,
                               torch.full((4,), sigma_next**2))


@pytest.mark.parametrize("name", DYNAMICS)
def test_noise_level_zero_is_the_ode_step_exactly(name):
    x, v = _inputs((3, 4, 5))
    sigma, sigma_next = torch.tensor([1.0, 0.6, 0.1]), torch.tensor([0.8, 0.4, 0.0])
    res = step(DynamicsConfig(name, 0.0), v, x, sigma, sigma_next)
    # exact by construction: noise level 0 takes the ODE branch, the same float32 ops x + dt·v in the same order
    assert torch.equal(res.sample, x + (sigma_next - sigma).reshape(-1, 1, 1) * v)
    assert torch.equal(res.std, torch.zeros(3))
    assert torch.equal(res.log_prob, torch.zeros(3))


def test_cps_last_step_is_deterministic():
    x, v = _inputs((2, 5))
    res = step(DynamicsConfig("cps", 0.5), v, x, 0.2, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.std, torch.zeros(2))
    torch.testing.assert_close(res.sample, x - 0.2 * v)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_kl_closed_form_and_zero_for_identical_models(reduction):
    x, v = _inputs((3, 4, 4))
    v_ref = v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(5))
    cfg = DynamicsConfig("flow_sde", 0.7, reduction)
    mean, std = mean_and_std(cfg, v, x, 0.5, 0.4)
    ref_mean, _ = mean_and_std(cfg, v_ref, x, 0.5, 0.4)
    kl = kl_divergence(mean, ref_mean, std, reduction)
    s = std.reshape(-1, 1, 1).expand_as(mean)
    per_dim = torch.distributions.kl_divergence(Normal(mean, s), Normal(ref_mean, s)).flatten(1)
    torch.testing.assert_close(kl, per_dim.sum(1) if reduction == "sum" else per_dim.mean(1), rtol=1e-4, atol=1e-6)
    assert torch.equal(kl_divergence(mean, mean.clone(), std, reduction), torch.zeros(3))  # exact: μ − μ = 0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_log_ratio_equals_difference_of_log_probs(reduction):
    x, v = _inputs((3, 2, 6, 6))
    cfg = DynamicsConfig("flow_sde", 0.7, reduction)
    res = step(cfg, v, x, 0.5, 0.4, generator=torch.Generator().manual_seed(2))
    new_mean = res.mean + 0.01
    direct = gaussian_log_ratio(res.sample, new_mean, res.mean, res.std, reduction).double()
    s = res.std.double().reshape(-1, 1, 1, 1)
    diff = (-((res.sample.double() - new_mean.double()) ** 2) + (res.sample.double() - res.mean.double()) ** 2) / (2 * s**2)
    expected = diff.flatten(1).sum(1) if reduction == "sum" else diff.flatten(1).mean(1)
    torch.testing.assert_close(direct, expected, rtol=1e-5, atol=1e-6)
    # exact by construction: μ − μ_old is exactly 0 when both are the same tensor
    assert torch.equal(gaussian_log_ratio(res.sample, res.mean, res.mean, res.std, reduction), torch.zeros(3))


def test_gradients_flow_through_mean_only():
    x, v = _inputs((2, 3))
    v.requires_grad_(True)
    res = step(DynamicsConfig("flow_sde", 0.7), v, x, 0.5, 0.3, generator=torch.Generator().manual_seed(0))
    assert not res.sample.requires_grad
    res.log_prob.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "ddim"}, "unknown dynamics 'ddim'"),
        ({"noise_level": -0.1}, "noise_level must be"),
        ({"noise_level": float("nan")}, "noise_level must be"),
        ({"name": "cps", "noise_level": 1.5}, "cps noise_level"),
        ({"log_prob_reduction": "max"}, "unknown log_prob_reduction 'max'"),
    ],
)
def test_bad_dynamics_config_names_the_problem(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DynamicsConfig(**kwargs)


def test_per_sample_sigma_shape_is_checked():
    x, v = _inputs((3, 4))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        step(DynamicsConfig("ode", 0.0), v, x, torch.tensor([0.5, 0.4]), 0.1)
