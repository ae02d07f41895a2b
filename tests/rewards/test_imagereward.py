"""ImageReward: a tiny BLIP + med-BERT + MLP saved in the published ``ImageReward.pt`` key layout.

The scores are checked against an independent functional re-implementation that reads the published-layout
state dict directly (BLIP's ViT with fused qkv, post-LN BERT with cross-attention to all image tokens, the MLP
head and the published mean/std), so a wrong key mapping or architecture detail changes the numbers.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizer

from flowalign.errors import FlowAlignError
from reward_models import build_reward, registered_rewards
from reward_models.hub import CheckpointKeyError
from reward_models.imagereward import (IMAGEREWARD_FILE, IMAGEREWARD_MEAN, IMAGEREWARD_STD, ImageReward,
                                       ImageRewardModel, convert_published_state_dict, model_state_dict_to_published,
                                       model_to_published_key, published_to_model_key)
from reward_models.preprocess import ImageTransform

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "blue", "square", "photo", "of", "cat"]
VISION = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)
TEXT = dict(vocab_size=len(WORDS) + 2, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=40, bos_token_id=len(WORDS), sep_token_id=3)
PROMPTS = ["a red circle", "a photo of a blue square cat"]


def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}, model_max_length=35)


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-degenerate random weights (the default BLIP vision init is ~1e-10)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            is_norm = "norm" in name.lower()
            if is_norm and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(noise * (0.1 if is_norm else 1.0 / math.sqrt(max(param.shape[-1], 1))))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny model saved as ``ImageReward.pt`` in the published layout (+ unused BLIP parts) and a tokenizer."""
    folder = tmp_path_factory.mktemp("imagereward")
    model = ImageRewardModel(VISION, TEXT)
    randomize_(model)
    state = model_state_dict_to_published(model)
    # parts of BLIP_Pretrain the score does not use, present in the real file's state dict
    state["blip.vision_proj.weight"] = torch.randn(8, VISION["hidden_size"])
    state["blip.vision_proj.bias"] = torch.zeros(8)
    state["blip.text_proj.weight"] = torch.randn(8, TEXT["hidden_size"])
    state["blip.text_proj.bias"] = torch.zeros(8)
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(TEXT["max_position_embeddings"])[None]
    torch.save(state, folder / IMAGEREWARD_FILE)
    tiny_tokenizer().save_pretrained(folder / "tokenizer")
    return folder, state


def load(folder, **kwargs) -> ImageReward:
    return ImageReward.from_pretrained(folder, tokenizer=folder / "tokenizer", vision_config=VISION,
                                       text_config=TEXT, **kwargs)


# ------------------------------------------------------------------ independent reference on published keys

def _layer_norm(x, state, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], eps)


def _linear(x, state, prefix):
    return F.linear(x, state[prefix + ".weight"], state[prefix + ".bias"])


