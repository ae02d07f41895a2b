"""Stable Diffusion 3 / 3.5 (MMDiT) on ``StableDiffusion3Pipeline``.

Latents: (B, C, H/f, W/f) with f the VAE scale factor. Timestep given to the transformer: σ·1000.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.models.base import Conditioning, FlowModel, Geometry, vae_encode_scaled
from flowalign.models.sd3_attention import collapsed_padding


class SD3Model(FlowModel):
    family = "sd3"
    pipeline_class = StableDiffusion3Pipeline

    def __init__(self, pipeline: StableDiffusion3Pipeline, device=None, max_sequence_length: int = 256,
                 collapse_zero_padding: bool = False):
        """``collapse_zero_padding``: when the T5 stream is all zeros (no T5, or a zero T5), feed ONE zero token
        with a log(max_sequence_length) attention bias instead of ``max_sequence_length`` identical ones — the
        same velocity up to float rounding, far fewer tokens (see ``sd3_attention``)."""
        super().__init__(pipeline, device)
        self.max_sequence_length = max_sequence_length
        self.collapse_zero_padding = collapse_zero_padding and self._t5_stream_is_zero()

    @torch.no_grad()
    def _t5_stream_is_zero(self) -> bool:
        if self.pipeline.text_encoder_3 is None:
            return True
        embeds, _, _, _ = self.pipeline.encode_prompt(
            prompt=["a photo"], prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length)
        return bool((embeds[:, -self.max_sequence_length :] == 0).all())

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
        )
        if self.collapse_zero_padding:
            embeds = embeds[:, : embeds.shape[1] - self.max_sequence_length + 1]  # keep one zero T5 token
        return {"prompt_embeds": embeds.to(self.dtype), "pooled_prompt_embeds": pooled.to(self.dtype)}

    def latent_shape(self, geometry: Geometry) -> tuple[int, ...]:
        f = self.pipeline.vae_scale_factor
        multiple = f * self.transformer.config.patch_size
        if geometry.height % multiple or geometry.width % multiple:
            raise ConfigError(
                f"SD3 needs height and width divisible by {multiple}, got {geometry.height}x{geometry.width}"
            )
        return (self.transformer.config.in_channels, geometry.height // f, geometry.width // f)

    def schedule(self, num_steps: int, geometry: Geometry) -> Tensor:
        config = self.pipeline.scheduler.config
        if not config.get("use_dynamic_shifting", False):
            return self._scheduler_sigmas(num_steps)
        _, h, w = self.latent_shape(geometry)
        patch = self.transformer.config.patch_size
        mu = calculate_shift(
            (h // patch) * (w // patch),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.16),
        )
        return self._scheduler_sigmas(num_steps, mu=mu)

    def _forward(self, x, timestep, tensors, geometry, guidance_scale):
        collapse = collapsed_padding(self.transformer, self.max_sequence_length) if self.collapse_zero_padding \
            else contextlib.nullcontext()
        with collapse:
            return self.transformer(
                hidden_states=x,
                timestep=timestep,
                encoder_hidden_states=tensors["prompt_embeds"],
                pooled_projections=tensors["pooled_prompt_embeds"],
                return_dict=False,
            )[0]

    def decode(self, x: Tensor, geometry: Geometry) -> Tensor:
        vae = self.pipeline.vae
        latents = x.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def encode_pixels(self, pixels: Tensor, geometry: Geometry) -> Tensor:
        """(B, 3, H, W) in [0, 1] → (B, C, H/f, W/f): (VAE mean − shift_factor)·scaling_factor."""
        self._check_pixels(pixels, geometry, video=False)
        self.latent_shape(geometry)
        return vae_encode_scaled(self.pipeline.vae, pixels).to(self.device)

    def pooled_text(self, cond: Conditioning) -> Tensor:
        """The pooled CLIP embeddings (B, 2·clip_hidden) the transformer takes as ``pooled_projections``."""
        return cond.tensors["pooled_prompt_embeds"].float()
