"""Aesthetic predictor and HPSv2: tiny architectures saved in the published key layouts."""

import pytest
import torch
from transformers import CLIPModel

from reward_models.aesthetic import AESTHETIC_HEAD_FILE, AestheticHead, AestheticScore
from reward_models.hpsv2 import HPS_FILES, HPSv2
from reward_models.hub import CheckpointKeyError
from reward_models.preprocess import ImageTransform

from reward_test_utils import TINY_OPEN_CLIP_CFG, tiny_clip_config

PROMPTS = ["a red circle", "a blue square"]


def test_aesthetic_head_has_published_key_layout():
    keys = set(AestheticHead(768).state_dict())
    assert keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    shapes = [tuple(AestheticHead(768).state_dict()[f"layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)]
    assert shapes == [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]


@pytest.fixture(scope="module")
def aesthetic_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aesthetic")
    torch.manual_seed(0)
    clip = CLIPModel(tiny_clip_config()).eval()
    clip.save_pretrained(folder / "clip")
    head = AestheticHead(clip.config.projection_dim).eval()
    torch.save(head.state_dict(), folder / AESTHETIC_HEAD_FILE)
    return folder, clip, head


def test_aesthetic_load_score_and_gradient(aesthetic_files, fixed_images):
    folder, clip, head = aesthetic_files
    reward = AestheticScore.from_pretrained(folder / "clip", head=folder)
    images = fixed_images.clone().requires_grad_(True)
    out = reward(images, None)
    with torch.no_grad():  # reference: CLIP image embedding, L2-normalized, through the head
        pixels = ImageTransform(size=32)(fixed_images)
        emb = clip.get_image_features(pixel_values=pixels).pooler_output
        expected = head(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    assert torch.allclose(out.scores.detach(), expected, atol=1e-5)
    out.scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_aesthetic_config_accepts_pretrained_like_the_other_rewards(aesthetic_files, fixed_images):
    from flowalign.errors import ConfigError
    from reward_models import build_reward

    folder, _, _ = aesthetic_files
    direct = AestheticScore.from_pretrained(folder / "clip", head=folder)(fixed_images, None).scores
    built = build_reward({"name": "aesthetic", "kwargs": {"pretrained": str(folder / "clip"), "head": str(folder)}})
    # two loads of one folder: float32 rounding at most (rtol 1e-5, atol 1e-6 for scores near 0)
    assert isinstance(built, AestheticScore)
    torch.testing.assert_close(built(fixed_images, None).scores, direct, rtol=1e-5, atol=1e-6)
    by_clip = build_reward({"name": "aesthetic", "kwargs": {"clip": str(folder / "clip"), "head": str(folder)}})
    torch.testing.assert_close(by_clip(fixed_images, None).scores, direct, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="'pretrained' or as 'clip', not both"):
        build_reward({"name": "aesthetic", "kwargs": {"pretrained": str(folder / "clip"),
                                                      "clip": str(folder / "clip"), "head": str(folder)}})


def test_aesthetic_head_key_mismatch_names_keys(aesthetic_files, tmp_path):
    folder, _, head = aesthetic_files
    state = head.state_dict()
    state["layers.1.weight"] = state.pop("layers.2.weight")
    bad = tmp_path / AESTHETIC_HEAD_FILE
    torch.save(state, bad)
    with pytest.raises(CheckpointKeyError) as err:
        AestheticScore.load_head(bad, embed_dim=16)
    assert "layers.2.weight" in str(err.value) and "layers.1.weight" in str(err.value) and str(bad) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no 'sac"):
        AestheticScore.load_head(empty)


@pytest.fixture(scope="module")
def hps_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    source = HPSv2.build_architecture(TINY_OPEN_CLIP_CFG)
    file = tmp_path_factory.mktemp("hps") / HPS_FILES["v2.1"]
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in source.model.state_dict().items()}}, file)
    return file, source


def test_hpsv2_load_score_matches_open_clip_and_gradient(hps_checkpoint, fixed_images):
    import open_clip

    file, source = hps_checkpoint
    reward = HPSv2.from_pretrained(file.parent, version="v2.1", model_cfg=TINY_OPEN_CLIP_CFG)
    images = fixed_images.clone().requires_grad_(True)
    out = reward(images, PROMPTS)
    with torch.no_grad():  # reference: open_clip's own encoders on the letterboxed pixels, cos per pair
        pixels = ImageTransform(size=32, mode="letterbox")(fixed_images)
        img = source.model.encode_image(pixels, normalize=True)
        txt = source.model.encode_text(open_clip.tokenize(PROMPTS), normalize=True)
    assert torch.allclose(out.scores.detach(), (img * txt).sum(-1), atol=1e-5)
    out.scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_hpsv2_checkpoint_key_mismatch(hps_checkpoint, tmp_path):
    _, source = hps_checkpoint
    state = dict(source.model.state_dict())
    state.pop("logit_scale")
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(CheckpointKeyError, match="logit_scale") as err:
        HPSv2.from_pretrained(bad, model_cfg=TINY_OPEN_CLIP_CFG)
    assert "bad.pt" in str(err.value)
    with pytest.raises(ValueError, match="version"):
        HPSv2.from_pretrained(bad, version="v3", model_cfg=TINY_OPEN_CLIP_CFG)