def _attention(q, k, v, heads, additive_mask=None):
    b, lq, d = q.shape
    split = lambda t: t.view(b, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    if additive_mask is not None:
        scores = scores + additive_mask
    return (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, lq, d)


def reference_vit(pixels, state, heads, patch):
    p = "blip.visual_encoder."
    x = F.conv2d(pixels, state[p + "patch_embed.proj.weight"], state[p + "patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state[p + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + state[p + "pos_embed"]
    n_blocks = len({k.split(".")[3] for k in state if k.startswith(p + "blocks.")})
    for i in range(n_blocks):
        b = f"{p}blocks.{i}."
        h = _layer_norm(x, state, b + "norm1", 1e-6)
        q, k, v = _linear(h, state, b + "attn.qkv").chunk(3, dim=-1)  # BLIP: reshape(B, N, 3, heads, hd)
        x = x + _linear(_attention(q, k, v, heads), state, b + "attn.proj")
        h = _layer_norm(x, state, b + "norm2", 1e-6)
        x = x + _linear(F.gelu(_linear(h, state, b + "mlp.fc1")), state, b + "mlp.fc2")
    return _layer_norm(x, state, p + "norm", 1e-6)


def reference_score(pixels, input_ids, mask, state, vision_heads, text_heads, patch):
    image_tokens = reference_vit(pixels, state, vision_heads, patch)
    p = "blip.text_encoder."
    positions = torch.arange(input_ids.shape[1])
    x = (state[p + "embeddings.word_embeddings.weight"][input_ids]
         + state[p + "embeddings.position_embeddings.weight"][positions])
    x = _layer_norm(x, state, p + "embeddings.LayerNorm", 1e-12)
    additive = (1.0 - mask[:, None, None, :].float()) * -10000.0  # BERT's extended attention mask
    n_layers = len({k.split(".")[4] for k in state if k.startswith(p + "encoder.layer.")})
    for i in range(n_layers):
        lp = f"{p}encoder.layer.{i}."
        a = "attention."
        ctx = _attention(_linear(x, state, lp + a + "self.query"), _linear(x, state, lp + a + "self.key"),
                         _linear(x, state, lp + a + "self.value"), text_heads, additive)
        x = _layer_norm(_linear(ctx, state, lp + a + "output.dense") + x, state, lp + a + "output.LayerNorm", 1e-12)
        c = "crossattention."
        ctx = _attention(_linear(x, state, lp + c + "self.query"), _linear(image_tokens, state, lp + c + "self.key"),
                         _linear(image_tokens, state, lp + c + "self.value"), text_heads)
        x = _layer_norm(_linear(ctx, state, lp + c + "output.dense") + x, state, lp + c + "output.LayerNorm", 1e-12)
        h = F.gelu(_linear(x, state, lp + "intermediate.dense"))
        x = _layer_norm(_linear(h, state, lp + "output.dense") + x, state, lp + "output.LayerNorm", 1e-12)
    h = x[:, 0]
    for i in (0, 2, 4, 6, 7):
        h = _linear(h, state, f"mlp.layers.{i}")
    return (h.squeeze(-1) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


# ------------------------------------------------------------------------------------------------- tests

def test_key_mapping_round_trips_and_uses_published_names():
    model = ImageRewardModel(VISION, TEXT)
    keys = list(model.state_dict())
    published_keys = [model_to_published_key(k) for k in keys]
    assert [published_to_model_key(k) for k in published_keys] == keys
    assert len(set(published_keys)) == len(keys)
    for key in ("blip.visual_encoder.cls_token", "blip.visual_encoder.pos_embed",
                "blip.visual_encoder.patch_embed.proj.weight", "blip.visual_encoder.blocks.1.attn.qkv.bias",
                "blip.visual_encoder.blocks.0.attn.proj.weight", "blip.visual_encoder.blocks.1.mlp.fc2.weight",
                "blip.visual_encoder.blocks.0.norm1.weight", "blip.visual_encoder.norm.bias",
                "blip.text_encoder.embeddings.word_embeddings.weight",
                "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight",
                "blip.text_encoder.encoder.layer.0.output.LayerNorm.bias", "mlp.layers.7.weight"):
        assert key in published_keys, key
    assert published_to_model_key("blip.visual_encoder.blocks.0.attn.qkv.weight") == \
        "visual_encoder.encoder.layers.0.self_attn.qkv.weight"
    assert published_to_model_key("blip.visual_encoder.blocks.0.attn.qkvx.weight") is None
    assert published_to_model_key("something.else") is None
    # cross-attention keys/values read the vision width; no token-type embeddings (BLIP's med BERT)
    state = model.state_dict()
    assert state["text_encoder.encoder.layer.0.crossattention.self.key.weight"].shape == (16, 24)
    assert not any("token_type" in k for k in state)


def test_load_and_score_match_reference(published, fixed_images):
    folder, state = published
    reward = load(folder)
    assert reward.tokenizer.model_max_length == 35
    assert reward.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(WORDS), len(WORDS) + 1]
    out = reward(fixed_images, PROMPTS)
    input_ids, mask = reward.tokenize(PROMPTS)
    assert input_ids.shape == (2, 35) and (input_ids[:, 0] == WORDS.index("[CLS]")).all()
    assert mask[0].sum() == 5 and mask[1].sum() == 9  # [CLS] + words + [SEP]; the rest is padding
    with torch.no_grad():
        pixels = ImageTransform(size=32)(fixed_images)
        expected = reference_score(pixels, input_ids, mask, state, vision_heads=2, text_heads=2, patch=8)
    assert torch.allclose(out.scores, expected, atol=1e-4), (out.scores, expected)
    assert torch.allclose(out.components["raw"], expected * IMAGEREWARD_STD + IMAGEREWARD_MEAN, atol=1e-4)
    assert out.valid.all() and out.scores.dtype == torch.float32
    # the score depends on both the image and the prompt
    swapped = reward(fixed_images, PROMPTS[::-1]).scores
    assert not torch.allclose(swapped, out.scores, atol=1e-4)
    assert not torch.allclose(reward(fixed_images.flip(0), PROMPTS).scores, out.scores, atol=1e-4)


def test_build_reward_by_name_and_gradient(published, fixed_images):
    folder, _ = published
    assert "imagereward" in registered_rewards()
    reward = build_reward({"name": "imagereward", "kwargs": {"pretrained": str(folder / IMAGEREWARD_FILE),
                                                             "tokenizer": str(folder / "tokenizer"),
                                                             "vision_config": VISION, "text_config": TEXT}})
    assert isinstance(reward, ImageReward) and reward.spec.differentiable
    assert reward.spec.nominal_range == (-2.5, 2.5)
    images = fixed_images.clone().requires_grad_(True)
    reward(images, PROMPTS).scores.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_key_mismatch_names_the_published_keys(published, tmp_path):
    folder, state = published
    bad = dict(state)
    bad["blip.visual_encoder.blocks.0.attn.qkv_fused.weight"] = bad.pop("blip.visual_encoder.blocks.0.attn.qkv.weight")
    file = tmp_path / IMAGEREWARD_FILE
    torch.save(bad, file)
    with pytest.raises(CheckpointKeyError) as err:
        ImageReward.from_pretrained(file, tokenizer=folder / "tokenizer", vision_config=VISION, text_config=TEXT)
    message = str(err.value)
    assert "blip.visual_encoder.blocks.0.attn.qkv.weight" in message  # missing
    assert "blip.visual_encoder.blocks.0.attn.qkv_fused.weight" in message  # unexpected
    assert str(file) in message

    no_head = {k: v for k, v in state.items() if k != "mlp.layers.7.bias"}
    with pytest.raises(CheckpointKeyError, match=r"mlp\.layers\.7\.bias"):
        convert_published_state_dict(no_head, ImageRewardModel(VISION, TEXT))

    wrong_width = dict(TEXT, hidden_size=32)  # architecture that does not fit the file → shape error
    with pytest.raises(CheckpointKeyError, match="wrong shapes"):
        ImageReward.from_pretrained(folder, tokenizer=folder / "tokenizer", vision_config=VISION,
                                    text_config=wrong_width)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no 'ImageReward.pt'"):
        ImageReward.from_pretrained(empty, tokenizer=folder / "tokenizer", vision_config=VISION, text_config=TEXT)


def test_input_and_tokenizer_errors(published, fixed_images):
    folder, _ = published
    reward = load(folder)
    with pytest.raises(FlowAlignError, match="needs prompts"):
        reward(fixed_images, None)
    with pytest.raises(FlowAlignError, match="prompts must be a list of 2"):
        reward(fixed_images, ["only one"])
    with pytest.raises(FlowAlignError, match=r"\[0, 1\]"):
        reward(fixed_images * 3, PROMPTS)
    with pytest.raises(ValueError, match="embedding has only 10 rows"):
        ImageReward.from_config(tiny_tokenizer(), VISION, dict(TEXT, vocab_size=10))
    with pytest.raises(TypeError, match="text_config"):
        ImageRewardModel(VISION, text_config=[("hidden_size", 16)])


def test_default_architecture_is_the_published_one():
    """BLIP ViT-L/16-224 (eps 1e-6) + med BERT-base (vocab 30524, cross-attn width 1024) + 768-wide MLP."""
    with torch.device("meta"):  # shapes only: no memory for the ~446M parameters
        model = ImageRewardModel()
    assert model.visual_encoder.config.layer_norm_eps == 1e-6 and model.visual_encoder.config.hidden_act == "gelu"
    assert model.text_encoder.config.layer_norm_eps == 1e-12 and model.image_size == 224
    shapes = {k: tuple(v.shape) for k, v in model_state_dict_to_published(model).items()}
    assert shapes["blip.visual_encoder.cls_token"] == (1, 1, 1024)
    assert shapes["blip.visual_encoder.pos_embed"] == (1, 197, 1024)
    assert shapes["blip.visual_encoder.patch_embed.proj.weight"] == (1024, 3, 16, 16)
    assert shapes["blip.visual_encoder.blocks.23.attn.qkv.weight"] == (3072, 1024)
    assert shapes["blip.visual_encoder.blocks.23.mlp.fc1.weight"] == (4096, 1024)
    assert "blip.visual_encoder.blocks.24.norm1.weight" not in shapes
    assert shapes["blip.text_encoder.embeddings.word_embeddings.weight"] == (30524, 768)
    assert shapes["blip.text_encoder.embeddings.position_embeddings.weight"] == (512, 768)
    assert shapes["blip.text_encoder.encoder.layer.11.crossattention.self.key.weight"] == (768, 1024)
    assert "blip.text_encoder.encoder.layer.12.output.dense.weight" not in shapes
    assert shapes["mlp.layers.0.weight"] == (1024, 768) and shapes["mlp.layers.7.weight"] == (1, 16)
    assert model.text_encoder.encoder.layer[0].attention.self.num_attention_heads == 12
    assert model.visual_encoder.encoder.layers[0].self_attn.num_heads == 16



def test_crop_rounds_like_torchvision_center_crop(published):
    """40×59 → 32×47: 47 − 32 = 15 ≡ 3 (mod 4), where BLIP's torchvision ``CenterCrop`` (round half to even:
    left offset 8) and the transformers processors' floor rule (offset 7) differ by one pixel."""
    from torchvision import transforms as T

    folder, state = published
    reward = load(folder)
    images = torch.rand(2, 3, 40, 59, generator=torch.Generator().manual_seed(3))
    resized = T.Resize(32, interpolation=T.InterpolationMode.BICUBIC, antialias=True)(images)
    normalize = T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    expected_pixels = normalize(T.CenterCrop(32)(resized))
    assert resized.shape[-2:] == (32, 47) and torch.equal(T.CenterCrop(32)(resized), resized[..., 8:40])
    pixels = reward.transform(images)
    assert pixels.shape == (2, 3, 32, 32) and torch.allclose(pixels, expected_pixels, atol=1e-5)
    input_ids, mask = reward.tokenize(PROMPTS)
    heads = dict(vision_heads=2, text_heads=2, patch=8)
    with torch.no_grad():
        out = reward(images, PROMPTS)
        expected = reference_score(expected_pixels, input_ids, mask, state, **heads)
        floor_cropped = reference_score(normalize(resized[..., 7:39]), input_ids, mask, state, **heads)
    assert torch.allclose(out.scores, expected, atol=1e-4), (out.scores, expected)
    assert not torch.allclose(floor_cropped, expected, atol=1e-3)  # the one-pixel shift changes the score
