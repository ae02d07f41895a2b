"""Rollouts: log-prob recompute is on-policy exact, SDE windows branch a shared prefix, errors are clear."""

import pytest
import torch

from flowalign.errors import ConfigError
from flowalign.sampling import (
    DynamicsConfig,
    SDEWindow,
    concat_trajectories,
    make_generators,
    recompute_log_probs,
    rollout,
)
from flowalign.sampling.dynamics import gaussian_log_ratio

PROMPTS = ["a red circle", "two blue squares"]


def run(model, *, group_size=2, window=None, share=False, guidance=1.0, reduction="mean", steps=4, name="flow_sde"):
    cond = model.encode_prompts(PROMPTS, with_negative=guidance > 1)
    return rollout(model, cond, model.default_geometry(), num_steps=steps,
                   dynamics=DynamicsConfig(name, 0.7, reduction), generators=make_generators(range(2 * group_size)),
                   group_size=group_size, window=window, share_initial_noise=share, guidance_scale=guidance)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("chunk", [None, 3])
def test_recomputed_log_probs_are_on_policy(sd3_model, guidance, chunk):
    """|log ratio| < 1e-5 (float32, mean reduction), also when the recompute batch differs from the rollout's.
    Tolerances: per-dimension log-probs are of magnitude ≤ ~4 and μ moves by ~1e-6 between batch layouts
    (observed: log-prob 2.4e-7, summed log ratio 7e-5; exact when the batch is the rollout's)."""
    traj = run(sd3_model, guidance=guidance)
    cond = sd3_model.encode_prompts(traj.prompts, with_negative=guidance > 1)
    samples, steps = traj.trainable_pairs()
    chunk = chunk or len(samples)
    for start in range(0, len(samples), chunk):
        s, t = samples[start : start + chunk], steps[start : start + chunk]
        result = recompute_log_probs(sd3_model, traj, cond, s, t)
        assert (result.log_prob - traj.log_probs[s, t]).abs().max() < 1e-5
        ratio = gaussian_log_ratio(result.sample, result.mean, traj.means[s, t], result.std, "sum")
        assert ratio.abs().max() < 1e-3  # sum over D=1024 dims of float32 rounding in μ


