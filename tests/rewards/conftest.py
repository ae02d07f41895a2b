"""Fixtures for the reward tests (helpers live in reward_test_utils.py)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture
def fixed_images() -> torch.Tensor:
    """Two 3×40×56 images in [0, 1]: a smooth gradient and seeded noise."""
    gen = torch.Generator().manual_seed(0)
    ys = torch.linspace(0, 1, 40).view(1, 40, 1)
    xs = torch.linspace(0, 1, 56).view(1, 1, 56)
    smooth = torch.cat([ys * xs, ys.expand(1, 40, 56), xs.expand(1, 40, 56)], dim=0)
    noise = torch.rand(3, 40, 56, generator=gen)
    return torch.stack([smooth, noise])
