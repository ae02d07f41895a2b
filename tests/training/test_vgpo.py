"""VGPO: reward-to-go values, temporal weights and anchoring; dense rewards from one-step projections."""

import subprocess
import sys

import pytest
import torch

from flowalign.algorithms.advantages import group_advantages
from flowalign.algorithms.vgpo import VGPOConfig, reward_to_go, vgpo_advantages
from flowalign.errors import ConfigError
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.sampling import DynamicsConfig, RolloutHooks, make_generators, rollout
from flowalign.training.config import SamplingConfig
from flowalign.training.dense_rewards import DenseProjections
from flowalign.training.rewarding import decode_and_score
from flowalign.training.trainer import Trainer
from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward

from trainer_helpers import Redness, record_advantages, tiny_config

GROUPS = torch.arange(3).repeat_interleave(4)


def _problem(seed=0, steps=6):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.rand(12, generator=gen)
    dense = torch.rand(12, steps, generator=gen)
    points = torch.tensor([False, True, True, False, True, False])
    trainable = torch.tensor([True, True, True, True, False, False])
    return rewards, dense, points, trainable


def test_gamma_zero_without_weights_or_anchor_is_grpo_exactly():
    rewards, dense, points, trainable = _problem()
    rewards[4:8] = 0.5  # one group whose rewards agree: GRPO gives it 0
    config = VGPOConfig(gamma=0.0, temporal_weights=False, k_anchor=0.0)
    adv, _ = vgpo_advantages(rewards, dense, points, trainable, GROUPS, torch.ones(12, dtype=torch.bool), config)
    grpo = group_advantages(rewards, GROUPS, std_scope="group", clip=config.adv_clip_max)
    for i in torch.nonzero(trainable).flatten().tolist():
        assert torch.equal(adv[:, i], grpo), i  # the same float operations on the same values: exact
    assert torch.equal(adv[:, ~trainable], torch.zeros(12, int((~trainable).sum())))


def test_a_group_whose_rewards_agree_keeps_an_anchored_signal_in_the_first_half():
    rewards, dense, points, trainable = _problem()
    rewards[4:8] = 0.5
    valid = torch.ones(12, dtype=torch.bool)
    config = VGPOConfig(gamma=0.0, k_anchor=0.2, anchor_fraction=0.5)
    adv, metrics = vgpo_advantages(rewards, dense, points, trainable, GROUPS, valid, config)
    agreeing = adv[4:8]
    # steps 0..2 (< 0.5·6) are anchored: ω·k·Q with Q = r = 0.5 and ω = 1 (Q is the same at every step)
    torch.testing.assert_close(agreeing[:, :3], torch.full((4, 3), 0.2 * 0.5), rtol=1e-6, atol=0)
    assert torch.equal(agreeing[:, 3:], torch.zeros(4, 3))  # not anchored: no group signal there
    assert metrics["vgpo/equal_reward_groups"] == 1.0
    plain, _ = vgpo_advantages(rewards, dense, points, trainable, GROUPS, valid, VGPOConfig(gamma=0.0, k_anchor=0.0))
    assert torch.equal(plain[4:8], torch.zeros(4, 6))  # without the anchor the group is silent


def test_reward_to_go_weights_points_by_their_distance_from_the_end_or_from_the_step():
    rewards, dense, points, trainable = _problem()
    q, ok = reward_to_go(rewards, dense, points, trainable, 1.0, "end")
    assert ok[:, trainable].all()
    # γ = 1: the plain mean of the reward points at or after the step (steps 1, 2, 4, and the final reward)
    torch.testing.assert_close(q[:, 0], (dense[:, 1] + dense[:, 2] + dense[:, 4] + rewards) / 4)
    torch.testing.assert_close(q[:, 3], (dense[:, 4] + rewards) / 2)
    q_step, _ = reward_to_go(rewards, dense, points, trainable, 0.0, "step")
    torch.testing.assert_close(q_step[:, 0], dense[:, 1], rtol=0, atol=0)  # the nearest point only
    q_half, _ = reward_to_go(rewards, dense, points, trainable, 0.5, "end")
    expected = (0.125 * dense[:, 1] + 0.25 * dense[:, 2] + 0.5 * dense[:, 4] + rewards) / 1.875
    torch.testing.assert_close(q_half[:, 0], expected)


def test_temporal_weights_average_one_over_the_trained_steps():
    rewards, dense, points, trainable = _problem()
    config = VGPOConfig(gamma=1.0, k_anchor=0.0)
    adv, metrics = vgpo_advantages(rewards, dense, points, trainable, GROUPS, torch.ones(12, dtype=torch.bool),
                                   config)
    omegas = torch.tensor([metrics[f"vgpo/omega/step_{i}"] for i in range(4)])
    torch.testing.assert_close(omegas.mean(), torch.tensor(1.0))
    assert not torch.allclose(omegas, torch.ones(4))  # the values differ by step, so do the weights


