"""Score videos with an image reward: sample k frames, score each, aggregate per video.

Frame indices (uniform, inclusive of both ends): ``round(linspace(0, T − 1, k))``; ``k >= T`` uses all
frames; ``k == 1`` takes the middle frame ``(T − 1) // 2``. ``aggregate`` is ``mean``, ``min`` or ``max`` over the sampled frames, so the result equals
scoring those frames one by one and aggregating. A video is valid only if all sampled frames are.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

import torch

from flowalign.errors import ConfigError
from reward_models.base import RewardModel, RewardOutput, RewardSpec, build_reward, register_reward

Aggregate = Literal["mean", "min", "max"]


def frame_indices(num_frames: int, k: int) -> list[int]:
    """Uniformly spaced indices: ``round(linspace(0, T − 1, k))`` (all frames when ``k >= T``)."""
    if num_frames < 1:
        raise ConfigError(f"video has {num_frames} frames; expected at least 1")
    if k >= num_frames:
        return list(range(num_frames))
    if k == 1:
        return [(num_frames - 1) // 2]
    return torch.linspace(0, num_frames - 1, k, dtype=torch.float64).round().long().tolist()


def _aggregate(values: torch.Tensor, how: Aggregate) -> torch.Tensor:
    if how == "mean":
        return values.mean(dim=1)
    if how == "min":
        return values.min(dim=1).values
    return values.max(dim=1).values


@register_reward("video")
class VideoReward(RewardModel):
    """``B×T×3×H×W`` → ``(B,)``; ``frame_batch_size`` caps how many frames go through the image reward at once."""

    def __init__(self, image_reward: RewardModel | str | Mapping[str, Any], num_frames: int = 8,
                 aggregate: Aggregate = "mean", frame_batch_size: int | None = None) -> None:
        super().__init__()
        if not isinstance(image_reward, RewardModel):
            image_reward = build_reward(image_reward)
        if image_reward.spec.modality == "video":
            raise ConfigError(f"VideoReward wraps image rewards; {image_reward.spec.name!r} already scores videos")
        if aggregate not in ("mean", "min", "max"):
            raise ConfigError(f"VideoReward aggregate must be 'mean', 'min' or 'max', got {aggregate!r}")
        if int(num_frames) < 1:
            raise ConfigError(f"VideoReward num_frames must be >= 1, got {num_frames}")
        self.image_reward = image_reward
        self.num_frames = int(num_frames)
        self.aggregate = aggregate
        self.frame_batch_size = frame_batch_size
        inner = image_reward.spec
        self.spec = RewardSpec(name=f"video_{aggregate}({inner.name})", modality="video",
                               needs_prompt=inner.needs_prompt, differentiable=inner.differentiable,
                               nominal_range=inner.nominal_range)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None, metadata=None) -> RewardOutput:
        batch = self.check_inputs(images, prompts, metadata)
        idx = frame_indices(images.shape[1], self.num_frames)
        k = len(idx)
        frames = images[:, idx].reshape(batch * k, *images.shape[2:])
        frame_prompts = None if prompts is None else [p for p in prompts for _ in range(k)]
        frame_meta = None if metadata is None else [m for m in metadata for _ in range(k)]
        step = self.frame_batch_size or batch * k
        outs = [self.image_reward(frames[s : s + step], None if frame_prompts is None else frame_prompts[s : s + step],
                                  None if frame_meta is None else frame_meta[s : s + step])
                for s in range(0, batch * k, step)]
        scores = torch.cat([o.scores for o in outs]).view(batch, k)
        valid = torch.cat([o.valid for o in outs]).view(batch, k).all(dim=1)
        components = {key: _aggregate(torch.cat([o.components[key] for o in outs]).view(batch, k), self.aggregate)
                      for key in outs[0].components}
        components["frame_scores_std"] = scores.std(dim=1, unbiased=False)
        return RewardOutput(scores=_aggregate(scores, self.aggregate), valid=valid, components=components,
                            info={"frame_indices": idx, "aggregate": self.aggregate})
