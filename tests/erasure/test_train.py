"""Latent-anchoring training on the tiny SD3 and Flux pipelines."""

import pytest
import torch

from flowalign.erasure import load_spm, read_spm
from flowalign.erasure.train import EraseConfig, EraseTrainer, train_spm
from flowalign.errors import ConfigError
from flowalign.models import load_model
from flowalign.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_training_reduces_erase_loss_and_saves(tmp_path, family):
    model = load_model(tiny_sd3_pipeline() if family == "sd3" else tiny_flux_pipeline())
    config = EraseConfig(["red"], anchor_prompts=["a blue square", "two green circles"], random_anchors=1,
                         steps=20, lr=2e-2, num_inference_steps=3, checkpoint_every=10, height=32, width=32)
    trainer = EraseTrainer(model, config)
    trainer.train(tmp_path / "red.safetensors", progress=False)
    trainer.close()
    erase = [h["erase"] for h in trainer.history]
    assert sum(erase[-5:]) / 5 < 0.7 * sum(erase[:5]) / 5
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
    pairs = EraseConfig(["red"], target_prompts=["two red circles", "a blue square"]).targets("red")
    assert pairs == [("two red circles", "two circles")]
    assert EraseConfig(["red"]).targets("red") == [("red", "")]
