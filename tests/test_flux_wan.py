"""Flux and Wan adapters: our Euler loop == the pipelines' own latents; decode, loading, unsupported Wan 2.2."""

import pytest
import torch
from diffusers import WanPipeline

from flowalign.errors import ConfigError, UnsupportedModelError
from flowalign.models import Geometry, load_model
from flowalign.models.flux import FluxModel
from flowalign.models.tiny import tiny_flux_pipeline, tiny_wan_pipeline
from flowalign.models.wan import WanModel

PROMPTS = ["a red circle", "two blue squares left of a green triangle"]
NEGATIVES = ["blurry", "ugly, low quality"]
SEEDS = [3, 7]
FLUX_GEOMETRY = Geometry(32, 32)
WAN_GEOMETRY = Geometry(32, 32, 9)


def generators(seeds=SEEDS):
    return [torch.Generator().manual_seed(s) for s in seeds]


@torch.no_grad()
def euler(model, cond, geometry, steps, guidance_scale):
    x = model.initial_noise(geometry, generators())
    sig = model.schedule(steps, geometry)
    for i in range(steps):
        x = x + (sig[i + 1] - sig[i]) * model.velocity(x, sig[i], cond, geometry, guidance_scale)
    return x


@pytest.fixture(scope="module")
def flux_pipe():
    return tiny_flux_pipeline(seed=0)


@pytest.fixture(scope="module")
def wan_pipe():
    return tiny_wan_pipeline(seed=0)


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_flux_euler_loop_reproduces_the_pipeline(flux_pipe, guidance_embeds):
    """Tolerance: exact equality, exact by construction: our loop calls the pipeline's own transformer on the same
    batch with the same σ and the same float32 update, in the same process. Without guidance embeds:
    schnell-style, no dynamic shift."""
    pipe = flux_pipe if guidance_embeds else tiny_flux_pipeline(seed=1, guidance_embeds=False,
                                                                use_dynamic_shifting=False)
    model = FluxModel(pipe)
    expected = pipe(PROMPTS, height=32, width=32, num_inference_steps=3, guidance_scale=3.5,
                    generator=generators(), output_type="latent").images
    got = euler(model, model.encode_prompts(PROMPTS), FLUX_GEOMETRY, 3, 3.5)
    assert got.shape == expected.shape == (2, 64, 16)
    assert torch.equal(got, expected)


def test_flux_true_cfg_reproduces_the_pipeline(flux_pipe):
    """Batched [uncond; cond] vs the pipeline's two forwards. Tolerance atol 1e-5 on latents of magnitude ≤ ~4:
    float32 rounding of a batch of 4 rows against two batches of 2 (observed: exact)."""
    model = FluxModel(flux_pipe, true_cfg_scale=4.0)
    expected = flux_pipe(PROMPTS, negative_prompt=NEGATIVES, true_cfg_scale=4.0, height=32, width=32,
                         num_inference_steps=2, guidance_scale=3.5, generator=generators(), output_type="latent").images
    before = model.transformer_calls
    got = euler(model, model.encode_prompts(PROMPTS, NEGATIVES), FLUX_GEOMETRY, 2, 3.5)
    assert model.transformer_calls - before == 2  # one batched forward per step
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_flux_guidance_is_embedded_only_when_the_transformer_has_it(flux_pipe):
    geometry = FLUX_GEOMETRY
    no_embeds = FluxModel(tiny_flux_pipeline(1, guidance_embeds=False))
    for model, matters in [(FluxModel(flux_pipe), True), (no_embeds, False)]:
        cond = model.encode_prompts(PROMPTS[:1])
        x = model.initial_noise(geometry, generators([0]))
        with torch.no_grad():
            v1, v2 = (model.velocity(x, 0.7, cond, geometry, g) for g in (1.0, 5.0))
        assert torch.equal(v1, v2) != matters  # same module and inputs: without embeds, exactly the same call
        assert not model.uses_cfg(5.0)  # embedded guidance is never CFG


def test_flux_schedule_shifts_with_resolution(flux_pipe):
    model = FluxModel(flux_pipe)
    small, large = model.schedule(3, Geometry(16, 16)), model.schedule(3, Geometry(64, 64))
    assert small[0] == large[0] == 1 and small[-1] == large[-1] == 0
    assert (large[1:-1] > small[1:-1]).all()  # more tokens → larger μ → more time at high noise


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_wan_euler_loop_reproduces_the_pipeline(wan_pipe, guidance):
    """Tolerance: exact without CFG (exact by construction: the same transformer, batch and σ as the pipeline);
    atol 1e-5 with CFG on latents of magnitude ≤ ~4 (batched vs separate forwards; observed ~2.4e-6)."""
    model = WanModel(wan_pipe, geometry=WAN_GEOMETRY)
    expected = wan_pipe(PROMPTS, negative_prompt=NEGATIVES, height=32, width=32, num_frames=9, num_inference_steps=3,
                        guidance_scale=guidance, generator=generators(), output_type="latent").frames
    got = euler(model, model.encode_prompts(PROMPTS, NEGATIVES), WAN_GEOMETRY, 3, guidance)
    assert got.shape == expected.shape == (2, 4, 3, 4, 4)
    if guidance == 1.0:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_flux_decode_gives_the_pipelines_images_in_unit_range(flux_pipe):
    """decode(our latents) == the pipeline's output_type="pt" images. Tolerance atol 1e-6 on pixels in [0, 1]
    (a few float32 ulps: the same VAE on the same latents, our own unscale and clamp; observed: exact)."""
    model = FluxModel(flux_pipe)
    expected = flux_pipe(PROMPTS, height=32, width=32, num_inference_steps=2, guidance_scale=3.5,
                         generator=generators(), output_type="pt").images
    with torch.no_grad():
        pixels = model.decode(euler(model, model.encode_prompts(PROMPTS), FLUX_GEOMETRY, 2, 3.5), FLUX_GEOMETRY)
    assert pixels.shape == (2, 3, 32, 32)
    assert pixels.dtype == torch.float32 and pixels.min() >= 0 and pixels.max() <= 1 and pixels.std() > 0
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)


