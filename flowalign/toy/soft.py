"""Differentiable surrogate of the shapes score ("shapes_soft"), for reward-gradient methods.

Soft colour membership m_k(p) = softmax_k(−‖p − c_k‖² / T) over palette ∪ background. Per palette colour
the soft area fraction a_k = mean_p m_k(p) is compared with the expected fraction e_k implied by the
prompt (count × nominal area of the shape at size ``nominal_size``): area = 1 − Σ|a − e| / (Σa + Σe).
A relation between two DIFFERENT colours adds position = sigmoid(signed centroid offset / ``temp_px``),
centroids weighted by membership. Score = mean of the available terms, in [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowalign.toy.prompts import COLORS, ParsedPrompt, parse_prompt
from flowalign.toy.segment import reference_colors

NOMINAL_AREA = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}  # × size²


def expected_fractions(parsed: ParsedPrompt, image_size: int, nominal_size: float = 9.0) -> Tensor:
    e = torch.zeros(len(COLORS))
    for o in parsed.objects:
        e[COLORS.index(o.color)] += o.count * NOMINAL_AREA[o.shape] * nominal_size ** 2 / image_size ** 2
    return e


def soft_shapes(images: Tensor, prompts: list[str], temperature: float = 0.05, temp_px: float = 2.0,
                nominal_size: float = 9.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Scores (B,) differentiable w.r.t. ``images``; components ``area`` and ``position`` (NaN if none)."""
    parsed = [parse_prompt(p) for p in prompts]
    x = images.float().permute(0, 2, 3, 1)  # B,H,W,3
    b, h, w, _ = x.shape
    ref = reference_colors(images.device)
    member = torch.softmax(-((x[..., None, :] - ref) ** 2).sum(-1) / temperature, dim=-1)[..., : len(COLORS)]
    area = member.mean(dim=(1, 2))  # B,K
    expected = torch.stack([expected_fractions(p, h, nominal_size) for p in parsed]).to(images.device)
    area_score = 1 - (area - expected).abs().sum(-1) / (area.sum(-1) + expected.sum(-1) + 1e-6)
    mass = member.sum(dim=(1, 2)) + 1e-6
    ys = torch.arange(h, device=images.device, dtype=torch.float32).view(1, h, 1, 1) + 0.5
    xs = torch.arange(w, device=images.device, dtype=torch.float32).view(1, 1, w, 1) + 0.5
    cx, cy = (member * xs).sum(dim=(1, 2)) / mass, (member * ys).sum(dim=(1, 2)) / mass
    position, scores = [], []
    for i, p in enumerate(parsed):
        terms = [area_score[i]]
        pos = torch.tensor(math.nan, device=images.device)
        if p.relation is not None and p.objects[0].color != p.objects[1].color:
            ka, kb = COLORS.index(p.objects[0].color), COLORS.index(p.objects[1].color)
            dx, dy = cx[i, kb] - cx[i, ka], cy[i, kb] - cy[i, ka]
            signed = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}[p.relation.relation]
            pos = torch.sigmoid(signed / temp_px)
            terms.append(pos)
        position.append(pos.detach())
        scores.append(torch.stack(terms).mean())
    return torch.stack(scores), {"area": area_score.detach(), "position": torch.stack(position)}
