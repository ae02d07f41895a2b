"""The training loop end to end on tiny pipelines: what changes, resuming, failures and bad input."""

import dataclasses
import shutil

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import SD3Transformer2DModel
from safetensors.torch import load_file, save_file

from flowalign.errors import ConfigError
from flowalign.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_wan_pipeline
from flowalign.training.checkpoint import CheckpointError, list_checkpoints, write_checksums
from flowalign.algorithms.grpo import GRPOConfig
from flowalign.algorithms.grpo_guard import GRPOGuardConfig
from flowalign.training.config import (
    CheckpointConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    SamplingConfig,
)
from flowalign.training.lora import LoRAConfig, lora_state_dict
from flowalign.training.metrics import read_metrics
from flowalign.training.seeding import derived_generator
from flowalign.training.trainer import Trainer, TrainingError

from trainer_helpers import NaNReward, Redness, record_advantages, tiny_config

BUILDERS = {
    "sd3": lambda: tiny_sd3_pipeline(seed=0),
    "flux": lambda: tiny_flux_pipeline(seed=0),
    "wan": lambda: tiny_wan_pipeline(seed=0),
}


def snapshot(pipeline):
    return {f"{name}.{k}": v.detach().clone() for name, module in pipeline.components.items()
            if isinstance(module, torch.nn.Module) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_one_training_step_changes_only_the_adapter(tmp_path, family):
    pipeline = BUILDERS[family]()
    config = tiny_config(tmp_path)
    if family == "wan":  # the pipeline's default is 480×832×81 frames
        config.model = ModelConfig(path="unused", height=32, width=32, num_frames=5)
    if family == "flux":  # FluxPipeline's default is 1024² (4096 tokens even for the tiny model)
        config.model = ModelConfig(path="unused", height=32, width=32)
    trainer = Trainer(config, model=pipeline, reward=Redness())
    before = snapshot(pipeline)
    summary = trainer.run()
    after = snapshot(pipeline)
    # exact by construction: a tensor the optimizer never steps keeps its bits
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was trained"
    assert all("lora_" in k for k in changed), sorted(k for k in changed if "lora_" not in k)[:5]
    assert "eval/reward" in summary["eval_after"]
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()


class Blueness(Redness):
    """−Redness: the same images ranked the other way round."""

    def forward(self, images, prompts, metadata=None):
        out = super().forward(images, prompts, metadata)
        out.scores.neg_()
        return out


@pytest.mark.parametrize("algorithm", [GRPOConfig(), GRPOGuardConfig()], ids=["grpo", "grpo_guard"])
def test_training_raises_the_held_out_reward_whichever_way_it_points(tmp_path, algorithm):
    """From the same start, ten iterations on Redness leave a policy whose held-out (ODE) redness exceeds that
    of the policy trained on Blueness (−Redness) by a clear margin: the advantages, the ratio and the update all
    point the right way. A group shares its initial noise, so that its rewards differ by the policy's own SDE
    noise only (a much less noisy gradient); margins over seeds 1–10 were 0.020–0.075 (reversed, ≈ −0.05, when
    the advantages are negated), and every red run's redness ended above every blue run's."""
    redness = {}
    for reward in (Redness(), Blueness()):
        config = tiny_config(
            tmp_path / type(reward).__name__, seed=2, iterations=10, algorithm=algorithm,
            sampling=SamplingConfig(num_steps=2, group_size=16, prompts_per_iteration=2, rollout_batch_size=32,
                                    share_initial_noise=True),
            optim=OptimConfig(lr=3e-2, micro_batch_size=64, steps_per_iteration=1),
            checkpoint=CheckpointConfig(every=100, keep_last=1),
            eval=EvalConfig(every=10, num_steps=2, max_prompts=4, batch_size=8))
        trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=reward)
        trainer.run()
        sign = -1.0 if isinstance(reward, Blueness) else 1.0
        redness[type(reward).__name__] = [sign * row["eval/reward"] for row in trainer.history
                                          if "eval/reward" in row]
    # the same start: two pipelines built from seed 0, evaluated on the same seeds in the same process (exact in
    # practice); abs 1e-6 on a mean redness of magnitude ≤ 1 only allows for float32 rounding, far below the margin
    assert redness["Redness"][0] == pytest.approx(redness["Blueness"][0], abs=1e-6)
    margin = redness["Redness"][1] - redness["Blueness"][1]
    assert margin > 0.015, redness


