"""``toy:size``: an offline (image, label) dataset for a control the prompt grammar cannot say, the size of the
shapes, with a label the renderer fixes and a measurement that reads it back exactly.

Label ``small``: every shape of the scene has side 7 or 8 pixels; ``large``: 10 or 11 (the pretraining scenes span
7…11, so both are in the toy model's distribution). Sample i has label ``SIZE_CLASSES[i % 2]`` and a training prompt
drawn from (seed, i); its layout is ``scene_for_prompt`` at that size range. ``measure_size_labels`` segments an
image (``toy.segment.components``) and labels it by the mean bounding-box extent of its shapes (max of width and
height): ``large`` above ``SIZE_THRESHOLD`` pixels, ``small`` otherwise, unknown (−1) without any shape.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowalign.data.dataset import ImageDataset
from flowalign.errors import ConfigError
from flowalign.toy.prompts import train_prompts
from flowalign.toy.scenes import SceneConfig, render, scene_for_prompt
from flowalign.toy.segment import components

SIZE_CLASSES = ("small", "large")
SIZE_RANGES = {"small": (7, 8), "large": (10, 11)}
SIZE_THRESHOLD = 9.0


class ToySizeDataset(ImageDataset):
    """``n`` rendered scenes of training prompts, alternately small and large; ``metadata[i]["label"]``."""

    def __init__(self, n: int = 1024, seed: int = 0) -> None:
        if n < 2:
            raise ConfigError(f"toy:size needs n >= 2 samples (both labels), got {n}")
        self.seed = int(seed)
        pool = train_prompts()
        labels = [SIZE_CLASSES[i % 2] for i in range(n)]
        prompts = [pool[int(np.random.default_rng([self.seed, i]).integers(len(pool)))] for i in range(n)]
        sources = [f"toy:size (seed {seed}, sample {i})" for i in range(n)]
        super().__init__("toy:size", prompts, [{"label": y} for y in labels], sources)

    def load(self, index: int) -> Tensor:
        label = self.metadata[index]["label"]
        low, high = SIZE_RANGES[label]
        rng = np.random.default_rng([self.seed, index, 1])
        scene = scene_for_prompt(self.prompts[index], rng, SceneConfig(min_size=low, max_size=high))
        return render(scene.shapes)


def measure_size_labels(images: Tensor) -> Tensor:
    """(B,) class index into ``SIZE_CLASSES`` of images (B, 3, H, W) in [0, 1]; −1 where no shape is found."""
    out = []
    for comps in components(images.detach().float().cpu()):
        if not comps:
            out.append(-1)
            continue
        extent = sum(max(c.x1 - c.x0 + 1, c.y1 - c.y0 + 1) for c in comps) / len(comps)
        out.append(1 if extent > SIZE_THRESHOLD else 0)
    return torch.tensor(out, dtype=torch.long)
