"""Latent-anchoring training on the tiny SD3 and Flux pipelines."""

import random

import pytest
import torch

from flowalign.erasure import SPMNetwork, load_spm, read_spm
from flowalign.erasure.train import EraseConfig, EraseTrainer, train_spm
from flowalign.errors import ConfigError
from flowalign.models import load_model
from flowalign.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline


def _held_erase_loss(trainer, draws: int = 6) -> float:
    """Mean erase loss over the same seeded draws (target, noise, σ) each time it is called: the per-step losses
    of training vary with their random σ more than a short run lowers them."""
    trainer.rng = random.Random(1234)
    with torch.no_grad():
        return sum(float(trainer.losses(0)["erase"]) for _ in range(draws)) / draws


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_training_reduces_erase_loss_and_saves(tmp_path, family):
    model = load_model(tiny_sd3_pipeline() if family == "sd3" else tiny_flux_pipeline())
    config = EraseConfig(["red"], anchor_prompts=["a blue square", "two green circles"], random_anchors=1,
                         steps=20, lr=2e-2, num_inference_steps=3, checkpoint_every=10, height=32, width=32,
                         guidance_scale=1.0)
    trainer = EraseTrainer(model, config)
    before = _held_erase_loss(trainer)
    trainer.train(tmp_path / "red.safetensors", progress=False)
    after = _held_erase_loss(trainer)
    trainer.close()
    assert len(trainer.history) == 20
    assert after < 0.7 * before, (before, after)
    _, meta = read_spm(tmp_path / "red.safetensors")
    assert meta["concepts"] == ["red"] and meta["hyperparameters"]["trained_steps"] == 20
    assert meta["hyperparameters"]["eta"] == 1.0
    assert any(m.up.abs().sum() > 0 for m in trainer.net.membranes.values())


def test_two_concepts_in_one_file(tmp_path):
    model = load_model(tiny_sd3_pipeline())
    net = train_spm(model, EraseConfig(["red", "blue"], steps=4, num_inference_steps=2),
                    tmp_path / "two.safetensors", progress=False)
    assert net.concepts == ["red", "blue"]
    loaded = load_spm(model, tmp_path / "two.safetensors")
    assert loaded.concepts == ["red", "blue"]


def test_config_errors():
    with pytest.raises(ConfigError, match="at least one concept"):
        EraseConfig([])
    with pytest.raises(ConfigError, match="empty"):
        EraseConfig(["red", ""])
    pairs = EraseConfig(["red"], target_prompts=["two red circles", "a blue square"]).targets(0)
    assert pairs == [("two red circles", "two circles")]
    assert EraseConfig(["red"], inflect=False).targets(0) == [("red", "")]


def _spy_velocity(model, monkeypatch):
    """Record the guidance_scale of every model.velocity call."""
    calls, velocity = [], model.velocity

    def spy(x, sigma, cond, geometry, guidance_scale=1.0):
        calls.append(guidance_scale)
        return velocity(x, sigma, cond, geometry, guidance_scale)

    monkeypatch.setattr(model, "velocity", spy)
    return calls


@pytest.mark.parametrize("family,guidance,loss_guidance", [("flux", 3.5, 3.5), ("sd3", 4.0, 1.0), ("sd3", 1.0, 1.0)])
def test_loss_velocities_use_the_configured_guidance(monkeypatch, family, guidance, loss_guidance):
    """Flux-dev's guidance is embedded (no CFG): the loss velocities must use the configured guidance, as the partial
    sampling and inference do. SD3's guidance is a CFG weight: the losses stay conditional-only (guidance 1)."""
    model = load_model(tiny_sd3_pipeline() if family == "sd3" else tiny_flux_pipeline())
    assert model.uses_cfg(guidance) == (family == "sd3" and guidance > 1)
    trainer = EraseTrainer(model, EraseConfig(["red"], anchor_prompts=["a blue square"], random_anchors=1,
                                              num_inference_steps=3, guidance_scale=guidance, height=32, width=32))
    sampled = 0
    for _ in range(4):
        calls = _spy_velocity(model, monkeypatch)
        trainer.losses(0)
        monkeypatch.undo()
        partial, loss = calls[:-2], calls[-2:]
        assert partial == [guidance] * len(partial) and loss == [loss_guidance] * 2
        sampled += len(partial)
    assert sampled > 0


def test_partial_sampling_runs_with_the_concepts_membrane_on():
    """METHODS.md §7: x_σ is partially sampled with the SPM on (only concept i's membrane, no gradient)."""
    model = load_model(tiny_sd3_pipeline())
    net = SPMNetwork.for_transformer(model.transformer, ["red", "blue"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.membranes.values():
            m.up.copy_(torch.randn(m.up.shape, generator=g) * 0.3)
    trainer = EraseTrainer(model, EraseConfig(["red", "blue"], num_inference_steps=3, guidance_scale=1.0), net)
    cond = model.encode_prompts(["red"])

    def ode(seed):
        x = model.initial_noise(trainer.geometry, [torch.Generator().manual_seed(seed)])
        with torch.no_grad():
            for i in range(2):
                x = x + (trainer.sigmas[i + 1] - trainer.sigmas[i]) * model.velocity(x, trainer.sigmas[i], cond,
                                                                                     trainer.geometry)
        return x

    seed = random.Random(5).randrange(2**31)
    trainer.rng = random.Random(5)
    x = trainer.partial_sample(cond, 2, concept_index=1)
    assert not x.requires_grad
    with net.strength([0.0, 1.0]):
        # blue's membrane on, red's off; exact by construction: same model instance, same noise, same ops
        assert torch.equal(x, ode(seed))
    with net.disabled():
        assert not torch.allclose(x, ode(seed), atol=1e-3)  # not the original model's x_σ
    trainer.close()
