"""Held-out evaluation of a toy pipeline: Euler ODE sampling through ``SD3Model`` with fixed seeds.

Sample i of prompt j uses generator seed ``seed + 1000·i + j``. Returns images and reward statistics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from flowalign.models.base import Geometry
from flowalign.models.loading import load_model
from flowalign.toy.prompts import heldout_prompts
from flowalign.toy.quality import quality
from flowalign.toy.verify import verify


@dataclass(frozen=True)
class EvalConfig:
    """ODE steps, CFG scale, samples per prompt, base seed, batch size, image size."""

    steps: int = 16
    guidance: float = 3.0
    samples_per_prompt: int = 2
    seed: int = 0
    batch: int = 32
    image_size: int = 32


@torch.no_grad()
def sample(model, prompts: list[str], seeds: list[int], cfg: EvalConfig) -> torch.Tensor:
    """Euler ODE x ← x + v·dt over the pipeline's σ schedule; images B×3×H×W in [0, 1]."""
    geo = Geometry(cfg.image_size, cfg.image_size)
    cond = model.encode_prompts(prompts, with_negative=cfg.guidance > 1.0)
    x = model.initial_noise(geo, [torch.Generator().manual_seed(s) for s in seeds])
    sigmas = model.schedule(cfg.steps, geo)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + model.velocity(x, s, cond, geo, cfg.guidance) * (s_next - s)
    return model.decode(x, geo)


def sample_jobs(model, jobs: list[tuple[str, int]], cfg: EvalConfig) -> torch.Tensor:
    """Images for (prompt, seed) jobs, ``cfg.batch`` at a time, in job order."""
    return torch.cat([sample(model, [p for p, _ in jobs[k : k + cfg.batch]], [s for _, s in jobs[k : k + cfg.batch]],
                             cfg) for k in range(0, len(jobs), cfg.batch)])


def evaluate(path_or_model, cfg: EvalConfig = EvalConfig(), prompts: list[str] | None = None) -> dict:
    """Mean "shapes" reward, strict accuracy and quality on held-out prompts, plus images and timing."""
    model = load_model(path_or_model) if isinstance(path_or_model, str) else path_or_model
    prompts = list(prompts if prompts is not None else heldout_prompts())
    jobs = [(p, cfg.seed + 1000 * i + j) for i in range(cfg.samples_per_prompt) for j, p in enumerate(prompts)]
    t0 = time.perf_counter()
    images_t = sample_jobs(model, jobs, cfg)
    seconds = time.perf_counter() - t0
    all_prompts = [p for p, _ in jobs]
    scores, parts = verify(images_t, all_prompts)
    q, _ = quality(images_t)
    pos = parts["position"][~parts["position"].isnan()]
    return {"accuracy": float(scores.mean()), "strict_accuracy": float(parts["all_correct"].mean()),
            "color": float(parts["color"].mean()), "shape": float(parts["shape"].mean()),
            "count": float(parts["count"].mean()), "position": float(pos.mean()) if pos.numel() else float("nan"),
            "quality": float(q.mean()), "n_images": len(jobs), "sampling_s": seconds,
            "images": images_t, "prompts": all_prompts, "scores": scores}
