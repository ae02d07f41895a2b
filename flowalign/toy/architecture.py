"""The toy SD3 architecture: a real ``StableDiffusion3Pipeline`` sized for 32×32 shapes-world images.

VAE factor 2 (4×16×16 latents), MMDiT with patch 2 (64 image tokens; ``patch_size=1``: 256), two tiny CLIP
text towers with the real CLIP tokenizer (max length 16: every grammar prompt fits), no T5 (the pipeline feeds
zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

from flowalign.models.tiny.sd3 import tiny_vae
from flowalign.models.tiny.text import tiny_clip_text_encoder
from flowalign.models.tokenizers import build_clip_tokenizer


@dataclass(frozen=True)
class ToyArchitecture:
    """Sizes of the toy pipeline's parts."""

    image_size: int = 32
    vae_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    patch_size: int = 2  # transformer patch (latent pixels per token side); 2: a token covers 4×4 image pixels
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 32
    clip_hidden: int = 32
    clip_layers: int = 2
    tokenizer_max_length: int = 16
    shift: float = 2.0

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


def build_toy_pipeline(arch: ToyArchitecture, seed: int) -> StableDiffusion3Pipeline:
    """Randomly initialised toy pipeline (float32), seeded."""
    latent_size = arch.image_size // arch.vae_factor
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=latent_size, patch_size=arch.patch_size, in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        num_layers=arch.num_layers, attention_head_dim=arch.head_dim, num_attention_heads=arch.num_heads,
        joint_attention_dim=2 * arch.clip_hidden, caption_projection_dim=arch.num_heads * arch.head_dim,
        pooled_projection_dim=2 * arch.clip_hidden, pos_embed_max_size=latent_size,
    )
    tokenizer = build_clip_tokenizer(model_max_length=arch.tokenizer_max_length)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=arch.shift),
        vae=tiny_vae(seed + 1, latent_channels=arch.latent_channels, block_out_channels=arch.vae_channels),
        text_encoder=tiny_clip_text_encoder(seed + 2, arch.clip_hidden, arch.clip_hidden, arch.clip_layers),
        tokenizer=tokenizer,
        text_encoder_2=tiny_clip_text_encoder(seed + 3, arch.clip_hidden, arch.clip_hidden, arch.clip_layers),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
