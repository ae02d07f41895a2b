"""Diffusion-DPO for flow models: the loss at policy == reference, shared noise, offline and online training,
preference manifests and their bad input."""

import json
import math

import pytest
import torch
from PIL import Image

from flowalign.algorithms.dpo import DPOConfig, ranked_pairs
from flowalign.data.preference import PreferenceDataset
from flowalign.errors import ConfigError, FlowAlignError
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.training.config import DataConfig, OptimConfig, SamplingConfig
from flowalign.training.flow_matching import SigmaSampling, shared_noise_pair
from flowalign.training.preference import preference_logit, preference_loss, preference_terms
from flowalign.training.trainer import Trainer
from reward_models.io_utils import BadInputError

from trainer_helpers import Redness, tiny_config

LOG2 = math.log(2.0)


def write_pairs(folder, rows):
    """A preference manifest; rows are (prompt, winner colour, loser colour or None)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (prompt, win, lose) in enumerate(rows):
        Image.new("RGB", (32, 32), win).save(folder / f"w{i}.png")
        row = {"prompt": prompt, "image": f"w{i}.png", "loser": None}
        if lose is not None:
            Image.new("RGB", (32, 32), lose).save(folder / f"l{i}.png")
            row["loser"] = f"l{i}.png"
        lines.append(json.dumps(row))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


PAIRS = [("a red circle", "red", "blue"), ("two blue squares", "blue", "green"), ("a green triangle", "green", None)]


def dpo_config(tmp_path, dataset=None, **algorithm):
    config = tiny_config(tmp_path, algorithm=DPOConfig(batch_size=4, **algorithm),
                         optim=OptimConfig(lr=1e-2, micro_batch_size=3, steps_per_iteration=1))
    config.data = DataConfig(train_prompts=config.data.train_prompts, eval_prompts=config.data.eval_prompts,
                             dataset=None if dataset is None else str(dataset))
    config.model.height = config.model.width = 32
    return config


def fixed_pairs(trainer):
    """The manifest's pairs as latents, with one fixed σ and noise per pair."""
    data = trainer.dataset
    rows = data.pair_indices()
    with torch.no_grad():
        w = trainer.model.encode_pixels(data.images(rows, (32, 32)), trainer.geometry)
        lose = trainer.model.encode_pixels(data.losers(rows, (32, 32)), trainer.geometry)
    sigma, noise = shared_noise_pair(w, lose, torch.Generator().manual_seed(0), SigmaSampling())
    return [data.prompts[i] for i in rows], w, lose, sigma, noise


def terms(trainer, prompts, w, lose, sigma, noise, beta=1000.0):
    return preference_terms(trainer, w, lose, prompts, sigma, noise, beta, "dpo", trainer.reference)


def test_at_policy_equal_reference_the_loss_is_log2_and_its_gradient_lowers_the_winner_raises_the_loser():
    errors = torch.tensor([0.7, 1.3]), torch.tensor([0.9, 0.4])
    policy_w, policy_l = (e.clone().requires_grad_(True) for e in errors)
    beta = 250.0
    loss = preference_loss(preference_logit(policy_w, policy_l, *errors, beta)).sum()
    loss.backward()
    # exact by construction: Δ = e − e = 0, so the logit is exactly 0 and softplus(0) = log 2 up to float32 rounding
    torch.testing.assert_close(loss / 2, torch.tensor(LOG2), rtol=0, atol=1e-7)
    # d softplus(−logit)/d e_w = β·sigmoid(0) = β/2: gradient descent lowers the winner's error, raises the loser's
    torch.testing.assert_close(policy_w.grad, torch.full((2,), beta / 2), rtol=1e-6, atol=0)
    torch.testing.assert_close(policy_l.grad, torch.full((2,), -beta / 2), rtol=1e-6, atol=0)


