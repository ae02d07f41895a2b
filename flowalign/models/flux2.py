"""FLUX.2 [klein] (4B / 9B, base and step-distilled) on ``Flux2KleinPipeline``, text-to-image.

Text: the pipeline's own ``encode_prompt``: the prompt in Qwen3's chat template (thinking off), padded to
``max_sequence_length``, and the hidden states of ``text_encoder_out_layers`` (default 9, 18, 27) stacked along
features: (B, L, 3·D). No mask: the pipeline feeds the padded tokens as they are, and so do we.

Latents: packed tokens (B, L, 4·C) of the 2×2-patchified VAE latent, drawn already patchified as
(B, 4·C, h/2, w/2) and flattened like ``Flux2KleinPipeline.prepare_latents``; positions (t, h, w, l) ids for
image and text tokens as the pipeline builds them. Timestep given to the transformer: σ. σ schedule:
linspace(1, 1/N, N) shifted by the pipeline's empirical μ(image tokens, N) (it depends on N too).

Guidance: classifier-free guidance against the negative prompt (the pipeline always uses ""), on when
``guidance_scale`` > 1, except for the step-distilled models (``is_distilled``), which ignore it. No embedded
guidance. Decoding undoes the VAE's batch-norm statistics on the patchified latent, then un-patchifies.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import Flux2KleinPipeline
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.models.base import Conditioning, FlowModel, Geometry


class Flux2KleinModel(FlowModel):
    family = "flux2_klein"
    pipeline_class = Flux2KleinPipeline

    def __init__(self, pipeline: Flux2KleinPipeline, device=None, max_sequence_length: int = 512,
                 text_encoder_out_layers: tuple[int, ...] | list[int] = (9, 18, 27)):
        """``max_sequence_length``, ``text_encoder_out_layers``: the pipeline's call arguments (same defaults)."""
        if isinstance(pipeline, Flux2KleinPipeline) and pipeline.text_encoder is not None:
            layers = pipeline.text_encoder.config.num_hidden_layers
            bad = [i for i in text_encoder_out_layers if not 0 <= i <= layers]
            if bad:
                raise ConfigError(f"text_encoder_out_layers {list(text_encoder_out_layers)}: {bad} out of range; the "
                                  f"text encoder has hidden states 0..{layers}")
        super().__init__(pipeline, device)
        self.max_sequence_length = max_sequence_length
        self.text_encoder_out_layers = tuple(text_encoder_out_layers)

    def cfg_scale(self, guidance_scale: float) -> float:
        """``guidance_scale`` for base models; 1 (no CFG) for step-distilled ones, as the pipeline."""
        return 1.0 if self.pipeline.config.is_distilled else guidance_scale

    # --- prompts ---------------------------------------------------------------------------------
    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, _ = self.pipeline.encode_prompt(prompts, device=self.device,
                                                max_sequence_length=self.max_sequence_length,
                                                text_encoder_out_layers=self.text_encoder_out_layers)
        return {"prompt_embeds": embeds.to(self.dtype)}

    def pooled_text(self, cond: Conditioning) -> Tensor:
        """Mean of the prompt's stacked Qwen3 hidden states (B, 3·D) over all max_sequence_length positions
        (the pipeline gives the transformer the padding too, so it is part of the conditioning)."""
        return cond.tensors["prompt_embeds"].float().mean(1)

    # --- latents and schedule --------------------------------------------------------------------
    def _latent_hw(self, geometry: Geometry) -> tuple[int, int]:
        """Patchified latent height and width (h/2, w/2) as the pipeline computes them."""
        multiple = 2 * self.pipeline.vae_scale_factor
        if geometry.height % multiple or geometry.width % multiple:
            raise ConfigError(
                f"FLUX.2 needs height and width divisible by {multiple}, got {geometry.height}x{geometry.width}"
            )
        return geometry.height // multiple, geometry.width // multiple

    def latent_shape(self, geometry: Geometry) -> tuple[int, ...]:
        h, w = self._latent_hw(geometry)
        return (h * w, self.transformer.config.in_channels)

    def initial_noise(
        self, geometry: Geometry, generators: torch.Generator | list[torch.Generator] | None = None, batch_size: int = 1
    ) -> Tensor:
        """Noise (B, 4·C, h/2, w/2) drawn like the pipeline, flattened with its ``_pack_latents``."""
        n = len(generators) if isinstance(generators, list) else batch_size
        self._latent_hw(geometry)  # checks the size
        noise, _ = self.pipeline.prepare_latents(n, self.transformer.config.in_channels // 4, geometry.height,
                                                 geometry.width, torch.float32, self.device, generators)
        return noise

    def schedule(self, num_steps: int, geometry: Geometry) -> Tensor:
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        sigmas = None if self.pipeline.scheduler.config.get("use_flow_sigmas", False) else \
            np.linspace(1.0, 1 / num_steps, num_steps)
        mu = compute_empirical_mu(image_seq_len=self.latent_shape(geometry)[0], num_steps=num_steps)
        return self._scheduler_sigmas(num_steps, sigmas=sigmas, mu=mu)

    # --- velocity --------------------------------------------------------------------------------
    def _latent_ids(self, batch: int, geometry: Geometry, device) -> Tensor:
        h, w = self._latent_hw(geometry)
        return self.pipeline._prepare_latent_ids(torch.empty(batch, 0, h, w)).to(device)

    def _forward(self, x, timestep, tensors, geometry, guidance_scale):
        embeds = tensors["prompt_embeds"]
        return self.transformer(
            hidden_states=x,
            timestep=timestep.to(x.dtype) / 1000,
            guidance=None,
            encoder_hidden_states=embeds,
            txt_ids=self.pipeline._prepare_text_ids(embeds).to(x.device),
            img_ids=self._latent_ids(x.shape[0], geometry, x.device),
            return_dict=False,
        )[0]

    # --- pixels ----------------------------------------------------------------------------------
    def _bn_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The VAE's batch-norm mean and std over the patchified channels, as (1, 4·C, 1, 1)."""
        vae = self.pipeline.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, like.dtype)
        return mean, std

    def _unpack(self, x: Tensor, geometry: Geometry) -> Tensor:
        """Packed tokens → VAE latents (B, C, h, w): scattered by position ids, batch-norm undone, un-patchified."""
        h, w = self._latent_hw(geometry)
        latents = self.pipeline._unpack_latents_with_ids(x, self._latent_ids(x.shape[0], geometry, x.device), h, w)
        mean, std = self._bn_stats(latents)
        return self.pipeline._unpatchify_latents(latents * std + mean)

    def decode(self, x: Tensor, geometry: Geometry) -> Tensor:
        vae = self.pipeline.vae
        image = vae.decode(self._unpack(x, geometry).to(vae.dtype), return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_pixels(self, pixels: Tensor, geometry: Geometry) -> Tensor:
        """(B, 3, H, W) in [0, 1] → packed tokens: the VAE mean, patchified, batch-normalised (the pipeline's
        ``_encode_vae_image`` with the posterior mean), flattened."""
        self._check_pixels(pixels, geometry, video=False)
        self.latent_shape(geometry)
        vae = self.pipeline.vae
        mean_latent = vae.encode((pixels * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
        patches = self.pipeline._patchify_latents(mean_latent.float())
        mean, std = self._bn_stats(patches)
        return self.pipeline._pack_latents((patches - mean) / std).to(self.device)
