"""Shared CLIP (transformers ``CLIPModel``) loading and embedding for CLIPScore and PickScore."""

from __future__ import annotations

import json
import os
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


def read_image_transform(path: str | os.PathLike, image_size: int, *, crop_offset: CropOffset) -> ImageTransform:
    """CLIP crop transform from a local ``preprocessor_config.json`` if there is one, else OpenAI defaults.

    ``crop_offset``: ``"floor"`` where the original model used transformers' CLIPImageProcessor,
    ``"round"`` where it used torchvision (see ``preprocess.center_crop``).
    """
    config_file = Path(path) / "preprocessor_config.json"
    if not config_file.is_file():
        return ImageTransform(size=image_size, crop_offset=crop_offset)
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    crop = config.get("crop_size", image_size)
    crop = crop.get("height", image_size) if isinstance(crop, dict) else int(crop)
    return ImageTransform(size=crop, mean=tuple(config.get("image_mean", OPENAI_CLIP_MEAN)),
                          std=tuple(config.get("image_std", OPENAI_CLIP_STD)), crop_offset=crop_offset)


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
