"""The two conventions docs/sampling.md states for porting Flow-GRPO and GRPO-Guard recipes, checked on our code.

CPS: Flow-GRPO's CPS "log-prob" is −mean((x' − μ)²) (constants and 1/(2s²) dropped), ours is the exact Gaussian,
so our log ratio is theirs / (2s²), and RatioNorm's is (theirs + mean(Δμ²)) / (2s). GRPO-Guard: RatioNorm's
bias reduce(Δμ²)/(2s²) is per sample here; averaging it over the batch (what ``.mean(dim=())`` does to a
per-sample tensor) leaves a per-sample offset and makes a sample's ratio depend on its micro-batch.
"""

import functools
import json
import math
from pathlib import Path

import pytest
import torch

from flowalign.algorithms.grpo_guard import ratio_norm_log_ratio
from flowalign.models.sd3 import SD3Model
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.sampling.dynamics import DynamicsConfig, gaussian_log_ratio, step

ROOT = Path(__file__).resolve().parents[1]
NOISE_LEVEL = 0.8


@functools.lru_cache(maxsize=None)
def sd3_sigmas(num_steps: int) -> torch.Tensor:
    """SD3's σ schedule from our schedule code, with the published SD3.5 scheduler config (shift 3, 1000 steps)."""
    model = SD3Model(tiny_sd3_pipeline(seed=0))
    published = json.loads((ROOT / "configs" / "models" / "sd3.5-medium.json").read_text())["scheduler"]["config"]
    assert {k: model.pipeline.scheduler.config[k] for k in published} == published
    assert not model.pipeline.scheduler.config.get("use_dynamic_shifting", False)
    return model.schedule(num_steps, model.default_geometry()).double()


def cps_transition(sigma: float, sigma_next: float, shift: float, seed: int = 0, batch: int = 3):
    """One CPS step of our dynamics: x', μ_old, s; and μ_θ = μ_old + a per-sample perturbation of size ``shift``."""
    g = torch.Generator().manual_seed(seed)
    x, v = torch.randn(batch, 4, 6, 6, generator=g), torch.randn(batch, 4, 6, 6, generator=g)
    old = step(DynamicsConfig("cps", NOISE_LEVEL, "mean"), v, x, sigma, sigma_next, generator=g)
    mean = old.mean + shift * torch.randn(old.mean.shape, generator=g)
    return old.sample, mean, old.mean, old.std


def flow_grpo_cps_log_ratio(sample, mean, old_mean):
    """Flow-GRPO's CPS surrogate log π_θ − log π_old = −mean((x' − μ_θ)²) + mean((x' − μ_old)²), in float64."""
    x, m, o = sample.double(), mean.double(), old_mean.double()
    return (-(x - m) ** 2 + (x - o) ** 2).flatten(1).mean(1)


@pytest.mark.parametrize("i", range(9))  # the nine stochastic CPS steps of a 10-step SD3 schedule
def test_cps_log_ratio_is_flow_grpo_surrogate_over_two_s_squared(i):
    """Tolerance rtol 1e-4: our float32 log ratio against the float64 identity (observed: 8e-7 relative)."""
    sig = sd3_sigmas(10)
    sample, mean, old_mean, std = cps_transition(float(sig[i]), float(sig[i + 1]), shift=1e-3 * float(sig[i + 1]))
    s = std.double()
    torch.testing.assert_close(std, torch.full((3,), float(sig[i + 1]) * math.sin(NOISE_LEVEL * math.pi / 2),
                                                dtype=torch.float32))
    theirs = flow_grpo_cps_log_ratio(sample, mean, old_mean)
    ours = gaussian_log_ratio(sample, mean, old_mean, std, "mean").double()
    torch.testing.assert_close(ours, theirs / (2 * s**2), rtol=1e-4, atol=0)
    delta_sq = ((mean.double() - old_mean.double()) ** 2).flatten(1).mean(1)
    ratio_norm = ratio_norm_log_ratio(sample, mean, old_mean, std, "mean").double()
    torch.testing.assert_close(ratio_norm, (theirs + delta_sq) / (2 * s), rtol=1e-4, atol=1e-12)


