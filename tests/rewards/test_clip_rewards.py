"""CLIPScore and PickScore: tiny transformers CLIP saved in the published (transformers) layout."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessor, CLIPModel

from flowalign.models.tokenizers import build_clip_tokenizer
from reward_models.clipscore import CLIPScore
from reward_models.hub import CheckpointKeyError
from reward_models.pickscore import PickScore

from reward_test_utils import tiny_clip_config

PROMPTS = ["a red circle on a white background", "a photo of a cat"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config()).eval()
    model.save_pretrained(folder)
    build_clip_tokenizer().save_pretrained(folder)
    return folder, model


def _reference_logits(model: CLIPModel, images: torch.Tensor, prompts) -> torch.Tensor:
    """transformers' own processor + CLIPModel.forward: logit_scale·cos per pair."""
    size = model.config.vision_config.image_size
    processor = CLIPImageProcessor(do_rescale=False, size={"shortest_edge": size},
                                   crop_size={"height": size, "width": size})
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    tokens = build_clip_tokenizer()(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    return out.logits_per_image.diagonal()


def test_pickscore_loads_and_matches_clip_forward(clip_folder, fixed_images):
    folder, model = clip_folder
    reward = PickScore.from_pretrained(folder, processor=folder)
    with torch.no_grad():
        out = reward(fixed_images, PROMPTS)
    assert out.scores.shape == (2,) and out.valid.all()
    assert torch.allclose(out.scores, _reference_logits(model, fixed_images, PROMPTS), atol=1e-4)
    assert torch.allclose(out.scores, model.logit_scale.exp() * out.components["cosine"], atol=1e-5)


def test_clipscore_formula_and_gradient(clip_folder, fixed_images):
    folder, model = clip_folder
    reward = CLIPScore.from_pretrained(folder, clip_at_zero=False, weight=2.5)
    images = fixed_images.clone().requires_grad_(True)
    out = reward(images, PROMPTS)
    cos = _reference_logits(model, fixed_images, PROMPTS) / model.logit_scale.exp().detach()
    assert torch.allclose(out.scores.detach(), 2.5 * cos, atol=1e-5)
    out.scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    clipped = CLIPScore.from_pretrained(folder)(fixed_images, PROMPTS)
    assert torch.allclose(clipped.scores, 100 * clipped.components["cosine"].clamp(min=0), atol=1e-5)


def test_clip_rewards_crop_like_the_transformers_processor(clip_folder):
    """40×59 → 32×47: 47 − 32 = 15 ≡ 3 (mod 4), where torchvision's round rule crops one pixel further."""
    folder, model = clip_folder
    images = torch.rand(2, 3, 40, 59, generator=torch.Generator().manual_seed(3))
    expected = _reference_logits(model, images, PROMPTS)
    with torch.no_grad():
        pick = PickScore.from_pretrained(folder, processor=folder)(images, PROMPTS).scores
        clip = CLIPScore.from_pretrained(folder, clip_at_zero=False, weight=1.0)(images, PROMPTS).scores
    assert torch.allclose(pick, expected, atol=1e-4)
    assert torch.allclose(clip, expected / model.logit_scale.exp(), atol=1e-5)
    assert PickScore.from_config(tiny_clip_config()).embedder.transform.crop_offset == "floor"  # default transform


def test_pickscore_gradient_wrt_pixels(clip_folder, fixed_images):
    reward = PickScore.from_config(tiny_clip_config())
    images = fixed_images.clone().requires_grad_(True)
    reward(images, PROMPTS).scores.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_mismatched_checkpoint_names_keys(clip_folder, tmp_path):
    folder, _ = clip_folder
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (folder / name).exists():
            (tmp_path / name).write_bytes((folder / name).read_bytes())
    state = load_file(str(folder / "model.safetensors"))
    state.pop("visual_projection.weight")
    state["extra_head.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointKeyError) as err:
        PickScore.from_pretrained(tmp_path, processor=folder)
    assert "visual_projection.weight" in str(err.value) and str(tmp_path) in str(err.value)


def test_build_reward_from_config_loads_weights(clip_folder, fixed_images):
    from reward_models import build_reward

    folder, _ = clip_folder
    direct = PickScore.from_pretrained(folder, processor=folder)(fixed_images, PROMPTS).scores
    built = build_reward({"name": "pickscore", "kwargs": {"pretrained": str(folder), "processor": str(folder)}})
    # two loads of one folder: float32 rounding at most (scores = logit_scale·cos, |score| ≤ ~14); a wrong or
    # missing weight moves them by far more than 1e-5
    torch.testing.assert_close(built(fixed_images, PROMPTS).scores, direct, rtol=1e-5, atol=1e-5)
    clip = build_reward({"name": "clipscore", "kwargs": {"pretrained": str(folder)}})
    assert isinstance(clip, CLIPScore) and clip.spec.differentiable


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        CLIPScore.from_pretrained(tmp_path / "nothing_here")
