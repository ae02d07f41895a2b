"""A policy's implicit reward on held-out pairs, through reward-model evaluation (``evaluate_preferences``)."""

import json

import pytest
import torch

from flowalign.errors import ConfigError
from flowalign.models.tiny import tiny_sd3_pipeline
from reward_models.evaluate import evaluate_preferences
from reward_models.implicit import ImplicitReward

from test_dpo import PAIRS, dpo_config, write_pairs
from trainer_helpers import Redness


def eval_manifest(folder):
    """The pairs of ``write_pairs`` in reward-eval format, the winner alternately first and second."""
    rows = []
    for i, (prompt, _, lose) in enumerate(PAIRS):
        if lose is not None:
            images = [f"w{i}.png", f"l{i}.png"][:: 1 if i % 2 == 0 else -1]
            rows.append({"prompt": prompt, "image_0": images[0], "image_1": images[1], "preferred": i % 2})
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "eval.jsonl"


def test_implicit_accuracy_is_one_half_at_the_base_and_rises_with_dpo_on_one_table_with_a_reward(tmp_path):
    from flowalign.training.trainer import Trainer

    dataset = write_pairs(tmp_path / "data", PAIRS)
    manifest = eval_manifest(tmp_path / "data")
    config = dpo_config(tmp_path, dataset, beta=200.0)
    config.iterations = 6
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    implicit = ImplicitReward(trainer.model, beta=200.0, noise_draws=2)
    before = evaluate_preferences({"policy": implicit}, manifest, progress=False)
    # the fresh adapter adds exact zeros: every score is exactly 0, every pair a tie counted 1/2
    assert before.rewards["policy"].accuracy == 0.5
    trainer.run()
    with trainer.evaluated_weights():
        after = evaluate_preferences({"policy": implicit, "redness": Redness()}, manifest, progress=False)
    assert after.rewards["policy"].accuracy == 1.0  # trained on these very pairs
    assert after.n_pairs == 2 and "policy vs redness" in after.agreement

    tiny_sd3_pipeline(seed=0).save_pretrained(tmp_path / "pipeline")  # the base the run started from
    loaded = ImplicitReward(str(tmp_path / "pipeline"), lora=str(tmp_path / "run" / "lora"), beta=200.0,
                            noise_draws=2)
    from_disk = evaluate_preferences({"policy": loaded}, manifest, progress=False)
    assert from_disk.rewards["policy"].accuracy == 1.0
    images = trainer.dataset.images([0, 1], (32, 32))
    with trainer.evaluated_weights():
        expected = implicit(images, ["a red circle", "two blue squares"]).scores
    # same weights, written to safetensors and read back: equal up to float32 rounding of the loaded pipeline's ops
    torch.testing.assert_close(loaded(images, ["a red circle", "two blue squares"]).scores, expected,
                               rtol=1e-4, atol=1e-4)


def test_implicit_reward_rejects_a_model_without_adapter_and_bad_knobs(sd3_model):
    with pytest.raises(ConfigError, match="no LoRA adapter"):
        ImplicitReward(sd3_model)
    with pytest.raises(ConfigError, match="beta must be > 0"):
        ImplicitReward(sd3_model, beta=0.0)
