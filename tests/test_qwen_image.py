"""Qwen-Image adapter: our ODE == QwenImagePipeline's own output (with and without true CFG), its prompt template
and hidden-state selection, on-policy recompute, LoRA through the pipeline's loader, one training step."""

import json

import pytest
import torch

from flowalign.errors import ConfigError, UnsupportedModelError
from flowalign.models import Geometry, load_model
from flowalign.models.qwen_image import QwenImageModel
from flowalign.models.tiny import tiny_qwen_image_pipeline
from flowalign.sampling import DynamicsConfig, make_generators, rollout
from flowalign.training.config import ModelConfig

from family_checks import PROMPTS, lora_round_trip, max_on_policy_log_ratio, ode_final, one_training_step

GEOMETRY = Geometry(32, 32)
NEGATIVES = ["blurry", "ugly, low quality, watermark"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_qwen_image_pipeline(seed=0)


@pytest.fixture(scope="module")
def model(pipe):
    return QwenImageModel(pipe)


def pipeline_latents(pipe, steps, **kwargs):
    return pipe(PROMPTS, height=32, width=32, num_inference_steps=steps, generator=make_generators([0, 1]),
                output_type="latent", **kwargs).images


def test_ode_reproduces_the_pipeline_without_cfg(pipe, model):
    """Tolerance: exact. Prompts of different lengths: we trim to the batch's longest and pass the same mask the
    pipeline builds when it pads one call's prompts, so the transformer sees identical inputs."""
    expected = pipeline_latents(pipe, 3, true_cfg_scale=1.0)
    got = ode_final(model, GEOMETRY, 3)
    assert got.shape == expected.shape == (2, 16, 16)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dynamics", ["flow_sde", "dance_sde", "cps"])
def test_every_dynamics_at_noise_zero_is_the_pipelines_ode(pipe, model, dynamics):
    """Tolerance: exact (noise level 0 makes each SDE step the Euler step)."""
    assert torch.equal(ode_final(model, GEOMETRY, 3, dynamics=dynamics), pipeline_latents(pipe, 3, true_cfg_scale=1.0))


def test_true_cfg_with_negative_prompt_reproduces_the_pipeline(pipe, model):
    """Batched [negative; prompt] forward vs the pipeline's two forwards, with its per-token norm rescale.
    Tolerance 1e-5: the batched call pads each negative to the longest of both prompt sets (masked), so
    attention reductions run over different padded lengths (float32 rounding, observed ≤ 1e-6)."""
    expected = pipeline_latents(pipe, 3, true_cfg_scale=4.0, negative_prompt=NEGATIVES)
    cond = model.encode_prompts(PROMPTS, NEGATIVES)
    before = model.transformer_calls
    got = rollout(model, cond, GEOMETRY, num_steps=3, dynamics=DynamicsConfig("ode", 0.0),
                  generators=make_generators([0, 1]), guidance_scale=4.0).final
    assert model.transformer_calls - before == 3  # one batched forward per step
    assert not torch.allclose(got, pipeline_latents(pipe, 3, true_cfg_scale=1.0))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_decode_gives_the_pipelines_images(pipe, model):
    """decode(our latents) == the pipeline's output_type="pt" images. Tolerance 1e-6 (same ops; observed exact)."""
    expected = pipe(PROMPTS, height=32, width=32, num_inference_steps=2, true_cfg_scale=1.0,
                    generator=make_generators([0, 1]), output_type="pt").images
    with torch.no_grad():
        pixels = model.decode(ode_final(model, GEOMETRY, 2), GEOMETRY)
    assert pixels.shape == (2, 3, 32, 32) and pixels.min() >= 0 and pixels.max() <= 1 and pixels.std() > 0
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)


def test_prompt_template_prefix_is_dropped_and_padding_is_masked(pipe, model):
    """The 34 system-prefix tokens of the template are dropped: what is kept is the prompt and the template's
    tail (<|im_end|>, \\n, <|im_start|>, assistant, \\n); the rest up to max_sequence_length is zero and masked."""
    tokenizer = pipe.tokenizer
    prefix = tokenizer(pipe.prompt_template_encode.split("{}")[0]).input_ids
    assert len(prefix) == pipe.prompt_template_encode_start_idx == 34
    cond = model.encode_prompts(PROMPTS)
    mask, embeds = cond.tensors["prompt_embeds_mask"], cond.tensors["prompt_embeds"]
    assert embeds.shape == (2, model.max_sequence_length, pipe.text_encoder.config.text_config.hidden_size)
    for row, prompt in enumerate(PROMPTS):
        full = tokenizer(pipe.prompt_template_encode.format(prompt)).input_ids
        assert full[:34] == prefix
        kept = int(mask[row].sum())
        assert kept == len(full) - 34 == len(tokenizer(prompt).input_ids) + 5
        assert mask[row, :kept].all() and not mask[row, kept:].any()
        assert (embeds[row, kept:] == 0).all() and (embeds[row, :kept] != 0).any(-1).all()
    pooled = model.pooled_text(cond)
    assert pooled.shape == (2, embeds.shape[-1])
    torch.testing.assert_close(pooled[0], embeds[0, : int(mask[0].sum())].float().mean(0), rtol=0, atol=1e-6)


def test_recompute_is_on_policy(model):
    assert max_on_policy_log_ratio(model, GEOMETRY) < 1e-5
    assert max_on_policy_log_ratio(model, GEOMETRY, guidance_scale=3.0) < 1e-5


