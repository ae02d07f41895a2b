"""ImageReward (Xu et al. 2023): BLIP image–text encoder + MLP head trained on human preference rankings.

Architecture (published ``ImageReward.pt``, hub ``THUDM/ImageReward``)
---------------------------------------------------------------------
- ``blip.visual_encoder``: BLIP's ViT-L/16 at 224 px (1024 wide, 24 blocks, 16 heads, pre-LN, LayerNorm eps
  1e-6, exact GELU, fused ``qkv`` with bias); its output is the whole normalized token sequence (197×1024).
  Here: transformers ``BlipVisionModel`` (same fused-qkv layout, so only key names change, no tensor reshapes).
- ``blip.text_encoder``: BLIP's "med" BERT-base (vocab 30524, 12 layers, 12 heads, no token-type embeddings)
  with a cross-attention block in every layer whose keys/values read the 1024-wide image tokens. Here:
  transformers ``BlipTextModel`` (``is_decoder=True`` in the config only so that the cross-attention blocks are
  built; it is always run bidirectionally, ``is_decoder=False``, as BLIP's ``mode="multimodal"`` encoder).
  Its key names equal the published ones.
- ``mlp``: ``layers.{0,2,4,6,7}`` Linear 768→1024→128→64→16→1 with dropouts and no activations (the same stack
  as the LAION aesthetic head, so :class:`reward_models.aesthetic.AestheticHead` is reused).

Scoring (following ``ImageReward.score`` of the reference package)
-----------------------------------------------------------------
- Text: ``bert-base-uncased`` WordPiece tokenizer with BLIP's extra ``[DEC]`` (bos) and ``[ENC]`` tokens,
  ``padding="max_length", truncation=True, max_length=35``. The input ids are used **as tokenized**: position 0
  stays ``[CLS]``. (BLIP's ITM head replaces it with ``[ENC]``, but ``ImageReward.score`` and the training code
  do not, so neither do we.) The attention mask hides the padding; every image token is attended to.
- Image: ``Resize(224, bicubic)`` of the shorter side, ``CenterCrop(224)``, OpenAI-CLIP mean/std — done in
  torch (antialiased) so the score is differentiable w.r.t. the pixels.
- ``reward = (mlp(text_encoder(ids, image_tokens).last_hidden_state[:, 0]) − 0.16717362830052426)
  / 1.0333394966054072``; typical values lie in about (−2.5, 2.5), higher is better.

Loading: ``ImageReward.from_pretrained("THUDM/ImageReward")`` (the file, a folder holding ``ImageReward.pt``,
or a hub repo id), tokenizer from ``google-bert/bert-base-uncased``. Keys are checked in the published layout
(errors name the missing/unexpected published keys); BLIP pre-training parts the score never uses
(``blip.vision_proj``/``blip.text_proj``/other ``blip.*`` heads, the ``position_ids`` buffer) are skipped.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any, Mapping, Sequence

import torch
from transformers import (AutoTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel,
                          PreTrainedTokenizerBase)

from reward_models.aesthetic import AestheticHead
from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward
from reward_models.hub import CheckpointKeyError, check_keys, load_checked, load_state_dict_file, resolve_file
from reward_models.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform

DEFAULT_IMAGEREWARD_MODEL = "THUDM/ImageReward"
DEFAULT_IMAGEREWARD_TOKENIZER = "google-bert/bert-base-uncased"
IMAGEREWARD_FILE = "ImageReward.pt"
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
IMAGEREWARD_MAX_LENGTH = 35
BLIP_EXTRA_TOKENS = ("[DEC]", "[ENC]")

#: BLIP ViT-L/16 at 224 px, as built by BLIP's ``create_vit("large", 224)``
VISION_DEFAULTS: dict[str, Any] = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                       num_attention_heads=16, image_size=224, patch_size=16, hidden_act="gelu",
                                       layer_norm_eps=1e-6, attention_dropout=0.0)
#: ImageReward's ``med_config.json`` (BERT-base, vocab 30524 = bert-base-uncased + [DEC] + [ENC]);
#: ``encoder_hidden_size`` is set to the vision width, as BLIP sets ``encoder_width = vision_width``
TEXT_DEFAULTS: dict[str, Any] = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                     num_attention_heads=12, max_position_embeddings=512, hidden_act="gelu",
                                     layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                     pad_token_id=0)

# (published name under ``blip.visual_encoder.``, name under ``visual_encoder.`` of BlipVisionModel);
# ``{n}`` is a block index. Each entry is matched as a whole key or as a prefix ending in ".".
_VIT_KEY_PAIRS: tuple[tuple[str, str], ...] = (
    ("cls_token", "embeddings.class_embedding"),
    ("pos_embed", "embeddings.position_embedding"),
    ("patch_embed.proj.", "embeddings.patch_embedding."),
    ("blocks.{n}.norm1.", "encoder.layers.{n}.layer_norm1."),
    ("blocks.{n}.attn.qkv.", "encoder.layers.{n}.self_attn.qkv."),
    ("blocks.{n}.attn.proj.", "encoder.layers.{n}.self_attn.projection."),
    ("blocks.{n}.norm2.", "encoder.layers.{n}.layer_norm2."),
    ("blocks.{n}.mlp.fc1.", "encoder.layers.{n}.mlp.fc1."),
    ("blocks.{n}.mlp.fc2.", "encoder.layers.{n}.mlp.fc2."),
    ("norm.", "post_layernorm."),
)
# (published top-level prefix, prefix in ImageRewardModel)
_TOP_PREFIXES: tuple[tuple[str, str], ...] = (
    ("blip.visual_encoder.", "visual_encoder."),
    ("blip.text_encoder.", "text_encoder."),
    ("mlp.", "mlp."),
)
#: published keys that exist in the file but are not part of the score
_UNUSED_BUFFERS = ("blip.text_encoder.embeddings.position_ids",)
_USED_BLIP_PARTS = ("visual_encoder", "text_encoder")


def _pattern(template: str) -> re.Pattern:
    body = re.escape(template).replace(re.escape("{n}"), r"(?P<n>\d+)")
    return re.compile("^" + body + ("(?P<rest>.*)$" if template.endswith(".") else "$"))


_VIT_FORWARD = [(_pattern(pub), ours) for pub, ours in _VIT_KEY_PAIRS]
_VIT_BACKWARD = [(_pattern(ours), pub) for pub, ours in _VIT_KEY_PAIRS]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            groups = match.groupdict()
            return template.replace("{n}", groups.get("n") or "") + (groups.get("rest") or "")
    return None


def published_to_model_key(key: str) -> str | None:
    """Map a published ``ImageReward.pt`` key to :class:`ImageRewardModel`'s key (``None``: no counterpart)."""
    for published, ours in _TOP_PREFIXES:
        if key.startswith(published):
            rest = key[len(published):]
            if published == "blip.visual_encoder.":
                rest = _rename(rest, _VIT_FORWARD)
                if rest is None:
                    return None
            return ours + rest
    return None