def test_chunked_rollouts_keep_their_groups_apart(tmp_path):
    """rollout_batch_size == group_size: one prompt per chunk, three chunks joined. Each prompt's group is
    normalised on its own (A = ±(r1 − r0)/2 / (|r1 − r0|/2 + 1e-4) for a group of two), not as one group of six."""
    config = tiny_config(tmp_path, sampling=SamplingConfig(num_steps=2, group_size=2, prompts_per_iteration=3,
                                                           rollout_batch_size=2))
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    calls = record_advantages(trainer)
    trainer.train_iteration(0)
    (call,) = calls
    traj, rewards, advantages = call["trajectory"], call["rewards"], call["advantages"]
    assert traj.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert all(traj.prompts[2 * g] == traj.prompts[2 * g + 1] for g in range(3))
    expected = torch.zeros(6)
    for g in range(3):
        r0, r1 = float(rewards[2 * g]), float(rewards[2 * g + 1])
        half = abs(r1 - r0) / 2
        expected[2 * g : 2 * g + 2] = torch.tensor([r0 - (r0 + r1) / 2, r1 - (r0 + r1) / 2]) / (half + 1e-4)
    assert expected.abs().min() > 0.5  # every group carries signal (|A| ≈ 1 for a group of two)
    torch.testing.assert_close(advantages, expected, rtol=1e-4, atol=1e-5)


def test_kl_penalty_compares_with_the_adapter_disabled_and_leaves_it_enabled(tmp_path):
    """kl_beta > 0: the reference is the transformer with its LoRA disabled, so once the first optimizer step
    has made the LoRA non-zero the logged KL is > 0; afterwards the adapter is on again (training and the
    model's output use the LoRA, not the base model)."""
    config = tiny_config(tmp_path, algorithm=GRPOConfig(kl_beta=0.1),
                         optim=OptimConfig(lr=1e-2, micro_batch_size=4, steps_per_iteration=2))
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    metrics = trainer.train_iteration(0)
    assert metrics["train/kl"] > 0
    model, geometry = trainer.model, trainer.geometry
    x = torch.randn(2, *model.latent_shape(geometry), generator=torch.Generator().manual_seed(0))
    cond = model.encode_prompts(["a red circle", "two blue squares"])
    with torch.no_grad():
        as_left = model.velocity(x, 0.6, cond, geometry)
        model.transformer.disable_adapters()
        base = model.velocity(x, 0.6, cond, geometry)
        model.transformer.enable_adapters()
        with_lora = model.velocity(x, 0.6, cond, geometry)
    assert torch.equal(as_left, with_lora)  # exact by construction: the same module on the same inputs
    assert (as_left - base).abs().max() > 1e-4


def test_train_step_fraction_trains_the_drawn_fraction_of_pairs(tmp_path):
    """train_step_fraction f keeps the pairs (with non-zero advantage) whose draw from the run's "steps"
    generator is < f: the count is reproduced by hand, and is well below the full count."""
    fraction = 0.25
    config = tiny_config(tmp_path, sampling=SamplingConfig(num_steps=4, group_size=4, prompts_per_iteration=2,
                                                           rollout_batch_size=8, train_step_fraction=fraction))
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    calls = record_advantages(trainer)
    metrics = trainer.train_iteration(0)
    (call,) = calls
    samples, _ = call["trajectory"].trainable_pairs()
    with_signal = int((call["advantages"][samples] != 0).sum())
    draw = torch.rand(with_signal, generator=derived_generator(config.seed, "steps", 0, 0))
    expected = int((draw < fraction).sum())
    assert with_signal == 32  # 8 samples × 4 stochastic steps, every group with distinct rewards
    assert 0 < expected < with_signal / 2
    assert metrics["train/pairs"] == expected


