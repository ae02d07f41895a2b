"""The small interface every model family implements on top of a real diffusers pipeline.

A ``FlowModel`` turns a pipeline into what the samplers and trainers need: prompt encoding (cached),
velocity v(x, σ) with classifier-free guidance as one batched forward, seeded initial noise, the
pipeline's own σ schedule, decoding to pixels in [0, 1] and encoding pixels back to latents, and a pooled text
summary for auxiliary networks. Latents are float32 and batch-first; the
transformer runs in its own dtype and its output is cast back to float32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from flowalign.errors import ConfigError


@dataclass(frozen=True)
class Geometry:
    """Output size in pixels (and frames for video)."""

    height: int
    width: int
    num_frames: int | None = None

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"height and width must be >= 1, got {self.height}x{self.width}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {self.num_frames}")


@dataclass
class Conditioning:
    """Encoded prompts: batch-first tensors for the prompts and, for CFG, for their negative prompts."""

    prompts: list[str]
    tensors: dict[str, Tensor]
    negative: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def has_negative(self) -> bool:
        return self.negative is not None

    def select(self, index: Sequence[int] | Tensor) -> Conditioning:
        """Rows ``index`` (with repetition allowed), e.g. to expand prompts into groups."""
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = lambda d: {k: v[idx.to(v.device)] for k, v in d.items()}  # noqa: E731
        return Conditioning(
            [self.prompts[i] for i in idx.tolist()],
            pick(self.tensors),
            pick(self.negative) if self.negative is not None else None,
        )

    def repeat_interleave(self, repeats: int) -> Conditioning:
        """Each prompt ``repeats`` times in a row: [p0, p0, p1, p1, ...]."""
        return self.select(torch.arange(len(self)).repeat_interleave(repeats))


class FlowModel(ABC):
    """A diffusers flow-matching pipeline seen as a velocity field.

    Subclasses set ``family`` and ``pipeline_class`` and implement ``_encode``, ``_forward``,
    ``latent_shape``, ``schedule``, ``pooled_text``, ``decode`` and ``encode_pixels``.
    """

    family: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    #: number of cached prompt encodings kept (least recently used are dropped)
    prompt_cache_size: int = 4096
    #: prompts encoded per text-encoder call (None: all missing prompts at once). 1 makes every prompt's
    #: encoding independent of which prompts it was encoded with (float32 results depend on batch size).
    encode_batch_size: int | None = None

    def __init__(self, pipeline: DiffusionPipeline, device: str | torch.device | None = None):
        if not isinstance(pipeline, self.pipeline_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.pipeline_class.__name__}, got {type(pipeline).__name__}"
            )
        self.pipeline = pipeline
        if device is not None:
            pipeline.to(device)
        self.device = torch.device(device) if device is not None else pipeline.device
        self._prompt_cache: OrderedDict[str, dict[str, Tensor]] = OrderedDict()
        self.transformer_calls = 0  # counts forward passes (one per batched CFG call); for tests and benchmarks

    # --- what is trained -------------------------------------------------------------------------
    @property
    def transformer(self) -> nn.Module:
        return self.pipeline.transformer

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def trainable_module(self) -> nn.Module:
        """The module whose (adapter) parameters are trained."""
        return self.transformer

    # --- prompts ---------------------------------------------------------------------------------
    @abstractmethod
    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        """Encode prompts with the pipeline's text encoders → batch-first tensors."""

    def encode_prompts(
        self, prompts: Sequence[str], negative_prompts: Sequence[str] | str | None = None, *, with_negative: bool = False
    ) -> Conditioning:
        """Encode prompts (cached per prompt string). Negative prompts default to "" when ``with_negative``."""
        prompts = _as_prompt_list(prompts, "prompts")
        if negative_prompts is not None:
            with_negative = True
        if not with_negative:
            return Conditioning(prompts, self._encode_cached(prompts))
        if negative_prompts is None or isinstance(negative_prompts, str):
            negatives = [negative_prompts or ""] * len(prompts)
        else:
            negatives = list(negative_prompts)
            if len(negatives) != len(prompts):
                raise ConfigError(
                    f"got {len(prompts)} prompts but {len(negatives)} negative prompts; "
                    "pass one negative prompt per prompt, or a single string for all"
                )
        return Conditioning(prompts, self._encode_cached(prompts), self._encode_cached(negatives))

    @torch.no_grad()
    def _encode_cached(self, prompts: list[str]) -> dict[str, Tensor]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._prompt_cache))
        size = self.encode_batch_size or max(len(missing), 1)
        for start in range(0, len(missing), size):
            chunk = missing[start : start + size]
            encoded = self._encode(chunk)
            for i, prompt in enumerate(chunk):
                self._prompt_cache[prompt] = {k: v[i : i + 1] for k, v in encoded.items()}
        rows = []
        for prompt in prompts:
            self._prompt_cache.move_to_end(prompt)
            rows.append(self._prompt_cache[prompt])
        while len(self._prompt_cache) > self.prompt_cache_size:
            self._prompt_cache.popitem(last=False)
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}

    # --- latents and schedule --------------------------------------------------------------------
    def default_geometry(self) -> Geometry:
        return Geometry(self.pipeline.default_sample_size * self.pipeline.vae_scale_factor,
                        self.pipeline.default_sample_size * self.pipeline.vae_scale_factor)

    def resolve_geometry(self, height: int | None = None, width: int | None = None,
                         num_frames: int | None = None) -> Geometry:
        """The pipeline's default geometry with the given sizes replacing its own (None keeps the default);
        a size the model cannot take raises ``ConfigError`` here, before any sampling."""
        default = self.default_geometry()
        geometry = Geometry(height or default.height, width or default.width, num_frames or default.num_frames)
        self.latent_shape(geometry)
        return geometry

    @abstractmethod
    def latent_shape(self, geometry: Geometry) -> tuple[int, ...]:
        """Shape of one sample's latent (no batch dimension) in the layout the transformer takes."""

    def initial_noise(
        self, geometry: Geometry, generators: torch.Generator | list[torch.Generator] | None = None, batch_size: int = 1
    ) -> Tensor:
        """Standard normal float32 latents drawn exactly as the pipeline draws them for the same generators."""
        n = len(generators) if isinstance(generators, list) else batch_size
        return randn_tensor((n, *self.latent_shape(geometry)), generator=generators, device=self.device,
                            dtype=torch.float32)

    @abstractmethod
    def schedule(self, num_steps: int, geometry: Geometry) -> Tensor:
        """The pipeline's own σ schedule: (num_steps + 1,) float32, from ≈1 down to 0 (inclusive)."""

    def _scheduler_sigmas(self, num_steps: int, **set_timesteps_kwargs) -> Tensor:
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        scheduler = type(self.pipeline.scheduler).from_config(self.pipeline.scheduler.config)
        scheduler.set_timesteps(num_steps, device="cpu", **set_timesteps_kwargs)
        return scheduler.sigmas.to(self.device, torch.float32)

    @property
    def num_train_timesteps(self) -> int:
        return self.pipeline.scheduler.config.num_train_timesteps

    # --- velocity --------------------------------------------------------------------------------
    @abstractmethod
    def _forward(self, x: Tensor, timestep: Tensor, tensors: dict[str, Tensor], geometry: Geometry,
                 guidance_scale: float) -> Tensor:
        """One transformer call: x (B, ...) in the transformer's dtype, timestep (B,) = σ·num_train_timesteps."""

    def cfg_scale(self, guidance_scale: float) -> float:
        """The classifier-free guidance weight implied by ``guidance_scale`` (1 = no CFG)."""
        return guidance_scale

    def uses_cfg(self, guidance_scale: float) -> bool:
        return self.cfg_scale(guidance_scale) > 1.0

    def velocity(self, x: Tensor, sigma: float | Tensor, cond: Conditioning, geometry: Geometry,
                 guidance_scale: float = 1.0) -> Tensor:
        """v(x, σ) in float32; with CFG, v_u + w·(v_c − v_u) from one batched forward [uncond; cond].

        Pipelines that run the two branches as separate forwards (Wan) can differ from the batched call by
        float rounding (~1e-6 in float32); without CFG the result equals the pipeline's bit for bit.
        """
        if len(cond) != x.shape[0]:
            raise ValueError(f"conditioning has {len(cond)} rows but the latent batch has {x.shape[0]}")
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
        timestep = sigma * self.num_train_timesteps
        w = self.cfg_scale(guidance_scale)
        x_in = x.to(self.dtype)
        self.transformer_calls += 1
        if w > 1.0:
            if cond.negative is None:
                raise ConfigError(
                    f"guidance weight {w} needs negative-prompt embeddings: encode with with_negative=True"
                )
            both = {k: torch.cat([cond.negative[k], cond.tensors[k]]) for k in cond.tensors}
            out = self._forward(torch.cat([x_in, x_in]), torch.cat([timestep, timestep]), both, geometry,
                                guidance_scale)
            uncond, text = out.chunk(2)
            return (uncond + w * (text - uncond)).float()
        return self._forward(x_in, timestep, cond.tensors, geometry, guidance_scale).float()

    # --- text summary ----------------------------------------------------------------------------
    @abstractmethod
    def pooled_text(self, cond: Conditioning) -> Tensor:
        """A fixed-size float32 summary (B, D) of the prompts' embeddings, for auxiliary networks."""

    # --- pixels ----------------------------------------------------------------------------------
    @abstractmethod
    def decode(self, x: Tensor, geometry: Geometry) -> Tensor:
        """Latents → pixels in [0, 1], float32: images (B, 3, H, W), videos (B, T, 3, H, W)."""

    @abstractmethod
    def encode_pixels(self, pixels: Tensor, geometry: Geometry) -> Tensor:
        """Pixels in [0, 1] (the layout ``decode`` returns) → float32 latents in the layout of ``initial_noise``:
        the VAE posterior's mean with the pipeline's latent normalisation, the inverse of ``decode``. No gradient.
        """

    def _check_pixels(self, pixels: Tensor, geometry: Geometry, video: bool) -> None:
        """``pixels`` must be (B, 3, H, W) (images) or (B, F, 3, H, W) (video) at ``geometry``'s size, in [0, 1]."""
        if video:
            expected = ("B", geometry.num_frames, 3, geometry.height, geometry.width)
        else:
            expected = ("B", 3, geometry.height, geometry.width)
        if pixels.ndim != len(expected) or tuple(pixels.shape[1:]) != expected[1:]:
            layout = "(B, F, 3, H, W)" if video else "(B, 3, H, W)"
            raise ConfigError(f"{self.family} encode_pixels expects pixels {layout} = {expected}, "
                              f"got shape {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise ConfigError(f"encode_pixels expects floating-point pixels in [0, 1], got dtype {pixels.dtype}")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0 or high > 1:
            raise ConfigError(f"encode_pixels expects pixels in [0, 1], got values in [{low:.4g}, {high:.4g}]")


@torch.no_grad()
def vae_encode_scaled(vae: nn.Module, images: Tensor) -> Tensor:
    """SD3/Flux VAE: images (B, 3, H, W) in [0, 1] → (posterior mean − shift_factor)·scaling_factor, float32."""
    mean = vae.encode((images * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
    return ((mean - vae.config.shift_factor) * vae.config.scaling_factor).float()


def _as_prompt_list(prompts: Sequence[str] | str, name: str) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ConfigError(f"{name} is empty; expected at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise ConfigError(f"{name} must be strings, got {type(bad[0]).__name__}")
    return prompts


def with_geometry_defaults(model: FlowModel, height: int | None, width: int | None,
                           num_frames: int | None = None) -> Geometry:
    """The model's default geometry with any given values replaced."""
    geometry = model.default_geometry()
    return replace(geometry, height=height or geometry.height, width=width or geometry.width,
                   num_frames=num_frames or geometry.num_frames)