def model_to_published_key(key: str) -> str:
    """Inverse of :func:`published_to_model_key` for every key of :class:`ImageRewardModel`."""
    for published, ours in _TOP_PREFIXES:
        if key.startswith(ours):
            rest = key[len(ours):]
            if ours == "visual_encoder.":
                renamed = _rename(rest, _VIT_BACKWARD)
                if renamed is None:
                    raise KeyError(f"ImageRewardModel key {key!r} has no published counterpart")
                rest = renamed
            return published + rest
    raise KeyError(f"ImageRewardModel key {key!r} has no published counterpart")


def is_unused_published_key(key: str) -> bool:
    """Published keys the score does not use: BLIP projections/heads and the BERT ``position_ids`` buffer."""
    if key in _UNUSED_BUFFERS:
        return True
    parts = key.split(".")
    return parts[0] == "blip" and len(parts) > 2 and parts[1] not in _USED_BLIP_PARTS


def convert_published_state_dict(state: Mapping[str, torch.Tensor], model: "ImageRewardModel",
                                 source: str = "ImageReward.pt") -> dict[str, torch.Tensor]:
    """Check a published-layout state dict against ``model`` and rename it to ``model``'s keys.

    Raises :class:`CheckpointKeyError` naming (in the published layout) every missing key and every key that
    is neither used nor a known unused BLIP part.
    """
    expected = {model_to_published_key(k) for k in model.state_dict()}
    used = {k: v for k, v in state.items() if not is_unused_published_key(k)}
    check_keys(used, expected, source)
    return {published_to_model_key(k): v for k, v in used.items()}


