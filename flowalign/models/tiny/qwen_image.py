"""A tiny ``QwenImagePipeline`` built in code: real classes, an offline Qwen2 tokenizer, random weights."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline
from diffusers import QwenImageTransformer2DModel

from flowalign.models.tiny.qwen_text import build_qwen_tokenizer, tiny_qwen25_vl_encoder


def tiny_qwen_image_vae(seed: int, z_dim: int = 4) -> AutoencoderKLQwenImage:
    """Qwen-Image's causal VAE, 4× spatial (two downsamplings), per-channel latents mean/std."""
    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(
        base_dim=z_dim * 6, z_dim=z_dim, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.1 * (i - z_dim / 2) for i in range(z_dim)],
        latents_std=[1.0 + 0.25 * i for i in range(z_dim)],
    ).eval()


def tiny_qwen_image_pipeline(seed: int = 0, *, num_layers: int = 2, guidance_embeds: bool = False) -> QwenImagePipeline:
    """Qwen-Image with a 2-block MMDiT, float32, eval mode; 32×32 pixels → 8×8 latents → 16 packed tokens of 16.

    Text: a tiny Qwen2.5-VL (hidden 16) behind the real prompt template; scheduler with Qwen-Image's dynamic
    shift (μ from the packed token count).
    """
    tokenizer = build_qwen_tokenizer()
    hidden = 16
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=hidden, guidance_embeds=guidance_embeds, axes_dims_rope=(8, 4, 4),
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256, base_shift=0.5,
        max_shift=0.9, time_shift_type="exponential",
    )
    return QwenImagePipeline(
        scheduler=scheduler,
        vae=tiny_qwen_image_vae(seed + 2),
        text_encoder=tiny_qwen25_vl_encoder(seed + 1, len(tokenizer), hidden_size=hidden),
        tokenizer=tokenizer,
        transformer=transformer,
    )
