"""A tiny ``FluxPipeline`` built in code: real classes, real CLIP and T5 tokenizers, random weights."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel

from flowalign.models.tiny.sd3 import tiny_vae
from flowalign.models.tiny.text import tiny_clip_text_encoder, tiny_t5_encoder
from flowalign.models.tokenizers import build_clip_tokenizer, build_t5_tokenizer


def tiny_flux_pipeline(seed: int = 0, *, guidance_embeds: bool = True, num_layers: int = 1,
                       num_single_layers: int = 1, use_dynamic_shifting: bool = True) -> FluxPipeline:
    """Flux with a 1+1-layer transformer, float32, eval mode; 32×32 pixels → 8×8 = 64 packed tokens.

    VAE factor 2 with 4 latent channels (16 per packed token). ``guidance_embeds=False`` is the schnell-style
    transformer without embedded guidance. ``use_dynamic_shifting`` (dev-style) shifts σ by μ(token count);
    without it the scheduler uses shift 1 (schnell-style).
    """
    clip_hidden = 32
    t5_dim = 32
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=t5_dim,
        pooled_projection_dim=clip_hidden, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=use_dynamic_shifting, base_image_seq_len=16, max_image_seq_len=256,
        base_shift=0.5, max_shift=1.15,
    )
    # FluxPipeline pools with CLIPTextModel's pooler_output: same config as the SD3 tower, no projection
    clip_config = tiny_clip_text_encoder(seed + 1, clip_hidden).config
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(clip_config).eval()
    return FluxPipeline(
        scheduler=scheduler,
        vae=tiny_vae(seed + 4),
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(),
        text_encoder_2=tiny_t5_encoder(seed + 2, d_model=t5_dim),
        tokenizer_2=build_t5_tokenizer(),
        transformer=transformer,
    )
