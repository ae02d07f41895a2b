"""FLUX.2 [klein] adapter: our ODE == Flux2KleinPipeline's own output (with and without CFG, base and
step-distilled), its Qwen3 hidden-state selection, on-policy recompute, LoRA through the pipeline's loader,
one training step."""

import json

import pytest
import torch

from flowalign.errors import ConfigError, UnsupportedModelError
from flowalign.models import Geometry, load_model
from flowalign.models.flux2 import Flux2KleinModel
from flowalign.models.tiny import tiny_flux2_klein_pipeline
from flowalign.sampling import make_generators
from flowalign.training.config import ModelConfig

from family_checks import PROMPTS, lora_round_trip, max_on_policy_log_ratio, ode_final, one_training_step

GEOMETRY = Geometry(32, 32)
TOKENS = 64  # max_sequence_length for the tests (the pipeline's default 512 works too, only slower)


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux2_klein_pipeline(seed=0)


@pytest.fixture(scope="module")
def model(pipe):
    return Flux2KleinModel(pipe, max_sequence_length=TOKENS)


def pipeline_output(pipe, guidance, steps=3, output_type="latent"):
    return pipe(prompt=PROMPTS, height=32, width=32, num_inference_steps=steps, guidance_scale=guidance,
                max_sequence_length=TOKENS, generator=make_generators([0, 1]), output_type=output_type).images


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_ode_reproduces_the_pipeline(pipe, model, guidance):
    """The pipeline's "latent" output is un-packed, batch-norm-denormalised and un-patchified: compared after our
    ``_unpack``. Tolerance: exact without CFG; 1e-5 with CFG (batched [uncond; cond] vs two forwards, observed
    1.7e-6)."""
    expected = pipeline_output(pipe, guidance)
    got = model._unpack(ode_final(model, GEOMETRY, 3, guidance_scale=guidance), GEOMETRY)
    assert got.shape == expected.shape == (2, 4, 16, 16)
    if guidance == 1.0:
        assert torch.equal(got, expected)
    else:
        assert not torch.allclose(got, pipeline_output(pipe, 1.0))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dynamics", ["flow_sde", "dance_sde", "cps"])
def test_every_dynamics_at_noise_zero_is_the_pipelines_ode(pipe, model, dynamics):
    """Tolerance: exact (noise level 0 makes each SDE step the Euler step)."""
    got = model._unpack(ode_final(model, GEOMETRY, 3, dynamics=dynamics), GEOMETRY)
    assert torch.equal(got, pipeline_output(pipe, 1.0))


def test_step_distilled_klein_ignores_guidance():
    """``is_distilled``: no CFG at any guidance_scale, as in the pipeline. Tolerance: exact."""
    distilled = tiny_flux2_klein_pipeline(seed=0, is_distilled=True)
    model = Flux2KleinModel(distilled, max_sequence_length=TOKENS)
    assert not model.uses_cfg(4.0)
    assert torch.equal(model._unpack(ode_final(model, GEOMETRY, 2, guidance_scale=4.0), GEOMETRY),
                       pipeline_output(distilled, 4.0, steps=2))


def test_decode_gives_the_pipelines_images(pipe, model):
    """decode(our latents) == the pipeline's output_type="pt" images. Tolerance 1e-6 (same ops; observed exact)."""
    expected = pipeline_output(pipe, 1.0, steps=2, output_type="pt")
    with torch.no_grad():
        pixels = model.decode(ode_final(model, GEOMETRY, 2), GEOMETRY)
    assert pixels.shape == (2, 3, 32, 32) and pixels.min() >= 0 and pixels.max() <= 1 and pixels.std() > 0
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)


def test_text_is_three_qwen3_hidden_states_of_the_chat_template(pipe, model):
    """Layers 9, 18, 27 of the Qwen3 run on the chat-templated prompt (thinking off), stacked along features."""
    cond = model.encode_prompts(PROMPTS[:1])
    embeds = cond.tensors["prompt_embeds"]
    text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tokens = pipe.tokenizer(text, return_tensors="pt", padding="max_length", max_length=TOKENS)
    with torch.no_grad():
        states = pipe.text_encoder(**tokens, output_hidden_states=True).hidden_states
    hidden = pipe.text_encoder.config.hidden_size
    assert embeds.shape == (1, TOKENS, 3 * hidden)
    for i, layer in enumerate((9, 18, 27)):
        torch.testing.assert_close(embeds[0, :, i * hidden : (i + 1) * hidden], states[layer][0], rtol=0, atol=0)
    assert model.pooled_text(cond).shape == (1, 3 * hidden)


def test_recompute_is_on_policy(model):
    assert max_on_policy_log_ratio(model, GEOMETRY) < 1e-5
    assert max_on_policy_log_ratio(model, GEOMETRY, guidance_scale=4.0) < 1e-5


