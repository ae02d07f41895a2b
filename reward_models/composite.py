"""Weighted sum of rewards: ``total = Σ_i w_i · score_i``; each term is reported in ``components``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from flowalign.errors import ConfigError
from reward_models.base import RewardModel, RewardOutput, RewardSpec, build_reward, register_reward


@register_reward("composite")
class CompositeReward(RewardModel):
    """``components[alias]`` holds each raw (unweighted) score; sub-components appear as ``alias/key``.

    Any string works as an alias (``"my_pkg.rewards:R"`` included): parts live in a ``ModuleList``
    with a parallel list of names. ``valid`` is the AND of the parts; invalid parts contribute 0 to
    ``scores`` (those entries are flagged invalid anyway). Differentiable only if every part is.
    """

    def __init__(self, rewards: Mapping[str, RewardModel], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if not rewards:
            raise ConfigError("CompositeReward needs at least one reward")
        weights = dict(weights or {name: 1.0 for name in rewards})
        if set(weights) != set(rewards):
            raise ConfigError(f"CompositeReward weights keys {sorted(weights)} must match rewards {sorted(rewards)}")
        for name, reward in rewards.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"CompositeReward part names must be non-empty strings, got {name!r}")
            if not isinstance(reward, RewardModel):
                raise ConfigError(f"CompositeReward part {name!r} is {type(reward).__name__}, expected a RewardModel")
        # a ModuleList, not a ModuleDict: ModuleDict rejects names with "." (e.g. "my_pkg.rewards:R")
        self.names: list[str] = list(rewards)
        self.parts = torch.nn.ModuleList(rewards.values())
        self.weights = {name: float(weights[name]) for name in self.names}
        modalities = {r.spec.modality for r in rewards.values()} - {"any"}
        if len(modalities) > 1:
            raise ConfigError(f"CompositeReward parts mix modalities {sorted(modalities)}")
        specs = [r.spec for r in rewards.values()]
        lo = sum(min(w * s.nominal_range[0], w * s.nominal_range[1]) for w, s in zip(self.weights.values(), specs))
        hi = sum(max(w * s.nominal_range[0], w * s.nominal_range[1]) for w, s in zip(self.weights.values(), specs))
        self.spec = RewardSpec(
            name="composite(" + ",".join(rewards) + ")",
            modality=modalities.pop() if modalities else "any",
            needs_prompt=any(s.needs_prompt for s in specs),
            differentiable=all(s.differentiable for s in specs),
            nominal_range=(lo, hi) if lo == lo and hi == hi else (float("-inf"), float("inf")),
        )

    @classmethod
    def create(cls, components: Sequence[Mapping[str, Any]]) -> "CompositeReward":
        """``components``: list of reward configs (see ``build_reward``) each with optional ``weight``/``alias``."""
        rewards: dict[str, RewardModel] = {}
        weights: dict[str, float] = {}
        for i, item in enumerate(components):
            if not isinstance(item, Mapping):
                raise ConfigError(f"composite components[{i}] must be a mapping, got {type(item).__name__}")
            item = dict(item)
            weight = item.pop("weight", 1.0)
            alias = item.pop("alias", None) or item.get("name") or item.get("target")
            if alias in rewards:
                raise ConfigError(f"composite components[{i}]: duplicate alias {alias!r}; set a distinct 'alias'")
            rewards[alias] = build_reward(item)
            weights[alias] = weight
        return cls(rewards, weights)

    def forward(self, images: torch.Tensor, prompts, metadata=None) -> RewardOutput:
        self.check_inputs(images, prompts, metadata)
        total = None
        valid = None
        components: dict[str, torch.Tensor] = {}
        info: dict[str, Any] = {}
        for name, reward in zip(self.names, self.parts):
            out = reward(images, prompts, metadata)
            scores = out.scores.to(images.device)
            part_valid = out.valid.to(images.device)
            term = torch.where(part_valid, scores, torch.zeros_like(scores)) * self.weights[name]
            total = term if total is None else total + term
            valid = part_valid if valid is None else valid & part_valid
            components[name] = scores
            for key, value in out.components.items():
                components[f"{name}/{key}"] = value.to(images.device)
            if out.info:
                info[name] = out.info
        return RewardOutput(scores=total, valid=valid, components=components, info=info)
