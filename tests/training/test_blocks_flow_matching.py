"""The flow-matching building block: σ sampling, re-noising, the target's sign, per-sample errors, shared-noise
pairs, and a loss step on a tiny model."""

import pytest
import torch

from flowalign.errors import ConfigError
from flowalign.models.sd3 import SD3Model
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.sampling.dynamics import DynamicsConfig, step
from flowalign.training.flow_matching import (
    SigmaSampling,
    flow_matching_error,
    flow_matching_target,
    pair_flow_matching_errors,
    renoise,
    sample_sigmas,
    shared_noise_pair,
    velocity_error,
)
from flowalign.training.lora import LoRAConfig, add_lora

PROMPTS = ["a red circle", "two blue squares"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sigmas_are_reproducible_and_follow_their_density():
    logit = sample_sigmas(20000, gen(0), SigmaSampling("logit_normal", logit_mean=0.5, logit_std=0.8))
    assert torch.equal(logit, sample_sigmas(20000, gen(0), SigmaSampling("logit_normal", 0.5, 0.8)))
    assert logit.dtype == torch.float32 and logit.shape == (20000,)
    z = torch.logit(logit.double())
    # 20000 draws: standard errors 0.006 (mean) and 0.004 (std)
    assert abs(float(z.mean()) - 0.5) < 0.03 and abs(float(z.std()) - 0.8) < 0.03
    uniform = sample_sigmas(20000, gen(1), SigmaSampling("uniform"))
    assert 0 <= float(uniform.min()) and float(uniform.max()) <= 1
    assert abs(float(uniform.mean()) - 0.5) < 0.01 and abs(float(uniform.var()) - 1 / 12) < 0.003
    clamped = sample_sigmas(1000, gen(2), SigmaSampling("uniform", min_sigma=0.2, max_sigma=0.6))
    assert float(clamped.min()) == pytest.approx(0.2) and float(clamped.max()) == pytest.approx(0.6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scheme="cosine"), "unknown sigma scheme"),
    (dict(logit_std=0.0), "logit_std"),
    (dict(min_sigma=0.5, max_sigma=0.5), "min_sigma"),
])
def test_bad_sigma_sampling_is_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SigmaSampling(**kwargs)


def test_sample_sigmas_rejects_an_empty_draw():
    with pytest.raises(ConfigError, match="number of sigmas"):
        sample_sigmas(0, gen(0))


def test_renoise_interpolates_from_data_to_noise_per_sample():
    x0, noise = torch.randn(3, 4, 2, 2, generator=gen(0)), torch.randn(3, 4, 2, 2, generator=gen(1))
    assert torch.equal(renoise(x0, noise, 1.0), noise)  # σ = 1 is pure noise (exact: 0·x0 + 1·ε)
    assert torch.equal(renoise(x0, noise, 0.0), x0)
    sigma = torch.tensor([0.0, 0.25, 1.0])
    mixed = renoise(x0, noise, sigma)
    for i in range(3):
        torch.testing.assert_close(mixed[i], (1 - sigma[i]) * x0[i] + sigma[i] * noise[i], rtol=0, atol=0)