def test_sd3_ten_steps_factors_between_the_cps_log_ratios():
    """1/(2s²) with s = σ'·sin(aπ/2), a = 0.8, on SD3's 10-step schedule: ×0.600 … ×7.15 over steps 0–7, ×6934 at
    step 8; step 9 lands on x̂0 (s = 0, deterministic). These are the numbers docs/sampling.md states."""
    sig = sd3_sigmas(10)
    s = sig[1:] * math.sin(NOISE_LEVEL * math.pi / 2)
    factors = (1 / (2 * s[:9] ** 2)).tolist()
    expected = [0.5997, 0.6626, 0.7514, 0.8849, 1.105, 1.525, 2.558, 7.150, 6934]
    assert factors == pytest.approx(expected, rel=1e-3)
    assert s[9] == 0
    # the equivalent of Flow-GRPO's CPS clip range 1e-5 on RatioNorm, 1e-5/(2s), spans less than a factor 3.5 over
    # steps 0–7 (on our exact log ratio, 1e-5/(2s²), a factor 12)
    ratio_norm_equivalent = 1e-5 / (2 * s[:8])
    assert float(ratio_norm_equivalent.max() / ratio_norm_equivalent.min()) == pytest.approx(3.45, rel=1e-2)
    assert factors[7] / factors[0] == pytest.approx(11.9, rel=1e-2)


def batch_bias_ratio_norm(sample, mean, old_mean, std):
    """RatioNorm with its bias averaged over the batch: ``.mean(dim=tuple(range(1, ndim)))`` applied to the
    already per-sample bias (ndim 1, so dim=() and the mean runs over the batch), as issue 14 found in the
    reference script."""
    log_ratio = gaussian_log_ratio(sample, mean, old_mean, std, "mean")
    bias = ((mean - old_mean) ** 2).flatten(1).mean(1) / (2 * std**2)
    return (log_ratio + bias.mean(dim=tuple(range(1, bias.ndim)))) * std


def test_dim_empty_tuple_averages_a_per_sample_tensor_over_the_batch():
    per_sample = torch.tensor([1.0, 2.0, 6.0])
    assert per_sample.mean(dim=tuple(range(1, per_sample.ndim))).ndim == 0
    assert per_sample.mean(dim=tuple(range(1, per_sample.ndim))).item() == 3.0


def test_per_sample_ratio_norm_does_not_depend_on_the_micro_batch():
    """Sample 0 with sample 1 or with sample 2: ours gives sample 0 the same value (tolerance rtol 1e-5, atol 1e-9:
    float32 rounding of the same per-row reduction in another batch), the batch-bias form does not."""
    sample, mean, old_mean, std = cps_transition(0.6, 0.45, shift=0.05, batch=3)
    mean[2] = old_mean[2] + 5 * (mean[2] - old_mean[2])  # sample 2's mean moved five times as far
    with_1, with_2 = [0, 1], [0, 2]
    ours = [ratio_norm_log_ratio(sample[b], mean[b], old_mean[b], std[b], "mean")[0] for b in (with_1, with_2)]
    torch.testing.assert_close(ours[0], ours[1], rtol=1e-5, atol=1e-9)
    batch = [batch_bias_ratio_norm(sample[b], mean[b], old_mean[b], std[b])[0] for b in (with_1, with_2)]
    assert abs(float(batch[0] - batch[1])) > 1e-3


def test_per_sample_ratio_norm_has_zero_mean_under_the_old_policy():
    """x' ~ N(μ_old, s²): E[reduce(z·Δμ)] = 0 for every sample. The batch-bias form is off by (b̄ − b_i)·s_i for
    sample i (b_i its own bias): 4000 draws give a standard error far below that offset."""
    _, mean, old_mean, std = cps_transition(0.6, 0.45, shift=0.05, batch=2)
    mean[1] = old_mean[1] + 3 * (mean[1] - old_mean[1])  # two samples with different biases
    draws, g = 4000, torch.Generator().manual_seed(7)
    x = old_mean.unsqueeze(0) + std.reshape(1, -1, 1, 1, 1) * torch.randn(draws, *old_mean.shape, generator=g)
    ours = torch.stack([ratio_norm_log_ratio(x[k], mean, old_mean, std, "mean") for k in range(draws)])
    batch = torch.stack([batch_bias_ratio_norm(x[k], mean, old_mean, std) for k in range(draws)])
    stderr = ours.std(0) / draws**0.5
    assert (ours.mean(0).abs() < 4 * stderr).all()
    bias = ((mean - old_mean) ** 2).flatten(1).mean(1) / (2 * std**2)
    offset = (bias.mean() - bias) * std
    assert (offset.abs() > 20 * stderr).all()
    torch.testing.assert_close(batch.mean(0), offset, rtol=0, atol=float(4 * stderr.max()))
