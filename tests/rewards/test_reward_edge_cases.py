"""Reward edge cases (issue 21): a CLIP model's own preprocessing config (folder or hub repo), the aesthetic head's
checksum, and CLIPScore on prompts over 77 tokens."""

import hashlib
import json
import re
import warnings

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from transformers import CLIPImageProcessor, CLIPModel

from flowalign.models.tokenizers import build_clip_tokenizer
from reward_models import aesthetic
from reward_models.aesthetic import AESTHETIC_HEAD_SHA256, DEFAULT_AESTHETIC_HEAD, AestheticHead, AestheticScore
from reward_models.clip_common import preprocessor_config, read_image_transform
from reward_models.clipscore import CLIPScore
from reward_models.hub import ChecksumError
from reward_models.preprocess import ImageTransform

from reward_test_utils import tiny_clip_config

PROMPTS = ["a red circle on a white background", "a photo of a cat"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.2, 0.3)  # far from OpenAI's (0.48, 0.46, 0.41) / (0.27, 0.26, 0.28)


@pytest.fixture(scope="module")
def custom_clip(tmp_path_factory):
    """A tiny CLIP saved with a processor config that differs from OpenAI's in every field we read."""
    folder = tmp_path_factory.mktemp("custom_clip")
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config()).eval()
    model.save_pretrained(folder)
    build_clip_tokenizer().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, image_mean=list(MEAN),
                       image_std=list(STD), resample=2).save_pretrained(folder)
    return folder, model


def test_preprocessing_is_read_from_the_models_own_config(custom_clip, fixed_images):
    folder, model = custom_clip
    reward = CLIPScore.from_pretrained(folder, clip_at_zero=False, weight=1.0)
    assert reward.embedder.transform == ImageTransform(size=32, resize_size=36, mean=MEAN, std=STD,
                                                       interpolation="bilinear", crop_offset="floor")
    # reference: transformers' own processor from the same folder, then CLIPModel
    processor = CLIPImageProcessor.from_pretrained(folder, do_rescale=False)
    pixels = processor(images=list(fixed_images), return_tensors="pt")["pixel_values"]
    tokens = build_clip_tokenizer()(PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        reference = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                          pixel_values=pixels).logits_per_image.diagonal() / model.logit_scale.exp()
        ours = reward(fixed_images, PROMPTS).scores
        openai = CLIPScore(reward.embedder.__class__(model, reward.embedder.tokenizer, padding=True),
                           clip_at_zero=False, weight=1.0)(fixed_images, PROMPTS).scores
    # antialiased torch bilinear vs transformers' resize of the same float images: cosines agree to 1e-3
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-3)
    assert (openai - reference).abs().max() > 1e-2  # OpenAI's values would be clearly wrong for this model


def test_a_hub_repo_config_is_fetched(custom_clip, monkeypatch):
    folder, _ = custom_clip

    def fake_download(repo, filename, **kwargs):
        if repo == "someone/tiny-clip":
            return str(folder / filename)
        if repo == "someone/no-config":
            raise EntryNotFoundError(f"{filename} not in {repo}")
        raise LocalEntryNotFoundError("offline and not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    config, source = preprocessor_config("someone/tiny-clip")
    assert config["image_mean"] == list(MEAN) and source.endswith("preprocessor_config.json")
    assert read_image_transform("someone/tiny-clip", 224, crop_offset="floor").std == STD
    assert read_image_transform("someone/no-config", 224, crop_offset="floor") == ImageTransform(crop_offset="floor")
    with pytest.warns(UserWarning, match="someone/offline.*OpenAI CLIP preprocessing"):
        assert read_image_transform("someone/offline", 224, crop_offset="round") == ImageTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a local folder without a config: the defaults, silently (as designed)
        assert read_image_transform(folder.parent, 224, crop_offset="round") == ImageTransform()


@pytest.mark.parametrize("entry,match", [({"resample": 0}, "resample"), ({"do_center_crop": False}, "do_center_crop"),
                                         ({"crop_size": {"height": 32, "width": 24}}, "crop_size"),
                                         ({"image_mean": [0.5]}, "3 values")])
def test_unsupported_processor_configs_are_named(tmp_path, entry, match):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32} | entry))
    with pytest.raises(ValueError, match=f"preprocessor_config.json.*{match}"):
        read_image_transform(tmp_path, 32, crop_offset="floor")


@pytest.fixture
def head_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / aesthetic.AESTHETIC_HEAD_FILE
    torch.save(AestheticHead(16).state_dict(), path)
    return path


def test_the_default_mirrors_head_is_checked_against_the_original_sha256(head_file, monkeypatch):
    monkeypatch.setattr(aesthetic, "resolve_file", lambda spec, name: head_file)  # "downloaded" from the mirror
    with pytest.raises(ChecksumError, match=f"{re.escape(head_file.name)}.*expected {AESTHETIC_HEAD_SHA256}"):
        AestheticScore.load_head(DEFAULT_AESTHETIC_HEAD, embed_dim=16)


def test_a_given_sha256_is_checked_and_own_heads_load(head_file):
    digest = hashlib.sha256(head_file.read_bytes()).hexdigest()
    assert isinstance(AestheticScore.load_head(head_file, embed_dim=16, sha256=digest), AestheticHead)
    assert isinstance(AestheticScore.load_head(head_file, embed_dim=16), AestheticHead)  # own file: unchecked
    with pytest.raises(ChecksumError, match=f"its sha256 is {digest}"):
        AestheticScore.load_head(head_file, embed_dim=16, sha256="0" * 64)


def test_clipscore_keeps_the_end_of_text_token_of_prompts_over_77_tokens(custom_clip, fixed_images):
    """Truncation keeps EOT (pooled by CLIP): two long prompts differing only after the cut score the same, and
    the score depends on the words kept (torchmetrics drops EOT and would score any two long prompts alike)."""
    folder, _ = custom_clip
    reward = CLIPScore.from_pretrained(folder, clip_at_zero=False, weight=1.0)
    long = " ".join(["red circle"] * 60)
    ids = reward.embedder.tokenizer([long + " cat"], truncation=True, max_length=77)["input_ids"][0]
    assert len(ids) == 77 and ids[-1] == reward.embedder.tokenizer.eos_token_id
    images = fixed_images[:1].expand(3, -1, -1, -1)
    with torch.no_grad():
        scores = reward(images, [long + " cat", long + " dog", "blue " + long]).scores
    torch.testing.assert_close(scores[0], scores[1], rtol=0, atol=1e-6)  # same 77 tokens, same batch: rounding
    assert (scores[0] - scores[2]).abs() > 1e-4