def model_state_dict_to_published(model: "ImageRewardModel") -> dict[str, torch.Tensor]:
    """``model``'s weights in the published ``ImageReward.pt`` key layout (for saving/tests)."""
    return {model_to_published_key(k): v.detach().clone() for k, v in model.state_dict().items()}


def _make_config(cls: type, defaults: Mapping[str, Any], given: Any, label: str):
    if given is None:
        return cls(**defaults)
    if isinstance(given, cls):
        return copy.deepcopy(given)
    if isinstance(given, Mapping):
        return cls(**{**defaults, **given})
    raise TypeError(f"ImageReward {label} must be a {cls.__name__}, a dict of its fields or None, "
                    f"got {type(given).__name__}")


class ImageRewardModel(torch.nn.Module):
    """BLIP ViT + cross-attention BERT + MLP head; ``forward(pixels, ids, mask)`` → normalized reward (B,)."""

    def __init__(self, vision_config: BlipVisionConfig | Mapping[str, Any] | None = None,
                 text_config: BlipTextConfig | Mapping[str, Any] | None = None,
                 mean: float = IMAGEREWARD_MEAN, std: float = IMAGEREWARD_STD) -> None:
        super().__init__()
        vision_config = _make_config(BlipVisionConfig, VISION_DEFAULTS, vision_config, "vision_config")
        text_config = _make_config(BlipTextConfig, TEXT_DEFAULTS, text_config, "text_config")
        text_config.encoder_hidden_size = vision_config.hidden_size
        text_config.is_decoder = True  # builds the cross-attention blocks; forward runs bidirectionally
        self.visual_encoder = BlipVisionModel(vision_config)
        self.text_encoder = BlipTextModel(text_config, add_pooling_layer=False)
        self.mlp = AestheticHead(text_config.hidden_size)
        self.mean = float(mean)
        self.std = float(std)
        self.eval()

    @property
    def image_size(self) -> int:
        size = self.visual_encoder.config.image_size
        return int(size if isinstance(size, int) else size[0])

    def raw_score(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
        """Un-normalized head output (B,) for normalized pixels ``B×3×S×S`` and token ids/mask ``B×L``."""
        image_tokens = self.visual_encoder(pixel_values=pixel_values).last_hidden_state
        text = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                 encoder_hidden_states=image_tokens, is_decoder=False)
        cls = text.last_hidden_state[:, 0, :]
        return self.mlp(cls.to(self.mlp.layers[0].weight.dtype)).float().squeeze(-1)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        return (self.raw_score(pixel_values, input_ids, attention_mask) - self.mean) / self.std


def prepare_blip_tokenizer(tokenizer: PreTrainedTokenizerBase,
                           max_length: int = IMAGEREWARD_MAX_LENGTH) -> PreTrainedTokenizerBase:
    """Add BLIP's ``[DEC]`` (bos) and ``[ENC]`` special tokens if missing and set ``model_max_length``."""
    vocab = tokenizer.get_vocab()
    if BLIP_EXTRA_TOKENS[0] not in vocab:
        tokenizer.add_special_tokens({"bos_token": BLIP_EXTRA_TOKENS[0]})
    if BLIP_EXTRA_TOKENS[1] not in vocab:
        tokenizer.add_tokens([BLIP_EXTRA_TOKENS[1]], special_tokens=True)
    tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids(BLIP_EXTRA_TOKENS[1])
    tokenizer.model_max_length = max_length
    return tokenizer


def load_blip_tokenizer(path: str | os.PathLike,
                        max_length: int = IMAGEREWARD_MAX_LENGTH) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot load a BERT tokenizer from {str(path)!r}: {err}") from err
    return prepare_blip_tokenizer(tokenizer, max_length)