def test_dense_rewards_are_the_reward_of_the_decoded_one_step_projection(sd3_model):
    geometry = sd3_model.resolve_geometry(32, 32)
    cond = sd3_model.encode_prompts(["a red circle", "two blue squares"])
    sigmas = sd3_model.schedule(3, geometry)
    reward = Redness()
    dense = DenseProjections(sd3_model, reward, geometry, sigmas, every=1)
    traj = rollout(sd3_model, cond, geometry, num_steps=3, dynamics=DynamicsConfig("flow_sde", 0.7, "mean"),
                   generators=make_generators(range(4)), group_size=2, hooks=RolloutHooks(on_step=dense.on_step))
    got = dense.collect(3)
    # every stochastic step but the last (σ' = 0: its projection is the final sample) is scored
    assert got.scored.tolist() == [[True, True, False]] * 4 and got.evaluations == 8
    rows = cond.repeat_interleave(2)
    for i in (0, 1):
        x_next = traj.latents[:, i + 1]
        with torch.no_grad():
            x0_hat = x_next - sigmas[i + 1] * sd3_model.velocity(x_next, sigmas[i + 1], rows, geometry, 1.0)
        direct = decode_and_score(sd3_model, reward, x0_hat, geometry, rows.prompts, [{}] * 4).rewards
        # the projection reuses the rollout's own next-step velocity: the same batched forward on the same values
        # in the same process, then the same decode and reward: exact
        assert torch.equal(got.scores[:, i], direct), i
    assert got.forward_s > 0 and got.score_s > 0



def _vgpo_config(tmp_path, **algorithm):
    return tiny_config(tmp_path, algorithm=VGPOConfig(**algorithm),
                       sampling=SamplingConfig(num_steps=3, group_size=2, prompts_per_iteration=2,
                                               rollout_batch_size=2))


def test_vgpo_trains_with_dense_rewards_and_logs_their_cost(tmp_path):
    calls = {}
    for every in (0, 1):
        trainer = Trainer(_vgpo_config(tmp_path / str(every), dense_every=every), model=tiny_sd3_pipeline(seed=0),
                          reward=Redness())
        before = [p.detach().clone() for p in trainer.params]
        start = trainer.model.transformer_calls
        metrics = trainer.train_iteration(0)
        calls[every] = trainer.model.transformer_calls - start
        assert any(not torch.equal(p, b) for p, b in zip(trainer.params, before))
    # 2 chunks × 2 samples, steps 0 and 1 projected (step 2 ends at σ = 0)
    assert metrics["dense/evaluations"] == 8 and metrics["dense/forward_s"] > 0
    assert "dense/reward_mean/step_1" in metrics and "vgpo/omega/step_0" in metrics
    # the projections reuse the velocities of the rollout's next steps: no transformer call of their own
    assert calls[1] == calls[0], calls


def test_vgpo_in_the_trainer_reduces_to_grpo_advantages(tmp_path):
    config = _vgpo_config(tmp_path, dense_every=1, gamma=0.0, temporal_weights=False, k_anchor=0.0)
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    calls = record_advantages(trainer)
    trainer.train_iteration(0)
    (call,) = calls
    grpo = group_advantages(call["rewards"], call["trajectory"].group_index, clip=config.algorithm.adv_clip_max)
    trained = call["trajectory"].trainable
    assert torch.equal(call["advantages"][:, trained], grpo[:, None].expand(-1, int(trained.sum())))


@pytest.mark.parametrize("key, value", [("gamma", 1.5), ("gamma", -0.1), ("dense_every", -1),
                                        ("k_anchor", -1.0), ("anchor_fraction", 2.0), ("discount_from", "x"),
                                        ("gamma", float("nan")), ("anchor_baseline", float("inf"))])
def test_bad_knobs_are_named(key, value):
    with pytest.raises(ConfigError, match=f"algorithm.{key}"):
        VGPOConfig(**{key: value})


@register_reward("test_video_only")
class VideoOnly(RewardModel):
    spec = RewardSpec(name="test_video_only", modality="video", needs_prompt=False)

    def forward(self, images, prompts, metadata=None):
        return RewardOutput.from_scores(images.flatten(1).mean(1))


def test_dense_rewards_with_a_reward_that_cannot_score_images_fail_before_the_model_loads(tmp_path):
    config = _vgpo_config(tmp_path, dense_every=1)
    config.reward.weights = {"test_video_only": 1.0}
    with pytest.raises(ConfigError, match="algorithm.dense_every.*test_video_only.*videos"):
        Trainer(config, model="/nonexistent/pipeline")
    config = _vgpo_config(tmp_path / "c", dense_every=0)
    config.sampling.noise_level = 0.0
    with pytest.raises(ConfigError, match="deterministic"):
        Trainer(config, model="/nonexistent/pipeline", reward=Redness())
    with pytest.raises(ConfigError, match="algorithm.dense_every"):  # a reward given built is checked at setup
        Trainer(_vgpo_config(tmp_path / "b", dense_every=2), model=tiny_sd3_pipeline(seed=0), reward=VideoOnly())


def test_the_training_config_imports_first_without_a_cycle():
    # training.config -> every algorithm -> vgpo -> dense_rewards must not import rewarding (-> training.config)
    # at module level: a fresh interpreter, where that import order failed once
    done = subprocess.run([sys.executable, "-c", "import flowalign.training.config"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
