"""FlowModel.encode_pixels (the inverse of decode: VAE mean and the pipeline's latent normalisation, in the
latent layout of initial_noise) and FlowModel.pooled_text (a fixed-size text summary), for SD3, Flux and Wan."""

from pathlib import Path

import pytest
import torch

from flowalign.errors import ConfigError
from flowalign.models import Geometry
from flowalign.models.flux import FluxModel
from flowalign.models.sd3 import SD3Model
from flowalign.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline
from flowalign.models.wan import WanModel

IMAGE = Geometry(32, 32)
VIDEO = Geometry(32, 32, 9)
PROMPTS = ["a red circle", "two blue squares left of a green triangle"]
TOY_MODEL = Path(__file__).resolve().parents[1] / "assets" / "toy-sd3"
# Same module, same input, same ops as the hand computation: equal up to float32 rounding at most.
SAME_OPS = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def models():
    return {"sd3": (SD3Model(tiny_sd3_pipeline(seed=0)), IMAGE), "flux": (FluxModel(tiny_flux_pipeline(seed=0)), IMAGE),
            "wan": (WanModel(tiny_wan_pipeline(seed=0)), VIDEO)}


def decoded(model, geometry, seed=0):
    z = model.initial_noise(geometry, [torch.Generator().manual_seed(seed + i) for i in range(2)])
    with torch.no_grad():
        return z, model.decode(z, geometry)


@pytest.mark.parametrize("family", ["sd3", "flux", "wan"])
def test_encode_of_decode_has_the_noise_layout(models, family):
    model, geometry = models[family]
    z, pixels = decoded(model, geometry)
    latents = model.encode_pixels(pixels, geometry)
    assert latents.shape == z.shape and latents.dtype == torch.float32
    assert not latents.requires_grad
    with torch.no_grad():
        assert model.decode(latents, geometry).shape == pixels.shape  # decode takes encode's layout back


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_encode_is_the_vae_mean_with_shift_and_scale(models, family):
    model, geometry = models[family]
    _, pixels = decoded(model, geometry, seed=5)
    vae = model.pipeline.vae
    with torch.no_grad():
        mean = vae.encode(pixels * 2 - 1).latent_dist.mean
    by_hand = (mean - vae.config.shift_factor) * vae.config.scaling_factor  # (B, C, h, w)
    latents = model.encode_pixels(pixels, geometry)
    if family == "flux":  # packed 2x2 patches: token (i, j) holds channels c of pixels (2i+a, 2j+b) as c·4 + 2a + b
        b, c, h, w = by_hand.shape
        by_hand = by_hand.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
        unpacked = model.pipeline._unpack_latents(latents, geometry.height, geometry.width,
                                                  model.pipeline.vae_scale_factor)
        torch.testing.assert_close(unpacked, (mean - vae.config.shift_factor) * vae.config.scaling_factor, **SAME_OPS)
    torch.testing.assert_close(latents, by_hand, **SAME_OPS)


def test_wan_encode_normalises_per_channel_with_the_vae_statistics(models):
    model, geometry = models["wan"]
    _, video = decoded(model, geometry, seed=3)  # (B, T, 3, H, W)
    vae = model.pipeline.vae
    with torch.no_grad():
        mean = vae.encode(video.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mean  # (B, z, T_lat, h, w)
    stats_mean = torch.tensor(vae.config.latents_mean)
    stats_std = torch.tensor(vae.config.latents_std)
    assert len(set(vae.config.latents_std)) > 1  # the tiny VAE's statistics differ per channel
    by_hand = torch.stack([(mean[:, k] - stats_mean[k]) / stats_std[k] for k in range(mean.shape[1])], dim=1)
    torch.testing.assert_close(model.encode_pixels(video, geometry), by_hand, **SAME_OPS)


def test_trained_toy_vae_round_trips_rendered_scenes():
    """With the shipped toy model's trained VAE, decode(encode(x)) ≈ x, and the latents follow the calibration
    (shift/scale chosen at pretraining so that latents have mean ≈ 0 and std ≈ 1 on the data)."""
    from diffusers import StableDiffusion3Pipeline

    from flowalign.toy.scenes import generate_scenes

    model = SD3Model(StableDiffusion3Pipeline.from_pretrained(str(TOY_MODEL)))
    images, _, _ = generate_scenes(8, 0, "train")
    geometry = model.default_geometry()
    latents = model.encode_pixels(images, geometry)
    with torch.no_grad():
        back = model.decode(latents, geometry)
    # measured 0.006 mean absolute error (shape edges blur most); a wrong shift or scale gives > 0.05
    assert (back - images).abs().mean() < 0.02
    assert abs(float(latents.mean())) < 0.2 and 0.8 < float(latents.std()) < 1.2


@pytest.mark.parametrize("family", ["sd3", "flux", "wan"])
def test_encode_rejects_bad_pixels(models, family):
    model, geometry = models[family]
    shape = (1, geometry.num_frames, 3, 32, 32) if family == "wan" else (1, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        model.encode_pixels(torch.full(shape, 2.0), geometry)
    with pytest.raises(ConfigError, match="expects pixels"):
        model.encode_pixels(torch.rand(1, 3, 16, 16), geometry)
    if family == "wan":  # a video model takes (B, F, 3, H, W), not single images
        with pytest.raises(ConfigError, match=r"\(B, F, 3, H, W\)"):
            model.encode_pixels(torch.rand(1, 3, 32, 32), geometry)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_pooled_text_is_the_pooled_clip_embedding(models, family):
    model, _ = models[family]
    cond = model.encode_prompts(PROMPTS)
    pooled = model.pooled_text(cond)
    assert pooled.dtype == torch.float32 and pooled.shape == (2, model.transformer.config.pooled_projection_dim)
    assert torch.equal(pooled, cond.tensors["pooled_prompt_embeds"].float())
    assert not torch.allclose(pooled[0], pooled[1])


def test_wan_pooled_text_averages_the_real_tokens_only(models):
    model, _ = models["wan"]
    cond = model.encode_prompts(PROMPTS)
    pooled = model.pooled_text(cond)
    embeds = cond.tensors["prompt_embeds"].float()
    lengths = model.pipeline.tokenizer(PROMPTS, padding="max_length", max_length=model.max_sequence_length,
                                       truncation=True, return_tensors="pt").attention_mask.sum(1)
    assert pooled.shape == (2, embeds.shape[-1]) and pooled.dtype == torch.float32
    for i, n in enumerate(lengths.tolist()):
        assert n < embeds.shape[1]  # the prompt is padded, so a plain mean would differ
        torch.testing.assert_close(pooled[i], embeds[i, :n].mean(0), **SAME_OPS)
        assert not torch.allclose(pooled[i], embeds[i].mean(0))
