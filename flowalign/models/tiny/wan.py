"""A tiny ``WanPipeline`` built in code: real classes, real (Unigram) T5 tokenizer, random weights."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline
from diffusers import WanTransformer3DModel

from flowalign.models.tiny.text import tiny_t5_encoder
from flowalign.models.tokenizers import build_t5_tokenizer


def tiny_wan_transformer(seed: int, in_channels: int = 4, text_dim: int = 32,
                         num_layers: int = 2) -> WanTransformer3DModel:
    """A 2-layer Wan DiT, patch (1, 2, 2), 2 heads of 12 dims (shapes as in diffusers' own Wan tests)."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels,
        out_channels=in_channels, text_dim=text_dim, freq_dim=256, ffn_dim=32, num_layers=num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()


def tiny_wan_vae(seed: int, z_dim: int = 4) -> AutoencoderKLWan:
    """A causal 3-D Wan VAE: 8× spatial, 4× temporal ((T − 1)/4 + 1 latent frames), per-channel mean/std."""
    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=3, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1 * (i - z_dim / 2) for i in range(z_dim)],
        latents_std=[1.0 + 0.25 * i for i in range(z_dim)],
    ).eval()


def tiny_wan_pipeline(seed: int = 0, *, shift: float = 3.0, unipc: bool = False,
                      two_experts: bool = False) -> WanPipeline:
    """Wan 2.1-style text-to-video, float32, eval mode; 32×32 pixels × 9 frames → latents (4, 3, 4, 4).

    ``unipc`` uses Wan's real default scheduler (UniPC on flow σ with ``flow_shift=shift``) instead of
    flow-matching Euler. ``two_experts`` builds a Wan 2.2-style pipeline with ``transformer_2`` (not supported
    by ``WanModel``; for tests of that error).
    """
    t5_dim = 32
    if unipc:
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            flow_shift=shift)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    return WanPipeline(
        tokenizer=build_t5_tokenizer(),
        text_encoder=tiny_t5_encoder(seed + 1, d_model=t5_dim, umt5=True),
        vae=tiny_wan_vae(seed + 2),
        scheduler=scheduler,
        transformer=tiny_wan_transformer(seed, text_dim=t5_dim),
        transformer_2=tiny_wan_transformer(seed + 3, text_dim=t5_dim) if two_experts else None,
        boundary_ratio=0.875 if two_experts else None,
    )
