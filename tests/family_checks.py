"""Checks every model family must pass, shared by the per-family test files (tests/test_qwen_image.py, ...).

Each takes a builder of the family's tiny pipeline and an adapter factory, so the same property is proven the
same way for every family: on-policy recompute, LoRA round trip through the pipeline's ``load_lora_weights``,
and one training step that changes only the adapter.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from flowalign.models import Geometry
from flowalign.sampling import DynamicsConfig, SDEWindow, make_generators, recompute_log_probs, rollout
from flowalign.training.lora import LoRAConfig, add_lora, save_lora

sys.path.insert(0, str(Path(__file__).parent / "training"))
from trainer_helpers import Redness, tiny_config  # noqa: E402

PROMPTS = ["a red circle", "two blue squares left of a green triangle"]


def ode_final(model, geometry: Geometry, steps: int = 3, guidance_scale: float = 1.0, prompts=PROMPTS,
              dynamics: str = "ode"):
    """The final latents of a noise-level-0 rollout (every dynamics is then the ODE) from seeds 0, 1, ..."""
    cond = model.encode_prompts(prompts, with_negative=model.uses_cfg(guidance_scale))
    traj = rollout(model, cond, geometry, num_steps=steps, dynamics=DynamicsConfig(dynamics, 0.0),
                   generators=make_generators(range(len(prompts))), guidance_scale=guidance_scale)
    assert not traj.trainable.any()
    return traj.final


def max_on_policy_log_ratio(model, geometry: Geometry, guidance_scale: float = 1.0) -> float:
    """|log π_recomputed − log π_rollout| over every trainable pair of a flow-SDE rollout (window 1..2, shared
    initial noise, group 2), recomputed in chunks of 3 (a different batch layout from the rollout's)."""
    cfg = model.uses_cfg(guidance_scale)
    cond = model.encode_prompts(PROMPTS, with_negative=cfg)
    traj = rollout(model, cond, geometry, num_steps=4, dynamics=DynamicsConfig("flow_sde", 0.7, "mean"),
                   generators=make_generators(range(4)), group_size=2, window=SDEWindow(1, 2),
                   share_initial_noise=True, guidance_scale=guidance_scale)
    assert torch.equal(traj.latents[0, :2], traj.latents[1, :2])  # a group shares its ODE prefix (step 0)
    assert not torch.equal(traj.latents[0, 2], traj.latents[1, 2])  # and splits in the SDE window
    rows = model.encode_prompts(traj.prompts, with_negative=cfg)
    samples, steps = traj.trainable_pairs()
    assert sorted(set(steps.tolist())) == [1, 2]
    worst = 0.0
    for start in range(0, len(samples), 3):
        s, t = samples[start : start + 3], steps[start : start + 3]
        result = recompute_log_probs(model, traj, rows, s, t)
        worst = max(worst, float((result.log_prob.detach() - traj.log_probs[s, t]).abs().max()))
    return worst


def perturb(params) -> None:
    with torch.no_grad():
        for i, p in enumerate(params):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))


def lora_round_trip(build_pipeline, make_model, geometry: Geometry, folder: Path, steps: int = 3):
    """(untouched, trained, reloaded) ODE outputs: an adapter perturbed away from zero, saved with ``save_lora``,
    loaded into a fresh pipeline by the pipeline's own ``load_lora_weights``."""
    model = make_model(build_pipeline())
    params = add_lora(model.transformer, LoRAConfig(rank=4, alpha=16))
    perturb(params)
    trained = ode_final(model, geometry, steps)
    save_lora(model.pipeline, model.transformer, folder)
    fresh = build_pipeline()
    untouched = ode_final(make_model(fresh), geometry, steps)
    fresh.load_lora_weights(folder)
    reloaded = ode_final(make_model(fresh), geometry, steps)
    return untouched, trained, reloaded


def snapshot(pipeline) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().clone() for name, module in pipeline.components.items()
            if isinstance(module, torch.nn.Module) for k, v in module.state_dict().items()}


def one_training_step(pipeline, folder: Path, model_config, algorithm=None, **sampling) -> tuple[set[str], dict]:
    """Run one GRPO iteration (or ``algorithm``) on ``pipeline``; the state-dict keys it changed and the summary."""
    from flowalign.training.config import SamplingConfig
    from flowalign.training.trainer import Trainer

    sections = {"model": model_config}
    if algorithm is not None:
        sections["algorithm"] = algorithm
    if sampling:
        sections["sampling"] = SamplingConfig(num_steps=2, group_size=2, prompts_per_iteration=2,
                                              rollout_batch_size=2, **sampling)
    config = tiny_config(folder, **sections)
    trainer = Trainer(config, model=pipeline, reward=Redness())
    before = snapshot(pipeline)
    summary = trainer.run()
    after = snapshot(pipeline)
    return {k for k in before if not torch.equal(before[k], after[k])}, summary
