"""The verifiable shapes-world score (GenEval-like partial credit).

For each object clause (colour c, shape s, count n) of the parsed prompt, three binary clauses:
``color`` (some component of colour c), ``shape`` (some component of colour c classified as s) and
``count`` (exactly n components of colour c classified as s). A relation adds a ``position`` clause:
the centroids of the subject and the object (largest matching component: colour and shape, else colour
only) differ by more than ``margin`` pixels in the stated direction (y grows downwards). The score is
the mean over all clauses, so each wrong clause lowers it by its share. Components of colours the prompt
does not mention are ignored. Position does not enter prompts without a relation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flowalign.toy.prompts import COLORS, SHAPES, ParsedPrompt, parse_prompt
from flowalign.toy.segment import Component, classify_shape, components


@dataclass(frozen=True)
class VerifyConfig:
    """Segmentation threshold (RGB distance), smallest counted blob (pixels), relation margin (pixels)."""

    color_threshold: float = 0.3
    min_area: int = 8
    margin: float = 2.0


@dataclass(frozen=True)
class Verdict:
    """Clause results of one image: lists of 0/1 per object clause, position (None without relation)."""

    color: tuple[float, ...]
    shape: tuple[float, ...]
    count: tuple[float, ...]
    position: float | None

    @property
    def clauses(self) -> list[float]:
        return [*self.color, *self.shape, *self.count] + ([self.position] if self.position is not None else [])

    @property
    def score(self) -> float:
        c = self.clauses
        return sum(c) / len(c)


def _pick(comps: list[Component], color: str, shape: str) -> Component | None:
    same = [c for c in comps if c.color == color]
    exact = [c for c in same if classify_shape(c) == shape]
    pool = exact or same
    return max(pool, key=lambda c: c.area) if pool else None


def relation_holds(a: Component, b: Component, relation: str, margin: float) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    return {"left of": dx > margin, "right of": -dx > margin, "above": dy > margin, "below": -dy > margin}[relation]


def verify_components(parsed: ParsedPrompt, comps: list[Component], margin: float = 2.0) -> Verdict:
    color, shape, count = [], [], []
    for clause in parsed.objects:
        same = [c for c in comps if c.color == clause.color]
        n_exact = sum(classify_shape(c) == clause.shape for c in same)
        color.append(float(len(same) > 0))
        shape.append(float(n_exact > 0))
        count.append(float(n_exact == clause.count))
    position = None
    if parsed.relation is not None:
        a = _pick(comps, parsed.objects[0].color, parsed.objects[0].shape)
        b = _pick([c for c in comps if c is not a], parsed.objects[1].color, parsed.objects[1].shape)
        position = float(a is not None and b is not None and relation_holds(a, b, parsed.relation.relation, margin))
    return Verdict(tuple(color), tuple(shape), tuple(count), position)


def concept_clause(parsed: ParsedPrompt, verdict: Verdict, concept: str) -> float | None:
    """Mean of the clauses that check ``concept`` in one image: for a colour, the ``color`` clauses of the
    objects of that colour; for a shape, the ``shape`` clauses of the objects of that shape (which also ask for
    the object's colour: a red circle drawn green fails "circle" too). None when the prompt does not name the
    concept. Erasing a concept should drive this towards 0."""
    if concept in COLORS:
        hits = [v for o, v in zip(parsed.objects, verdict.color) if o.color == concept]
    elif concept in SHAPES:
        hits = [v for o, v in zip(parsed.objects, verdict.shape) if o.shape == concept]
    else:
        raise ValueError(f"concept {concept!r} is not a shapes-world colour or shape; expected one of "
                         f"{', '.join(COLORS + SHAPES)}")
    return sum(hits) / len(hits) if hits else None


def _verdicts(images: Tensor, prompts: list[str], config: VerifyConfig) -> tuple[list[ParsedPrompt], list, list]:
    parsed = [parse_prompt(p) for p in prompts]
    comps = components(images.detach().float().cpu(), config.color_threshold, config.min_area)
    return parsed, comps, [verify_components(p, c, config.margin) for p, c in zip(parsed, comps)]


def concept_scores(images: Tensor, prompts: list[str], concept: str,
                   config: VerifyConfig = VerifyConfig()) -> Tensor:
    """(B,) float32 ``concept_clause`` per image; NaN for prompts that do not name ``concept``."""
    parsed, _, verdicts = _verdicts(images, prompts, config)
    values = [concept_clause(p, v, concept) for p, v in zip(parsed, verdicts)]
    return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)


def verify(images: Tensor, prompts: list[str], config: VerifyConfig = VerifyConfig()) -> tuple[Tensor, dict[str, Tensor]]:
    """Scores (B,) float32 and per-clause-type components (B,) each; ``position`` is NaN without relation,
    ``shape[circle|square|triangle]`` (the shape clauses of the objects of that shape) NaN without one.

    Every prompt is parsed first, so a prompt outside the grammar raises ``PromptParseError`` naming it.
    """
    parsed, comps, verdicts = _verdicts(images, prompts, config)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    by_shape = {f"shape[{s}]": [math.nan if (c := concept_clause(p, v, s)) is None else c
                                for p, v in zip(parsed, verdicts)] for s in SHAPES}
    parts = {
        "color": [mean(v.color) for v in verdicts],
        "shape": [mean(v.shape) for v in verdicts],
        "count": [mean(v.count) for v in verdicts],
        "position": [math.nan if v.position is None else v.position for v in verdicts],
        "all_correct": [float(all(x == 1.0 for x in v.clauses)) for v in verdicts],
        "num_components": [float(len(c)) for c in comps],
        **by_shape,
    }
    scores = torch.tensor([v.score for v in verdicts], dtype=torch.float32)
    return scores, {k: torch.tensor(v, dtype=torch.float32) for k, v in parts.items()}
