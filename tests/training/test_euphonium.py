"""Euphonium: λ = 0 is GRPO(-Guard) exactly, guidance moves samples but not the recorded policy, noise 0 is the
ODE, the distillation term's velocity form, the dual-reward modes and the process reward model's checkpoint,
and bad settings."""

import pytest
import torch

from flowalign.algorithms.euphonium import EuphoniumConfig
from flowalign.algorithms.grpo import GRPOConfig
from flowalign.algorithms.grpo_guard import GRPOGuardConfig
from flowalign.algorithms.policy_gradient import PolicyBatch
from flowalign.errors import ConfigError
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.sampling import DynamicsConfig, make_generators, recompute_log_probs, rollout
from flowalign.sampling.dynamics import StepResult, mean_and_std
from flowalign.training.config import SamplingConfig
from flowalign.training.seeding import derive_seed
from flowalign.training.trainer import Trainer
from reward_models.shapes import ShapesReward

from trainer_helpers import Redness, record_advantages, tiny_config


def make_trainer(tmp_path, algorithm, sampling=None, reward=None, iterations=1):
    config = tiny_config(tmp_path, algorithm=algorithm, iterations=iterations,
                         sampling=sampling or SamplingConfig(num_steps=3, group_size=2, prompts_per_iteration=2,
                                                             rollout_batch_size=2))
    return Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=reward or Redness())


def trained(trainer, iterations=2):
    calls = record_advantages(trainer)
    metrics = [trainer.train_iteration(it) for it in range(iterations)]
    return calls, metrics, [p.detach().clone() for p in trainer.params]


@pytest.mark.parametrize("reference, euphonium", [
    (GRPOGuardConfig(), EuphoniumConfig()),
    (GRPOConfig(clip_range=1e-4), EuphoniumConfig(clip_range=1e-4, ratio_norm=False, reweight="none")),
])
def test_lambda_zero_reproduces_grpo_rollouts_losses_and_updates_exactly(tmp_path, reference, euphonium):
    ref_calls, ref_metrics, ref_params = trained(make_trainer(tmp_path / "ref", reference))
    calls, metrics, params = trained(make_trainer(tmp_path / "eu", euphonium))
    # the same seeds, ops and order in one process: exact by construction
    for a, b in zip(ref_calls, calls):
        assert torch.equal(a["trajectory"].latents, b["trajectory"].latents)
        assert torch.equal(a["advantages"], b["advantages"])
    for a, b in zip(ref_metrics, metrics):
        assert a["train/loss"] == b["train/loss"] and a["train/grad_norm"] == b["train/grad_norm"]
    assert all(torch.equal(a, b) for a, b in zip(ref_params, params))
    assert not all(torch.equal(a, torch.zeros_like(a)) for a in params[1::2])  # the updates did move the adapter


