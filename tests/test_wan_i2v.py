"""Wan image-to-video adapter: our ODE == WanImageToVideoPipeline's own output, the image enters as the pipeline
feeds it, on-policy recompute, LoRA through the pipeline's loader, one training step, and the image errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from flowalign.errors import ConfigError, UnsupportedModelError
from flowalign.models import Geometry, load_model
from flowalign.models.tiny import tiny_wan_i2v_pipeline
from flowalign.models.wan_i2v import WanImageToVideoModel
from flowalign.sampling import DynamicsConfig, make_generators, rollout
from flowalign.training.config import ModelConfig

from family_checks import PROMPTS, lora_round_trip, max_on_policy_log_ratio, ode_final, one_training_step

GEOMETRY = Geometry(32, 32, 9)
NEGATIVES = ["blurry", "ugly, static"]


def random_image(seed: int, size=(48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


IMAGE = random_image(0)


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_i2v_pipeline(seed=0)


@pytest.fixture(scope="module")
def model(pipe):
    return WanImageToVideoModel(pipe, image=IMAGE, geometry=GEOMETRY)


def pipeline_latents(pipe, guidance, steps=3, image=IMAGE, output_type="latent"):
    return pipe(image=image, prompt=PROMPTS, negative_prompt=NEGATIVES, height=32, width=32, num_frames=9,
                num_inference_steps=steps, guidance_scale=guidance, generator=make_generators([0, 1]),
                output_type=output_type).frames


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_ode_reproduces_the_pipeline(pipe, model, guidance):
    """Tolerance: exact without CFG (same ops, same condition); 1e-5 with CFG: batched [uncond; cond] vs the
    pipeline's two forwards (float32 rounding, observed 3.3e-6)."""
    expected = pipeline_latents(pipe, guidance)
    cond = model.encode_prompts(PROMPTS, NEGATIVES)
    got = rollout(model, cond, GEOMETRY, num_steps=3, dynamics=DynamicsConfig("ode", 0.0),
                  generators=make_generators([0, 1]), guidance_scale=guidance).final
    assert got.shape == expected.shape == (2, 4, 3, 4, 4)
    if guidance == 1.0:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dynamics", ["flow_sde", "dance_sde", "cps"])
def test_every_dynamics_at_noise_zero_is_the_pipelines_ode(pipe, model, dynamics):
    """Tolerance: exact (noise level 0 makes each SDE step the Euler step)."""
    assert torch.equal(ode_final(model, GEOMETRY, 3, dynamics=dynamics), pipeline_latents(pipe, 1.0))


def test_decode_gives_the_pipelines_frames(pipe, model):
    """decode(our latents) == the pipeline's output_type="pt" frames. Tolerance 1e-6 (same ops; observed exact)."""
    expected = pipeline_latents(pipe, 1.0, steps=2, output_type="pt")
    with torch.no_grad():
        video = model.decode(ode_final(model, GEOMETRY, 2), GEOMETRY)
    assert video.shape == (2, 9, 3, 32, 32) and video.min() >= 0 and video.max() <= 1 and video.std() > 0
    torch.testing.assert_close(video, expected, rtol=0, atol=1e-6)


def test_the_image_enters_through_clip_states_and_the_vae_condition(pipe, model):
    cond = model.encode_prompts(PROMPTS, with_negative=True)
    assert cond.tensors["image_index"].tolist() == [0, 0]  # one image for every prompt, read once
    clip = pipe.encode_image(IMAGE, "cpu")
    assert torch.equal(cond.tensors["image_embeds"], clip.expand(2, -1, -1))
    assert torch.equal(cond.negative["image_embeds"], cond.tensors["image_embeds"])  # uncond rows: same image
    condition = model._condition(0, GEOMETRY)
    assert condition.shape == (1, 4 + 4, 3, 4, 4)
    mask = condition[:, :4]
    assert (mask[:, :, 0] == 1).all() and (mask[:, :, 1:] == 0).all()  # only the first frame is given
    # another image → another video
    other = WanImageToVideoModel(pipe, image=random_image(1), geometry=GEOMETRY)
    assert not torch.allclose(ode_final(other, GEOMETRY, 2), ode_final(model, GEOMETRY, 2))


def test_images_per_prompt_from_a_manifest(tmp_path, pipe, model):
    IMAGE.save(tmp_path / "a.png")
    random_image(1).save(tmp_path / "b.png")
    manifest = tmp_path / "i2v.jsonl"
    manifest.write_text(json.dumps({"prompt": PROMPTS[0], "image": "a.png"}) + "\n"
                        + json.dumps({"prompt": PROMPTS[1], "image": "b.png"}) + "\n")
    per_prompt = WanImageToVideoModel(pipe, image=str(manifest), geometry=GEOMETRY)
    assert per_prompt.encode_prompts(PROMPTS[::-1]).tensors["image_index"].tolist() == [0, 1]
    final = ode_final(per_prompt, GEOMETRY, 2)
    # the first prompt's video is the one the single-image model makes (the PNG round trip is lossless); two model
    # instances encode the images in different batches, so float32 rounding may differ on another CPU: latents are
    # O(1), a tolerance of 1e-5 is ~100 ulps and far below any change of image
    torch.testing.assert_close(final[0], ode_final(model, GEOMETRY, 2)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="i2v.jsonl has no conditioning image for the prompt 'a cat'"):
        per_prompt.encode_prompts(["a cat"])


