"""SPM membranes, facilitated transport, files and LoRA export on tiny SD3 / Flux pipelines."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from flowalign.erasure import (FacilitatedTransport, SPMNetwork, architecture, export_lora, layer_shapes, load_spm,
                               merge, read_spm, save_spm, target_layers)
from flowalign.errors import ConfigError
from flowalign.models import load_model
from flowalign.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline
from flowalign.sampling import DynamicsConfig, make_generators, rollout
from flowalign.training.lora import DEFAULT_TARGETS, LoRAConfig, add_lora, save_lora


def _randomize(net: SPMNetwork, seed: int, std: float = 0.05) -> SPMNetwork:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.membranes.values():
            m.up.copy_(torch.randn(m.up.shape, generator=g) * std)
    return net


def _images(model, prompts, steps=3):
    cond = model.encode_prompts(prompts)
    traj = rollout(model, cond, model.default_geometry(), num_steps=steps, dynamics=DynamicsConfig("ode"),
                   generators=make_generators(range(len(prompts))))
    with torch.no_grad():
        return model.decode(traj.final, traj.geometry)


def _velocity(model, prompts, seed=0):
    g = model.default_geometry()
    x = model.initial_noise(g, make_generators([seed] * len(prompts)))
    with torch.no_grad():
        return model.velocity(x, 0.6, model.encode_prompts(prompts), g)


PROMPTS = ["two red circles", "a blue square"]


def _moved(a, b, by=1e-3):
    """``a`` differs from ``b`` by more than ``by`` somewhere (a real change, not float noise)."""
    return float((a - b).abs().max()) > by


# Exact equality below is used only where it holds by construction: the same module instance on the same inputs
# with the membrane contributing exact zeros (U = 0, γ = 0, disabled or detached: output + 0 is the output).
# Results from different instances / loads are compared with assert_close and a stated tolerance.


def _pipe_images(pipe):
    return pipe(PROMPTS, num_inference_steps=2, guidance_scale=2.0, output_type="pt",
                generator=make_generators([0, 1])).images


def test_zero_init_is_bit_identical_sd3_pipeline_call():
    pipe = tiny_sd3_pipeline(seed=0)
    before = _pipe_images(pipe)
    net = SPMNetwork.for_transformer(pipe.transformer, ["red"]).attach(pipe.transformer)
    assert torch.equal(_pipe_images(pipe), before)
    _randomize(net, 1)
    assert _moved(_pipe_images(pipe), before)


def test_zero_init_is_bit_identical_flux():
    model = load_model(tiny_flux_pipeline(seed=0))
    before = _velocity(model, PROMPTS[:1])
    net = SPMNetwork.for_transformer(model.transformer, ["red"]).attach(model.transformer)
    assert torch.equal(_velocity(model, PROMPTS[:1]), before)
    _randomize(net, 1)
    assert _moved(_velocity(model, PROMPTS[:1]), before)
    net.detach()
    assert torch.equal(_velocity(model, PROMPTS[:1]), before)


def test_zero_init_switches():
    model = load_model(tiny_sd3_pipeline(seed=0))
    before = _images(model, PROMPTS)
    net = SPMNetwork.for_transformer(model.transformer, ["red"]).attach(model.transformer)
    assert all(m.up.abs().sum() == 0 for m in net.membranes.values())
    assert torch.equal(_images(model, PROMPTS), before)
    _randomize(net, 1)
    changed = _images(model, PROMPTS)
    assert _moved(changed, before)
    with net.disabled():
        assert torch.equal(_images(model, PROMPTS), before)
    net.detach()
    assert torch.equal(_images(model, PROMPTS), before)


def test_targets_cover_attention_ff_and_flux_single_blocks():
    sd3 = target_layers(tiny_sd3_pipeline().transformer)
    assert "transformer_blocks.0.attn.to_q" in sd3 and "transformer_blocks.0.ff_context.net.2" in sd3
    assert "transformer_blocks.0.attn.add_k_proj" in sd3 and "proj_out" not in sd3
    flux = target_layers(tiny_flux_pipeline().transformer)
    assert {"single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.0.proj_out",
            "single_transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.0.proj"} <= set(flux)


def test_facilitated_transport_gamma():
    model = load_model(tiny_sd3_pipeline())
    prompts = ["two red circles", "a red square", "a blue triangle", "three green squares"]
    gamma = FacilitatedTransport(model, ["red", "dog"])(prompts)  # max(cosine, overlap)
    assert gamma.shape == (4, 2) and torch.allclose(gamma[:2, 0], torch.ones(2))
    # the tiny text encoders are random, so only the token-overlap term is meaningful for unrelated prompts
    overlap = FacilitatedTransport(model, ["red", "dog"], use_cosine=False, factor=0.8)(prompts)
    assert torch.allclose(overlap[:2, 0], torch.full((2,), 0.8))
    assert (overlap[2:, 0] == 0).all() and (overlap[:, 1] == 0).all()
    cosine = FacilitatedTransport(model, ["red"]).cosine(prompts + ["red"])
    assert torch.allclose(cosine[-1], torch.ones(1), atol=1e-5) and (cosine.abs() <= 1 + 1e-5).all()


def test_per_sample_strength_matches_separate_runs():
    model = load_model(tiny_sd3_pipeline())
    net = _randomize(SPMNetwork.for_transformer(model.transformer, ["red"]).attach(model.transformer), 2)
    with net.strength(torch.tensor([[1.0], [0.0]])):
        both = _velocity(model, PROMPTS)
    alone = _velocity(model, PROMPTS[:1])
    with net.disabled():
        off = _velocity(model, PROMPTS[1:])
    assert torch.allclose(both[:1], alone, atol=1e-5) and torch.allclose(both[1:], off, atol=1e-5)


def test_merge_equals_applying_both():
    model = load_model(tiny_sd3_pipeline())
    a = _randomize(SPMNetwork.for_transformer(model.transformer, ["red"], seed=1), 3)
    b = _randomize(SPMNetwork.for_transformer(model.transformer, ["blue"], seed=2), 4)
    a.attach(model.transformer), b.attach(model.transformer)
    with a.strength([0.7]), b.strength([0.4]):
        separate = _velocity(model, PROMPTS)
    a.detach(), b.detach()
    merged = merge([a, b]).attach(model.transformer)
    assert merged.concepts == ["red", "blue"]
    with merged.strength([0.7, 0.4]):
        together = _velocity(model, PROMPTS)
    with merged.disabled():
        off = _velocity(model, PROMPTS)
    assert torch.allclose(separate, together, atol=1e-5) and not torch.allclose(off, together, atol=1e-3)


def test_save_load_on_second_pipeline_and_export_lora(tmp_path):
    first = load_model(tiny_sd3_pipeline(seed=0))
    net = _randomize(SPMNetwork.for_transformer(first.transformer, ["red"]).attach(first.transformer), 5)
    reference = _images(first, PROMPTS)
    path = save_spm(net, first.transformer, tmp_path / "red.safetensors", {"eta": 1.0})
    _, meta = read_spm(path)
    assert meta["concepts"] == ["red"] and meta["architecture"]["class"] == "SD3Transformer2DModel"
    assert meta["hyperparameters"] == {"eta": 1.0}

    second_pipe = tiny_sd3_pipeline(seed=0)
    second = load_model(second_pipe)
    plain = _images(second, PROMPTS)
    loaded = load_spm(second_pipe, path)
    # another pipeline instance (same seed, same weights) and the weights through a file: equal up to fp32
    # rounding of the same ops; 1e-5 on images in [0, 1] is far below any membrane effect (> 1e-3 above)
    torch.testing.assert_close(_images(second, PROMPTS), reference, rtol=0, atol=1e-5)
    loaded.detach()
    assert torch.equal(_images(second, PROMPTS), plain)

    export_lora(path, tmp_path / "lora")
    second_pipe.load_lora_weights(tmp_path / "lora")
    assert torch.allclose(_images(second, PROMPTS), reference, atol=1e-5)


def test_bad_inputs(tmp_path):
    sd3 = tiny_sd3_pipeline()
    net = SPMNetwork.for_transformer(sd3.transformer, ["red"])
    path = save_spm(net, sd3.transformer, tmp_path / "red.safetensors")
    with pytest.raises(ConfigError, match="FluxTransformer2DModel"):
        load_spm(tiny_flux_pipeline(), path)
    bigger = tiny_sd3_pipeline(num_layers=3)
    with pytest.raises(ConfigError, match="layers do not match"):
        load_spm(bigger, path)
    # same keys, another width: a shape error naming the layer
    tensors = load_file(path)
    key = "transformer_blocks.0.attn.to_q.down"
    tensors[key] = torch.zeros(1, tensors[key].shape[1] + 1)
    save_file(tensors, tmp_path / "wide.safetensors", metadata={
        "format": "flowalign-spm/1", "concepts": json.dumps(["red"])})
    with pytest.raises(ConfigError, match="transformer_blocks.0.attn.to_q"):
        load_spm(sd3, tmp_path / "wide.safetensors")
    save_file(load_file(path), tmp_path / "nometa.safetensors")
    with pytest.raises(ConfigError, match="nometa.safetensors.*not an SPM file"):
        load_spm(sd3, tmp_path / "nometa.safetensors")
    with pytest.raises(ConfigError, match="empty"):
        SPMNetwork.for_transformer(sd3.transformer, [" "])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_spm(sd3, tmp_path / "missing.safetensors")


def _lora_folder(folder, seed, zero=False):
    """A diffusers LoRA (this project's save path) for the tiny SD3 pipeline; non-zero unless ``zero``."""
    pipe = tiny_sd3_pipeline(seed=0)
    add_lora(pipe.transformer, LoRAConfig(rank=2, alpha=2.0, target_modules=DEFAULT_TARGETS + ["ff.net.2"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name and not zero:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    save_lora(pipe, pipe.transformer, folder)
    return folder


@pytest.mark.parametrize("zero_lora", [False, True])
def test_spm_trained_on_the_plain_pipeline_attaches_over_a_loaded_lora(tmp_path, zero_lora):
    """peft wraps to_q etc. as lora.Linear (same module names): the SPM must still find, shape-check and hook them,
    adding its membrane to the LoRA'd output."""
    plain = tiny_sd3_pipeline(seed=0)
    net = _randomize(SPMNetwork.for_transformer(plain.transformer, ["red"]), 7, std=0.2)
    path = save_spm(net, plain.transformer, tmp_path / "red.safetensors")
    net.attach(plain.transformer)
    spm_only = _velocity(load_model(plain), PROMPTS)

    lora = _lora_folder(tmp_path / "lora", seed=3, zero=zero_lora)
    pipe = tiny_sd3_pipeline(seed=0)
    pipe.load_lora_weights(lora)
    wrapped = target_layers(pipe.transformer)
    assert type(wrapped["transformer_blocks.0.attn.to_q"]).__module__.startswith("peft")
    assert layer_shapes(pipe.transformer) == layer_shapes(plain.transformer)  # same names, same shapes
    assert architecture(pipe.transformer) == architecture(plain.transformer)
    model = load_model(pipe)
    lora_only = _velocity(model, PROMPTS)

    spm = load_spm(pipe, path)  # was: "SPM layers do not match ..."
    with spm.strength(0.0):
        assert torch.equal(_velocity(model, PROMPTS), lora_only)
    with_both = _velocity(model, PROMPTS)
    assert not torch.allclose(with_both, lora_only, atol=1e-3)
    if zero_lora:
        # a zero LoRA adds exact zeros, but `plain` and `pipe` are different instances: fp32 rounding at most
        torch.testing.assert_close(with_both, spm_only, rtol=0, atol=1e-5)
    else:
        # reference: the LoRA merged into plain linears (W + s·BA), then the SPM on those linears
        fused = tiny_sd3_pipeline(seed=0)
        fused.load_lora_weights(lora)
        fused.fuse_lora()
        fused.unload_lora_weights()
        assert all(isinstance(m, torch.nn.Linear) for m in target_layers(fused.transformer).values())
        fused_model = load_model(fused)
        assert torch.allclose(_velocity(fused_model, PROMPTS), lora_only, atol=1e-5)
        load_spm(fused, path)
        assert torch.allclose(with_both, _velocity(fused_model, PROMPTS), atol=1e-5)
    spm.detach()
    assert torch.equal(_velocity(model, PROMPTS), lora_only)


def test_training_on_a_model_with_a_lora_covers_the_wrapped_layers():
    """An SPM made on a transformer carrying a LoRA has every layer of the plain architecture (none skipped)."""
    for make, extra in ((tiny_sd3_pipeline, ["ff.net.2"]), (tiny_flux_pipeline, ["ff.net.2", "proj_mlp"])):
        plain = make(seed=0).transformer
        lora = make(seed=0).transformer
        add_lora(lora, LoRAConfig(rank=2, target_modules=DEFAULT_TARGETS + extra))
        assert type(target_layers(lora)["transformer_blocks.0.ff.net.2"]).__module__.startswith("peft")
        net = SPMNetwork.for_transformer(lora, ["red"])
        assert net.layer_names == sorted(layer_shapes(plain))
        assert layer_shapes(lora) == layer_shapes(plain)
