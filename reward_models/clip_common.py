"""Shared CLIP (transformers ``CLIPModel``) loading and embedding for CLIPScore and PickScore."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, PreTrainedTokenizerBase

from reward_models.hub import CheckpointKeyError
from reward_models.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CropOffset, ImageTransform

#: buffers older checkpoints carry that current transformers recomputes
_IGNORED_UNEXPECTED = ("position_ids",)


def load_clip_model(path: str | os.PathLike, torch_dtype: torch.dtype = torch.float32) -> CLIPModel:
    """``CLIPModel.from_pretrained`` (folder or hub id) that fails on missing/unexpected/mismatched keys."""
    try:
        model, info = CLIPModel.from_pretrained(str(path), dtype=torch_dtype, output_loading_info=True)
    except OSError as err:
        raise FileNotFoundError(f"cannot load a CLIP model from {str(path)!r}: {err}") from err
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(k for k in (info.get("unexpected_keys") or []) if not k.endswith(_IGNORED_UNEXPECTED))
    mismatched = [str(m) for m in (info.get("mismatched_keys") or [])]
    if missing or unexpected or mismatched:
        raise CheckpointKeyError(f"CLIP checkpoint {str(path)!r} does not match CLIPModel: missing keys "
                                 f"{missing[:10]}, unexpected keys {unexpected[:10]}, mismatched {mismatched[:5]}")
    return model.eval()


def load_tokenizer(path: str | os.PathLike, max_length: int) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot load a tokenizer from {str(path)!r}: {err}") from err
    tokenizer.model_max_length = max_length
    return tokenizer


_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL resample codes transformers' processors store


def _side(value, key: str, source: str) -> int:
    """One side length from a processor config entry: an int, ``{"shortest_edge": n}`` or a square
    ``{"height": n, "width": n}``."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and "shortest_edge" in value:
        return int(value["shortest_edge"])
    if isinstance(value, dict) and value.get("height") is not None and value.get("height") == value.get("width"):
        return int(value["height"])
    raise ValueError(f"{source}: {key} = {value!r} is not supported (expected an int, {{'shortest_edge': n}} or a "
                     "square {'height': n, 'width': n})")


def image_transform_from_config(config: dict, source: str, image_size: int, *,
                                crop_offset: CropOffset) -> ImageTransform:
    """The crop transform a transformers ``CLIPImageProcessor`` config describes: ``size`` (shortest edge),
    ``crop_size``, ``image_mean``/``image_std``, ``resample`` (bicubic or bilinear); absent keys take CLIP's
    defaults (``image_size``, OpenAI mean/std, bicubic). ``source`` names the file in errors."""
    for flag in ("do_resize", "do_center_crop", "do_normalize"):
        if config.get(flag) is False:
            raise ValueError(f"{source}: {flag} = false is not supported (the CLIP rewards resize, crop and "
                             "normalize)")
    resample = config.get("resample", 3)
    if resample not in _RESAMPLE:
        raise ValueError(f"{source}: resample = {resample!r} is not supported (2: bilinear, 3: bicubic)")
    mean, std = tuple(config.get("image_mean", OPENAI_CLIP_MEAN)), tuple(config.get("image_std", OPENAI_CLIP_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{source}: image_mean and image_std must have 3 values, got {mean} and {std}")
    crop = _side(config.get("crop_size", image_size), "crop_size", source)
    resize = _side(config.get("size", crop), "size", source)
    return ImageTransform(size=crop, resize_size=resize, mean=mean, std=std, interpolation=_RESAMPLE[resample],
                          crop_offset=crop_offset)


def preprocessor_config(path: str | os.PathLike) -> tuple[dict | None, str]:
    """(``preprocessor_config.json`` of a local folder or hub repo, where it came from); (None, reason) when
    the model has none, or when a hub repo's file cannot be fetched (offline and not cached: a warning)."""
    folder = Path(path)
    if folder.is_dir() or str(path).startswith((".", "/", "~")) or str(path).count("/") != 1:
        file = folder / "preprocessor_config.json"
        if not file.is_file():
            return None, f"{str(folder)!r} has no preprocessor_config.json"
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            file = Path(hf_hub_download(str(path), "preprocessor_config.json"))
        except Exception as err:  # offline and not cached, network errors: the defaults, said out loud
            if isinstance(err, EntryNotFoundError) and not isinstance(err, LocalEntryNotFoundError):
                return None, f"hub repo {str(path)!r} has no preprocessor_config.json"
            warnings.warn(f"cannot fetch preprocessor_config.json of {str(path)!r} ({type(err).__name__}); using "
                          "OpenAI CLIP preprocessing (224 bicubic, OpenAI mean/std), which may not be this model's",
                          stacklevel=3)
            return None, f"hub repo {str(path)!r}: preprocessor_config.json not fetched"
    try:
        return json.loads(file.read_text()), str(file)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err


def read_image_transform(path: str | os.PathLike, image_size: int, *, crop_offset: CropOffset) -> ImageTransform:
    """CLIP crop transform from the model's own ``preprocessor_config.json`` (local folder or hub repo) if it
    has one, else OpenAI defaults at ``image_size``.

    ``crop_offset``: ``"floor"`` where the original model used transformers' CLIPImageProcessor,
    ``"round"`` where it used torchvision (see ``preprocess.center_crop``).
    """
    config, source = preprocessor_config(path)
    if config is None:
        return ImageTransform(size=image_size, crop_offset=crop_offset)
    return image_transform_from_config(config, source, image_size, crop_offset=crop_offset)


class CLIPEmbedder(torch.nn.Module):
    """Holds a CLIPModel, its tokenizer and torch image transform; returns L2-normalized embeddings.

    The default transform emulates transformers' ``CLIPImageProcessor`` (floor crop offset), which
    PickScore and CLIPScore were used with.
    """

    def __init__(self, model: CLIPModel, tokenizer: PreTrainedTokenizerBase,
                 transform: ImageTransform | None = None, padding: str | bool = "max_length") -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.transform = transform or ImageTransform(size=int(model.config.vision_config.image_size),
                                                     crop_offset="floor")
        self.padding = padding

    @classmethod
    def from_config(cls, config: CLIPConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> "CLIPEmbedder":
        """Random-weight model of the given architecture (for tests); real CLIP tokenizer by default."""
        if tokenizer is None:
            from flowalign.models.tokenizers import build_clip_tokenizer

            tokenizer = build_clip_tokenizer(model_max_length=config.text_config.max_position_embeddings)
        return cls(CLIPModel(config), tokenizer)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` in [0, 1] → unit-norm ``B×D`` (float32)."""
        dtype = self.model.visual_projection.weight.dtype
        pixels = self.transform(images.to(self.model.device, torch.float32)).to(dtype)
        feats = self.model.get_image_features(pixel_values=pixels)
        feats = getattr(feats, "pooler_output", feats).float()
        return feats / feats.norm(dim=-1, keepdim=True)

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), padding=self.padding, truncation=True,
                                max_length=self.max_length, return_tensors="pt").to(self.model.device)
        feats = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        feats = getattr(feats, "pooler_output", feats).float()
        return feats / feats.norm(dim=-1, keepdim=True)

    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Per-pair cosine similarity (B,)."""
        return (self.image_embeds(images) * self.text_embeds(prompts)).sum(dim=-1)