def test_recompute_has_gradients_for_the_transformer(sd3_model):
    traj = run(sd3_model)
    samples, steps = traj.trainable_pairs()
    result = recompute_log_probs(sd3_model, traj, sd3_model.encode_prompts(traj.prompts), samples[:3], steps[:3])
    result.log_prob.sum().backward()
    grads = [p.grad for p in sd3_model.transformer.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    sd3_model.transformer.zero_grad(set_to_none=True)


def test_shared_initial_noise_is_each_groups_first_generators(sd3_model):
    """With share_initial_noise, every member of group p starts from the noise of generator p·G (the group's
    first), exactly as model.initial_noise draws it for that generator's seed."""
    seeds, group = [10, 11, 12, 13, 14, 15], 3
    cond = sd3_model.encode_prompts(PROMPTS)
    geometry = sd3_model.default_geometry()
    traj = rollout(sd3_model, cond, geometry, num_steps=2, dynamics=DynamicsConfig("flow_sde", 0.7),
                   generators=make_generators(seeds), group_size=group, share_initial_noise=True)
    for p in range(len(PROMPTS)):
        expected = sd3_model.initial_noise(geometry, make_generators([seeds[p * group]]))[0]
        for j in range(group):  # exact by construction: copies of one draw from the same seeded generator
            assert torch.equal(traj.latents[p * group + j, 0], expected), (p, j)
    assert not torch.equal(traj.latents[0, 0], traj.latents[group, 0])


def test_concatenated_trajectories_renumber_their_groups(sd3_model):
    geometry, dyn = sd3_model.default_geometry(), DynamicsConfig("flow_sde", 0.7)
    parts = [rollout(sd3_model, sd3_model.encode_prompts(prompts), geometry, num_steps=2, dynamics=dyn,
                     generators=make_generators(range(first, first + 2 * len(prompts))), group_size=2)
             for first, prompts in ((0, PROMPTS[:1]), (2, PROMPTS), (6, PROMPTS[1:]))]
    joined = concat_trajectories(parts)
    assert joined.group_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert joined.prompts == [PROMPTS[0]] * 2 + [PROMPTS[0]] * 2 + [PROMPTS[1]] * 4
    # exact by construction: concatenation copies the parts' tensors, no arithmetic
    torch.testing.assert_close(joined.latents, torch.cat([p.latents for p in parts]), rtol=0, atol=0)


def test_sde_window_shares_the_prefix_and_branches(sd3_model):
    steps, group = 6, 4
    sd3_model.transformer_calls = 0
    rows = []
    original = sd3_model._forward
    sd3_model._forward = lambda x, *a: rows.append(x.shape[0]) or original(x, *a)
    try:
        traj = run(sd3_model, group_size=group, window=SDEWindow(2, 2), share=True, steps=steps)
    finally:
        del sd3_model._forward
    assert traj.trainable.tolist() == [False, False, True, True, False, False]
    # the two ODE steps before the window run once per prompt (2 rows), the rest once per sample (8 rows)
    assert rows == [2, 2, 8, 8, 8, 8]
    lat = traj.latents.view(2, group, steps + 1, -1)
    # x_0, x_1, x_2 (the input of the first window step) are shared in each group; exact by construction: the
    # prefix is computed once per prompt and expanded to the group (copies, not recomputations)
    for t in range(3):
        assert torch.equal(lat[:, :1, t].expand_as(lat[:, :, t]), lat[:, :, t])
    for t in range(3, steps + 1):
        assert not torch.equal(lat[:, 0, t], lat[:, 1, t])
    assert (traj.log_probs[:, ~traj.trainable] == 0).all()
    assert (traj.stds[:, traj.trainable] > 0).all()


def test_without_sharing_group_members_differ_from_the_start(sd3_model):
    traj = run(sd3_model, group_size=2)
    assert not torch.equal(traj.latents[0, 0], traj.latents[1, 0])
    assert traj.trainable.all()


def test_samples_depend_only_on_their_seed(sd3_model):
    """Sample i is the same whether it is rolled out alone or in a batch (per-sample generators). Tolerance atol
    1e-5 on latents of magnitude ≤ ~4: float32 rounding of a batch of 1 against a batch of 2 over 3 steps
    (observed 5.4e-7); a sample that took another sample's noise would differ by ~1."""
    cond = sd3_model.encode_prompts(PROMPTS)
    geometry, dyn = sd3_model.default_geometry(), DynamicsConfig("flow_sde", 0.7)
    both = rollout(sd3_model, cond, geometry, num_steps=3, dynamics=dyn, generators=make_generators([5, 9]))
    alone = rollout(sd3_model, cond.select([1]), geometry, num_steps=3, dynamics=dyn, generators=make_generators([9]))
    torch.testing.assert_close(alone.latents[0], both.latents[1], rtol=0, atol=1e-5)


def test_cps_last_step_is_not_trainable(sd3_model):
    traj = run(sd3_model, name="cps")
    assert traj.trainable.tolist() == [True, True, True, False]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "num_steps must be >= 1"),
        ({"group_size": 0}, "group_size must be >= 1"),
        ({"window": SDEWindow(3, 2)}, r"SDE window \[3, 5\) does not fit in 4"),
    ],
)
def test_bad_rollout_arguments(sd3_model, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        run(sd3_model, **kwargs)


def test_generator_count_must_match_batch(sd3_model):
    cond = sd3_model.encode_prompts(PROMPTS)
    with pytest.raises(ConfigError, match="need one generator per sample: 2 prompts × 2 = 4, got 3"):
        rollout(sd3_model, cond, sd3_model.default_geometry(), num_steps=2, dynamics=DynamicsConfig(),
                generators=make_generators(range(3)), group_size=2)


def test_random_window_fits():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        window = SDEWindow.random(10, 3, low=1, high=5, generator=gen)
        assert 1 <= window.start <= 5 and window.mask(10).sum() == 3
    with pytest.raises(ConfigError, match="cannot place an SDE window of 4"):
        SDEWindow.random(3, 4)


def test_random_window_start_covers_low_and_high_inclusive():
    """The start is uniform over [low, high] with both ends included (5 values, 200 draws: each ~40 times)."""
    gen = torch.Generator().manual_seed(0)
    starts = [SDEWindow.random(10, 3, low=1, high=5, generator=gen).start for _ in range(200)]
    assert set(starts) == {1, 2, 3, 4, 5}
    assert min(starts.count(v) for v in range(1, 6)) >= 20
    # a one-point range is allowed and always gives that start; the default range ends at num_steps − size
    assert {SDEWindow.random(6, 2, low=3, high=3, generator=gen).start for _ in range(5)} == {3}
    assert max(SDEWindow.random(6, 2, generator=gen).start for _ in range(100)) == 4
