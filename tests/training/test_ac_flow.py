"""AC-Flow: critic regression, critic-weighted flow matching with a W2 term, warm-up, checkpoints and resume."""

import pytest
import torch

from flowalign.algorithms.ac_flow import ACFlowConfig, actor_terms, exp_weights
from flowalign.errors import ConfigError
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.training.config import LoRAConfig
from flowalign.training.flow_matching import flow_matching_error
from flowalign.training.trainer import Trainer

from trainer_helpers import Redness, tiny_config


def _trainer(tmp_path, iterations=2, **algorithm):
    algorithm.setdefault("critic_warmup", 1)
    config = tiny_config(tmp_path, iterations=iterations, algorithm=ACFlowConfig(**algorithm))
    return Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())


def _examples(trainer, n=4, seed=0):
    """A fixed batch of re-noising inputs on the trainer's model: latents, conditioning, σ and noise."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n, *trainer.model.latent_shape(trainer.geometry))
    x0 = torch.randn(shape, generator=gen)
    cond = trainer.model.encode_prompts(["a red circle", "two blue squares"] * (n // 2))
    return x0, cond, torch.rand(n, generator=gen).clamp(0.05, 0.95), torch.randn(shape, generator=gen)


def test_the_critic_regression_loss_falls_on_a_fixed_set_of_rollouts(tmp_path):
    trainer = _trainer(tmp_path)
    algorithm = trainer.algorithm
    traj, scored, cond = trainer.sample_iteration(0)
    text = trainer.model.pooled_text(cond)
    from flowalign.algorithms.advantages import group_advantages

    shaped = group_advantages(scored.rewards, traj.group_index, clip=3.0)
    assert shaped.abs().sum() > 0  # a target with real variance
    first = algorithm.train_critic(trainer, traj, text, shaped, 0)
    for it in range(1, 40):
        last = algorithm.train_critic(trainer, traj, text, shaped, it)
    assert last["critic/loss_before"] < 0.5 * first["critic/loss_before"], (first, last)


def test_without_w2_critic_or_temperature_the_actor_loss_is_plain_flow_matching(tmp_path):
    trainer = _trainer(tmp_path)
    x0, cond, sigma, noise = _examples(trainer)
    weights = exp_weights(torch.tensor([2.0, -1.5, 0.3, 0.0]), float("inf"))
    assert torch.equal(weights, torch.ones(4))  # exp(0) / mean = 1 exactly
    terms = actor_terms(trainer.model, x0, cond, trainer.geometry, sigma, noise, weights, w2_weight=0.0)
    plain = flow_matching_error(trainer.model, x0, cond, trainer.geometry, sigma, noise)
    # the same forward on the same batch in the same process; w = 1 and + 0·w2 are exact: equal by construction
    assert torch.equal(terms.loss, plain)
    # ... and with weights they scale the error per example, the weights averaging 1
    weights = exp_weights(torch.tensor([2.0, -1.5, 0.3, 0.0]), 1.0)
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))
    weighted = actor_terms(trainer.model, x0, cond, trainer.geometry, sigma, noise, weights, w2_weight=0.0)
    assert torch.equal(weighted.loss, weights * plain)


def test_the_w2_term_is_zero_at_step_zero_and_grows_after_an_update(tmp_path):
    trainer = _trainer(tmp_path)
    x0, cond, sigma, noise = _examples(trainer)
    ones = torch.ones(4)
    at_start = actor_terms(trainer.model, x0, cond, trainer.geometry, sigma, noise, ones, w2_weight=1.0)
    # zero-initialized LoRA B: the adapter adds exactly 0 to every projection, so v_θ == v_ref bit for bit
    assert torch.equal(at_start.w2, torch.zeros(4))
    trainer.train_iteration(0)
    later = actor_terms(trainer.model, x0, cond, trainer.geometry, sigma, noise, ones, w2_weight=1.0)
    assert (later.w2 > 0).all()


def test_warm_up_lets_the_critic_learn_before_it_drives_the_actor(tmp_path):
    trainer = _trainer(tmp_path, iterations=3, critic_warmup=1)
    critic_before = {k: v.clone() for k, v in trainer.algorithm.critic.net.state_dict().items()}
    first = trainer.train_iteration(0)
    assert first["ac_flow/critic_drives"] == 0.0 and first["critic/steps"] > 0
    assert any(not torch.equal(v, critic_before[k]) for k, v in trainer.algorithm.critic.net.state_dict().items())
    second = trainer.train_iteration(1)
    assert second["ac_flow/critic_drives"] == 1.0 and second["train/loss"] > 0


def test_no_critic_uses_the_clipped_shaped_reward(tmp_path):
    trainer = _trainer(tmp_path, critic=False, temperature=float("inf"))
    assert trainer.algorithm.critic is None and trainer.algorithm.state_dict() == {}
    metrics = trainer.train_iteration(0)
    assert metrics["ac_flow/critic_drives"] == 0.0 and metrics["ac_flow/weight_max"] == 1.0


def test_checkpoints_hold_the_critic_and_resume_exactly(tmp_path):
    straight = _trainer(tmp_path / "a", iterations=3)
    straight.run()
    first = _trainer(tmp_path / "b", iterations=2)
    first.run()
    config = first.config
    config.iterations = 3  # the resumed iteration is driven by the restored critic (warm-up 1)
    resumed = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume="latest")
    assert resumed.algorithm.critic.steps == first.algorithm.critic.steps  # the critic came back
    resumed.run()
    # same seeds, same CPU ops in the same order, state restored bit for bit: exact by construction
    for a, b in zip(straight.params, resumed.params):
        assert torch.equal(a, b)
    for (name, a), b in zip(straight.algorithm.critic.net.state_dict().items(),
                            resumed.algorithm.critic.net.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight.algorithm.critic.steps == resumed.algorithm.critic.steps


def test_a_warm_up_as_long_as_the_run_fails_before_the_model_loads(tmp_path):
    config = tiny_config(tmp_path, iterations=5, algorithm=ACFlowConfig(critic_warmup=5))
    with pytest.raises(ConfigError, match=r"algorithm.critic_warmup \(5 iterations\).*iterations = 5"):
        Trainer(config, model="/nonexistent/pipeline", reward=Redness())
    config = tiny_config(tmp_path, iterations=5, algorithm=ACFlowConfig(critic_warmup=2, w2_weight=0.5),
                         lora=LoRAConfig(enabled=False))
    with pytest.raises(ConfigError, match="w2_weight.*LoRA"):
        Trainer(config, model="/nonexistent/pipeline", reward=Redness())


@pytest.mark.parametrize("key, value", [("temperature", 0.0), ("temperature", -1.0), ("temperature", float("nan")),
                                        ("adv_clip", 0.0), ("shaping_clip", -1.0), ("critic_warmup", -1),
                                        ("w2_weight", -0.1), ("advantage", "gae"), ("td_step", 0.0),
                                        ("renoise_per_sample", 0), ("train_guidance_scale", 0.5)])
def test_bad_knobs_are_named(key, value):
    with pytest.raises(ConfigError, match=f"algorithm.{key}"):
        ACFlowConfig(**{key: value})


def test_ac_flow_trains_on_ode_rollouts(tmp_path):
    # AC-Flow needs no log-probs: its toy recipe samples with the ODE, as the evaluation does
    config = tiny_config(tmp_path, iterations=2, algorithm=ACFlowConfig(critic_warmup=1))
    config.sampling.dynamics, config.sampling.noise_level = "ode", 0.0
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    before = [p.detach().clone() for p in trainer.params]
    metrics = trainer.train_iteration(0)
    assert metrics["train/fm_error"] > 0 and metrics["critic/steps"] > 0
    assert any(not torch.equal(p, b) for p, b in zip(trainer.params, before))