def test_saved_lora_loads_with_the_pipelines_loader(tmp_path):
    """Tolerance 1e-5: peft layers (x·A·B scaled) vs the weights the loader injects, float32 rounding."""
    untouched, trained, reloaded = lora_round_trip(lambda: tiny_qwen_image_pipeline(seed=0), QwenImageModel,
                                                   GEOMETRY, tmp_path / "lora")
    assert not torch.allclose(untouched, trained)
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-5)


@pytest.mark.parametrize("guidance, algorithm", [(1.0, "grpo_guard"), (2.0, "grpo")])
def test_one_training_step_changes_only_the_adapter(tmp_path, guidance, algorithm):
    """GRPO-Guard (the trainer's default) without CFG, GRPO with true CFG."""
    from flowalign.algorithms.grpo import GRPOConfig

    changed, summary = one_training_step(tiny_qwen_image_pipeline(seed=0), tmp_path,
                                         ModelConfig(path="unused", height=32, width=32),
                                         algorithm=GRPOConfig() if algorithm == "grpo" else None,
                                         guidance_scale=guidance)
    assert changed, "nothing was trained"
    assert all("lora_" in k for k in changed), sorted(k for k in changed if "lora_" not in k)[:5]
    assert "eval/reward" in summary["eval_after"]


def test_saved_pipeline_loads_by_path(tmp_path, pipe, model):
    """Same weights (checked equal), same token ids and prompt embeddings; tolerance 1e-6 on the velocity: the
    reloaded transformer's float32 kernels round differently at the 1e-7 level (observed 2.4e-7)."""
    pipe.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert type(loaded) is QwenImageModel and loaded.family == "qwen_image"
    x = model.initial_noise(GEOMETRY, make_generators([0]))
    with torch.no_grad():
        v_loaded = loaded.velocity(x, 0.5, loaded.encode_prompts(PROMPTS[:1]), GEOMETRY)
        v_orig = model.velocity(x, 0.5, model.encode_prompts(PROMPTS[:1]), GEOMETRY)
    loaded_state, state = loaded.transformer.state_dict(), model.transformer.state_dict()
    assert all(torch.equal(loaded_state[k], state[k]) for k in state)
    torch.testing.assert_close(v_loaded, v_orig, rtol=0, atol=1e-6)


def test_encode_pixels_has_the_noise_layout_and_checks_input(model):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    latents = model.encode_pixels(pixels, GEOMETRY)
    assert latents.shape == model.initial_noise(GEOMETRY, batch_size=2).shape and latents.dtype == torch.float32
    assert model.decode(latents, GEOMETRY).shape == pixels.shape
    with pytest.raises(ConfigError, match="expects pixels"):
        model.encode_pixels(pixels[:, :, :16], GEOMETRY)


def test_unsupported_pipeline_folder_names_its_class_and_the_supported_ones(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPipeline"}))
    with pytest.raises(UnsupportedModelError, match="'QwenImageEditPipeline'; supported: .*QwenImagePipeline"):
        load_model(tmp_path)


def test_bad_geometry_and_sequence_length_are_clear_errors(pipe, model):
    with pytest.raises(ConfigError, match="Qwen-Image needs height and width divisible by 8, got 36x32"):
        model.resolve_geometry(36, 32)
    with pytest.raises(ConfigError, match="max_sequence_length must be in \\[1, 1024\\], got 2048"):
        QwenImageModel(pipe, max_sequence_length=2048)


def test_spm_membranes_on_the_joint_attention(model):
    """Qwen-Image's double-stream blocks name their attention like MMDiT (attn.to_q … attn.to_add_out): membranes
    go there, and on both streams' feed-forwards (img_mlp, txt_mlp). Not covered: the modulation linears
    (img_mod, txt_mod), as in every family."""
    from flowalign.erasure import SPMNetwork, target_layers

    targets = {name.split(".", 2)[2] for name in target_layers(model.transformer)}
    assert targets == {"attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                       "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2",
                       "txt_mlp.net.0.proj", "txt_mlp.net.2"}
    cond, x = model.encode_prompts(PROMPTS[:1]), model.initial_noise(GEOMETRY, make_generators([0]))
    velocity = lambda: model.velocity(x, 0.6, cond, GEOMETRY)  # noqa: E731
    with torch.no_grad():
        before = velocity()
        net = SPMNetwork.for_transformer(model.transformer, ["red"]).attach(model.transformer)
        try:
            assert torch.equal(velocity(), before)  # U starts at zero: a no-op
            for membrane in net.membranes.values():
                membrane.up.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
            assert (velocity() - before).abs().max() > 1e-4
        finally:
            net.detach()
        assert torch.equal(velocity(), before)


def test_recipe_loads_with_the_published_model_id():
    from pathlib import Path

    from flowalign.config import load_config
    from flowalign.training.config import TrainConfig

    recipe = Path(__file__).resolve().parents[1] / "configs" / "qwen_image_grpo_guard.yaml"
    config = load_config(TrainConfig, recipe)
    assert config.model.path == "Qwen/Qwen-Image" and config.sampling.guidance_scale > 1
    assert config.data.negative_prompt == " "


def test_flowalign_sample_with_true_cfg(tmp_path, pipe):
    from PIL import Image

    from flowalign.cli import main

    pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "out"
    rc = main(["sample", "--model", str(tmp_path / "pipe"), "--prompt", "a red circle", "--negative-prompt", "blurry",
               "--guidance-scale", "3.0", "--steps", "2", "--height", "32", "--width", "32", "--dynamics", "flow_sde",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    manifest = json.loads((out / "samples.json").read_text())
    assert Image.open(out / manifest["samples"][0]["files"][0]).size == (32, 32)
