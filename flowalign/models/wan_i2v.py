"""Wan 2.1 image-to-video on ``WanImageToVideoPipeline`` (everything else as in ``WanModel``).

The conditioning image enters as the pipeline feeds it: (1) its CLIP vision hidden states (the pipeline's
``encode_image``) go to the transformer's image cross-attention as ``encoder_hidden_states_image``; (2) the
video [image, zeros × (F − 1)] is VAE-encoded and normalised, and with a 4-channel first-frame mask concatenated
to the noisy latents along channels (``prepare_latents``), so the transformer takes 2·C + 4 channels and returns
C. Our latents are the C noise channels only (B, C, T_lat, H/s, W/s); the reward sees the decoded frames.

Each prompt has its image (``image``: one file for every prompt, a ``.jsonl`` of ``{"prompt", "image"}``, or a
mapping). ``encode_prompts`` adds the image's CLIP states and its index to the conditioning (negative rows get
the same image, as in the pipeline's unconditional branch); the VAE condition depends on the output size and
is computed per (image, geometry) in ``_forward``, kept in a small cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from diffusers import WanImageToVideoPipeline
from torch import Tensor

from flowalign.errors import ConfigError, UnsupportedModelError
from flowalign.models.base import Conditioning, Geometry
from flowalign.models.conditioning_images import ImageSource
from flowalign.models.conditioning_images import ConditioningImages
from flowalign.models.wan import WanModel

MISSING_IMAGE = ("Wan image-to-video needs a conditioning image: set model.adapter_kwargs.image to an image file "
                 "(used for every prompt) or a .jsonl of {\"prompt\": ..., \"image\": ...} lines")


class WanImageToVideoModel(WanModel):
    family = "wan_i2v"
    pipeline_class = WanImageToVideoPipeline
    #: VAE conditions kept (one per image and output size)
    condition_cache_size: int = 16

    @staticmethod
    def check_adapter_kwargs(kwargs: dict) -> None:
        """Before any weight loads: an image source must be given."""
        if kwargs.get("image") is None:
            raise ConfigError(MISSING_IMAGE)

    def __init__(self, pipeline: WanImageToVideoPipeline, device=None, image: ImageSource | None = None,
                 max_sequence_length: int = 512, geometry: Geometry | None = None):
        self.check_adapter_kwargs({"image": image})
        if isinstance(pipeline, WanImageToVideoPipeline):
            if getattr(pipeline, "transformer_2", None) is not None or pipeline.transformer is None:
                raise UnsupportedModelError("two-expert Wan 2.2 image-to-video (transformer_2) is not supported yet; "
                                            "use Wan 2.1 image-to-video (e.g. Wan-AI/Wan2.1-I2V-14B-480P-Diffusers)")
            if pipeline.config.expand_timesteps:
                raise UnsupportedModelError("Wan 2.2 TI2V image-to-video (expand_timesteps: the first latent frame "
                                            "is replaced by the image) is not supported yet")
        super().__init__(pipeline, device, max_sequence_length=max_sequence_length, geometry=geometry)
        self.images = ConditioningImages(image, "model.adapter_kwargs.image")
        self._clip_cache: dict[int, Tensor] = {}
        self._conditions: OrderedDict[tuple[int, Geometry], Tensor] = OrderedDict()

    @property
    def _uses_clip(self) -> bool:
        return self.transformer.config.image_dim is not None

    # --- prompts and images ----------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str], negative_prompts: Sequence[str] | str | None = None, *,
                       with_negative: bool = False) -> Conditioning:
        """Text as in ``WanModel`` plus each prompt's image: ``image_index`` (B,) and, when the transformer has
        image cross-attention, ``image_embeds`` (B, N, D) — the same in the negative rows."""
        cond = super().encode_prompts(prompts, negative_prompts, with_negative=with_negative)
        indices = [self.images.index(p) for p in cond.prompts]
        image = {"image_index": torch.tensor(indices, dtype=torch.long, device=self.device)}
        if self._uses_clip:
            image["image_embeds"] = torch.cat([self._clip_states(i) for i in indices])
        cond.tensors.update(image)
        if cond.negative is not None:
            cond.negative.update(image)
        return cond

    @torch.no_grad()
    def _clip_states(self, index: int) -> Tensor:
        if index not in self._clip_cache:
            states = self.pipeline.encode_image(self.images.images[index], self.device)
            self._clip_cache[index] = states.to(self.dtype)
        return self._clip_cache[index]

    @torch.no_grad()
    def _condition(self, index: int, geometry: Geometry) -> Tensor:
        """(1, 4 + C, T_lat, h, w): first-frame mask and normalised VAE latent of [image, zeros], float32."""
        key = (index, geometry)
        if key not in self._conditions:
            shape = self.latent_shape(geometry)
            pixels = self.pipeline.video_processor.preprocess(self.images.images[index], height=geometry.height,
                                                              width=geometry.width).to(self.device, torch.float32)
            _, condition = self.pipeline.prepare_latents(
                pixels, 1, shape[0], geometry.height, geometry.width, geometry.num_frames, torch.float32,
                self.device, None, latents=torch.zeros(1, *shape, device=self.device))
            self._conditions[key] = condition
        self._conditions.move_to_end(key)
        while len(self._conditions) > self.condition_cache_size:
            self._conditions.popitem(last=False)
        return self._conditions[key]

    # --- latents ---------------------------------------------------------------------------------
    def latent_shape(self, geometry: Geometry) -> tuple[int, ...]:
        """The noise channels only (the VAE's z_dim); the transformer's extra input channels are the condition."""
        shape = super().latent_shape(geometry)
        return (self.pipeline.vae.config.z_dim, *shape[1:])

    # --- velocity --------------------------------------------------------------------------------
    def _forward(self, x, timestep, tensors, geometry, guidance_scale):
        if "image_index" not in tensors:
            raise ConfigError("Wan image-to-video conditioning has no image: encode prompts with this model's "
                              "encode_prompts")
        condition = torch.cat([self._condition(i, geometry) for i in tensors["image_index"].tolist()])
        return self.transformer(
            hidden_states=torch.cat([x, condition.to(x.dtype)], dim=1),
            timestep=timestep,
            encoder_hidden_states=tensors["prompt_embeds"],
            encoder_hidden_states_image=tensors.get("image_embeds"),
            return_dict=False,
        )[0]
