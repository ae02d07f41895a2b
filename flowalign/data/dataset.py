"""Offline image datasets: prompts with one image each, loaded on demand and fitted to the model's geometry.

Images are float32 (3, H, W) in [0, 1]. ``images(indices, size)`` resizes an image whose size differs from ``size``
so that it covers ``size`` (aspect kept, bilinear with antialiasing, clamped to [0, 1]) and crops the centre.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F

from flowalign.errors import FlowAlignError


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise FlowAlignError(f"image size must be positive, got {size!r}")
    return int(height), int(width)


def fit_image(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(3, h, w) → (3, H, W): unchanged when the sizes agree, else scaled to cover (H, W) and centre-cropped."""
    height, width = _hw(size)
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                            antialias=True)[0].clamp(0, 1)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[:, top : top + height, left : left + width]


class ImageDataset(ABC):
    """``len`` samples, each a prompt, a metadata dict and an image; ``sources[i]`` names where sample ``i`` comes
    from (``manifest:line``) for error messages. Subclasses implement ``load(i)``; ``image_paths`` is None for
    datasets whose images are not files."""

    def __init__(self, name: str, prompts: list[str], metadata: list[dict], sources: list[str],
                 image_paths: list[Path] | None = None) -> None:
        if not len(prompts) == len(metadata) == len(sources) or (image_paths is not None
                                                                 and len(image_paths) != len(prompts)):
            raise FlowAlignError(f"dataset {name!r}: prompts, metadata, sources and images differ in length")
        if not prompts:
            raise FlowAlignError(f"dataset {name!r} holds no samples")
        self.name, self.prompts, self.metadata, self.sources = name, prompts, metadata, sources
        self.image_paths = image_paths
        #: lines left out as bad when read with ``skip_bad`` (``(manifest:line, why)``)
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} samples)"

    @abstractmethod
    def load(self, index: int) -> torch.Tensor:
        """Sample ``index``'s image at its own size, (3, h, w) in [0, 1]."""

    def images(self, indices: list[int] | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
        """(K, 3, H, W) float32 in [0, 1] for ``indices``, each fitted to ``size`` (an int or (height, width))."""
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(self)]
        if bad:
            raise FlowAlignError(f"dataset {self.name!r}: indices {bad[:5]} out of range for {len(self)} samples")
        if not indices:
            return torch.empty(0, 3, *_hw(size))
        return torch.stack([fit_image(self.load(i), size) for i in indices])

    def sample(self, n: int, generator: torch.Generator) -> list[int]:
        """``n`` indices drawn without replacement while possible (then again from a fresh permutation),
        reproducible by ``generator``."""
        if n < 0:
            raise FlowAlignError(f"cannot draw {n} samples")
        if n == 0:
            return []
        rounds = -(-n // len(self))
        return torch.cat([torch.randperm(len(self), generator=generator) for _ in range(rounds)])[:n].tolist()
