"""SD3 adapter: our Euler loop == StableDiffusion3Pipeline's own output; loading and input errors."""

import json

import pytest
import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.models.attention_processor import JointAttnProcessor2_0

from flowalign.errors import ConfigError, UnsupportedModelError
from flowalign.models import Geometry, load_model
from flowalign.models.sd3 import SD3Model
from flowalign.models.sd3_attention import CollapsedPadJointAttnProcessor, collapsed_padding
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.sampling import DynamicsConfig, make_generators, rollout

PROMPTS = ["a red circle", "two blue squares left of a green triangle"]


def pipeline_latents(pipe, steps, seeds, **kwargs):
    out = pipe(PROMPTS, num_inference_steps=steps, generator=make_generators(seeds), output_type="latent", **kwargs)
    return out.images


@pytest.mark.parametrize("name", ["ode", "flow_sde", "dance_sde", "cps"])
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_noise_level_zero_reproduces_the_pipeline(sd3_model, tiny_sd3, name, guidance):
    """Tolerance: exact without CFG (exact by construction: our loop calls the pipeline's own transformer on the
    same batch, with the same σ and the same update x + (σ' − σ)·v, in the same process). With CFG atol 1e-5 on
    latents of magnitude ≤ ~4: the prompt cache encodes the shared negative "" once (batch of 1) where the
    pipeline encodes it per prompt, and CLIP's float32 output depends on batch size at the 1e-7 level."""
    expected = pipeline_latents(tiny_sd3, 4, [3, 7], guidance_scale=guidance)
    cond = sd3_model.encode_prompts(PROMPTS, with_negative=guidance > 1)
    traj = rollout(sd3_model, cond, sd3_model.default_geometry(), num_steps=4,
                   dynamics=DynamicsConfig(name, 0.0), generators=make_generators([3, 7]), guidance_scale=guidance)
    if guidance == 1.0:
        assert torch.equal(traj.final, expected)
    else:
        torch.testing.assert_close(traj.final, expected, rtol=0, atol=1e-5)
    assert not traj.trainable.any()


def test_resolution_dependent_shift_matches_the_pipeline():
    pipe = tiny_sd3_pipeline(seed=1, use_dynamic_shifting=True)
    model = SD3Model(pipe)
    geometry = Geometry(48, 32)
    expected = pipe(PROMPTS, height=48, width=32, num_inference_steps=3, guidance_scale=1.0,
                    generator=make_generators([0, 1]), output_type="latent").images
    traj = rollout(model, model.encode_prompts(PROMPTS), geometry, num_steps=3, dynamics=DynamicsConfig("ode", 0.0),
                   generators=make_generators([0, 1]))
    assert torch.equal(traj.final, expected)  # exact by construction: same module, batch and σ (see above)
    no_shift = SD3Model(tiny_sd3_pipeline(seed=1)).schedule(3, geometry)
    assert not torch.allclose(model.schedule(3, geometry), no_shift)


def test_with_t5_text_encoder_matches_the_pipeline():
    pipe = tiny_sd3_pipeline(seed=2, with_t5=True)
    model = SD3Model(pipe)
    expected = pipeline_latents(pipe, 2, [0, 1], guidance_scale=1.0)
    traj = rollout(model, model.encode_prompts(PROMPTS), model.default_geometry(), num_steps=2,
                   dynamics=DynamicsConfig("ode", 0.0), generators=make_generators([0, 1]))
    assert torch.equal(traj.final, expected)  # exact by construction: same module, batch and σ


def test_decode_gives_pixels_in_unit_range(sd3_model):
    geometry = sd3_model.default_geometry()
    x = sd3_model.initial_noise(geometry, make_generators([0, 1]))
    with torch.no_grad():
        pixels = sd3_model.decode(x, geometry)
    assert pixels.shape == (2, 3, geometry.height, geometry.width)
    assert pixels.dtype == torch.float32 and pixels.min() >= 0 and pixels.max() <= 1