def test_wan_decode_gives_the_pipelines_videos_in_unit_range(wan_pipe):
    """decode(our latents) == the pipeline's output_type="pt" frames. Tolerance atol 1e-6 on pixels in [0, 1]
    (a few float32 ulps: the same VAE on the same latents, our own unscale and clamp; observed: exact)."""
    model = WanModel(wan_pipe, geometry=WAN_GEOMETRY)
    expected = wan_pipe(PROMPTS, height=32, width=32, num_frames=9, num_inference_steps=2, guidance_scale=1.0,
                        generator=generators(), output_type="pt").frames
    with torch.no_grad():
        video = model.decode(euler(model, model.encode_prompts(PROMPTS), WAN_GEOMETRY, 2, 1.0), WAN_GEOMETRY)
    assert video.shape == (2, 9, 3, 32, 32)
    assert video.dtype == torch.float32 and video.min() >= 0 and video.max() <= 1 and video.std() > 0
    torch.testing.assert_close(video, expected, rtol=0, atol=1e-6)


def test_wan22_ti2v_per_token_timesteps_reproduce_the_pipeline(wan_pipe):
    """Single-transformer Wan 2.2 (expand_timesteps: one timestep per token). Tolerance: exact equality, exact by
    construction (the pipeline's transformer on the same batch and per-token timesteps, same process)."""
    pipe = WanPipeline(**wan_pipe.components, expand_timesteps=True)
    model = WanModel(pipe, geometry=WAN_GEOMETRY)
    expected = pipe(PROMPTS, height=32, width=32, num_frames=9, num_inference_steps=2, guidance_scale=1.0,
                    generator=generators(), output_type="latent").frames
    assert torch.equal(euler(model, model.encode_prompts(PROMPTS), WAN_GEOMETRY, 2, 1.0), expected)


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_saved_pipeline_loads_by_path(tmp_path, flux_pipe, wan_pipe, family):
    """The reloaded pipeline gives the original's velocity. Tolerance rtol 1e-5, atol 1e-6 on |v| ≤ ~2.2: the
    reloaded weights are bit-identical, but they stay in the safetensors file's memory, not 64-byte aligned
    like freshly allocated tensors, and the CPU kernels then round differently (Flux: 6.0e-7 observed, a few
    float32 ulps; Wan: exact). A wrongly loaded weight or config moves v by ~1e-1."""
    if family == "flux":
        pipe, cls, geometry, guidance = flux_pipe, FluxModel, FLUX_GEOMETRY, 3.5
    else:
        pipe, cls, geometry, guidance = wan_pipe, WanModel, WAN_GEOMETRY, 1.0
    pipe.save_pretrained(tmp_path)
    loaded, original = load_model(str(tmp_path)), cls(pipe)
    assert type(loaded) is cls and loaded.family == family
    x = original.initial_noise(geometry, generators([0]))
    with torch.no_grad():
        v_loaded = loaded.velocity(x, 0.5, loaded.encode_prompts(PROMPTS[:1]), geometry, guidance)
        v_orig = original.velocity(x, 0.5, original.encode_prompts(PROMPTS[:1]), geometry, guidance)
    torch.testing.assert_close(v_loaded, v_orig, rtol=1e-5, atol=1e-6)


def test_two_expert_wan22_is_rejected():
    with pytest.raises(UnsupportedModelError, match="two-expert Wan 2.2.*not supported yet"):
        WanModel(tiny_wan_pipeline(seed=0, two_experts=True))


def test_wan_unipc_schedule_uses_its_flow_sigmas():
    pipe = tiny_wan_pipeline(seed=0, unipc=True, shift=3.0)
    sig = WanModel(pipe).schedule(4, WAN_GEOMETRY)
    plain = torch.linspace(1, 1 / 1000, 5)[:-1].double()
    shifted = (3 * plain / (1 + 2 * plain)).float()
    assert sig.shape == (5,) and sig[-1] == 0
    torch.testing.assert_close(sig[:-1], shifted, rtol=0, atol=2e-6)  # UniPC nudges σ=1 to 1 − 1e-6


def test_wan_default_geometry_is_the_pipelines(wan_pipe):
    assert WanModel(wan_pipe).default_geometry() == Geometry(480, 832, 81)
    assert WanModel(wan_pipe).latent_shape(Geometry(480, 832, 81)) == (4, 21, 60, 104)


@pytest.mark.parametrize("geometry, match", [
    (Geometry(32, 32, 8), "num_frames = 4·k \\+ 1"),
    (Geometry(32, 32), "num_frames = 4·k \\+ 1"),
    (Geometry(24, 32, 9), "height divisible by 16"),
])
def test_wan_bad_geometry_is_a_clear_error(wan_pipe, geometry, match):
    with pytest.raises(ConfigError, match=match):
        WanModel(wan_pipe).latent_shape(geometry)


def test_flux_bad_geometry_is_a_clear_error(flux_pipe):
    with pytest.raises(ConfigError, match="divisible by 4, got 30x32"):
        FluxModel(flux_pipe).latent_shape(Geometry(30, 32))
