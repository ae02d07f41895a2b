"""Tiny random-weight architectures and fixed images for the reward tests."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


def tiny_clip_config(image_size: int = 32, projection_dim: int = 16):
    from transformers import CLIPConfig

    text = dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image_size, patch_size=8)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


TINY_OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture
def fixed_images() -> torch.Tensor:
    """Two 3×40×56 images in [0, 1]: a smooth gradient and seeded noise."""
    gen = torch.Generator().manual_seed(0)
    ys = torch.linspace(0, 1, 40).view(1, 40, 1)
    xs = torch.linspace(0, 1, 56).view(1, 1, 56)
    smooth = torch.cat([ys * xs, ys.expand(1, 40, 56), xs.expand(1, 40, 56)], dim=0)
    noise = torch.rand(3, 40, 56, generator=gen)
    return torch.stack([smooth, noise])