def test_saved_lora_loads_with_the_pipelines_loader(tmp_path):
    """Tolerance 1e-5: peft layers (x·A·B scaled) vs the weights the loader injects, float32 rounding."""
    untouched, trained, reloaded = lora_round_trip(lambda: tiny_flux2_klein_pipeline(seed=0),
                                                   lambda p: Flux2KleinModel(p, max_sequence_length=TOKENS),
                                                   GEOMETRY, tmp_path / "lora")
    assert not torch.allclose(untouched, trained)
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-5)


def test_one_training_step_changes_only_the_adapter(tmp_path):
    config = ModelConfig(path="unused", height=32, width=32, adapter_kwargs={"max_sequence_length": TOKENS})
    changed, summary = one_training_step(tiny_flux2_klein_pipeline(seed=0), tmp_path, config, guidance_scale=2.0)
    assert changed, "nothing was trained"
    assert all("lora_" in k for k in changed), sorted(k for k in changed if "lora_" not in k)[:5]
    assert "eval/reward" in summary["eval_after"]


def test_saved_pipeline_loads_by_path(tmp_path, pipe, model):
    """Same weights; tolerance 1e-6 on the velocity (reloaded float32 kernels may round differently)."""
    pipe.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), max_sequence_length=TOKENS)
    assert type(loaded) is Flux2KleinModel and loaded.family == "flux2_klein"
    x = model.initial_noise(GEOMETRY, make_generators([0]))
    with torch.no_grad():
        v_loaded = loaded.velocity(x, 0.5, loaded.encode_prompts(PROMPTS[:1]), GEOMETRY)
        v_orig = model.velocity(x, 0.5, model.encode_prompts(PROMPTS[:1]), GEOMETRY)
    torch.testing.assert_close(v_loaded, v_orig, rtol=0, atol=1e-6)


def test_encode_pixels_has_the_noise_layout(model):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    latents = model.encode_pixels(pixels, GEOMETRY)
    assert latents.shape == model.initial_noise(GEOMETRY, batch_size=2).shape and latents.dtype == torch.float32
    assert model.decode(latents, GEOMETRY).shape == pixels.shape


def test_spm_membranes_on_the_double_stream_attention(model):
    """FLUX.2's double-stream blocks name their attention like MMDiT: membranes go there and on their SwiGLU
    feed-forwards (ff.linear_in/out); single-stream blocks carry them on the fused to_qkv_mlp_proj and to_out."""
    from flowalign.erasure import SPMNetwork, target_layers

    names = set(target_layers(model.transformer))
    double = {n.split(".", 2)[2] for n in names if n.startswith("transformer_blocks.")}
    assert double == {"attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                      "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                      "ff_context.linear_out"}
    single = {n.split(".", 2)[2] for n in names if n.startswith("single_transformer_blocks.")}
    assert single == {"attn.to_qkv_mlp_proj", "attn.to_out"}
    cond, x = model.encode_prompts(PROMPTS[:1]), model.initial_noise(GEOMETRY, make_generators([0]))
    with torch.no_grad():
        before = model.velocity(x, 0.6, cond, GEOMETRY)
        net = SPMNetwork.for_transformer(model.transformer, ["red"]).attach(model.transformer)
        try:
            assert torch.equal(model.velocity(x, 0.6, cond, GEOMETRY), before)
            for membrane in net.membranes.values():
                membrane.up.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
            assert (model.velocity(x, 0.6, cond, GEOMETRY) - before).abs().max() > 1e-4
        finally:
            net.detach()


def test_bad_input_is_a_clear_error(pipe, model, tmp_path):
    with pytest.raises(ConfigError, match="FLUX.2 needs height and width divisible by 4, got 30x32"):
        model.resolve_geometry(30, 32)
    with pytest.raises(ConfigError, match="text_encoder_out_layers \\[9, 18, 40\\]: \\[40\\] out of range"):
        Flux2KleinModel(pipe, text_encoder_out_layers=(9, 18, 40))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Flux2Pipeline"}))
    with pytest.raises(UnsupportedModelError, match="'Flux2Pipeline'; supported: .*Flux2KleinPipeline"):
        load_model(tmp_path)


def test_recipe_loads_with_the_published_model_id():
    from pathlib import Path

    from flowalign.config import load_config
    from flowalign.training.config import TrainConfig

    recipe = Path(__file__).resolve().parents[1] / "configs" / "flux2_klein_grpo_guard.yaml"
    config = load_config(TrainConfig, recipe)
    assert config.model.path == "black-forest-labs/FLUX.2-klein-base-4B" and config.sampling.guidance_scale > 1