def test_prompt_cache_encodes_each_prompt_once(sd3_model, monkeypatch):
    calls = []
    original = sd3_model._encode
    monkeypatch.setattr(sd3_model, "_encode", lambda prompts: calls.append(list(prompts)) or original(prompts))
    first = sd3_model.encode_prompts(PROMPTS + PROMPTS[:1])
    again = sd3_model.encode_prompts(PROMPTS[::-1])
    assert calls == [PROMPTS]
    # exact by construction: a cached prompt's rows are copies of the one encoding, not a second computation
    assert torch.equal(first.tensors["prompt_embeds"][1], again.tensors["prompt_embeds"][0])
    assert torch.equal(first.tensors["prompt_embeds"][0], first.tensors["prompt_embeds"][2])


def test_saved_pipeline_loads_by_path(tmp_path, tiny_sd3, sd3_model):
    """The reloaded pipeline gives the original's velocity. Tolerance rtol 1e-5, atol 1e-6 on |v| ≤ ~2: the
    reloaded weights are bit-identical, but they stay in the safetensors file's memory, not 64-byte aligned
    like freshly allocated tensors, and the CPU kernels then round differently (4.8e-7 observed, a few float32
    ulps; copying the loaded parameters into fresh tensors makes it exact). A wrongly loaded weight or config
    moves v by ~1e-1."""
    tiny_sd3.save_pretrained(tmp_path / "pipe")
    loaded = load_model(tmp_path / "pipe")
    assert isinstance(loaded, SD3Model)
    geometry = loaded.default_geometry()
    x = loaded.initial_noise(geometry, make_generators([0]))
    with torch.no_grad():
        v_loaded = loaded.velocity(x, 0.5, loaded.encode_prompts(PROMPTS[:1]), geometry)
        v_orig = sd3_model.velocity(x, 0.5, sd3_model.encode_prompts(PROMPTS[:1]), geometry)
    torch.testing.assert_close(v_loaded, v_orig, rtol=1e-5, atol=1e-6)


def test_missing_pipeline_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist.*does not exist"):
        load_model(tmp_path / "does-not-exist")


def test_folder_without_model_index_is_rejected(tmp_path):
    with pytest.raises(UnsupportedModelError, match="no model_index.json"):
        load_model(tmp_path)


def test_unsupported_family_is_rejected(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UnsupportedModelError, match="unsupported pipeline family 'StableDiffusionPipeline'"):
        load_model(tmp_path)


def test_wrong_pipeline_object_for_adapter(tiny_sd3):
    from flowalign.models.flux import FluxModel

    with pytest.raises(ConfigError, match="FluxModel needs a FluxPipeline, got StableDiffusion3Pipeline"):
        FluxModel(tiny_sd3)


def test_bad_geometry_is_a_clear_error_when_resolved(sd3_model):
    multiple = sd3_model.pipeline.vae_scale_factor * sd3_model.transformer.config.patch_size  # VAE × patch
    with pytest.raises(ConfigError, match=f"SD3 needs height and width divisible by {multiple}, got 33x32"):
        sd3_model.resolve_geometry(33, 32)
    assert sd3_model.resolve_geometry(12 * multiple, None).height == 12 * multiple


def test_mismatched_negative_prompts_are_rejected(sd3_model):
    with pytest.raises(ConfigError, match="got 2 prompts but 3 negative prompts"):
        sd3_model.encode_prompts(PROMPTS, ["", "", ""])


def test_empty_prompt_list_is_rejected(sd3_model):
    with pytest.raises(ConfigError, match="prompts is empty"):
        sd3_model.encode_prompts([])


def test_cfg_without_negative_embeddings_is_rejected(sd3_model):
    geometry = sd3_model.default_geometry()
    x = sd3_model.initial_noise(geometry, make_generators([0]))
    with pytest.raises(ConfigError, match="needs negative-prompt embeddings"):
        sd3_model.velocity(x, 0.5, sd3_model.encode_prompts(PROMPTS[:1]), geometry, guidance_scale=3.0)


