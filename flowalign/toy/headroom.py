"""How much room a toy pipeline leaves for RL, and where it is (``scripts/toy_headroom.py`` prints it).

Held-out: ``seeds`` images per prompt, Euler ODE, seeded as the trainer's evaluation is (image i of prompt j of P:
seed ``base_seed + P·i + j``; with ``base_seed`` 1234, the trainer's default, and ``seeds`` equal to
``eval.samples_per_prompt`` these are the images the trainer's held-out evaluation scores). ``best_of_n`` = mean over
prompts of the best score among the first n seeds; ``top_quarter`` = mean of each prompt's best seeds/4 scores
(at least one). Single shapes: "a <colour> <shape>" for every colour and shape, every component classified.
"""

from __future__ import annotations

import math
from collections import Counter

from flowalign.toy.evaluate import EvalConfig, sample_jobs
from flowalign.toy.prompts import COLORS, SHAPES, heldout_prompts, parse_prompt
from flowalign.toy.segment import classify_shape, components
from flowalign.toy.verify import verify
from flowalign.training.config import EvalConfig as TrainerEvalConfig

DEFAULT_BASE_SEED = TrainerEvalConfig.seed  # the trainer's held-out evaluation seed (1234)


def _seeded_jobs(prompts: list[str], seeds: int, base_seed: int) -> list[tuple[str, int]]:
    """(prompt, seed) for job k < P·seeds: prompt k mod P, seed ``base_seed + k`` (seed-major, the trainer's rule)."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    return [(prompts[k % len(prompts)], base_seed + k) for k in range(len(prompts) * seeds)]


def heldout_headroom(model, seeds: int, cfg: EvalConfig, prompts: list[str] | None = None,
                     base_seed: int = DEFAULT_BASE_SEED) -> dict:
    """Mean, best-of-n, top-quarter, mean per prompt kind and clause means (NaN-free) on held-out prompts."""
    prompts = list(prompts if prompts is not None else heldout_prompts())
    jobs = _seeded_jobs(prompts, seeds, base_seed)
    scores, parts = verify(sample_jobs(model, jobs, cfg), [p for p, _ in jobs])
    grid = scores.view(seeds, len(prompts))  # seed × prompt
    best = {f"best_of_{n}": float(grid[:n].max(0).values.mean()) for n in sorted({1, 4, seeds}) if n <= seeds}
    top = grid.sort(0, descending=True).values[: max(1, seeds // 4)]
    kinds = [parse_prompt(p).kind for p in prompts]
    by_kind = {k: float(grid[:, [j for j, kk in enumerate(kinds) if kk == k]].mean()) for k in sorted(set(kinds))}
    clauses = {k: float(v[~v.isnan()].mean()) if (~v.isnan()).any() else math.nan for k, v in parts.items()}
    return {"mean": float(grid.mean()), **best, "top_quarter": float(top.mean()), "by_kind": by_kind,
            "clauses": clauses}


def single_shapes(model, seeds: int, cfg: EvalConfig, base_seed: int = DEFAULT_BASE_SEED) -> dict:
    """For each requested shape: what its components are classified as, their fill ratio and filled corners."""
    jobs = _seeded_jobs([f"a {c} {s}" for c in COLORS for s in SHAPES], seeds, base_seed)
    found: dict[str, list] = {s: [] for s in SHAPES}
    for (prompt, _), comps in zip(jobs, components(sample_jobs(model, jobs, cfg))):
        found[parse_prompt(prompt).objects[0].shape].extend(comps)
    out = {}
    for shape, comps in found.items():
        n = max(1, len(comps))
        out[shape] = {"components": len(comps), "classified": dict(Counter(classify_shape(c) for c in comps)),
                      "fill": sum(c.fill for c in comps) / n, "corners": sum(c.corners for c in comps) / n}
    return out
