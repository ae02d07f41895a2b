"""PickScore (Kirstain et al. 2023): ``logit_scale.exp() · cos(image, prompt)`` of a CLIP-H model.

Weights: ``yuvalkirstain/PickScore_v1`` (transformers CLIPModel format); tokenizer and preprocessing
from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` via transformers' ``CLIPImageProcessor`` (shortest-edge
bicubic 224, center crop 224 with offset ``(H − 224) // 2``, OpenAI mean/std), here in torch with
antialiasing. Typical scores are ≈ 18–24 (logit scale 100). Differentiable.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from transformers import CLIPConfig, PreTrainedTokenizerBase

from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward
from reward_models.clip_common import CLIPEmbedder, load_clip_model, load_tokenizer, read_image_transform

DEFAULT_PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
DEFAULT_PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@register_reward("pickscore")
class PickScore(RewardModel):
    spec = RewardSpec(name="pickscore", modality="image", needs_prompt=True, differentiable=True,
                      nominal_range=(0.0, 100.0))

    def __init__(self, embedder: CLIPEmbedder) -> None:
        super().__init__()
        self.embedder = embedder

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike = DEFAULT_PICKSCORE_MODEL,
                        processor: str | os.PathLike = DEFAULT_PICKSCORE_PROCESSOR,
                        torch_dtype: torch.dtype = torch.float32, device: str | None = None) -> "PickScore":
        model = load_clip_model(path, torch_dtype)
        tokenizer = load_tokenizer(processor, model.config.text_config.max_position_embeddings)
        transform = read_image_transform(processor, model.config.vision_config.image_size,
                                         crop_offset="floor")
        return cls(CLIPEmbedder(model, tokenizer, transform, padding="max_length")).to(device or "cpu")

    @classmethod
    def from_config(cls, config: CLIPConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> "PickScore":
        return cls(CLIPEmbedder.from_config(config, tokenizer))

    @classmethod
    def create(cls, pretrained: str = DEFAULT_PICKSCORE_MODEL, **kwargs) -> "PickScore":
        return cls.from_pretrained(pretrained, **kwargs)

    def forward(self, images: torch.Tensor, prompts: Sequence[str], metadata=None) -> RewardOutput:
        self.check_inputs(images, prompts, metadata)
        cos = self.embedder.cosine(images, prompts)
        scores = self.embedder.model.logit_scale.exp().float() * cos
        return RewardOutput.from_scores(scores.to(images.device), components={"cosine": cos.to(images.device)})
