"""Build the configured reward and score decoded samples, possibly in a background thread."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from flowalign.models.base import FlowModel, Geometry
from flowalign.training.config import RewardConfig
from reward_models.base import RewardModel, build_reward
from reward_models.composite import CompositeReward


def build_rewards(config: RewardConfig) -> RewardModel:
    """One reward, or a weighted composite when several are configured."""
    parts = {name: build_reward(name, **config.kwargs.get(name, {})) for name in config.weights}
    if len(parts) == 1 and next(iter(config.weights.values())) == 1.0:
        return next(iter(parts.values()))
    return CompositeReward(parts, config.weights)


@dataclass
class ScoredBatch:
    """Rewards (B,) float32 on CPU, validity (B,), named components (B,) each, and the decoded pixels."""

    rewards: Tensor
    valid: Tensor
    components: dict[str, Tensor]
    pixels: Tensor


@torch.no_grad()
def decode_and_score(model: FlowModel, reward: RewardModel, latents: Tensor, geometry: Geometry,
                     prompts: list[str], metadata: list[dict]) -> ScoredBatch:
    pixels = model.decode(latents, geometry)
    out = reward(pixels.to(reward.device), prompts, metadata)
    scores = out.scores.detach().float().cpu()
    valid = out.valid.cpu() & torch.isfinite(scores)
    return ScoredBatch(scores, valid, {k: v.detach().float().cpu() for k, v in out.components.items()},
                       pixels.cpu())


class AsyncScorer:
    """Scores chunks in a worker thread so the next rollout chunk overlaps with decoding and rewards."""

    def __init__(self, model: FlowModel, reward: RewardModel, asynchronous: bool = True):
        self.model, self.reward = model, reward
        self._pool = ThreadPoolExecutor(max_workers=1) if asynchronous else None

    def submit(self, latents: Tensor, geometry: Geometry, prompts: list[str], metadata: list[dict]) -> Future:
        if self._pool is None:
            future: Future = Future()
            future.set_result(decode_and_score(self.model, self.reward, latents, geometry, prompts, metadata))
            return future
        return self._pool.submit(decode_and_score, self.model, self.reward, latents, geometry, prompts, metadata)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def concat(batches: list[ScoredBatch]) -> ScoredBatch:
    keys = batches[0].components.keys()
    return ScoredBatch(
        torch.cat([b.rewards for b in batches]),
        torch.cat([b.valid for b in batches]),
        {k: torch.cat([b.components[k] for b in batches]) for k in keys},
        torch.cat([b.pixels for b in batches]),
    )
