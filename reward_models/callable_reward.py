"""Wrap a plain ``reward_fn(images, prompts, metadata) -> (scores, info)`` (DDPO/TRL convention)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from flowalign.errors import ConfigError, FlowAlignError
from reward_models.base import Modality, RewardModel, RewardOutput, RewardSpec, import_object, register_reward


@register_reward("callable")
class CallableReward(RewardModel):
    """Adapter for a function returning ``(scores, info)``; scores may be a tensor, array or list of B floats.

    ``fn`` is a callable or a ``"module:function"`` path. The function sees the same [0, 1] float images
    the reward gets; it is differentiable only if the function is and ``differentiable=True`` is stated.
    """

    def __init__(self, fn: Callable | str, name: str | None = None, modality: Modality = "any",
                 needs_prompt: bool = False, differentiable: bool = False,
                 nominal_range: tuple[float, float] = (float("-inf"), float("inf"))) -> None:
        super().__init__()
        if isinstance(fn, str):
            fn = import_object(fn)
        if not callable(fn):
            raise ConfigError(f"CallableReward: fn must be callable or a 'module:function' path, got {fn!r}")
        self.fn = fn
        self.spec = RewardSpec(name=name or getattr(fn, "__name__", "callable"), modality=modality,
                               needs_prompt=needs_prompt, differentiable=differentiable,
                               nominal_range=tuple(nominal_range))

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None,
                metadata: Sequence[dict] | None = None) -> RewardOutput:
        batch = self.check_inputs(images, prompts, metadata)
        result = self.fn(images, prompts, metadata)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise FlowAlignError(f"reward_fn {self.spec.name!r} must return (scores, info), got {type(result).__name__}")
        scores, info = result
        if isinstance(scores, torch.Tensor):
            scores = scores.float()
        else:
            scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
        scores = scores.reshape(-1) if scores.dim() > 1 and scores.numel() == batch else scores
        if scores.shape != (batch,):
            raise FlowAlignError(f"reward_fn {self.spec.name!r} returned scores of shape {tuple(scores.shape)}, "
                                 f"expected ({batch},)")
        if info is None:
            info = {}
        if not isinstance(info, dict):
            raise FlowAlignError(f"reward_fn {self.spec.name!r} must return a dict as info, got {type(info).__name__}")
        return RewardOutput.from_scores(scores, info=dict(info))
