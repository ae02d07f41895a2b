"""SePPO: the degenerate values at a reference equal to the policy, the snapshot pool in checkpoints, a reference
draw reproduced by a resumed run, and bad knobs."""

import math

import pytest
import torch

from flowalign.algorithms.seppo import SePPOConfig
from flowalign.errors import ConfigError
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.training.config import CheckpointConfig, DataConfig, EvalConfig, OptimConfig
from flowalign.training.trainer import Trainer

from test_sft import write_dataset
from trainer_helpers import Redness, tiny_config


def seppo_config(tmp_path, out="run", **algorithm):
    dataset = write_dataset(tmp_path / "data", [("a red circle", "red"), ("two blue squares", "blue")])
    config = tiny_config(tmp_path, algorithm=SePPOConfig(batch_size=3, beta=200.0, **algorithm),
                         optim=OptimConfig(lr=1e-2, micro_batch_size=2, steps_per_iteration=1),
                         eval=EvalConfig(every=100, num_steps=2, max_prompts=1, batch_size=1),
                         checkpoint=CheckpointConfig(every=1, keep_last=10))
    config.output_dir = str(tmp_path / out)
    config.data = DataConfig(train_prompts=config.data.train_prompts, eval_prompts=config.data.eval_prompts,
                             dataset=str(dataset))
    config.model.height = config.model.width = 32
    return config


@pytest.mark.parametrize("entry", ["base", "snapshot"])
def test_a_reference_equal_to_the_policy_gives_aaf_rate_1_loss_log2_and_accuracy_one_half(tmp_path, entry):
    """Derivation: with the reference equal to the policy, e_ref(x) = e_θ(x) for both images (same weights, same
    batch), so every Δ is 0. AAF's test e_ref(w) >= e_θ(w) holds with equality: sign +1 for every pair (rate 1).
    The logit −β(Δ_w − Δ_r) is 0: loss = softplus(0) = log 2, and a tie counts 1/2 in the implicit accuracy."""
    draw, sampler = ("initial", "ode") if entry == "base" else ("latest", "rollout")
    trainer = Trainer(seppo_config(tmp_path, reference_draw=draw, reference_sampler=sampler),
                      model=tiny_sd3_pipeline(seed=0), reward=Redness())
    pool = trainer.algorithm.pool
    if entry == "snapshot":  # a policy away from the base, snapshotted: the pool's latest entry equals it
        with torch.no_grad():
            gen = torch.Generator().manual_seed(2)
            for p in trainer.params:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        assert pool.add(0) == 1
    before = [p.detach().clone() for p in trainer.params]
    metrics = trainer.train_iteration(0)
    assert metrics["seppo/reference_index"] == (0 if entry == "base" else 1)
    assert metrics["train/aaf_rate"] == 1.0 and metrics["train/implicit_accuracy"] == 0.5
    # Δ = 0 exactly (same weights and batch layout), so the loss is log 2 up to float32 rounding of softplus
    torch.testing.assert_close(metrics["train/loss"], math.log(2.0), rtol=0, atol=1e-6)
    assert metrics["train/logit"] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params))  # the DPO gradient still trains
    assert trainer.samples_seen == 6  # 3 winners + 3 reference samples


def test_the_pool_is_bounded_checkpointed_and_a_resumed_run_draws_the_same_references(tmp_path):
    full_config = seppo_config(tmp_path, "full", pool_size=2, snapshot_every=1)
    full_config.iterations = 4
    full = Trainer(full_config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    full.run()
    assert full.algorithm.pool.steps == [None, 3, 4]  # base + the latest pool_size snapshots
    drawn = [h["seppo/reference_index"] for h in full.history if "seppo/reference_index" in h]
    assert len(drawn) == 4 and len(set(drawn)) > 1, drawn

    first_config = seppo_config(tmp_path, "resumed", pool_size=2, snapshot_every=1)
    first_config.iterations = 2
    Trainer(first_config, model=tiny_sd3_pipeline(seed=0), reward=Redness()).run()
    second_config = seppo_config(tmp_path, "resumed", pool_size=2, snapshot_every=1)
    second_config.iterations = 4
    resumed = Trainer(second_config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume="latest")
    assert resumed.iteration == 2 and resumed.algorithm.pool.steps == [None, 1, 2]
    resumed.run()
    assert [h["seppo/reference_index"] for h in resumed.history if "seppo/reference_index" in h] == drawn
    assert resumed.algorithm.pool.steps == full.algorithm.pool.steps
    for a, b in zip(resumed.algorithm.pool.state_dict()["snapshots"], full.algorithm.pool.state_dict()["snapshots"]):
        for name, tensor in a["tensors"].items():
            # CPU training from the same checkpointed state repeats the same float32 ops (the trainer's resume is
            # bit-exact on CPU); a small tolerance keeps the test about the draw, not about kernel determinism
            torch.testing.assert_close(tensor, b["tensors"][name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("pool_size", 0, "algorithm.pool_size must be >= 1"),
    ("beta", 0.0, "algorithm.beta must be > 0"),
    ("snapshot_every", 0, "algorithm.snapshot_every must be >= 1"),
    ("reference_draw", "oldest", "algorithm.reference_draw must be one of uniform, latest, initial"),
    ("reference_sampler", "sde", "algorithm.reference_sampler must be one of ode, rollout"),
])
def test_bad_knobs_are_named(key, value, message):
    with pytest.raises(ConfigError, match=message):
        SePPOConfig(**{key: value})