def test_guidance_moves_the_samples_but_transitions_are_scored_by_the_unguided_policy(tmp_path):
    trainer = make_trainer(tmp_path, EuphoniumConfig(guidance_strength=2000.0, guidance_steps=[1, 2]))
    algorithm = trainer.algorithm
    plain, _, cond = trainer.sample_iteration(0)
    guided, _, _ = trainer.sample_iteration(0, hooks=algorithm.rollout_hooks(trainer, 0))
    assert torch.equal(guided.latents[:, :2], plain.latents[:, :2])  # step 0 is unguided: the same computation
    assert not torch.allclose(guided.latents[:, 2], plain.latents[:, 2], atol=1e-3)
    assert sorted(algorithm._shifts[0]) == [1, 2] and algorithm._shift_norms[0] > 0
    samples, steps = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 2, 2])
    redo = recompute_log_probs(trainer.model, guided, cond, samples, steps)
    # a recompute of the stored guided transition under the unguided model: another batch layout of the same
    # float32 forward, so float32 rounding of a mean over latent elements
    torch.testing.assert_close(redo.log_prob, guided.log_probs[samples, steps], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(redo.mean, guided.means[samples, steps], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(guided.log_probs[samples, steps], plain.log_probs[samples, steps])


@pytest.mark.parametrize("strength", [0.0, 50.0])
def test_noise_zero_is_the_ode(tmp_path, strength):
    sampling = SamplingConfig(num_steps=3, group_size=2, prompts_per_iteration=2, rollout_batch_size=2,
                              noise_level=0.0)
    trainer = make_trainer(tmp_path, EuphoniumConfig(guidance_strength=strength), sampling=sampling)
    traj, _, _ = trainer.sample_iteration(0, hooks=trainer.algorithm.rollout_hooks(trainer, 0))
    seeds = [derive_seed(trainer.config.seed, "rollout", 0, 0, j) for j in range(4)]
    ode = [rollout(trainer.model, trainer.model.encode_prompts([prompt]), trainer.geometry, num_steps=3,
                   dynamics=DynamicsConfig("ode", 0.0), group_size=2,
                   generators=make_generators(seeds[2 * p : 2 * p + 2]))
           for p, prompt in enumerate(traj.prompts[::2])]  # the trainer's chunks: one prompt's group per call
    ode = torch.cat([o.latents for o in ode])
    assert torch.equal(traj.latents, ode)  # a deterministic step is the ODE step; no hook is called
    assert not traj.trainable.any()


def test_the_distillation_term_is_the_velocity_change_of_the_guided_mean(tmp_path):
    trainer = make_trainer(tmp_path, EuphoniumConfig(guidance_strength=2.0, distill_beta=1.0))
    gen = torch.Generator().manual_seed(0)
    x, v, grad = (torch.randn(3, 4, 8, 8, generator=gen) for _ in range(3))
    sigma, sigma_next, lam = torch.tensor([0.9, 0.6, 0.3]), torch.tensor([0.6, 0.3, 0.1]), 2.0
    dynamics = DynamicsConfig("flow_sde", 0.7)
    mean, std = mean_and_std(dynamics, v, x, sigma, sigma_next)
    shift = lam * (sigma - sigma_next).view(-1, 1, 1, 1) * grad
    g2 = std**2 / (sigma - sigma_next)
    c = (1 + g2 * (1 - sigma) / (2 * sigma)).view(-1, 1, 1, 1)
    guided_mean, _ = mean_and_std(dynamics, v - lam * grad / c, x, sigma, sigma_next)  # v_old + δv
    torch.testing.assert_close(guided_mean, mean + shift, rtol=1e-5, atol=1e-5)  # float32 algebra
    algorithm = trainer.algorithm
    algorithm._shift_table = shift[:, None]
    batch = lambda new_mean: PolicyBatch(  # noqa: E731
        new=StepResult(mean, new_mean, std, torch.zeros(3)), old_mean=mean, old_log_prob=torch.zeros(3),
        advantages=torch.zeros(3), sigma=sigma, sigma_next=sigma_next, step_idx=torch.zeros(3, dtype=torch.long),
        reduction="mean")
    rows, steps = torch.arange(3), torch.zeros(3, dtype=torch.long)
    assert float(algorithm.distillation(batch(guided_mean), rows, steps)) < 1e-8
    by_hand = ((lam * grad / c) ** 2).flatten(1).mean(1).mean()  # ‖v_θ − (v_old + δv)‖² at v_θ = v_old
    torch.testing.assert_close(algorithm.distillation(batch(mean), rows, steps), by_hand, rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="sample_idx is None"):  # its tables are per trajectory row
        algorithm.loss(batch(mean))


@pytest.mark.parametrize("mode", ["process", "both"])
def test_dual_reward_modes_train_and_the_process_reward_model_resumes(tmp_path, mode):
    algorithm = EuphoniumConfig(guidance_strength=20.0, advantages=mode, distill_beta=0.1, prm_updates=3)
    trainer = make_trainer(tmp_path, algorithm, iterations=2)
    trainer.run()
    rows = trainer.history
    trained_rows = [r for r in rows if "prm/loss" in r]
    assert len(trained_rows) == 2 and all(r["train/pairs"] > 0 for r in trained_rows)
    assert all("train/distill" in r and "guidance/shift_norm" in r for r in trained_rows)
    if mode == "both":
        assert all("train/process_loss" in r for r in trained_rows)
    resumed = Trainer(trainer.config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume="latest")
    for a, b in zip(resumed.algorithm.prm.net.parameters(), trainer.algorithm.prm.net.parameters()):
        assert torch.equal(a, b)
    assert resumed.algorithm.prm.steps == 2 * 3


@pytest.mark.parametrize("kwargs, match", [
    ({"guidance_strength": -1.0}, r"guidance_strength \(λ\) must be >= 0"),
    ({"guidance": "text"}, r"algorithm.guidance must be one of latent, pixel"),
    ({"advantages": "mixed"}, r"algorithm.advantages must be one of outcome, process, both"),
    ({"distill_beta": -0.1}, r"distill_beta must be >= 0"),
    ({"prm_updates": 0}, r"prm_updates must be >= 1"),
])
def test_bad_settings_name_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EuphoniumConfig(**kwargs)


def test_settings_that_do_not_fit_the_run_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"guidance_steps \[3\] lie outside the schedule.*steps 0..2"):
        make_trainer(tmp_path / "a", EuphoniumConfig(guidance_strength=1.0, guidance_steps=[0, 3]))
    with pytest.raises(ConfigError, match=r"guidance: pixel differentiates the reward.*'shapes'"):
        make_trainer(tmp_path / "b", EuphoniumConfig(guidance_strength=1.0, guidance="pixel"), reward=ShapesReward())
