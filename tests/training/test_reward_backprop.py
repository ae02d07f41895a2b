"""Reward back-propagation: the method's gradient through a 3-step sampler (decode, reward and per-step KL
included) against finite differences, truncation changing the gradient only, the refusal of a
non-differentiable reward, config errors, and a short run raising a differentiable reward."""

import pytest
import torch

from flowalign.algorithms.reward_backprop import RewardBackpropConfig
from flowalign.errors import ConfigError
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.training.config import OptimConfig, SamplingConfig
from flowalign.training.trainer import Trainer
from reward_models.shapes import ShapesReward

from trainer_helpers import Redness, tiny_config

STEPS = 3


def make_trainer(tmp_path, reward=None, sampling=None, **algorithm):
    config = tiny_config(tmp_path, algorithm=RewardBackpropConfig(**algorithm),
                         sampling=sampling or SamplingConfig(num_steps=STEPS, group_size=2, prompts_per_iteration=2,
                                                             rollout_batch_size=2),
                         optim=OptimConfig(lr=1e-2, micro_batch_size=2, steps_per_iteration=2))
    return Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=reward or Redness())


@pytest.fixture(scope="module")
def f64(tmp_path_factory):
    """A trainer whose transformer (and LoRA) run in float64, with a non-trivial adapter."""
    trainer = make_trainer(tmp_path_factory.mktemp("f64"), kl_beta=0.05, grad_steps=STEPS)
    with torch.no_grad():
        for i, p in enumerate(trainer.params):
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    trainer.model.transformer.to(torch.float64)
    return trainer


def loss_of(trainer, grad_steps=STEPS):
    prompts, metadata, seeds = trainer.algorithm.iteration_samples(trainer, 0)
    return trainer.algorithm.objective(trainer, prompts, metadata, seeds, grad_steps, torch.arange(len(prompts)), 0)


def gradient(trainer, param, grad_steps=STEPS):
    param.grad = None
    loss_of(trainer, grad_steps).loss.sum().backward()
    grad = param.grad.clone()
    for p in trainer.params:
        p.grad = None
    return grad


def test_gradient_through_a_3_step_sampler_matches_finite_differences(f64):
    param = f64.params[-1]  # a LoRA B of the last block's attention output
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(9), dtype=param.dtype)
    out = loss_of(f64)
    assert bool((out.kl > 0).all()) and out.trajectory.grad_mask.all()  # the KL term is present and live
    analytic = float((gradient(f64, param) * direction).sum())
    eps, values = 3e-3, []
    original = param.detach().clone()
    with torch.no_grad():
        for sign in (1, -1):
            param.copy_(original + sign * eps * direction)
            values.append(float(loss_of(f64).loss.sum()))
        param.copy_(original)
    numeric = (values[0] - values[1]) / (2 * eps)
    # the sampler, VAE and reward run in float32 (only the transformer is float64), which floors the
    # difference quotient's accuracy; measured 1.72993 (eps 3e-3) and 1.72994 (eps 1e-2) against 1.72977
    assert numeric == pytest.approx(analytic, rel=1e-3)
    assert abs(analytic) > 0.1


def test_truncation_changes_the_gradient_only(f64):
    param = f64.params[1]
    full, truncated = loss_of(f64, STEPS), loss_of(f64, 1)
    assert torch.equal(full.loss.detach(), truncated.loss.detach())  # same ops on the same values
    assert truncated.trajectory.grad_mask.tolist() == [False, False, True]
    assert not torch.allclose(gradient(f64, param, 1), gradient(f64, param, STEPS), rtol=0.1)


def test_random_truncation_draws_k_in_range_the_same_for_an_iteration(tmp_path):
    trainer = make_trainer(tmp_path, grad_steps=1, grad_steps_max=STEPS)
    draws = [trainer.algorithm.grad_steps_for(trainer, it) for it in range(40)]
    assert set(draws) == {1, 2, 3}
    assert draws == [trainer.algorithm.grad_steps_for(trainer, it) for it in range(40)]


def test_a_non_differentiable_reward_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"reward 'shapes' is not differentiable.*shapes_soft"):
        make_trainer(tmp_path, reward=ShapesReward())


@pytest.mark.parametrize("kwargs, match", [
    ({"grad_steps": 0}, r"algorithm.grad_steps must be >= 1"),
    ({"grad_steps": 2, "grad_steps_max": 1}, r"grad_steps_max must be >= algorithm.grad_steps"),
    ({"kl_beta": -1.0}, r"kl_beta must be >= 0"),
    ({"kl_reduction": "max"}, r"kl_reduction must be one of mean, sum"),
    ({"reward_scale": 0.0}, r"reward_scale must be > 0"),
])
def test_bad_settings_name_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RewardBackpropConfig(**kwargs)


def test_settings_that_do_not_fit_the_run_are_refused_before_the_model_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"grad_steps = 5 exceeds sampling.num_steps = 3"):
        make_trainer(tmp_path / "a", grad_steps=5)
    window = SamplingConfig(num_steps=3, group_size=2, prompts_per_iteration=2, sde_window_size=2)
    with pytest.raises(ConfigError, match=r"sde_window_size .*set it to null"):
        make_trainer(tmp_path / "b", sampling=window)
    ode = SamplingConfig(num_steps=3, group_size=2, prompts_per_iteration=2, dynamics="ode", noise_level=0.0)
    with pytest.raises(ConfigError, match=r"KL term needs a stochastic sampler"):
        make_trainer(tmp_path / "c", sampling=ode, kl_beta=0.1)


def test_training_raises_the_reward_and_counts_samples(tmp_path):
    trainer = make_trainer(tmp_path, grad_steps=2)
    trainer.config.iterations = 6
    summary = trainer.run()
    assert summary["samples_seen"] == 6 * 2 * 2
    before, after = summary["eval_before"]["eval/reward"], summary["eval_after"]["eval/reward"]
    assert after > before + 0.05, (before, after)
