"""Colour segmentation and connected components for shapes-world images (torch/numpy, no scipy).

A pixel belongs to the nearest of palette ∪ {background} when its RGB distance to it is below
``threshold``; otherwise it is "unknown". Components are 4-connected, found by iterative
min-label propagation (vectorised over the batch and the palette).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flowalign.toy.prompts import COLORS
from flowalign.toy.scenes import BACKGROUND, PALETTE

UNKNOWN = -1
BACKGROUND_INDEX = len(COLORS)


def reference_colors(device=None) -> Tensor:
    """(len(COLORS) + 1, 3): palette in COLORS order, then the background."""
    return torch.tensor([PALETTE[c] for c in COLORS] + [BACKGROUND], dtype=torch.float32, device=device)


def classify_pixels(images: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Per-pixel index into ``reference_colors()`` (UNKNOWN beyond ``threshold``) and the distance, B×H×W."""
    ref = reference_colors(images.device)
    dist = (images.detach().float().permute(0, 2, 3, 1)[..., None, :] - ref).norm(dim=-1)  # B,H,W,K
    best, idx = dist.min(dim=-1)
    return torch.where(best <= threshold, idx, torch.full_like(idx, UNKNOWN)), best


def label_components(masks: Tensor) -> Tensor:
    """4-connected component labels of boolean masks (N×H×W): equal label ⇔ same component; −1 off-mask."""
    n, h, w = masks.shape
    big = h * w
    labels = torch.arange(big, dtype=torch.long).view(1, h, w).expand(n, h, w).clone()
    labels[~masks] = big
    while True:
        padded = torch.nn.functional.pad(labels, (1, 1, 1, 1), value=big)
        neigh = torch.stack([padded[:, 1:-1, :-2], padded[:, 1:-1, 2:], padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]])
        new = torch.minimum(labels, neigh.min(dim=0).values)
        new[~masks] = big
        if torch.equal(new, labels):
            break
        labels = new
    labels[~masks] = -1
    return labels


@dataclass(frozen=True)
class Component:
    """One connected blob of a palette colour: pixel area, centroid (x, y) and bounding box (inclusive).

    The square test reads the *core box* instead (``core_box``: the bounding box without a sliver row or
    column on a side), so that one stray pixel beyond a square's edge does not turn it into a circle.
    """

    color: str
    area: int
    cx: float
    cy: float
    x0: int
    y0: int
    x1: int
    y1: int  # inclusive
    top_fraction: float = 0.5  # share of the area in the upper half of the bounding box
    core: tuple[int, int, int, int] = (0, 0, 0, 0)  # core box (x0, y0, x1, y1), inclusive
    core_area: int = 0  # the blob's pixels inside the core box
    corners: int = 0  # how many of the core box's 4 corner pixels belong to the blob

    @property
    def fill(self) -> float:
        """Share of the core box covered by the blob: square ≈ 1, circle ≈ π/4."""
        x0, y0, x1, y1 = self.core
        return self.core_area / ((x1 - x0 + 1) * (y1 - y0 + 1))


#: an outermost row/column of the bounding box holding at most this share of the box's extent (and at least
#: one pixel's worth) is a sliver, dropped from the core box: one line per side, never below 3×3
SLIVER_FRACTION = 0.2


def core_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inclusive: ``mask``'s bounding box minus a sliver row/column on each side."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())

    def sliver(line: np.ndarray, extent: int, size: int) -> bool:
        return size > 3 and line.sum() <= max(1, int(SLIVER_FRACTION * extent))

    width = x1 - x0 + 1
    if sliver(mask[y0, x0:x1 + 1], width, y1 - y0 + 1):
        y0 += 1
    if sliver(mask[y1, x0:x1 + 1], width, y1 - y0 + 1):
        y1 -= 1
    height = y1 - y0 + 1
    if sliver(mask[y0:y1 + 1, x0], height, x1 - x0 + 1):
        x0 += 1
    if sliver(mask[y0:y1 + 1, x1], height, x1 - x0 + 1):
        x1 -= 1
    return x0, y0, x1, y1


def components(images: Tensor, threshold: float = 0.3, min_area: int = 8) -> list[list[Component]]:
    """Per image, its palette-coloured components of at least ``min_area`` pixels."""
    cls, _ = classify_pixels(images, threshold)
    b, h, w = cls.shape
    masks = torch.stack([cls == k for k in range(len(COLORS))], dim=1).view(b * len(COLORS), h, w)
    labels = label_components(masks).view(b, len(COLORS), h * w).numpy()
    ys, xs = np.divmod(np.arange(h * w), w)
    out: list[list[Component]] = []
    for i in range(b):
        comps: list[Component] = []
        for k, color in enumerate(COLORS):
            lab = labels[i, k]
            on = lab >= 0
            if not on.any():
                continue
            uniq, inv, counts = np.unique(lab[on], return_inverse=True, return_counts=True)
            px, py = xs[on], ys[on]
            for j in np.nonzero(counts >= min_area)[0]:
                sel = inv == j
                blob = (lab == uniq[j]).reshape(h, w)
                cx_, cy_ = px[sel], py[sel]
                y0, y1, x0, x1 = int(cy_.min()), int(cy_.max()), int(cx_.min()), int(cx_.max())
                top = float(((cy_ - y0) < (y1 - y0 + 1) / 2).mean())
                c = core_box(blob)
                core = blob[c[1]:c[3] + 1, c[0]:c[2] + 1]
                corners = int(core[0, 0]) + int(core[0, -1]) + int(core[-1, 0]) + int(core[-1, -1])
                comps.append(Component(color, int(counts[j]), float(cx_.mean()) + 0.5, float(cy_.mean()) + 0.5,
                                       x0, y0, x1, y1, top, c, int(core.sum()), corners))
        out.append(comps)
    return out


#: an upward triangle has ≈ 1/4 of its area in the upper half of its box (circle, square: 1/2)
TRIANGLE_MAX_TOP = 0.4
#: fill ratio (core area / core box): square ≈ 1, circle ≈ π/4; a square also fills >= 3 core-box corners
SQUARE_MIN_FILL = 0.88
SQUARE_MIN_CORNERS = 3


def classify_shape(comp: Component) -> str:
    """Triangle by top-heaviness (bounding box), then square vs circle by the core box's fill and corners."""
    if comp.top_fraction <= TRIANGLE_MAX_TOP:
        return "triangle"
    if comp.fill >= SQUARE_MIN_FILL and comp.corners >= SQUARE_MIN_CORNERS:
        return "square"
    return "circle"