def test_collapsed_zero_padding_gives_the_same_velocity(tiny_sd3, sd3_model):
    """One zero T5 token with a log(256) attention bias == 256 identical zero tokens. Tolerance atol 1e-5 on
    |v| ≤ ~2: float32 rounding of a softmax over 256 fewer keys (a different reduction)."""
    collapsed = SD3Model(tiny_sd3, collapse_zero_padding=True)
    assert collapsed.collapse_zero_padding
    geometry = sd3_model.default_geometry()
    x = sd3_model.initial_noise(geometry, make_generators([0, 1]))
    full_cond, short_cond = sd3_model.encode_prompts(PROMPTS), collapsed.encode_prompts(PROMPTS)
    assert short_cond.tensors["prompt_embeds"].shape[1] == full_cond.tensors["prompt_embeds"].shape[1] - 255
    with torch.no_grad():
        v_full = sd3_model.velocity(x, 0.7, full_cond, geometry)
        v_short = collapsed.velocity(x, 0.7, short_cond, geometry)
    torch.testing.assert_close(v_short, v_full, rtol=0, atol=1e-5)
    # the pipeline's own processors are restored after each call
    assert all(type(p).__name__ == "JointAttnProcessor2_0" for p in tiny_sd3.transformer.attn_processors.values())


def test_collapse_is_off_when_t5_is_real():
    pipe = tiny_sd3_pipeline(seed=2, with_t5=True)
    assert not SD3Model(pipe, collapse_zero_padding=True).collapse_zero_padding


def _tiny_sd35_pipeline(seed: int = 0):
    """The tiny SD3 pipeline with an SD3.5-style transformer: dual attention (image-only attn2) in block 0, qk norm."""
    pipe = tiny_sd3_pipeline(seed=seed)
    old = pipe.transformer.config
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=old.sample_size, patch_size=old.patch_size, in_channels=old.in_channels,
        out_channels=old.out_channels, num_layers=old.num_layers, attention_head_dim=old.attention_head_dim,
        num_attention_heads=old.num_attention_heads, joint_attention_dim=old.joint_attention_dim,
        caption_projection_dim=old.caption_projection_dim, pooled_projection_dim=old.pooled_projection_dim,
        pos_embed_max_size=old.pos_embed_max_size, dual_attention_layers=(0,), qk_norm="rms_norm",
    ).eval()
    return StableDiffusion3Pipeline(**{**pipe.components, "transformer": transformer})


def test_collapsed_zero_padding_with_sd35_dual_attention():
    """SD3.5 dual-attention blocks call an image-only attn2 without context: collapse must leave it alone.
    Tolerance as in test_collapsed_zero_padding_gives_the_same_velocity."""
    pipe = _tiny_sd35_pipeline()
    assert pipe.transformer.transformer_blocks[0].attn2 is not None
    full, collapsed = SD3Model(pipe), SD3Model(pipe, collapse_zero_padding=True)
    assert collapsed.collapse_zero_padding
    geometry = full.default_geometry()
    x = full.initial_noise(geometry, make_generators([0, 1]))
    with torch.no_grad():
        v_full = full.velocity(x, 0.7, full.encode_prompts(PROMPTS), geometry)
        v_short = collapsed.velocity(x, 0.7, collapsed.encode_prompts(PROMPTS), geometry)  # was: TypeError
    torch.testing.assert_close(v_short, v_full, rtol=0, atol=1e-5)
    processors = pipe.transformer.attn_processors
    assert all(type(p).__name__ == "JointAttnProcessor2_0" for p in processors.values())
    # inside the block: joint attentions collapsed, attn2 keeps the pipeline's processor
    with collapsed_padding(pipe.transformer, 256):
        inside = pipe.transformer.attn_processors
    assert type(inside["transformer_blocks.0.attn.processor"]).__name__ == "CollapsedPadJointAttnProcessor"
    assert inside["transformer_blocks.0.attn2.processor"] is processors["transformer_blocks.0.attn2.processor"]
    # and the processor itself, if given a context-free attention anyway, is the plain one (exact by
    # construction: it hands the call to JointAttnProcessor2_0 on the same module and inputs)
    attn2, h = pipe.transformer.transformer_blocks[0].attn2, torch.randn(2, 64, 32)
    with torch.no_grad():
        assert torch.equal(CollapsedPadJointAttnProcessor(256)(attn2, h), JointAttnProcessor2_0()(attn2, h))