def test_final_model_is_the_evaluated_one(tmp_path):
    """The saved adapter holds the EMA weights that the final evaluation used, not the raw trained ones."""
    trainer = Trainer(tiny_config(tmp_path), model=tiny_sd3_pipeline(seed=0), reward=Redness())
    trainer.run()
    saved = {k.removeprefix("transformer."): v for k, v in
             load_file(tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").items()}
    with trainer.evaluated_weights():
        evaluated = {k: v.clone() for k, v in lora_state_dict(trainer.model.transformer).items()}
    raw = lora_state_dict(trainer.model.transformer)
    assert saved.keys() == evaluated.keys()
    # exact by construction: safetensors stores the tensors' bytes; no arithmetic between save and load
    assert all(torch.equal(saved[k], evaluated[k]) for k in saved)
    assert not all(torch.equal(saved[k], raw[k]) for k in saved)


def test_full_fine_tuning_saves_a_diffusers_transformer(tmp_path):
    config = tiny_config(tmp_path, lora=LoRAConfig(enabled=False), optim=OptimConfig(lr=1e-3, micro_batch_size=3))
    pipeline = tiny_sd3_pipeline(seed=0)
    before = {k: v.clone() for k, v in pipeline.transformer.state_dict().items()}
    trainer = Trainer(config, model=pipeline, reward=Redness())
    trainer.run()
    loaded = SD3Transformer2DModel.from_pretrained(tmp_path / "run" / "transformer")
    with trainer.evaluated_weights():
        evaluated = pipeline.transformer.state_dict()
        # exact by construction: saving and loading copy the tensors' bytes (here and on resume below)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in evaluated.items())
    assert any(not torch.equal(loaded.state_dict()[k], before[k]) for k in before)
    assert not (tmp_path / "run" / "lora").exists()
    resumed = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume="latest")
    assert all(torch.equal(resumed.model.transformer.state_dict()[k], v)
               for k, v in pipeline.transformer.state_dict().items())
    weights = list_checkpoints(config.output_dir)[-1] / "transformer.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("proj_out.")}, weights)
    write_checksums(weights.parent)  # an intact checkpoint of another architecture, not a corrupt one
    with pytest.raises(CheckpointError, match=r"does not fit this transformer: missing \['proj_out.bias'"):
        Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume="latest")


def lora_params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.transformer.named_parameters() if "lora_" in n}


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = tiny_config(tmp_path / "a", iterations=2)
    uninterrupted = Trainer(full, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    uninterrupted.run()

    first = tiny_config(tmp_path / "b", iterations=1)
    Trainer(first, model=tiny_sd3_pipeline(seed=0), reward=Redness()).run()
    second = dataclasses.replace(first, iterations=2)
    resumed = Trainer(second, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume="latest")
    assert resumed.iteration == 1
    resumed.run()
    expected, got = lora_params(uninterrupted), lora_params(resumed)
    assert expected.keys() == got.keys()
    # bit-exact resume, same machine and process: the resumed run copies the checkpoint's bytes into parameters
    # and state built as the uninterrupted run's were, and repeats its arithmetic (another CPU type may differ)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert not all(torch.equal(p, torch.zeros_like(p)) for p in got.values())


def test_non_finite_rewards_stop_the_run_and_keep_the_last_checkpoint(tmp_path):
    config = tiny_config(tmp_path, iterations=6, max_skipped_iterations=1)
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=NaNReward())
    before = lora_params(trainer)
    with pytest.raises(TrainingError, match=r"non-finite or invalid rewards in 2 consecutive iterations.*iter-000001"):
        trainer.run()
    checkpoints = list_checkpoints(config.output_dir)
    assert [c.name for c in checkpoints] == ["iter-000001"]
    assert (checkpoints[0] / "state.json").is_file()
    for name, value in lora_params(trainer).items():
        assert torch.equal(value, before[name])  # skipped updates never touched the weights


def test_corrupt_checkpoint_is_reported_on_resume(tmp_path):
    config = tiny_config(tmp_path)
    Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness()).run()
    latest = list_checkpoints(config.output_dir)[-1]
    (latest / "optimizer.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors.*corrupt"):
        Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume=str(latest))
    with pytest.raises(CheckpointError, match=r"optimizer.safetensors"):  # no intact checkpoint to fall back to
        Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume="latest")


def test_latest_resume_skips_a_corrupt_newest_checkpoint_and_keeps_it(tmp_path):
    config = tiny_config(tmp_path, iterations=2)
    Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness()).run()
    older, newest = list_checkpoints(config.output_dir)
    adapter = next((newest / "lora").glob("*.safetensors"))
    adapter.write_bytes(b"overwritten")
    with pytest.warns(UserWarning, match=newest.name):
        resumed = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume="latest")
    assert resumed.iteration == 1
    assert adapter.read_bytes() == b"overwritten" and (older / "state.json").is_file()  # nothing deleted


def logged_steps(config):
    return [row["step"] for row in read_metrics(f"{config.output_dir}/logs")]


def test_a_fresh_run_refuses_a_folder_holding_another_run(tmp_path):
    config = tiny_config(tmp_path)
    Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness()).run()
    with pytest.raises(ConfigError, match=r"already holds a run \(1 checkpoint.*--resume.*--overwrite"):
        Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), overwrite=True).run()
    assert logged_steps(config) == [0, 1]  # the first run's rows are gone, not mixed in
    with pytest.raises(ConfigError, match="resume and overwrite exclude each other"):
        Trainer(config, resume="latest", overwrite=True)
    # a run that died before its first checkpoint: --resume starts it afresh, without the stale rows
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    resumed = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume="latest")
    assert resumed.iteration == 0 and logged_steps(config) == []


