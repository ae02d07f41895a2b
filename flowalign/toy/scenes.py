"""Seeded scenes of the shapes world: coloured circles, squares and triangles on a plain background.

Rendering is hard-edged (a pixel takes a shape's colour when its centre is inside), so every pixel is
exactly a palette colour or the background. Images: float32 in [0, 1], 3×H×W; y grows downwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flowalign.errors import FlowAlignError
from flowalign.toy.prompts import COLORS, RELATIONS, SHAPES, ParsedPrompt, parse_prompt, split_prompts

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.10, 0.20, 0.90),
    "yellow": (0.95, 0.85, 0.10),
}
BACKGROUND: tuple[float, float, float] = (1.0, 1.0, 1.0)
#: minimum centroid offset (pixels) along the relation's axis when a scene is generated
RELATION_GAP = 6.0


@dataclass(frozen=True)
class Placed:
    """One shape: colour, kind, bounding-box centre (cx, cy) and side ``size`` in pixels."""

    color: str
    shape: str
    cx: float
    cy: float
    size: float


@dataclass(frozen=True)
class Scene:
    prompt: str
    description: ParsedPrompt
    shapes: tuple[Placed, ...]


@dataclass(frozen=True)
class SceneConfig:
    """Image size and shape-size range (pixels); ``gap``: free pixels kept between shapes."""

    image_size: int = 32
    min_size: int = 7
    max_size: int = 11
    gap: int = 2
    max_tries: int = 200

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.max_size < self.image_size - 2:
            raise FlowAlignError(f"SceneConfig: need 1 <= min_size <= max_size < image_size - 2, got min_size="
                                 f"{self.min_size}, max_size={self.max_size}, image_size={self.image_size}")
        if self.gap < 0 or self.max_tries < 1:
            raise FlowAlignError(f"SceneConfig: need gap >= 0 and max_tries >= 1, got gap={self.gap}, "
                                 f"max_tries={self.max_tries}")


def shape_mask(shape: str, cx: float, cy: float, size: float, image_size: int) -> np.ndarray:
    """Boolean H×W mask of a shape: pixel centres (x + 0.5, y + 0.5) inside it."""
    if shape not in SHAPES:
        raise FlowAlignError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float64) + 0.5
    h = size / 2
    if shape == "square":
        return (np.abs(xs - cx) <= h) & (np.abs(ys - cy) <= h)
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= h * h
    # upward isosceles triangle in the size×size box: apex at top centre, base at the bottom
    top, bottom = cy - h, cy + h
    frac = (ys - top) / size  # 0 at apex, 1 at base
    return (ys >= top) & (ys <= bottom) & (np.abs(xs - cx) <= frac * h)


def render(shapes: tuple[Placed, ...] | list[Placed], image_size: int = 32) -> Tensor:
    """Render shapes (later ones on top) into a 3×H×W float32 image."""
    img = np.empty((3, image_size, image_size), dtype=np.float32)
    img[:] = np.asarray(BACKGROUND, dtype=np.float32)[:, None, None]
    for s in shapes:
        if s.color not in PALETTE:
            raise FlowAlignError(f"unknown colour {s.color!r}; allowed: {', '.join(COLORS)}")
        m = shape_mask(s.shape, s.cx, s.cy, s.size, image_size)
        img[:, m] = np.asarray(PALETTE[s.color], dtype=np.float32)[:, None]
    return torch.from_numpy(img)


def _relation_ok(a: Placed, b: Placed, relation: str, gap: float) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    return {"left of": dx >= gap, "right of": -dx >= gap, "above": dy >= gap, "below": -dy >= gap}[relation]


def _overlaps(a: Placed, b: Placed, gap: int) -> bool:
    return abs(a.cx - b.cx) < (a.size + b.size) / 2 + gap and abs(a.cy - b.cy) < (a.size + b.size) / 2 + gap


def scene_for_prompt(prompt: str | ParsedPrompt, rng: np.random.Generator, config: SceneConfig = SceneConfig()) -> Scene:
    """A random layout satisfying ``prompt`` (non-overlapping shapes; relations with a clear gap)."""
    parsed = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    kinds = [(o.color, o.shape) for o in parsed.objects for _ in range(o.count)]
    for _ in range(config.max_tries):
        placed: list[Placed] = []
        for color, shape in kinds:
            for _ in range(config.max_tries):
                size = float(rng.integers(config.min_size, config.max_size + 1))
                lo, hi = size / 2 + 1, config.image_size - size / 2 - 1
                cand = Placed(color, shape, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), size)
                if not any(_overlaps(cand, p, config.gap) for p in placed):
                    placed.append(cand)
                    break
            else:
                break
        if len(placed) != len(kinds):
            continue
        if parsed.relation is None or _relation_ok(placed[0], placed[1], parsed.relation.relation, RELATION_GAP):
            order = rng.permutation(len(placed))
            return Scene(parsed.text, parsed, tuple(placed[i] for i in order))
    raise FlowAlignError(f"could not lay out prompt {parsed.text!r} in {config.max_tries} tries")


def sample_prompt(rng: np.random.Generator, split: str = "train") -> str:
    """A prompt of ``split``: kind (count / pair / relation) uniform first, then a prompt of that kind."""
    by_kind = _prompts_by_kind(split)
    kinds = sorted(by_kind)
    pool = by_kind[kinds[int(rng.integers(len(kinds)))]]
    return pool[int(rng.integers(len(pool)))]


_KIND_CACHE: dict[str, dict[str, list[str]]] = {}


def _prompts_by_kind(split: str) -> dict[str, list[str]]:
    if split not in _KIND_CACHE:
        out: dict[str, list[str]] = {}
        for p in split_prompts(split):
            out.setdefault(parse_prompt(p).kind, []).append(p)
        _KIND_CACHE[split] = out
    return _KIND_CACHE[split]


def generate_scenes(n: int, seed: int | list[int], split: str = "train", config: SceneConfig = SceneConfig(),
                    prompts: list[str] | None = None) -> tuple[Tensor, list[str], list[Scene]]:
    """``n`` scenes from ``seed`` (reproducible): images (n×3×H×W), prompts, scenes with their structure.

    With ``prompts`` given (length n) their layouts are drawn instead of random prompts of ``split``.
    """
    if prompts is not None and len(prompts) != n:
        raise FlowAlignError(f"generate_scenes: got {len(prompts)} prompts for n={n}")
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(n):
        prompt = prompts[i] if prompts is not None else sample_prompt(rng, split)
        scenes.append(scene_for_prompt(prompt, rng, config))
    images = torch.stack([render(s.shapes, config.image_size) for s in scenes]) if scenes else torch.empty(0)
    return images, [s.prompt for s in scenes], scenes


__all__ = ["PALETTE", "BACKGROUND", "Placed", "Scene", "SceneConfig", "render", "scene_for_prompt",
           "generate_scenes", "sample_prompt", "shape_mask", "RELATIONS"]
