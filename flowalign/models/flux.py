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
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.models.base import Conditioning, FlowModel, Geometry, vae_encode_scaled


class FluxModel(FlowModel):
    family = "flux"
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
    def _latent_hw(self, geometry: Geometry) -> tuple[int, int]:
        """Unpacked VAE latent height and width, as the pipeline computes them."""
        multiple = 2 * self.pipeline.vae_scale_factor
        if geometry.height % multiple or geometry.width % multiple:
            raise ConfigError(
                f"Flux needs height and width divisible by {multiple}, got {geometry.height}x{geometry.width}"
            )
        return 2 * (geometry.height // multiple), 2 * (geometry.width // multiple)

    def _latent_channels(self) -> int:
        return self.transformer.config.in_channels // 4

    def latent_shape(self, geometry: Geometry) -> tuple[int, ...]:
        h, w = self._latent_hw(geometry)
        return ((h // 2) * (w // 2), self._latent_channels() * 4)

    def initial_noise(
        self, geometry: Geometry, generators: torch.Generator | list[torch.Generator] | None = None, batch_size: int = 1
    ) -> Tensor:
        """Unpacked noise (B, C, h, w) drawn like the pipeline, then packed with its ``_pack_latents``."""
        n = len(generators) if isinstance(generators, list) else batch_size
        h, w = self._latent_hw(geometry)
        c = self._latent_channels()
        noise = randn_tensor((n, c, h, w), generator=generators, device=self.device, dtype=torch.float32)
        return self.pipeline._pack_latents(noise, n, c, h, w)

    def schedule(self, num_steps: int, geometry: Geometry) -> Tensor:
        """The pipeline's σ: linspace(1, 1/N, N) shifted by μ(image tokens) in the scheduler, then a final 0."""
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        config = self.pipeline.scheduler.config
        sigmas = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / num_steps, num_steps)
        mu = calculate_shift(
            self.latent_shape(geometry)[0],
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return self._scheduler_sigmas(num_steps, sigmas=sigmas, mu=mu)

    # --- velocity --------------------------------------------------------------------------------
    def _forward(self, x, timestep, tensors, geometry, guidance_scale):
        batch = x.shape[0]
        h, w = self._latent_hw(geometry)
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
            img_ids=self.pipeline._prepare_latent_image_ids(batch, h // 2, w // 2, x.device, x.dtype),
            return_dict=False,
        )[0]

    # --- pixels ----------------------------------------------------------------------------------
    def decode(self, x: Tensor, geometry: Geometry) -> Tensor:
        vae = self.pipeline.vae
        latents = self.pipeline._unpack_latents(x, geometry.height, geometry.width, self.pipeline.vae_scale_factor)
        latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def encode_pixels(self, pixels: Tensor, geometry: Geometry) -> Tensor:
        """(B, 3, H, W) in [0, 1] → packed tokens (B, L, 4·C): (VAE mean − shift_factor)·scaling_factor."""
        self._check_pixels(pixels, geometry, video=False)
        h, w = self._latent_hw(geometry)
        latents = vae_encode_scaled(self.pipeline.vae, pixels).to(self.device)
        return self.pipeline._pack_latents(latents, latents.shape[0], latents.shape[1], h, w)

    def pooled_text(self, cond: Conditioning) -> Tensor:
        """The pooled CLIP embedding (B, clip_hidden) the transformer takes as ``pooled_projections``."""
        return cond.tensors["pooled_prompt_embeds"].float()