def test_dpo_on_the_tiny_model_starts_at_log2_and_one_update_lowers_the_loss_on_its_pairs(tmp_path, monkeypatch):
    dataset = write_pairs(tmp_path / "data", PAIRS)
    config = dpo_config(tmp_path, dataset, beta=200.0)
    import flowalign.data.preference as preference

    reads = []
    parse = preference.parse_manifest
    monkeypatch.setattr(preference, "parse_manifest", lambda *a, **k: reads.append(a[0]) or parse(*a, **k))
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    # the trainer's dataset is the preference manifest, read once (winners and losers)
    assert isinstance(trainer.dataset, preference.PreferenceDataset) and len(reads) == 1
    pairs = fixed_pairs(trainer)
    with torch.no_grad():
        start = terms(trainer, *pairs, beta=200.0)
    # the fresh adapter adds exact zeros (LoRA B = 0), so policy and reference errors are equal in the same batch
    torch.testing.assert_close(start.loss, torch.full_like(start.loss, LOG2), rtol=0, atol=1e-6)
    metrics = trainer.train_iteration(0)
    assert metrics["train/pairs"] == 4 and trainer.samples_seen == 8  # a pair is two images seen
    torch.testing.assert_close(metrics["train/aaf_rate"], 1.0)  # DPO's sign is always +1
    with torch.no_grad():
        after = terms(trainer, *pairs, beta=200.0)
    assert float(after.loss.mean()) < LOG2 - 1e-3, after.loss
    assert float((after.policy_w - after.ref_w - after.policy_l + after.ref_l).mean()) < 0


def test_swapping_winner_and_loser_flips_the_sign_of_the_logit(tmp_path):
    dataset = write_pairs(tmp_path / "data", PAIRS)
    trainer = Trainer(dpo_config(tmp_path, dataset), model=tiny_sd3_pipeline(seed=0), reward=Redness())
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in trainer.params:  # a policy away from the reference
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        prompts, w, lose, sigma, noise = fixed_pairs(trainer)
        forward = terms(trainer, prompts, w, lose, sigma, noise).logit
        swapped = terms(trainer, prompts, lose, w, sigma, noise).logit
    assert forward.abs().min() > 1e-3, forward
    # the same images, σ and noise in another batch position: the model's per-row results may differ by float32
    # rounding of batched matmuls (~1e-7 relative on errors ~1), scaled by β = 1000 → 1e-3 absolute is ample
    torch.testing.assert_close(swapped, -forward, rtol=1e-4, atol=1e-3)


def test_online_dpo_pairs_best_with_worst_within_groups_and_trains(tmp_path):
    w, lose = ranked_pairs(torch.tensor([0.1, 0.9, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]), 4, 2)
    assert w.tolist() == [1] and lose.tolist() == [0]  # (0.5, 0.5) tie dropped; the second group is all equal
    config = dpo_config(tmp_path, source="online", pairs_per_group=2)
    config.sampling = SamplingConfig(num_steps=2, group_size=4, prompts_per_iteration=2, rollout_batch_size=8)
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    before = [p.detach().clone() for p in trainer.params]
    metrics = trainer.train_iteration(0)
    assert metrics["train/pairs"] >= 1 and "reward/mean" in metrics and trainer.samples_seen == 8
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params))


def test_bad_preference_lines_name_file_and_line_and_skip_bad_reports_them(tmp_path):
    dataset = write_pairs(tmp_path / "data", PAIRS)
    lines = dataset.read_text().splitlines()
    lines[1] = json.dumps({"prompt": "two blue squares", "loser": "l1.png"})  # no winner
    (tmp_path / "data" / "l0.png").write_bytes(b"not an image")  # unreadable loser on line 1
    dataset.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=r"pairs.jsonl:1: 'loser': cannot read image .*l0.png"):
        PreferenceDataset(dataset)
    lines[0] = json.dumps({"prompt": "a red circle", "image": "w0.png"})
    dataset.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=r"pairs.jsonl:2: the line has no winner"):
        PreferenceDataset(dataset)
    data = PreferenceDataset(dataset, skip_bad=True)
    assert len(data) == 2 and [s for s, _ in data.skipped] == [f"{dataset}:2"]
    assert data.pair_indices() == []  # line 1 lost its loser, line 3 never had one
    lines[1] = json.dumps({"prompt": "two blue squares", "image": "w1.png"})
    dataset.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="no row with a loser"):
        Trainer(dpo_config(tmp_path, dataset), model="/nonexistent/pipeline", reward=Redness())


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_beta_must_be_positive(beta):
    with pytest.raises(ConfigError, match="algorithm.beta must be > 0"):
        DPOConfig(beta=beta)


def test_offline_dpo_needs_a_dataset_and_lora(tmp_path):
    with pytest.raises(FlowAlignError, match="data.dataset"):
        Trainer(dpo_config(tmp_path), model="/nonexistent/pipeline", reward=Redness())
    config = dpo_config(tmp_path, source="online")
    config.lora.enabled = False
    with pytest.raises(ConfigError, match="lora.enabled"):
        Trainer(config, model="/nonexistent/pipeline", reward=Redness())