def test_target_sign_matches_the_sampler():
    """An ODE step of dynamics.py with v = target moves along the straight path: from pure noise to x0 in one
    step, and from x_0.7 exactly to x_0.2. Tolerance: float32 rounding of a few additions (values ~1)."""
    x0, noise = torch.randn(2, 4, 3, 3, generator=gen(0)), torch.randn(2, 4, 3, 3, generator=gen(1))
    v = flow_matching_target(x0, noise)
    ode = DynamicsConfig("ode", 0.0)
    torch.testing.assert_close(step(ode, v, noise, 1.0, 0.0).sample, x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(step(ode, v, renoise(x0, noise, 0.7), 0.7, 0.2).sample, renoise(x0, noise, 0.2),
                               rtol=0, atol=1e-6)


class _ExactVelocity:
    """The true velocity field when all data is x0: v(x, σ) = (x − x0)/σ (= ε − x0 at x = x_σ); ``sign`` −1
    is the opposite convention."""

    def __init__(self, x0, sign=1.0):
        self.x0, self.sign = x0, sign

    def velocity(self, x, sigma, cond, geometry, guidance_scale=1.0):
        return self.sign * (x - self.x0) / sigma.reshape(-1, *([1] * (x.ndim - 1)))


def test_a_model_whose_velocity_is_the_target_has_zero_error():
    x0, noise = torch.randn(4, 4, 3, 3, generator=gen(0)), torch.randn(4, 4, 3, 3, generator=gen(1))
    sigma = torch.tensor([0.1, 0.4, 0.7, 0.95])
    exact = flow_matching_error(_ExactVelocity(x0), x0, PROMPTS * 2, None, sigma, noise)
    assert exact.shape == (4,) and float(exact.max()) < 1e-10  # float32 rounding of (x − x0)/σ only
    flipped = flow_matching_error(_ExactVelocity(x0, -1.0), x0, PROMPTS * 2, None, sigma, noise)
    torch.testing.assert_close(flipped, 4 * ((noise - x0) ** 2).flatten(1).mean(1), rtol=1e-5, atol=0)


def test_velocity_error_reductions():
    v, t = torch.randn(2, 3, 4, generator=gen(0)), torch.randn(2, 3, 4, generator=gen(1))
    torch.testing.assert_close(velocity_error(v, t, "sum"), 12 * velocity_error(v, t, "mean"))
    torch.testing.assert_close(velocity_error(v, t, "sum"), ((v - t) ** 2).sum((1, 2)), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="unknown reduction"):
        velocity_error(v, t, "max")


@pytest.fixture()
def lora_model():
    model = SD3Model(tiny_sd3_pipeline(seed=0))
    params = add_lora(model.transformer, LoRAConfig(rank=4, alpha=8))
    return model, params


def data(model, n=2, seed=0):
    shape = (n, *model.latent_shape(model.default_geometry()))
    return torch.randn(shape, generator=gen(seed)), torch.randn(shape, generator=gen(seed + 100))


def test_error_on_the_tiny_model_is_the_hand_computed_mean_square(lora_model):
    model, _ = lora_model
    geometry = model.default_geometry()
    cond = model.encode_prompts(PROMPTS)
    x0, noise = data(model)
    sigma = torch.tensor([0.3, 0.8])
    error = flow_matching_error(model, x0, cond, geometry, sigma, noise)
    with torch.no_grad():
        v = model.velocity((1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise, sigma, cond, geometry)
    # same module, same inputs and ops: equal up to float32 rounding of the mean
    torch.testing.assert_close(error.detach(), ((v - (noise - x0)) ** 2).mean((1, 2, 3)), rtol=1e-6, atol=0)


def test_loss_steps_lower_the_error_and_train_only_the_adapter(lora_model):
    model, params = lora_model
    geometry = model.default_geometry()
    cond = model.encode_prompts(PROMPTS)
    x0, noise = data(model)
    sigma = torch.tensor([0.3, 0.8])
    opt = torch.optim.Adam(params, lr=1e-2)
    frozen = {n: p.detach().clone() for n, p in model.transformer.named_parameters() if not p.requires_grad}
    losses = []
    for _ in range(5):
        loss = flow_matching_error(model, x0, cond, geometry, sigma, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        final = float(flow_matching_error(model, x0, cond, geometry, sigma, noise).mean())
    assert final < losses[0] * 0.95, (losses, final)  # measured: 2.347 → 2.197 after 5 steps
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert all(torch.equal(p, frozen[n]) for n, p in model.transformer.named_parameters() if n in frozen)


def test_shared_noise_pair_gives_both_images_the_same_sigma_and_noise():
    winners, losers = torch.zeros(3, 4, 2, 2), torch.ones(3, 4, 2, 2)
    sigma, noise = shared_noise_pair(winners, losers, gen(7))
    again = shared_noise_pair(winners, losers, gen(7))
    assert torch.equal(sigma, again[0]) and torch.equal(noise, again[1])
    assert sigma.shape == (3,) and noise.shape == winners.shape
    per_pair = shared_noise_pair(winners, losers, [gen(1), gen(2), gen(3)])
    alone = shared_noise_pair(winners[1:2], losers[1:2], [gen(2)])
    assert torch.equal(per_pair[0][1:2], alone[0]) and torch.equal(per_pair[1][1:2], alone[1])
    with pytest.raises(ValueError, match="same shape"):
        shared_noise_pair(winners, losers[:2], gen(0))


def test_pair_errors_equal_separate_errors(lora_model):
    model, params = lora_model
    with torch.no_grad():
        for i, p in enumerate(params):
            p.add_(0.05 * torch.randn(p.shape, generator=gen(i)))
    geometry = model.default_geometry()
    cond = model.encode_prompts(PROMPTS)
    winners, losers = data(model, seed=0)[0], data(model, seed=1)[0]
    sigma, noise = shared_noise_pair(winners, losers, gen(3))
    e_w, e_l = pair_flow_matching_errors(model, winners, losers, cond, geometry, sigma, noise)
    # one batched forward of 4 rows vs two of 2 rows: float32 kernels may round differently (~1e-6 relative)
    torch.testing.assert_close(e_w, flow_matching_error(model, winners, cond, geometry, sigma, noise), rtol=1e-5,
                               atol=0)
    torch.testing.assert_close(e_l, flow_matching_error(model, losers, cond, geometry, sigma, noise), rtol=1e-5,
                               atol=0)
    assert not torch.allclose(e_w, e_l)
