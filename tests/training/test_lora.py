"""LoRA adapters: added as no-ops, saved in diffusers format, loaded back at full strength by diffusers."""

import pytest
import torch

from flowalign.errors import ConfigError
from flowalign.models.sd3 import SD3Model
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.sampling import DynamicsConfig, make_generators, rollout
from flowalign.training.lora import LoRAConfig, add_lora, load_lora_into, save_lora

PROMPTS = ["a red circle", "two blue squares"]


def ode_final(model):
    cond = model.encode_prompts(PROMPTS)
    return rollout(model, cond, model.default_geometry(), num_steps=3, dynamics=DynamicsConfig("ode", 0.0),
                   generators=make_generators([0, 1])).final


def perturb(params):
    with torch.no_grad():
        for i, p in enumerate(params):
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))


def test_lora_starts_as_noop_and_only_adapter_params_train():
    model = SD3Model(tiny_sd3_pipeline(seed=0))
    before = ode_final(model)
    params = add_lora(model.transformer, LoRAConfig(rank=4, alpha=8))
    # exact by construction: B is zero-initialised, so the adapter adds exactly 0 to the same base layer's output
    assert torch.equal(ode_final(model), before)
    trainable = {n for n, p in model.transformer.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(params) == len(trainable)


def test_saved_lora_loads_with_diffusers_at_full_strength(tmp_path):
    """Tolerance atol 1e-5 on final latents of magnitude ≤ ~4: diffusers builds its own adapter modules in another
    pipeline instance (float32 rounding; observed: exact). The adapter itself moves the latents by ~0.1."""
    model = SD3Model(tiny_sd3_pipeline(seed=0))
    params = add_lora(model.transformer, LoRAConfig(rank=4, alpha=16))
    perturb(params)
    trained = ode_final(model)
    save_lora(model.pipeline, model.transformer, tmp_path / "lora")

    fresh = tiny_sd3_pipeline(seed=0)
    untouched = ode_final(SD3Model(fresh))
    fresh.load_lora_weights(tmp_path / "lora")
    reloaded = ode_final(SD3Model(fresh))
    assert not torch.allclose(untouched, trained)
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-5)


def test_load_lora_into_restores_weights_exactly(tmp_path):
    model = SD3Model(tiny_sd3_pipeline(seed=0))
    params = add_lora(model.transformer, LoRAConfig(rank=4, alpha=8))
    perturb(params)
    save_lora(model.pipeline, model.transformer, tmp_path / "lora")
    other = SD3Model(tiny_sd3_pipeline(seed=0))
    other_params = add_lora(other.transformer, LoRAConfig(rank=4, alpha=8))
    load_lora_into(other.transformer, tmp_path / "lora")
    for a, b in zip(params, other_params):
        assert torch.equal(a, b)  # exact by construction: safetensors stores the tensors' bytes


def test_bad_lora_settings():
    model = SD3Model(tiny_sd3_pipeline(seed=0))
    with pytest.raises(ConfigError, match=r"lora.target_modules \['to_qq'\] match no layer"):
        add_lora(model.transformer, LoRAConfig(target_modules=["to_q", "to_qq"]))
    with pytest.raises(ConfigError, match="lora.dropout must be 0, got 0.1"):
        LoRAConfig(dropout=0.1)
    with pytest.raises(ConfigError, match="lora.rank must be >= 1"):
        LoRAConfig(rank=0)
