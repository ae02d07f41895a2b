"""Differentiable image preprocessing in torch, matching the originals' PIL/torchvision transforms.

All functions take float ``B×3×H×W`` tensors in [0, 1] and keep the autograd graph. Resizing uses
``torch.nn.functional.interpolate`` with ``antialias=True`` (what torchvision's tensor ``resize`` does);
sizes follow torchvision's rounding (``int(size · long / short)`` for shortest-edge resize).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Interpolation = Literal["bicubic", "bilinear"]


def resize(images: torch.Tensor, size: tuple[int, int], interpolation: Interpolation = "bicubic") -> torch.Tensor:
    """Resize to ``size = (height, width)`` with antialiasing (no clamping, like torchvision on floats)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode=interpolation, align_corners=False, antialias=True)


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's output size for ``Resize(size)`` (shorter side → ``size``, aspect kept, truncated)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_shortest_edge(images: torch.Tensor, size: int, interpolation: Interpolation = "bicubic") -> torch.Tensor:
    return resize(images, shortest_edge_size(images.shape[-2], images.shape[-1], size), interpolation)


CropOffset = Literal["round", "floor"]


def center_crop(images: torch.Tensor, size: int | tuple[int, int], offset: CropOffset = "round") -> torch.Tensor:
    """Center crop (zero-pads first if the image is smaller), with the top/left offset rule of
    ``offset="round"``: torchvision's ``CenterCrop``, ``int(round((H − h) / 2))`` (round half to even);
    ``offset="floor"``: transformers' CLIP image processors, ``(H − h) // 2``.
    The two differ by one pixel when ``H − h ≡ 3 (mod 4)``.
    """
    if offset not in ("round", "floor"):
        raise ValueError(f"center_crop offset must be 'round' or 'floor', got {offset!r}")
    crop_h, crop_w = (size, size) if isinstance(size, int) else size
    height, width = images.shape[-2:]
    if crop_h > height or crop_w > width:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        images = F.pad(images, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        height, width = images.shape[-2:]
    if offset == "floor":
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    else:
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    return images[..., top : top + crop_h, left : left + crop_w]


def letterbox(images: torch.Tensor, size: int, fill: float = 0.0,
              interpolation: Interpolation = "bicubic") -> torch.Tensor:
    """HPSv2's ``ResizeMaxSize``: longer side → ``size`` (``round``), then pad to a centered square.

    Padding is ``[w//2, h//2, w − w//2, h − h//2]`` (left, top, right, bottom) with ``fill`` in [0, 1].
    The output is always ``size × size``: unlike HPSv2, which returns an image whose longer side
    already equals ``size`` unpadded (e.g. 224×160, which its ViT cannot take), such images are padded too.
    """
    height, width = images.shape[-2:]
    scale = size / float(max(height, width))
    new_h, new_w = round(height * scale), round(width * scale)
    images = resize(images, (new_h, new_w), interpolation)  # a no-op if the longer side is already ``size``
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(images, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=fill)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - mean_t) / std_t


@dataclass(frozen=True)
class ImageTransform:
    """``mode="crop"``: shortest-edge resize + center crop (CLIP); ``mode="letterbox"``: HPSv2's pad-to-square.

    ``crop_offset``: ``"round"`` for models preprocessed with torchvision (OpenAI CLIP, aesthetic,
    ImageReward), ``"floor"`` for those preprocessed with transformers' ``CLIPImageProcessor``
    (PickScore, CLIPScore); see :func:`center_crop`. ``resize_size``: the shortest edge before the crop
    (``mode="crop"``; None: ``size``, as every CLIP default).
    """

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    mode: Literal["crop", "letterbox"] = "crop"
    interpolation: Interpolation = "bicubic"
    fill: float = 0.0
    crop_offset: CropOffset = "round"
    resize_size: int | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` in [0, 1] → normalized ``B×3×size×size`` (same dtype, differentiable)."""
        if self.mode == "crop":
            images = center_crop(resize_shortest_edge(images, self.resize_size or self.size, self.interpolation),
                                 self.size, self.crop_offset)
        elif self.mode == "letterbox":
            images = letterbox(images, self.size, self.fill, self.interpolation)
        else:
            raise ValueError(f"ImageTransform.mode must be 'crop' or 'letterbox', got {self.mode!r}")
        return normalize(images, self.mean, self.std)