def test_resume_relogs_the_steps_after_its_checkpoint_once(tmp_path):
    config = tiny_config(tmp_path, iterations=2)
    Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness()).run()
    # as if the run died after logging step 2 but before its checkpoint was complete
    shutil.rmtree(list_checkpoints(config.output_dir)[-1])
    resumed = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), resume="latest")
    assert resumed.iteration == 1 and logged_steps(config) == [0, 1]
    resumed.run()
    assert logged_steps(config) == [0, 1, 2]


def test_accelerate_mixed_precision_leaves_the_first_update_on_policy(tmp_path):
    """Autocasting the recomputation but not the rollout made on-policy ratios ≠ 1 (clipped at once under bf16)."""
    AcceleratorState._reset_state(True)
    try:
        accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        config = tiny_config(tmp_path, optim=OptimConfig(lr=1e-2, micro_batch_size=1, steps_per_iteration=1))
        with pytest.warns(UserWarning, match="mixed precision 'bf16' is not used"):
            trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness(), accelerator=accelerator)
        trainer.run()
    finally:
        AcceleratorState._reset_state(True)
    trained = [row for row in read_metrics(f"{config.output_dir}/logs") if "train/ratio_mean" in row]
    assert trained and all(row["train/clip_frac_above"] == row["train/clip_frac_below"] == 0 for row in trained)
    assert all(abs(row["train/ratio_mean"] - 1) < 1e-6 for row in trained)


@pytest.mark.parametrize("old_policy", ["rollout", "auto"])
def test_bf16_updates_are_on_policy_with_recomputed_old_means(tmp_path, old_policy):
    """In bf16 a transition's μ depends on the batch it is computed in: the rollout's μ_old, taken in another
    batch, puts on-policy ratios outside GRPO-Guard's clip. ``auto`` recomputes μ_old in the update's batch."""
    config = tiny_config(tmp_path, optim=OptimConfig(lr=1e-30, micro_batch_size=1, steps_per_iteration=2,
                                                     old_policy=old_policy))
    pipeline = tiny_sd3_pipeline(seed=0)
    pipeline.transformer.to(torch.bfloat16)
    trainer = Trainer(config, model=pipeline, reward=Redness())
    trainer.run()  # lr 1e-30 leaves the policy where it was: both optimizer steps are on-policy
    (row,) = [row for row in read_metrics(f"{config.output_dir}/logs") if "train/ratio_mean" in row]
    clipped = row["train/clip_frac_above"] + row["train/clip_frac_below"]
    if old_policy == "rollout":
        assert clipped > 0
    else:
        # exact by construction: μ_old is recomputed by the same module on the same micro-batch just before the
        # update, and the lr-1e-30 step adds ~1e-30 to activations far larger than their float rounding. (No
        # tolerance: the rollout-batch μ_old is off by only ~1e-6–1e-5 in the ratio, yet clipped.)
        assert clipped == 0 and row["train/ratio_mean"] == 1.0 and row["train/ratio_std"] == 0.0


def test_eval_with_several_samples_per_prompt_averages_shifted_seeds(tmp_path):
    config = tiny_config(tmp_path)
    trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    num_prompts = len(trainer.eval_set)
    trainer.config.eval = dataclasses.replace(config.eval, samples_per_prompt=2, seed=7)
    both = trainer.evaluate()["eval/reward"]
    trainer.config.eval = dataclasses.replace(config.eval, samples_per_prompt=1, seed=7)
    first = trainer.evaluate()["eval/reward"]
    trainer.config.eval = dataclasses.replace(config.eval, samples_per_prompt=1, seed=7 + num_prompts)
    second = trainer.evaluate()["eval/reward"]
    assert first != second
    # abs 1e-6 on rewards of magnitude ≤ 1: the same images (same batches of 2), averaged as one mean of four
    # against the mean of two means of two, so float rounding only
    assert both == pytest.approx((first + second) / 2, abs=1e-6)
    with pytest.raises(ConfigError, match="eval.samples_per_prompt must be >= 1"):
        dataclasses.replace(config.eval, samples_per_prompt=0)


def test_bad_training_input_fails_before_the_model_loads(tmp_path):
    config = tiny_config(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        Trainer(dataclasses.replace(config, data=dataclasses.replace(config.data, train_prompts=str(empty))))
    with pytest.raises(ConfigError, match="missing.txt' does not exist"):
        Trainer(dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                     train_prompts=str(tmp_path / "missing.txt"))))
    with pytest.raises(ConfigError, match="unknown reward 'no_such_reward'|no_such_reward"):
        Trainer(dataclasses.replace(config, reward=RewardConfig(weights={"no_such_reward": 1.0})))
    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        SamplingConfig(group_size=1)
