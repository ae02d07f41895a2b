"""CLIPScore: image–prompt cosine similarity of a CLIP model (transformers ``CLIPModel``).

``score = weight · max(cos, 0)`` with ``weight = 100`` (torchmetrics' CLIPScore, range [0, 100]) by
default; ``clip_at_zero=False`` gives ``weight · cos`` (Hessel et al. use ``2.5 · max(cos, 0)``).
Preprocessing: shortest-edge bicubic resize (antialiased) + center crop (offset ``(H − 224) // 2`` as
transformers' ``CLIPImageProcessor``, which torchmetrics uses) + OpenAI normalization, in torch.
Preprocessing is read from the model's own ``preprocessor_config.json`` (folder or hub repo) when it has one.
Prompts over 77 tokens are truncated to 77 keeping the end-of-text token (the CLIP tokenizer's truncation), whose
position CLIP pools. torchmetrics cuts the ids after 77 instead, dropping that token: its pooled text embedding of
such a prompt no longer depends on the prompt, so scores of prompts over 77 tokens differ from torchmetrics'.
Differentiable (the gradient is 0 where ``cos < 0`` and ``clip_at_zero`` is on).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from transformers import CLIPConfig, PreTrainedTokenizerBase

from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward
from reward_models.clip_common import CLIPEmbedder, load_clip_model, load_tokenizer, read_image_transform

DEFAULT_CLIPSCORE_MODEL = "openai/clip-vit-large-patch14"


@register_reward("clipscore")
class CLIPScore(RewardModel):
    spec = RewardSpec(name="clipscore", modality="image", needs_prompt=True, differentiable=True,
                      nominal_range=(0.0, 100.0))

    def __init__(self, embedder: CLIPEmbedder, weight: float = 100.0, clip_at_zero: bool = True) -> None:
        super().__init__()
        self.embedder = embedder
        self.weight = float(weight)
        self.clip_at_zero = bool(clip_at_zero)
        if not self.clip_at_zero:
            self.spec = RewardSpec(name="clipscore", modality="image", needs_prompt=True, differentiable=True,
                                   nominal_range=(-abs(self.weight), abs(self.weight)))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike = DEFAULT_CLIPSCORE_MODEL, tokenizer: str | None = None,
                        torch_dtype: torch.dtype = torch.float32, device: str | None = None, **kwargs) -> "CLIPScore":
        """Load a transformers CLIP folder or hub id (tokenizer from ``tokenizer`` or the same place)."""
        model = load_clip_model(path, torch_dtype)
        tok = load_tokenizer(tokenizer or path, model.config.text_config.max_position_embeddings)
        transform = read_image_transform(path, model.config.vision_config.image_size, crop_offset="floor")
        embedder = CLIPEmbedder(model, tok, transform, padding=True)
        return cls(embedder, **kwargs).to(device or "cpu")

    @classmethod
    def from_config(cls, config: CLIPConfig, tokenizer: PreTrainedTokenizerBase | None = None, **kwargs) -> "CLIPScore":
        embedder = CLIPEmbedder.from_config(config, tokenizer)
        embedder.padding = True
        return cls(embedder, **kwargs)

    @classmethod
    def create(cls, pretrained: str = DEFAULT_CLIPSCORE_MODEL, **kwargs) -> "CLIPScore":
        return cls.from_pretrained(pretrained, **kwargs)

    def forward(self, images: torch.Tensor, prompts: Sequence[str], metadata=None) -> RewardOutput:
        self.check_inputs(images, prompts, metadata)
        cos = self.embedder.cosine(images, prompts)
        scores = self.weight * (cos.clamp(min=0) if self.clip_at_zero else cos)
        return RewardOutput.from_scores(scores.to(images.device), components={"cosine": cos.to(images.device)})
