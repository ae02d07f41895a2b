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

from reward_models.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform, shortest_edge_size

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


@pytest.mark.parametrize("shape", [(300, 420), (420, 300), (224, 224), (100, 80)])
def test_crop_transform_matches_torchvision_tensor_ops(shape):
    image = _big_image(*shape)
    reference = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                           T.CenterCrop(224), T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])(image)
    ours = ImageTransform(size=224)(image)
    assert ours.shape == (1, 3, 224, 224)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_crop_transform_matches_transformers_clip_processor():
    from transformers import CLIPImageProcessor

    image = _big_image()
    processor = CLIPImageProcessor(do_rescale=False)
    reference = processor(images=image[0], return_tensors="pt")["pixel_values"]
    assert torch.allclose(ImageTransform(size=224)(image), reference, atol=1e-5)


def test_crop_transform_close_to_pil_pipeline():
    """OpenAI CLIP / aesthetic predictor / PickScore pipelines resize a PIL image."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    pil, quantized = _to_pil(_big_image())
    reference = CLIPImageProcessorPil()(images=pil, return_tensors="pt")["pixel_values"]
    diff = (ImageTransform(size=224)(quantized) - reference).abs()
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
