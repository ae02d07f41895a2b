"""A tiny ``StableDiffusion3Pipeline`` built in code: real classes, real CLIP tokenizer, random weights."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

from flowalign.models.tiny.text import tiny_clip_text_encoder, tiny_t5_encoder
from flowalign.models.tokenizers import build_clip_tokenizer, build_t5_tokenizer


def tiny_vae(seed: int, latent_channels: int = 4, block_out_channels: tuple[int, ...] = (8, 16)) -> AutoencoderKL:
    """An SD3-style VAE (no quant convs); downsampling factor 2**(len(block_out_channels) − 1)."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(block_out_channels),
        block_out_channels=block_out_channels, layers_per_block=1, norm_num_groups=4,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()


def tiny_sd3_pipeline(seed: int = 0, *, sample_size: int = 16, num_layers: int = 2, with_t5: bool = False,
                      shift: float = 3.0, use_dynamic_shifting: bool = False) -> StableDiffusion3Pipeline:
    """SD3 with a 2-layer MMDiT on ``sample_size``² latents (32×32 pixels by default), float32, eval mode.

    ``with_t5`` adds the third (T5) text encoder; without it the pipeline feeds zeros in its place, as SD3
    allows. ``use_dynamic_shifting`` switches to the resolution-dependent shift (μ from the token count).
    """
    clip_hidden = 32
    t5_dim = 64  # joint_attention_dim: must hold the two CLIP hidden states side by side
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=t5_dim,
        caption_projection_dim=32, pooled_projection_dim=2 * clip_hidden, pos_embed_max_size=sample_size,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=shift, use_dynamic_shifting=use_dynamic_shifting, base_image_seq_len=16, max_image_seq_len=256,
    )
    clip_tokenizer = build_clip_tokenizer()
    text_encoder_3 = tiny_t5_encoder(seed + 3, d_model=t5_dim) if with_t5 else None
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=tiny_vae(seed + 4),
        text_encoder=tiny_clip_text_encoder(seed + 1, clip_hidden),
        tokenizer=clip_tokenizer,
        text_encoder_2=tiny_clip_text_encoder(seed + 2, clip_hidden),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=build_t5_tokenizer() if with_t5 else None,
    )
