"""JPEG (in)compressibility (DDPO): encoded size in kB (1 kB = 1000 bytes) via PIL at a fixed quality.

Images are quantized as ``round(255·x)`` to uint8, encoded with ``PIL.Image.save(format="JPEG",
quality=95)`` (default quality). ``jpeg_compressibility = −size_kB`` (smaller files score higher),
``jpeg_incompressibility = +size_kB``. Not differentiable.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from flowalign.errors import ConfigError
from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Encoded JPEG size in kB of each ``B×3×H×W`` [0, 1] image, float32 (B,) on CPU."""
    arrays = (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array), mode="RGB").save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


class _JpegReward(RewardModel):
    sign = -1.0

    def __init__(self, quality: int = 95) -> None:
        super().__init__()
        if not 1 <= int(quality) <= 100:
            raise ConfigError(f"{self.spec.name}: quality must be in [1, 100], got {quality}")
        self.quality = int(quality)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None, metadata=None) -> RewardOutput:
        self.check_inputs(images, prompts, metadata)
        size = jpeg_size_kb(images, self.quality).to(images.device)
        return RewardOutput.from_scores(self.sign * size, components={"size_kb": size},
                                        info={"quality": self.quality})


@register_reward("jpeg_compressibility")
class JpegCompressibility(_JpegReward):
    """``−size_kB``: rewards images that compress well."""

    spec = RewardSpec(name="jpeg_compressibility", modality="image", needs_prompt=False,
                      differentiable=False, nominal_range=(-1000.0, 0.0))
    sign = -1.0


@register_reward("jpeg_incompressibility")
class JpegIncompressibility(_JpegReward):
    """``+size_kB``: rewards images that compress badly."""

    spec = RewardSpec(name="jpeg_incompressibility", modality="image", needs_prompt=False,
                      differentiable=False, nominal_range=(0.0, 1000.0))
    sign = 1.0
