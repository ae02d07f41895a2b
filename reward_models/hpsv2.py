"""HPSv2 / HPSv2.1 (Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on human preferences.

``score = cos(image, prompt)`` of the fine-tuned CLIP (no logit scale; typical values ≈ 0.2–0.35).
Weights: ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` (hub repo ``xswu/HPSv2``), an open_clip
state dict under the ``"state_dict"`` key. The default here is v2.1; the original package's ``hpsv2.score()``
defaults to v2.0 (``hps_version="v2.0"``): pass ``version="v2"`` to compare with it.
Preprocessing is HPSv2's letterbox: longer side → 224
(bicubic, ``round``), zero-pad to a centered square, OpenAI mean/std — here in torch with antialiasing.
Differentiable.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Sequence

import torch

from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward
from reward_models.hub import load_checked, load_state_dict_file, resolve_file
from reward_models.preprocess import ImageTransform

DEFAULT_HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_ARCH = "ViT-H-14"


def _open_clip():
    import open_clip

    return open_clip


@register_reward("hpsv2")
class HPSv2(RewardModel):
    spec = RewardSpec(name="hpsv2", modality="image", needs_prompt=True, differentiable=True,
                      nominal_range=(-1.0, 1.0))

    def __init__(self, model: torch.nn.Module, tokenizer: Any, transform: ImageTransform | None = None) -> None:
        """``model``: an ``open_clip.CLIP``; ``tokenizer``: open_clip tokenizer (list[str] → ids)."""
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.transform = transform or ImageTransform(size=size, mode="letterbox", fill=0.0)

    @classmethod
    def build_architecture(cls, model_cfg: dict | None = None) -> "HPSv2":
        """Random-weight model: ViT-H-14 by default, or ``open_clip.CLIP(**model_cfg)`` (tiny tests)."""
        open_clip = _open_clip()
        if model_cfg is None:
            model = open_clip.create_model(HPS_ARCH, pretrained=None)
            tokenizer = open_clip.get_tokenizer(HPS_ARCH)
        else:
            model = open_clip.CLIP(**model_cfg)
            context = int(model_cfg.get("text_cfg", {}).get("context_length", 77))
            tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context)
        return cls(model, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike = DEFAULT_HPS_REPO, version: Literal["v2", "v2.1"] = "v2.1",
                        model_cfg: dict | None = None, device: str | None = None) -> "HPSv2":
        """``path``: the checkpoint file, a folder or hub repo holding ``HPS_FILES[version]``."""
        if version not in HPS_FILES:
            raise ValueError(f"HPSv2 version must be one of {sorted(HPS_FILES)}, got {version!r}")
        file = resolve_file(path, HPS_FILES[version])
        reward = cls.build_architecture(model_cfg)
        reward.load_checkpoint(file)
        return reward.to(device or "cpu")

    def load_checkpoint(self, file: str | os.PathLike) -> None:
        """Load an HPS checkpoint (``{"state_dict": ...}``, ``module.`` prefixes stripped), checking keys."""
        state = load_state_dict_file(file, key="state_dict")
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        load_checked(self.model, state, repr(str(file)))
        self.model.eval()

    @classmethod
    def create(cls, pretrained: str = DEFAULT_HPS_REPO, **kwargs) -> "HPSv2":
        return cls.from_pretrained(pretrained, **kwargs)

    def forward(self, images: torch.Tensor, prompts: Sequence[str], metadata=None) -> RewardOutput:
        self.check_inputs(images, prompts, metadata)
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        pixels = self.transform(images.to(device, torch.float32)).to(dtype)
        tokens = self.tokenizer(list(prompts)).to(device)
        image_feats = self.model.encode_image(pixels, normalize=True).float()
        text_feats = self.model.encode_text(tokens, normalize=True).float()
        scores = (image_feats * text_feats).sum(dim=-1)
        return RewardOutput.from_scores(scores.to(images.device))
