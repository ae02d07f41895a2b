"""Shapes-world rewards: "shapes" (verifiable, partial credit), "shapes_soft" (differentiable surrogate)
and "shapes_quality" (prompt-free cleanliness; reveals reward hacking). Images B×3×H×W in [0, 1].
Logic lives in ``flowalign.toy.verify``, ``flowalign.toy.soft`` and ``flowalign.toy.quality``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from flowalign.toy.quality import quality
from flowalign.toy.soft import soft_shapes
from flowalign.toy.prompts import COLORS, SHAPES
from flowalign.toy.verify import VerifyConfig, concept_scores, verify
from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward


@register_reward("shapes")
class ShapesReward(RewardModel):
    """Mean of the prompt's colour / shape / count / position clauses (see flowalign.toy.verify)."""

    spec = RewardSpec(name="shapes", modality="image", needs_prompt=True, differentiable=False,
                      nominal_range=(0.0, 1.0))

    def __init__(self, color_threshold: float = 0.3, min_area: int = 8, margin: float = 2.0) -> None:
        super().__init__()
        self.config = VerifyConfig(color_threshold, min_area, margin)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None, metadata=None) -> RewardOutput:
        self.check_inputs(images, prompts, metadata)
        scores, parts = verify(images, list(prompts), self.config)
        dev = images.device
        return RewardOutput.from_scores(scores.to(dev), components={k: v.to(dev) for k, v in parts.items()},
                                        info={"clauses": "color, shape, count per object; position per relation"})

    def concept_scores(self, images: torch.Tensor, prompts: Sequence[str], concept: str) -> torch.Tensor | None:
        """(B,) share of the clauses checking ``concept`` (a colour or a shape) that hold, NaN for prompts
        without it; None when ``concept`` is not a single shapes-world colour or shape (erasure metrics)."""
        if concept not in COLORS + SHAPES:
            return None
        self.check_inputs(images, prompts, None)
        return concept_scores(images, list(prompts), concept, self.config).to(images.device)


@register_reward("shapes_soft")
class ShapesSoftReward(RewardModel):
    """Soft colour-mass vs expected areas (+ soft centroid relation); differentiable w.r.t. pixels."""

    spec = RewardSpec(name="shapes_soft", modality="image", needs_prompt=True, differentiable=True,
                      nominal_range=(0.0, 1.0))

    def __init__(self, temperature: float = 0.05, temp_px: float = 2.0, nominal_size: float = 9.0) -> None:
        super().__init__()
        self.temperature, self.temp_px, self.nominal_size = temperature, temp_px, nominal_size

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None, metadata=None) -> RewardOutput:
        self.check_inputs(images, prompts, metadata)
        scores, parts = soft_shapes(images, list(prompts), self.temperature, self.temp_px, self.nominal_size)
        return RewardOutput(scores=scores.float(), valid=torch.isfinite(scores.detach()), components=parts)


@register_reward("shapes_quality")
class ShapesQuality(RewardModel):
    """on_palette × (1 − fragments): 1 for a clean render, lower for noise / off-palette / specks."""

    spec = RewardSpec(name="shapes_quality", modality="image", needs_prompt=False, differentiable=False,
                      nominal_range=(0.0, 1.0))

    def __init__(self, tolerance: float = 0.15, min_area: int = 8) -> None:
        super().__init__()
        self.tolerance, self.min_area = tolerance, min_area

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None, metadata=None) -> RewardOutput:
        self.check_inputs(images, prompts, metadata)
        scores, parts = quality(images, self.tolerance, self.min_area)
        dev = images.device
        return RewardOutput.from_scores(scores.to(dev), components={k: v.to(dev) for k, v in parts.items()})
