"""FLUX.1 (dev / schnell and fine-tunes) on ``FluxPipeline``.

Latents are packed tokens (B, L, 4·C): the VAE latent (B, C, h, w) with h = 2·(H // (2f)) is cut into 2×2
patches, L = (h/2)·(w/2), exactly as ``FluxPipeline.prepare_latents`` draws and packs them. Timestep given to
the transformer: σ (the pipeline's ``timestep / 1000``).

Guidance follows the pipeline: ``guidance_scale`` is the *embedded* (distilled) guidance fed to a transformer
with ``guidance_embeds`` and ignored otherwise; true classifier-free guidance with a negative prompt is the
constructor's ``true_cfg_scale`` (the pipeline's ``true_cfg_scale``), 1 = off.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FluxPipeline
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.models.base import Conditioning, FlowModel, Geometry, vae_encode_scaled
from flowalign.models.packed_latents import PackedLatentGeometry


class FluxModel(PackedLatentGeometry, FlowModel):
    family = "flux"
    size_label = "Flux"
    pipeline_class = FluxPipeline

    def __init__(self, pipeline: FluxPipeline, device=None, max_sequence_length: int = 512,
                 true_cfg_scale: float = 1.0):
        super().__init__(pipeline, device)
        self.max_sequence_length = max_sequence_length
        self.true_cfg_scale = float(true_cfg_scale)

    def cfg_scale(self, guidance_scale: float) -> float:
        """True CFG weight: the constructor's ``true_cfg_scale`` (``guidance_scale`` is the embedded guidance)."""
        return self.true_cfg_scale

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": embeds.to(self.dtype), "pooled_prompt_embeds": pooled.to(self.dtype)}

    # --- latents and schedule --------------------------------------------------------------------
    def schedule(self, num_steps: int, geometry: Geometry) -> Tensor:
        """The pipeline's σ: linspace(1, 1/N, N) shifted by μ(image tokens) in the scheduler, then a final 0."""
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        use_flow_sigmas = self.pipeline.scheduler.config.get("use_flow_sigmas", False)
        sigmas = None if use_flow_sigmas else np.linspace(1.0, 1 / num_steps, num_steps)
        return self._scheduler_sigmas(num_steps, sigmas=sigmas, mu=self._shift_mu(geometry))

    # --- velocity --------------------------------------------------------------------------------
    def _forward(self, x, timestep, tensors, geometry, guidance_scale):
        batch = x.shape[0]
        rows, cols = self._token_grid(geometry)
        embeds = tensors["prompt_embeds"]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((batch,), guidance_scale, device=x.device, dtype=torch.float32)
        return self.transformer(
            hidden_states=x,
            timestep=timestep.to(x.dtype) / 1000,
            guidance=guidance,
            pooled_projections=tensors["pooled_prompt_embeds"],
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=x.dtype),
            img_ids=self.pipeline._prepare_latent_image_ids(batch, rows, cols, x.device, x.dtype),
            return_dict=False,
        )[0]

    # --- pixels ----------------------------------------------------------------------------------
    def decode(self, x: Tensor, geometry: Geometry) -> Tensor:
        vae = self.pipeline.vae
        latents = self._unpack(x, geometry).to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def encode_pixels(self, pixels: Tensor, geometry: Geometry) -> Tensor:
        """(B, 3, H, W) in [0, 1] → packed tokens (B, L, 4·C): (VAE mean − shift_factor)·scaling_factor."""
        self._check_pixels(pixels, geometry, video=False)
        self._latent_hw(geometry)  # a bad size fails before the VAE runs
        latents = vae_encode_scaled(self.pipeline.vae, pixels).to(self.device)
        return self._pack(latents, geometry)

    def pooled_text(self, cond: Conditioning) -> Tensor:
        """The pooled CLIP embedding (B, clip_hidden) the transformer takes as ``pooled_projections``."""
        return cond.tensors["pooled_prompt_embeds"].float()
