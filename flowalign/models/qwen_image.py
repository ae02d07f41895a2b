"""Qwen-Image on ``QwenImagePipeline``.

Text: the pipeline's own ``encode_prompt`` (its chat template around the prompt, the last hidden state of
Qwen2.5-VL with the template's 34 system-prefix tokens dropped). Prompts have different lengths: we zero-pad
to ``max_sequence_length`` with a 0/1 mask so the prompt cache can stack them, and each forward trims to the
longest prompt in its batch and passes the mask (None when every token is real), exactly as the pipeline pads
one call's prompts to their longest.

Latents: packed tokens (B, L, 4·C) of 2×2 patches of the VAE latent (B, C, h, w), h = 2·(H // (2f)), drawn as
(B, 1, C, h, w) and packed like ``QwenImagePipeline.prepare_latents``. Timestep given to the transformer: σ.

Guidance: the released Qwen-Image has no guidance embedding, so ``guidance_scale`` is the pipeline's
``true_cfg_scale`` (CFG against a negative prompt, > 1 = on), including the pipeline's rescaling of the
guided velocity to the conditional one's norm per token. For a guidance-distilled transformer
(``guidance_embeds``) ``guidance_scale`` is the embedded guidance and true CFG is the constructor's
``true_cfg_scale``, as in ``FluxModel``.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import QwenImagePipeline
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.models.base import Conditioning, FlowModel, Geometry
from flowalign.models.packed_latents import PackedLatentGeometry


class QwenImageModel(PackedLatentGeometry, FlowModel):
    family = "qwen_image"
    size_label = "Qwen-Image"
    noise_frame_axis = True  # the pipeline draws (B, 1, C, h, w)
    pipeline_class = QwenImagePipeline

    def __init__(self, pipeline: QwenImagePipeline, device=None, max_sequence_length: int = 512,
                 true_cfg_scale: float = 1.0):
        """``max_sequence_length``: prompt tokens kept (the pipeline's call default, 512; at most 1024).
        ``true_cfg_scale``: only for a guidance-distilled transformer (see the module docstring)."""
        if not 1 <= max_sequence_length <= 1024:
            raise ConfigError(f"Qwen-Image max_sequence_length must be in [1, 1024], got {max_sequence_length}")
        super().__init__(pipeline, device)
        self.max_sequence_length = max_sequence_length
        self.true_cfg_scale = float(true_cfg_scale)

    @property
    def _guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def cfg_scale(self, guidance_scale: float) -> float:
        """The pipeline's ``true_cfg_scale``: ``guidance_scale`` itself unless the transformer embeds guidance."""
        return self.true_cfg_scale if self._guidance_embeds else guidance_scale

    # --- prompts ---------------------------------------------------------------------------------
    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        embeds, mask = self.pipeline.encode_prompt(prompts, device=self.device,
                                                   max_sequence_length=self.max_sequence_length)
        batch, length, dim = embeds.shape
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        pad = self.max_sequence_length - length
        embeds = torch.cat([embeds, embeds.new_zeros(batch, pad, dim)], dim=1)
        mask = torch.cat([mask.long(), mask.new_zeros(batch, pad).long()], dim=1)
        return {"prompt_embeds": embeds.to(self.dtype), "prompt_embeds_mask": mask}

    def pooled_text(self, cond: Conditioning) -> Tensor:
        """Mean of the prompt's Qwen2.5-VL hidden states (B, D) over its real tokens (the mask)."""
        embeds = cond.tensors["prompt_embeds"].float()
        mask = cond.tensors["prompt_embeds_mask"].float().unsqueeze(-1)
        return (embeds * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    # --- latents and schedule --------------------------------------------------------------------
    def schedule(self, num_steps: int, geometry: Geometry) -> Tensor:
        """The pipeline's σ: linspace(1, 1/N, N) shifted by μ(packed tokens) in the scheduler, then a final 0."""
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        return self._scheduler_sigmas(num_steps, sigmas=sigmas, mu=self._shift_mu(geometry))

    # --- velocity --------------------------------------------------------------------------------
    def velocity(self, x: Tensor, sigma: float | Tensor, cond: Conditioning, geometry: Geometry,
                 guidance_scale: float = 1.0) -> Tensor:
        """v(x, σ); with true CFG (one batched [uncond; cond] forward) the pipeline's guided velocity
        v_u + w·(v_c − v_u), rescaled per token to the norm of v_c."""
        if not self.uses_cfg(guidance_scale):
            return super().velocity(x, sigma, cond, geometry, guidance_scale)
        if cond.negative is None:
            raise ConfigError(f"true CFG weight {self.cfg_scale(guidance_scale)} needs negative-prompt embeddings: "
                              "encode with with_negative=True")
        if len(cond) != x.shape[0]:
            raise ValueError(f"conditioning has {len(cond)} rows but the latent batch has {x.shape[0]}")
        w = self.cfg_scale(guidance_scale)
        timestep = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        timestep = timestep * self.num_train_timesteps
        x_in = x.to(self.dtype)
        both = {k: torch.cat([cond.negative[k], cond.tensors[k]]) for k in cond.tensors}
        self.transformer_calls += 1
        out = self._forward(torch.cat([x_in, x_in]), torch.cat([timestep, timestep]), both, geometry, guidance_scale)
        uncond, text = out.float().chunk(2)
        guided = uncond + w * (text - uncond)
        return guided * (text.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))

    def _forward(self, x, timestep, tensors, geometry, guidance_scale):
        batch = x.shape[0]
        rows, cols = self._token_grid(geometry)
        mask = tensors["prompt_embeds_mask"]
        length = int(mask.sum(1).max())
        embeds, mask = tensors["prompt_embeds"][:, :length], mask[:, :length]
        guidance = None
        if self._guidance_embeds:
            guidance = torch.full((batch,), guidance_scale, device=x.device, dtype=torch.float32)
        return self.transformer(
            hidden_states=x,
            timestep=timestep.to(x.dtype) / 1000,
            guidance=guidance,
            encoder_hidden_states=embeds,
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,
            img_shapes=[[(1, rows, cols)]] * batch,
            return_dict=False,
        )[0]

    # --- pixels ----------------------------------------------------------------------------------
    def _latent_normalisation(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The VAE's per-channel latents mean and 1/std as (1, z, 1, 1, 1) tensors like ``like``."""
        config = self.pipeline.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    def decode(self, x: Tensor, geometry: Geometry) -> Tensor:
        """Packed tokens → (B, 3, H, W) in [0, 1], denormalised with the VAE's latents mean/std."""
        vae = self.pipeline.vae
        latents = self._unpack(x, geometry).to(vae.dtype)  # (B, C, 1, h, w)
        mean, inv_std = self._latent_normalisation(latents)
        image = vae.decode(latents / inv_std + mean, return_dict=False)[0][:, :, 0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_pixels(self, pixels: Tensor, geometry: Geometry) -> Tensor:
        """(B, 3, H, W) in [0, 1] → packed tokens: (VAE mean − latents_mean)/latents_std, packed. Inverse of
        ``decode`` up to the VAE."""
        self._check_pixels(pixels, geometry, video=False)
        self._latent_hw(geometry)  # a bad size fails before the VAE runs
        vae = self.pipeline.vae
        images = (pixels * 2 - 1).to(vae.device, vae.dtype)[:, :, None]  # (B, 3, 1, H, W)
        latents = vae.encode(images).latent_dist.mean
        mean, inv_std = self._latent_normalisation(latents)
        latents = ((latents - mean) * inv_std).float().to(self.device)  # (B, C, 1, h, w)
        return self._pack(latents[:, :, 0], geometry)
