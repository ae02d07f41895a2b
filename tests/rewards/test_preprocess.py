"""The torch transforms against the originals: torchvision/open_clip tensor ops to 1e-5, PIL loosely.

PIL resizes uint8 images with its own bicubic filter (a = −0.5, vs −0.75 in torch) and rounds to
uint8, so PIL references agree only to about a gray level (measured: mean 0.004, max 0.016 on the
smooth test image); we require mean |Δ| < 0.01 and max |Δ| < 0.05 in normalized units (1/255 ≈ 0.015).
"""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

from reward_models.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform, center_crop, shortest_edge_size

PIL_MEAN_TOL, PIL_MAX_TOL = 0.01, 0.05


def _big_image(height=300, width=420) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    coarse = torch.rand(1, 3, height // 20, width // 20, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


def _to_pil(image: torch.Tensor) -> tuple[Image.Image, torch.Tensor]:
    """PIL image and the exact [0, 1] tensor it holds (after uint8 quantization)."""
    array = (image[0] * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    quantized = torch.from_numpy(array).permute(2, 0, 1).float().unsqueeze(0) / 255
    return Image.fromarray(np.ascontiguousarray(array)), quantized


# (300, 422): resized to 224×315, 315 − 224 = 91 ≡ 3 (mod 4), where round(91 / 2) = 46 but 91 // 2 = 45
ODD_CROP_SHAPES = [(300, 422), (422, 300)]


@pytest.mark.parametrize("shape", [(300, 420), (420, 300), (224, 224), (100, 80)] + ODD_CROP_SHAPES)
def test_crop_transform_matches_torchvision_tensor_ops(shape):
    image = _big_image(*shape)
    reference = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                           T.CenterCrop(224), T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])(image)
    ours = ImageTransform(size=224)(image)
    assert ours.shape == (1, 3, 224, 224)
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("shape", [(300, 420)] + ODD_CROP_SHAPES)
def test_crop_transform_matches_transformers_clip_processor(shape):
    """transformers' CLIPImageProcessor crops at ``(H − h) // 2`` (``crop_offset="floor"``)."""
    from transformers import CLIPImageProcessor

    image = _big_image(*shape)
    processor = CLIPImageProcessor(do_rescale=False)
    reference = processor(images=image[0], return_tensors="pt")["pixel_values"]
    assert torch.allclose(ImageTransform(size=224, crop_offset="floor")(image), reference, atol=1e-5)
    if shape in ODD_CROP_SHAPES:  # the torchvision rule is one pixel off here
        assert not torch.allclose(ImageTransform(size=224, crop_offset="round")(image), reference, atol=1e-3)


@pytest.mark.parametrize("height", [223, 224, 225, 226, 227])
def test_center_crop_offset_rules(height):
    image = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1).expand(1, 3, height, 1)
    assert center_crop(image, (224, 1), "floor")[0, 0, 0, 0].item() == max(height - 224, 0) // 2
    assert center_crop(image, (224, 1), "round")[0, 0, 0, 0].item() == max(round((height - 224) / 2), 0)
    with pytest.raises(ValueError, match="'round' or 'floor'"):
        center_crop(image, 224, "ceil")


def test_crop_transform_close_to_pil_pipeline():
    """OpenAI CLIP / aesthetic predictor / PickScore pipelines resize a PIL image."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    pil, quantized = _to_pil(_big_image())
    reference = CLIPImageProcessorPil()(images=pil, return_tensors="pt")["pixel_values"]
    diff = (ImageTransform(size=224, crop_offset="floor")(quantized) - reference).abs()
    assert diff.mean() < PIL_MEAN_TOL and diff.max() < PIL_MAX_TOL


@pytest.mark.parametrize("shape", [(300, 420), (420, 301), (100, 80)])
def test_letterbox_matches_open_clip_tensor_ops(shape):
    from open_clip.transform import center_crop_or_pad

    image = _big_image(*shape)
    h, w = shape
    scale = 224 / max(h, w)
    resized = TF.resize(image, [round(h * scale), round(w * scale)], interpolation=T.InterpolationMode.BICUBIC,
                        antialias=True)
    reference = TF.normalize(center_crop_or_pad(resized, [224, 224], fill=0), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    ours = ImageTransform(size=224, mode="letterbox")(image)
    assert torch.allclose(ours, reference, atol=1e-5)
    # the padding is zero pixels, i.e. -mean/std after normalization
    if w > h:
        assert torch.allclose(ours[0, :, 0, :], (-torch.tensor(OPENAI_CLIP_MEAN) / torch.tensor(OPENAI_CLIP_STD))[:, None])


@pytest.mark.parametrize("shape", [(224, 160), (160, 224), (224, 224), (224, 223)])
def test_letterbox_pads_images_whose_longer_side_already_fits(shape):
    from open_clip.transform import center_crop_or_pad

    image = _big_image(*shape)
    ours = ImageTransform(size=224, mode="letterbox")(image)
    assert ours.shape == (1, 3, 224, 224)
    reference = TF.normalize(center_crop_or_pad(image, [224, 224], fill=0), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_letterbox_close_to_open_clip_pil_preprocess():
    """open_clip's ``resize_mode='longest'`` PIL transform reproduces HPSv2's ResizeMaxSize geometry."""
    from open_clip.transform import image_transform

    pil, quantized = _to_pil(_big_image(300, 420))
    reference = image_transform(224, is_train=False, resize_mode="longest", fill_color=0)(pil).unsqueeze(0)
    diff = (ImageTransform(size=224, mode="letterbox")(quantized) - reference).abs()
    assert diff.mean() < PIL_MEAN_TOL and diff.max() < PIL_MAX_TOL


def test_transform_is_differentiable_and_sizes():
    image = _big_image().requires_grad_(True)
    ImageTransform(size=224, mode="letterbox")(image).square().sum().backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    assert shortest_edge_size(300, 420, 224) == (224, 313)
