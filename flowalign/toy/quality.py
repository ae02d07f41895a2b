"""A prompt-free cleanliness metric for shapes-world images (independent of the verifiable reward).

quality = on_palette × (1 − fragments), both in [0, 1]:
- on_palette: fraction of pixels within ``tolerance`` (RGB distance) of a palette colour or the background;
- fragments: share of the coloured (on-palette, non-background) pixels lying in blobs smaller than
  ``min_area`` pixels (specks, noise).
A clean render scores exactly 1; noise, blur, off-palette colours and specks lower it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowalign.toy.prompts import COLORS
from flowalign.toy.segment import BACKGROUND_INDEX, classify_pixels, label_components


def quality(images: Tensor, tolerance: float = 0.15, min_area: int = 8) -> tuple[Tensor, dict[str, Tensor]]:
    """Scores (B,) float32 in [0, 1] and the components ``on_palette`` and ``fragments``."""
    cls, _ = classify_pixels(images.detach().float().cpu(), tolerance)
    b, h, w = cls.shape
    on_palette = (cls >= 0).float().mean(dim=(1, 2))
    masks = torch.stack([cls == k for k in range(len(COLORS))], dim=1).view(b * len(COLORS), h, w)
    labels = label_components(masks).view(b, -1)
    small = torch.zeros(b)
    for i in range(b):
        lab = labels[i][labels[i] >= 0]
        if lab.numel():
            _, counts = torch.unique(lab, return_counts=True)
            small[i] = counts[counts < min_area].sum()
    colored = ((cls >= 0) & (cls != BACKGROUND_INDEX)).float().sum(dim=(1, 2))
    fragments = small / colored.clamp(min=1)
    return on_palette * (1 - fragments), {"on_palette": on_palette, "fragments": fragments}
