"""Generation with SPMs attached (facilitated transport per prompt) and erasure / preservation metrics.

Erasure: on prompts containing a concept, the reward component ``erase_component`` (toy world: "color") of the
SPM images vs the original's. Preservation: on other prompts, mean absolute pixel distance (pixels in [0, 1])
to the original model's images with the same seeds, plus the reward on both. Every image i uses seed ``seed + i``.
Concept clause: a reward with ``concept_scores(images, prompts, concept)`` (the toy world's "shapes") also gives,
per erased concept, the share of the clauses that check that concept which hold, on the prompts naming it
(``concept[red]_original`` → ``concept[red]_spm``): the direct measure of erasure, blind to the prompt's other
clauses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.erasure.membrane import SPMNetwork
from flowalign.erasure.train import inference_guidance
from flowalign.erasure.transport import FacilitatedTransport
from flowalign.models.base import FlowModel
from flowalign.sampling import DynamicsConfig, make_generators, rollout


@torch.no_grad()
def generate(model: FlowModel, prompts: Sequence[str], *, spm: SPMNetwork | None = None,
             transport: FacilitatedTransport | None = None, steps: int = 20, guidance_scale: float | None = 1.0,
             seed: int = 0, batch_size: int = 8, height: int | None = None, width: int | None = None) -> Tensor:
    """Images (B, 3, H, W) with ODE sampling; with ``spm`` attached its strength per sample is ``transport``'s γ
    (or the network's ``scale`` without transport); ``spm=None``: whatever the model currently is.
    ``height``/``width`` None: the pipeline's default size; ``guidance_scale`` None: the pipeline's default."""
    prompts = list(prompts)
    guidance_scale = inference_guidance(model) if guidance_scale is None else guidance_scale
    geometry, out = model.resolve_geometry(height, width), []
    cfg = model.uses_cfg(guidance_scale)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        cond = model.encode_prompts(chunk, with_negative=cfg)
        gens = make_generators(range(seed + start, seed + start + len(chunk)), model.device)

        def run() -> Tensor:
            traj = rollout(model, cond, geometry, num_steps=steps, dynamics=DynamicsConfig("ode"),
                           generators=gens, guidance_scale=guidance_scale)
            return model.decode(traj.final, geometry).cpu()

        if spm is None or transport is None:
            out.append(run())
        else:
            with spm.strength(transport(chunk)):
                out.append(run())
    return torch.cat(out)


def _mean(x: Tensor) -> float:
    x = x.float()
    return float(x[torch.isfinite(x)].mean()) if torch.isfinite(x).any() else float("nan")


def _concept_clauses(reward, images: Tensor, prompts: list[str], concepts: Sequence[str], tag: str) -> dict:
    """``concept[c]_<tag>`` and ``concept[c]_prompts`` for each concept the reward can score in ``prompts``."""
    scorer, out = getattr(reward, "concept_scores", None), {}
    for concept in concepts if scorer is not None else ():
        scores = scorer(images, prompts, concept)
        if scores is not None and torch.isfinite(scores).any():
            out[f"concept[{concept}]_{tag}"] = _mean(scores)
            out[f"concept[{concept}]_prompts"] = int(torch.isfinite(scores).sum())
    return out


def _part(spm: SPMNetwork, transport: FacilitatedTransport | None, prompts: list[str], before: Tensor,
          after: Tensor, reward, erase_component: str | None) -> dict:
    """The metrics of one group of images (B, 3, H, W) of ``prompts``, original and with the SPM."""
    part = {"num_prompts": len(prompts), "pixel_mad": float((after - before).abs().mean())}
    if transport is not None:
        part["mean_gamma"] = float(transport(prompts).max(dim=1).values.mean())
    if reward is not None:
        for tag, images in (("original", before), ("spm", after)):
            result = reward(images, prompts)
            part[f"reward_{tag}"] = _mean(result.scores)
            if erase_component and erase_component in (result.components or {}):
                part[f"{erase_component}_{tag}"] = _mean(result.components[erase_component])
            part |= _concept_clauses(reward, images, prompts, spm.concepts, tag)
    return part


def erasure_report(model: FlowModel, spm: SPMNetwork, transport: FacilitatedTransport | None,
                   target_prompts: Sequence[str], other_prompts: Sequence[str], *, reward=None,
                   erase_component: str | None = "color", steps: int = 20, guidance_scale: float | None = 1.0,
                   seed: int = 0, batch_size: int = 8, height: int | None = None, width: int | None = None,
                   repeats: int = 1, target_groups: dict[str, Sequence[str]] | None = None) -> dict:
    """Metrics of an attached ``spm`` on ``model``; ``reward`` is a RewardModel (e.g. build_reward("shapes"));
    ``guidance_scale`` None: the pipeline's default. ``repeats``: images per prompt (the prompt list repeated,
    image i at seed ``seed + i``; ``num_prompts`` counts images). ``target_groups``: named subsets of the target
    prompts, reported as ``target_<name>`` from the same images."""
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    guidance_scale = inference_guidance(model) if guidance_scale is None else guidance_scale
    kw = dict(steps=steps, guidance_scale=guidance_scale, seed=seed, batch_size=batch_size, height=height,
              width=width)
    report: dict = {"concepts": spm.concepts, "steps": steps, "guidance_scale": guidance_scale, "seed": seed,
                    "repeats": repeats}
    for name, prompts in (("target", list(target_prompts) * repeats), ("preserve", list(other_prompts) * repeats)):
        if not prompts:
            continue
        with spm.disabled():
            before = generate(model, prompts, **kw)
        after = generate(model, prompts, spm=spm, transport=transport, **kw)
        report[name] = _part(spm, transport, prompts, before, after, reward, erase_component)
        for group, members in (target_groups or {}).items() if name == "target" else ():
            unknown = set(members) - set(target_prompts)
            if unknown:
                raise ConfigError(f"target group {group!r} has prompts that are not targets: {sorted(unknown)[:3]}")
            rows = [i for i, p in enumerate(prompts) if p in set(members)]
            if rows:
                report[f"target_{group}"] = _part(spm, transport, [prompts[i] for i in rows], before[rows],
                                                  after[rows], reward, erase_component)
    return report
