"""On-policy recompute for every family: |log ratio| < 1e-5 (float32, mean reduction) for SD3 (4-D latents),
Flux (packed 3-D tokens) and Wan (5-D video latents), also when the recompute batch differs from the rollout's.
Tolerance: per-dimension log-probs are of magnitude ≤ ~4 and μ moves by ~1e-6 between float32 batch layouts (SD3
observed 2.4e-7, see tests/test_rollout.py); a recompute off the rollout's policy misses by orders of magnitude."""

import pytest
import torch

from flowalign.models import Geometry
from flowalign.models.flux import FluxModel
from flowalign.models.sd3 import SD3Model
from flowalign.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline
from flowalign.models.wan import WanModel
from flowalign.sampling import DynamicsConfig, SDEWindow, make_generators, recompute_log_probs, rollout

FAMILIES = {
    "sd3": (lambda: SD3Model(tiny_sd3_pipeline(seed=0)), Geometry(32, 32), 4),
    "flux": (lambda: FluxModel(tiny_flux_pipeline(seed=0)), Geometry(32, 32), 3),
    "wan": (lambda: WanModel(tiny_wan_pipeline(seed=0)), Geometry(32, 32, 9), 5),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("chunk", [None, 3])
def test_recompute_is_on_policy_for_every_family(family, chunk):
    build, geometry, latent_ndim = FAMILIES[family]
    model = build()
    cond = model.encode_prompts(["a red circle", "two blue squares"])
    traj = rollout(model, cond, geometry, num_steps=4, dynamics=DynamicsConfig("flow_sde", 0.7, "mean"),
                   generators=make_generators(range(4)), group_size=2, window=SDEWindow(1, 2),
                   share_initial_noise=True)
    assert traj.latents.ndim == 2 + latent_ndim - 1  # (B, N+1, *latent)
    rows = model.encode_prompts(traj.prompts)
    samples, steps = traj.trainable_pairs()
    assert sorted(set(steps.tolist())) == [1, 2]
    chunk = chunk or len(samples)
    for start in range(0, len(samples), chunk):
        s, t = samples[start : start + chunk], steps[start : start + chunk]
        result = recompute_log_probs(model, traj, rows, s, t)
        assert (result.log_prob - traj.log_probs[s, t]).abs().max() < 1e-5
