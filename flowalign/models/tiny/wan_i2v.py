"""A tiny ``WanImageToVideoPipeline`` built in code: the tiny Wan parts plus a tiny CLIP vision encoder."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from flowalign.models.tiny.text import tiny_t5_encoder
from flowalign.models.tiny.wan import tiny_wan_vae
from flowalign.models.tokenizers import build_t5_tokenizer


def tiny_clip_vision_encoder(seed: int, hidden_size: int = 8, image_size: int = 32) -> CLIPVisionModel:
    """A 2-layer CLIP vision tower, patch 8: (32/8)² + 1 = 17 hidden states of ``hidden_size`` per image."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
                              num_attention_heads=2, image_size=image_size, patch_size=8, projection_dim=hidden_size)
    return CLIPVisionModel(config).eval()


def tiny_wan_i2v_pipeline(seed: int = 0, *, shift: float = 3.0, num_layers: int = 2) -> WanImageToVideoPipeline:
    """Wan 2.1-style image-to-video, float32, eval mode; 32×32 pixels × 9 frames → noise latents (4, 3, 4, 4).

    The transformer takes 4 noise + 4 mask + 4 condition = 12 channels and attends to the image's CLIP states
    (``image_dim`` 8, ``added_kv_proj_dim`` = its width, as in Wan 2.1 I2V).
    """
    t5_dim, z_dim, clip_dim = 32, 4, 8
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=3 * z_dim,
        out_channels=z_dim, text_dim=t5_dim, freq_dim=256, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=clip_dim, added_kv_proj_dim=24,
    ).eval()
    return WanImageToVideoPipeline(
        tokenizer=build_t5_tokenizer(),
        text_encoder=tiny_t5_encoder(seed + 1, d_model=t5_dim, umt5=True),
        vae=tiny_wan_vae(seed + 2, z_dim=z_dim),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        image_encoder=tiny_clip_vision_encoder(seed + 3, clip_dim),
        transformer=transformer,
    )
