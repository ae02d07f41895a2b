"""Wan 2.1 text-to-video (and single-transformer Wan 2.2) on ``WanPipeline``.

Latents: (B, C, T_lat, H/s, W/s) with T_lat = (num_frames − 1) // s_t + 1 (s, s_t: the VAE's spatial and
temporal factors), exactly as ``WanPipeline.prepare_latents`` draws them. Timestep given to the transformer:
σ·1000 (per token when the pipeline has ``expand_timesteps``). CFG: the pipeline runs two forwards, we batch
them as [uncond; cond]; ``guidance_scale`` > 1 turns it on, as in the pipeline.

Schedule: a ``FlowMatchEulerDiscreteScheduler``'s own σ. With Wan's default ``UniPCMultistepScheduler`` (flow
σ) we take its shifted flow σ, so our Euler/SDE steps visit the same σ as the pipeline, but our ODE solution
differs from the pipeline's UniPC output (a different, higher-order solver).
"""

from __future__ import annotations

import inspect

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from torch import Tensor

from flowalign.errors import ConfigError, UnsupportedModelError
from flowalign.models.base import Conditioning, FlowModel, Geometry


class WanModel(FlowModel):
    family = "wan"
    pipeline_class = WanPipeline

    def __init__(self, pipeline: WanPipeline, device=None, max_sequence_length: int = 512,
                 geometry: Geometry | None = None):
        """``geometry``: the default output size (else the pipeline's call defaults, 480×832, 81 frames).

        ``max_sequence_length`` defaults to ``WanPipeline.__call__``'s 512 (its ``encode_prompt`` says 226).
        """
        if isinstance(pipeline, WanPipeline) and (
            getattr(pipeline, "transformer_2", None) is not None or pipeline.transformer is None
        ):
            raise UnsupportedModelError(
                "two-expert Wan 2.2 (a WanPipeline with transformer_2) is not supported yet; "
                "use a single-transformer Wan pipeline (Wan 2.1 or Wan 2.2 TI2V-5B)"
            )
        super().__init__(pipeline, device)
        self.max_sequence_length = max_sequence_length
        self._default_geometry = geometry

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _ = self.pipeline.encode_prompt(
            prompt=prompts, do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
            device=self.device,
        )
        return {"prompt_embeds": embeds.to(self.dtype)}

    # --- latents and schedule --------------------------------------------------------------------
    def default_geometry(self) -> Geometry:
        if self._default_geometry is not None:
            return self._default_geometry
        defaults = inspect.signature(type(self.pipeline).__call__).parameters
        return Geometry(defaults["height"].default, defaults["width"].default, defaults["num_frames"].default)

    def latent_shape(self, geometry: Geometry) -> tuple[int, ...]:
        s_t, s = self.pipeline.vae_scale_factor_temporal, self.pipeline.vae_scale_factor_spatial
        if geometry.num_frames is None or (geometry.num_frames - 1) % s_t:
            raise ConfigError(f"Wan needs num_frames = {s_t}·k + 1 (e.g. 81), got {geometry.num_frames}")
        _, ph, pw = self.transformer.config.patch_size
        if geometry.height % (s * ph) or geometry.width % (s * pw):
            raise ConfigError(
                f"Wan needs height divisible by {s * ph} and width by {s * pw}, got {geometry.height}x{geometry.width}"
            )
        frames = (geometry.num_frames - 1) // s_t + 1
        return (self.transformer.config.in_channels, frames, geometry.height // s, geometry.width // s)

    def schedule(self, num_steps: int, geometry: Geometry) -> Tensor:
        """The scheduler's σ for ``num_steps`` (UniPC: its flow σ with the last one set to 0)."""
        scheduler = self.pipeline.scheduler
        if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            return self._scheduler_sigmas(num_steps)
        if not scheduler.config.get("use_flow_sigmas", False):
            raise UnsupportedModelError(
                f"Wan scheduler {type(scheduler).__name__} has no flow-matching σ (use_flow_sigmas is off); "
                "use FlowMatchEulerDiscreteScheduler or UniPCMultistepScheduler(use_flow_sigmas=True)"
            )
        sigmas = self._scheduler_sigmas(num_steps)
        sigmas[-1] = 0.0  # final_sigmas_type="sigma_min" would stop short of the data
        return sigmas

    # --- velocity --------------------------------------------------------------------------------
    def _forward(self, x, timestep, tensors, geometry, guidance_scale):
        if self.pipeline.config.expand_timesteps:  # Wan 2.2 TI2V: one timestep per (T, H/2, W/2) token
            _, _, t, h, w = x.shape
            timestep = timestep[:, None].expand(-1, t * ((h + 1) // 2) * ((w + 1) // 2))
        return self.transformer(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=tensors["prompt_embeds"],
            return_dict=False,
        )[0]

    # --- text summary ----------------------------------------------------------------------------
    def pooled_text(self, cond: Conditioning) -> Tensor:
        """Mean of the prompt's T5 token embeddings (B, D) over its real tokens (the pipeline zero-pads after them)."""
        embeds = cond.tensors["prompt_embeds"].float()
        real = (embeds != 0).any(-1, keepdim=True).float()
        return (embeds * real).sum(1) / real.sum(1).clamp_min(1.0)

    # --- pixels ----------------------------------------------------------------------------------
    def _latent_normalisation(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The VAE's per-channel latents mean and 1/std as (1, z, 1, 1, 1) tensors like ``like``."""
        vae = self.pipeline.vae
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    def decode(self, x: Tensor, geometry: Geometry) -> Tensor:
        """(B, C, T_lat, h, w) → (B, T, 3, H, W) in [0, 1], denormalized with the VAE's latents mean/std."""
        vae = self.pipeline.vae
        latents = x.to(vae.dtype)
        mean, inv_std = self._latent_normalisation(latents)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]  # (B, 3, T, H, W) in [-1, 1]
        return (video.float().permute(0, 2, 1, 3, 4) / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_pixels(self, pixels: Tensor, geometry: Geometry) -> Tensor:
        """(B, T, 3, H, W) in [0, 1] → (B, C, T_lat, h, w): (VAE mean − latents_mean)/latents_std, float32."""
        self._check_pixels(pixels, geometry, video=True)
        self.latent_shape(geometry)
        vae = self.pipeline.vae
        video = (pixels.permute(0, 2, 1, 3, 4) * 2 - 1).to(vae.device, vae.dtype)  # (B, 3, T, H, W) in [-1, 1]
        latents = vae.encode(video).latent_dist.mean
        mean, inv_std = self._latent_normalisation(latents)
        return ((latents - mean) * inv_std).float().to(self.device)
