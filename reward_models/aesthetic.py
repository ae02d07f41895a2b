"""LAION aesthetic predictor v2 ("improved-aesthetic-predictor"): MLP on CLIP ViT-L/14 image embeddings.

``score = MLP(e / ‖e‖)`` where ``e`` is the projected CLIP image embedding (768-d for ViT-L/14).
The head is the published ``sac+logos+ava1-l14-linearMSE.pth`` state dict: ``layers.{0,2,4,6,7}``
Linear stack 768→1024→128→64→16→1 (dropouts at 1, 3, 5; no activations). Scores ≈ 1–10 (AVA scale).
Preprocessing (OpenAI CLIP's torchvision one): bicubic shortest-edge 224, center crop 224 (offset
``round((H − 224) / 2)``), OpenAI mean/std, in torch.
The default head comes from a third-party hub mirror; its sha256 is checked against the original file's.
Differentiable.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from transformers import CLIPConfig, CLIPModel

from flowalign.errors import ConfigError
from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward
from reward_models.clip_common import load_clip_model, read_image_transform
from reward_models.hub import load_checked, load_state_dict_file, resolve_file, verify_sha256
from reward_models.preprocess import ImageTransform

DEFAULT_AESTHETIC_CLIP = "openai/clip-vit-large-patch14"
#: a hub mirror of the head from github.com/christophschuhmann/improved-aesthetic-predictor
DEFAULT_AESTHETIC_HEAD = "camenduru/improved-aesthetic-predictor"
AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
#: sha256 of the original file in christophschuhmann/improved-aesthetic-predictor (checked on the mirror's copy)
AESTHETIC_HEAD_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"


class AestheticHead(torch.nn.Module):
    """The published MLP (keys ``layers.0/2/4/6/7``); ``embed_dim`` is 768 for the real head."""

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(embed_dim, 1024), torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


@register_reward("aesthetic")
class AestheticScore(RewardModel):
    spec = RewardSpec(name="aesthetic", modality="image", needs_prompt=False, differentiable=True,
                      nominal_range=(0.0, 10.0))

    def __init__(self, clip: CLIPModel, head: AestheticHead, transform: ImageTransform | None = None) -> None:
        super().__init__()
        self.clip = clip.eval()
        self.head = head.eval()
        self.transform = transform or ImageTransform(size=int(clip.config.vision_config.image_size))

    @classmethod
    def from_pretrained(cls, clip: str | os.PathLike = DEFAULT_AESTHETIC_CLIP,
                        head: str | os.PathLike = DEFAULT_AESTHETIC_HEAD, head_sha256: str | None = None,
                        torch_dtype: torch.dtype = torch.float32, device: str | None = None) -> "AestheticScore":
        """``clip``: transformers CLIP folder/hub id; ``head``: the .pth file, a folder or hub repo holding it;
        ``head_sha256``: the digest the head file must have (the default mirror is always checked against the
        original's ``AESTHETIC_HEAD_SHA256``)."""
        model = load_clip_model(clip, torch_dtype)
        mlp = cls.load_head(head, model.config.projection_dim, sha256=head_sha256)
        transform = read_image_transform(clip, model.config.vision_config.image_size, crop_offset="round")
        return cls(model, mlp, transform).to(device or "cpu")

    @staticmethod
    def load_head(head: str | os.PathLike, embed_dim: int = 768, sha256: str | None = None) -> AestheticHead:
        """The head from a file, folder or hub repo; its sha256 is checked against ``sha256``, and against the
        original's when it comes from the default third-party mirror (``ChecksumError`` on a mismatch)."""
        path = resolve_file(head, AESTHETIC_HEAD_FILE)
        if sha256 is None and str(head) == DEFAULT_AESTHETIC_HEAD:
            sha256 = AESTHETIC_HEAD_SHA256
        if sha256 is not None:
            verify_sha256(path, sha256, f"the aesthetic head {AESTHETIC_HEAD_FILE!r} ({head})")
        mlp = AestheticHead(embed_dim)
        load_checked(mlp, load_state_dict_file(path), repr(str(path)))
        return mlp.eval()

    @classmethod
    def from_config(cls, config: CLIPConfig) -> "AestheticScore":
        """Random weights of the given CLIP architecture and a matching head (tests)."""
        return cls(CLIPModel(config), AestheticHead(config.projection_dim))

    @classmethod
    def create(cls, pretrained: str | os.PathLike | None = None, **kwargs) -> "AestheticScore":
        """Config factory: ``pretrained`` is the CLIP model (as for the other rewards; alias of ``clip``)."""
        clip = kwargs.pop("clip", None)
        if pretrained is not None and clip is not None:
            raise ConfigError("aesthetic: give the CLIP model as 'pretrained' or as 'clip', not both "
                              f"(got pretrained={str(pretrained)!r}, clip={str(clip)!r})")
        return cls.from_pretrained(pretrained or clip or DEFAULT_AESTHETIC_CLIP, **kwargs)

    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None = None, metadata=None) -> RewardOutput:
        self.check_inputs(images, prompts, metadata)
        dtype = self.clip.visual_projection.weight.dtype
        pixels = self.transform(images.to(self.clip.device, torch.float32)).to(dtype)
        feats = self.clip.get_image_features(pixel_values=pixels)
        feats = getattr(feats, "pooler_output", feats).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        scores = self.head(feats.to(self.head.layers[0].weight.dtype)).float().squeeze(-1)
        return RewardOutput.from_scores(scores.to(images.device))
