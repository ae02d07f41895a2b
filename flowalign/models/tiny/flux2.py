"""A tiny ``Flux2KleinPipeline`` built in code: real classes, an offline Qwen2 tokenizer, random weights."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

from flowalign.models.tiny.qwen_text import build_qwen_tokenizer, tiny_qwen3_encoder


def tiny_flux2_vae(seed: int, latent_channels: int = 4) -> AutoencoderKLFlux2:
    """FLUX.2's VAE, factor 2, with non-trivial batch-norm statistics over the 4·C patchified channels."""
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=32, use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    generator = torch.Generator().manual_seed(seed)
    channels = vae.bn.running_mean.shape[0]
    vae.bn.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
    vae.bn.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
    return vae


def tiny_flux2_klein_pipeline(seed: int = 0, *, is_distilled: bool = False, num_layers: int = 1,
                              num_single_layers: int = 1) -> Flux2KleinPipeline:
    """FLUX.2 [klein] with a 1+1-block transformer, float32, eval mode; 32×32 pixels → 8×8 = 64 tokens of 16.

    Text: a 28-layer Qwen3 of width 16, so the pipeline's default hidden-state layers (9, 18, 27) exist and
    give 3·16 = 48 features per token. ``is_distilled``: the step-distilled variant (no CFG).
    """
    tokenizer = build_qwen_tokenizer()
    hidden = 16
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * hidden,
        timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")
    return Flux2KleinPipeline(
        scheduler=scheduler,
        vae=tiny_flux2_vae(seed + 2),
        text_encoder=tiny_qwen3_encoder(seed + 1, len(tokenizer), hidden_size=hidden, num_layers=28),
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=is_distilled,
    )