def test_recompute_is_on_policy(model):
    assert max_on_policy_log_ratio(model, GEOMETRY) < 1e-5
    assert max_on_policy_log_ratio(model, GEOMETRY, guidance_scale=5.0) < 1e-5


def test_saved_lora_loads_with_the_pipelines_loader(tmp_path):
    """Tolerance 1e-5: peft layers (x·A·B scaled) vs the weights the loader injects, float32 rounding."""
    untouched, trained, reloaded = lora_round_trip(
        lambda: tiny_wan_i2v_pipeline(seed=0),
        lambda p: WanImageToVideoModel(p, image=IMAGE, geometry=GEOMETRY), GEOMETRY, tmp_path / "lora")
    assert not torch.allclose(untouched, trained)
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-5)


def test_one_training_step_changes_only_the_adapter(tmp_path):
    IMAGE.save(tmp_path / "first_frame.png")
    config = ModelConfig(path="unused", height=32, width=32, num_frames=5,
                         adapter_kwargs={"image": str(tmp_path / "first_frame.png")})
    changed, summary = one_training_step(tiny_wan_i2v_pipeline(seed=0), tmp_path, config, guidance_scale=2.0)
    assert changed, "nothing was trained"
    assert all("lora_" in k for k in changed), sorted(k for k in changed if "lora_" not in k)[:5]
    assert "eval/reward" in summary["eval_after"]


def test_recipe_without_a_conditioning_image_is_a_clear_error(tmp_path, pipe, monkeypatch):
    from flowalign.models import loading
    from flowalign.training.trainer import Trainer

    from family_checks import Redness, tiny_config

    with pytest.raises(ConfigError, match="needs a conditioning image: set model.adapter_kwargs.image"):
        Trainer(tiny_config(tmp_path, model=ModelConfig(path="unused", height=32, width=32, num_frames=5)),
                model=pipe, reward=Redness())
    pipe.save_pretrained(tmp_path / "pipe")
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("weights loaded before the check"))
    with pytest.raises(ConfigError, match="needs a conditioning image"):
        load_model(tmp_path / "pipe")
    with pytest.raises(ConfigError, match="conditioning image '.*missing.png' does not exist"):
        WanImageToVideoModel(pipe, image=str(tmp_path / "missing.png"))


def test_saved_pipeline_loads_by_path_with_its_image(tmp_path, pipe, model):
    """Same weights; tolerance 1e-6 on the velocity (reloaded float32 kernels may round differently)."""
    pipe.save_pretrained(tmp_path / "pipe")
    IMAGE.save(tmp_path / "image.png")
    loaded = load_model(tmp_path / "pipe", image=str(tmp_path / "image.png"))
    assert type(loaded) is WanImageToVideoModel and loaded.family == "wan_i2v"
    x = model.initial_noise(GEOMETRY, make_generators([0]))
    with torch.no_grad():
        v_loaded = loaded.velocity(x, 0.5, loaded.encode_prompts(PROMPTS[:1]), GEOMETRY)
        v_orig = model.velocity(x, 0.5, model.encode_prompts(PROMPTS[:1]), GEOMETRY)
    torch.testing.assert_close(v_loaded, v_orig, rtol=0, atol=1e-6)


def test_unsupported_wan_image_to_video_variants(pipe, tmp_path):
    from diffusers import WanImageToVideoPipeline

    two_experts = WanImageToVideoPipeline(**{**pipe.components, "transformer_2": pipe.transformer},
                                          boundary_ratio=0.9)
    with pytest.raises(UnsupportedModelError, match="two-expert Wan 2.2 image-to-video"):
        WanImageToVideoModel(two_experts, image=IMAGE)
    ti2v = WanImageToVideoPipeline(**pipe.components, expand_timesteps=True)
    with pytest.raises(UnsupportedModelError, match="expand_timesteps"):
        WanImageToVideoModel(ti2v, image=IMAGE)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanVACEPipeline"}))
    with pytest.raises(UnsupportedModelError, match="'WanVACEPipeline'; supported: .*WanImageToVideoPipeline"):
        load_model(tmp_path)


def test_spm_is_refused_clearly(model):
    """Wan's blocks (``blocks.N``) are not MMDiT joint blocks: SPM membranes do not apply (said, not silently)."""
    from flowalign.erasure import target_layers

    with pytest.raises(ConfigError, match="SPM supports"):
        target_layers(model.transformer)


def test_recipe_loads_with_the_published_model_id():
    from pathlib import Path

    from flowalign.config import load_config
    from flowalign.training.config import TrainConfig

    recipe = Path(__file__).resolve().parents[1] / "configs" / "wan_i2v_grpo.yaml"
    config = load_config(TrainConfig, recipe)
    assert config.model.path == "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
    assert str(config.model.adapter_kwargs["image"]).endswith(".jsonl")


def test_benchmark_counts_flops_through_the_image_conditioned_forward():
    from flowalign.benchmark import measure
    from flowalign.benchmark.models import build_bench_model

    bench = build_bench_model("tiny-wan-i2v")
    cond = bench.model.encode_prompts(PROMPTS[:1], with_negative=True)
    assert measure.transformer_flops_per_row(bench.model, cond, bench.geometry, bench.guidance_scale) > 0
