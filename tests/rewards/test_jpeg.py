import io

import numpy as np
import pytest
import torch
from PIL import Image

from flowalign.errors import ConfigError
from reward_models import build_reward
from reward_models.jpeg import JpegCompressibility, JpegIncompressibility, jpeg_size_kb


def test_size_matches_pil_and_signs(fixed_images):
    sizes = jpeg_size_kb(fixed_images, quality=95)
    for image, size in zip(fixed_images, sizes):
        array = (image * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=95)
        assert size.item() == pytest.approx(len(buffer.getvalue()) / 1000.0)
    comp = JpegCompressibility()(fixed_images, None)
    incomp = build_reward("jpeg_incompressibility")(fixed_images, ["a", "b"])
    # exact by construction: byte counts of the same deterministic encoding, divided by 1000
    assert torch.equal(comp.scores, -sizes) and torch.equal(incomp.scores, sizes)
    # the smooth gradient compresses better than noise
    assert comp.scores[0] > comp.scores[1]
    assert comp.valid.all() and not JpegCompressibility.spec.differentiable


def test_quality_changes_size_and_is_validated(fixed_images):
    assert jpeg_size_kb(fixed_images[1:], 30) < jpeg_size_kb(fixed_images[1:], 95)
    with pytest.raises(ConfigError, match="quality"):
        JpegIncompressibility(quality=0)