@register_reward("imagereward")
class ImageReward(RewardModel):
    """ImageReward v1.0 score of (image, prompt) pairs; see the module docstring for the exact recipe."""

    spec = RewardSpec(name="imagereward", modality="image", needs_prompt=True, differentiable=True,
                      nominal_range=(-2.5, 2.5))

    def __init__(self, model: ImageRewardModel, tokenizer: PreTrainedTokenizerBase,
                 transform: ImageTransform | None = None, max_length: int = IMAGEREWARD_MAX_LENGTH) -> None:
        super().__init__()
        vocab_size = model.text_encoder.config.vocab_size
        if len(tokenizer) > vocab_size:
            raise ValueError(f"ImageReward tokenizer has {len(tokenizer)} tokens but the text encoder's embedding "
                             f"has only {vocab_size} rows")
        max_positions = model.text_encoder.config.max_position_embeddings
        if max_length > max_positions:
            raise ValueError(f"ImageReward max_length={max_length} exceeds the text encoder's "
                             f"{max_positions} position embeddings")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.transform = transform or ImageTransform(size=model.image_size, mean=OPENAI_CLIP_MEAN,
                                                     std=OPENAI_CLIP_STD, mode="crop", interpolation="bicubic",
                                                     crop_offset="round")  # BLIP's torchvision CenterCrop

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike = DEFAULT_IMAGEREWARD_MODEL,
                        tokenizer: str | os.PathLike | PreTrainedTokenizerBase = DEFAULT_IMAGEREWARD_TOKENIZER,
                        vision_config: BlipVisionConfig | Mapping[str, Any] | None = None,
                        text_config: BlipTextConfig | Mapping[str, Any] | None = None,
                        torch_dtype: torch.dtype = torch.float32, device: str | None = None) -> "ImageReward":
        """``path``: ``ImageReward.pt``, a folder holding it, or a hub repo id; ``tokenizer``: a BERT tokenizer
        folder/hub id (or instance). The configs default to the published architecture; override for tests."""
        file = resolve_file(path, IMAGEREWARD_FILE)
        model = ImageRewardModel(vision_config, text_config)
        state = convert_published_state_dict(load_state_dict_file(file), model, repr(str(file)))
        load_checked(model, state, repr(str(file)))
        if isinstance(tokenizer, PreTrainedTokenizerBase):
            tokenizer = prepare_blip_tokenizer(tokenizer)
        else:
            tokenizer = load_blip_tokenizer(tokenizer)
        return cls(model.to(torch_dtype), tokenizer).to(device or "cpu")

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase,
                    vision_config: BlipVisionConfig | Mapping[str, Any] | None = None,
                    text_config: BlipTextConfig | Mapping[str, Any] | None = None) -> "ImageReward":
        """Random weights of the given architecture (tests)."""
        return cls(ImageRewardModel(vision_config, text_config), prepare_blip_tokenizer(tokenizer))

    @classmethod
    def create(cls, pretrained: str | os.PathLike = DEFAULT_IMAGEREWARD_MODEL, **kwargs) -> "ImageReward":
        return cls.from_pretrained(pretrained, **kwargs)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] prompt [SEP] [PAD]…`` ids and mask, padded/truncated to ``max_length`` (as ImageReward)."""
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return tokens["input_ids"], tokens["attention_mask"]

    def forward(self, images: torch.Tensor, prompts: Sequence[str], metadata=None) -> RewardOutput:
        self.check_inputs(images, prompts, metadata)
        device = self.device
        dtype = self.model.visual_encoder.embeddings.patch_embedding.weight.dtype
        pixels = self.transform(images.to(device, torch.float32)).to(dtype)
        input_ids, attention_mask = self.tokenize(prompts)
        raw = self.model.raw_score(pixels, input_ids.to(device), attention_mask.to(device))
        scores = (raw - self.model.mean) / self.model.std
        return RewardOutput.from_scores(scores.to(images.device), components={"raw": raw.to(images.device)})
