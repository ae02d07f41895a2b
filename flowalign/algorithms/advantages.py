"""Group-relative advantages (GRPO): A_i = (r_i − mean_group) / (std + eps), clipped.

Shapes: rewards (B,), group_index (B,) integer group ids. ``std_scope`` is ``group`` (each group's own std) or
``batch`` (one std over the whole batch of this process, robust when groups are nearly constant). Samples
whose reward is invalid get advantage 0 and do not enter the statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor

STD_SCOPES = ("group", "batch")


def group_advantages(rewards: Tensor, group_index: Tensor, *, std_scope: str = "group", clip: float = 5.0,
                     eps: float = 1e-4, valid: Tensor | None = None) -> Tensor:
    """(B,) float32 advantages; a group whose valid rewards are all equal gets 0 (it carries no signal)."""
    if std_scope not in STD_SCOPES:
        raise ValueError(f"std_scope must be one of {STD_SCOPES}, got {std_scope!r}")
    rewards = rewards.float()
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()
    groups = torch.unique(group_index)
    advantages = torch.zeros_like(rewards)
    batch_std = rewards[valid].std(unbiased=False) if valid.sum() > 1 else rewards.new_tensor(0.0)
    for g in groups:
        members = (group_index == g) & valid
        if members.sum() < 2:
            continue
        r = rewards[members]
        std = r.std(unbiased=False) if std_scope == "group" else batch_std
        if r.max() == r.min():
            continue
        advantages[members] = (r - r.mean()) / (std + eps)
    return advantages.clamp(-clip, clip)


def signal_fraction(advantages: Tensor) -> float:
    """Fraction of samples with a non-zero advantage (what the update actually learns from)."""
    return float((advantages != 0).float().mean()) if advantages.numel() else 0.0
