"""SDEs with the flow's marginals: on a 2-D Gaussian mixture with the exact velocity field, samples of
flow_sde, dance_sde and cps match the ODE's (and the data's) distribution."""

import pytest
import torch

from flowalign.sampling.dynamics import DynamicsConfig, step

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
SCALES = torch.tensor([0.5, 0.3, 0.6])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


def exact_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[ε − x0 | x_σ = x] for x0 ~ Σ_k w_k N(m_k, s_k² I), x_σ = (1−σ)x0 + σε (closed form)."""
    a = 1.0 - sigma
    var = a**2 * SCALES**2 + sigma**2  # (K,)
    diff = x[:, None, :] - a * MEANS[None]  # (N, K, 2)
    log_w = torch.log(WEIGHTS) - (diff**2).sum(-1) / (2 * var) - torch.log(var)  # 2-D Gaussian, up to a constant
    post = torch.softmax(log_w, dim=1)[..., None]
    e_eps = sigma / var[None, :, None] * diff
    e_x0 = MEANS[None] + (a * SCALES**2 / var)[None, :, None] * diff
    return (post * (e_eps - e_x0)).sum(1)


def sample(config: DynamicsConfig, n: int = 20000, steps: int = 60, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    x = torch.randn(n, 2, generator=gen)
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x = step(config, exact_velocity(x, max(s, 1e-6)), x, s, s_next, generator=gen).sample
    return x


def data_moments() -> tuple[torch.Tensor, torch.Tensor]:
    mean = (WEIGHTS[:, None] * MEANS).sum(0)
    second = sum(w * (torch.outer(m, m) + s**2 * torch.eye(2)) for w, m, s in zip(WEIGHTS, MEANS, SCALES))
    return mean, second - torch.outer(mean, mean)


def mode_fractions(x: torch.Tensor) -> torch.Tensor:
    nearest = torch.cdist(x, MEANS).argmin(1)
    return torch.bincount(nearest, minlength=3).float() / len(x)


@pytest.mark.parametrize(
    "config",
    [DynamicsConfig("ode", 0.0), DynamicsConfig("flow_sde", 0.7), DynamicsConfig("dance_sde", 0.5),
     DynamicsConfig("cps", 0.3)],
    ids=lambda c: c.name,
)
def test_sde_samples_match_the_data_distribution(config):
    x = sample(config)
    mean, cov = data_moments()
    # Bounds: 20k samples give a standard error of ~0.015 on the mean; 60 steps add a small bias.
    assert torch.allclose(x.mean(0), mean, atol=0.06), (x.mean(0), mean)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.15), (torch.cov(x.T), cov)
    assert torch.allclose(mode_fractions(x), WEIGHTS, atol=0.02), mode_fractions(x)
