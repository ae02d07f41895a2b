"""Packed 2×2-patch latent geometry shared by the FLUX.1 and Qwen-Image adapters.

Convention: for an image of H×W pixels and the pipeline's ``vae_scale_factor`` f, the VAE latent is
(B, C, h, w) with h = 2·(H // (2f)), w = 2·(W // (2f)); H and W must be multiples of 2f. It is packed into
tokens (B, (h/2)·(w/2), 4·C) by cutting it into 2×2 patches (the pipeline's ``_pack_latents``), so the
transformer's ``in_channels`` is 4·C and its token grid is (h/2, w/2). μ of the σ shift is the pipeline's
``calculate_shift`` of the token count L = (h/2)·(w/2).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from flowalign.errors import ConfigError
from flowalign.models.base import Geometry


class PackedLatentGeometry:
    """Mixin for a ``FlowModel`` whose pipeline packs 2×2 latent patches (see the module docstring).

    Subclasses set ``size_label`` (the model's name in size errors) and, when their pipeline draws noise with a
    frame axis (B, 1, C, h, w), ``noise_frame_axis = True``.
    """

    size_label: ClassVar[str]
    noise_frame_axis: ClassVar[bool] = False
    # provided by FlowModel
    pipeline: Any
    transformer: nn.Module
    device: torch.device

    def _latent_hw(self, geometry: Geometry) -> tuple[int, int]:
        """Unpacked VAE latent height and width (h, w), as the pipeline computes them."""
        multiple = 2 * self.pipeline.vae_scale_factor
        if geometry.height % multiple or geometry.width % multiple:
            raise ConfigError(f"{self.size_label} needs height and width divisible by {multiple}, "
                              f"got {geometry.height}x{geometry.width}")
        return 2 * (geometry.height // multiple), 2 * (geometry.width // multiple)

    def _token_grid(self, geometry: Geometry) -> tuple[int, int]:
        """The packed tokens' grid (h/2, w/2)."""
        h, w = self._latent_hw(geometry)
        return h // 2, w // 2

    def _latent_channels(self) -> int:
        """VAE latent channels C (the transformer takes 4·C)."""
        return self.transformer.config.in_channels // 4

    def latent_shape(self, geometry: Geometry) -> tuple[int, ...]:
        rows, cols = self._token_grid(geometry)
        return (rows * cols, self._latent_channels() * 4)

    def initial_noise(
        self, geometry: Geometry, generators: torch.Generator | list[torch.Generator] | None = None, batch_size: int = 1
    ) -> Tensor:
        """Unpacked float32 noise (B, C, h, w), or (B, 1, C, h, w) with ``noise_frame_axis``, drawn like the
        pipeline, then packed with its ``_pack_latents``."""
        n = len(generators) if isinstance(generators, list) else batch_size
        h, w = self._latent_hw(geometry)
        c = self._latent_channels()
        shape = (n, 1, c, h, w) if self.noise_frame_axis else (n, c, h, w)
        noise = randn_tensor(shape, generator=generators, device=self.device, dtype=torch.float32)
        return self.pipeline._pack_latents(noise, n, c, h, w)

    def _pack(self, latents: Tensor, geometry: Geometry) -> Tensor:
        """VAE latents (B, C, h, w) → packed tokens (B, (h/2)·(w/2), 4·C)."""
        h, w = self._latent_hw(geometry)
        return self.pipeline._pack_latents(latents, latents.shape[0], latents.shape[1], h, w)

    def _unpack(self, x: Tensor, geometry: Geometry) -> Tensor:
        """Packed tokens → VAE latents in the pipeline's layout ((B, C, h, w), or (B, C, 1, h, w) for a VAE with
        a frame axis), with its ``_unpack_latents``."""
        return self.pipeline._unpack_latents(x, geometry.height, geometry.width, self.pipeline.vae_scale_factor)

    def _shift_mu(self, geometry: Geometry) -> float:
        """μ of the σ shift for this geometry's token count, from the scheduler config (pipeline defaults)."""
        config = self.pipeline.scheduler.config
        return calculate_shift(
            self.latent_shape(geometry)[0],
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
