"""CTRL: the control is the base model at initialization, the embedding trains (null row fixed) and round-trips
through its file and the checkpoint, temperature scaling and the metrics, the toy size labels, and bad input."""

import json

import pytest
import torch
from PIL import Image

from flowalign.algorithms.ctrl import CTRLConfig
from flowalign.errors import ConfigError
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.toy.size_control import SIZE_CLASSES, ToySizeDataset, measure_size_labels
from flowalign.training.config import OptimConfig, SamplingConfig
from flowalign.training.control import expected_calibration_error, fit_temperature, load_control, macro_f1
from flowalign.training.reference import adapter_disabled
from flowalign.training.trainer import Trainer
from reward_models.shapes import ShapesReward

from trainer_helpers import tiny_config

FAST = dict(classifier_steps=20, eval_prompts=2, eval_seeds=1, grad_steps=1)


def make_trainer(tmp_path, iterations=1, **algorithm):
    config = tiny_config(tmp_path, iterations=iterations, algorithm=CTRLConfig(**{**FAST, **algorithm}),
                         sampling=SamplingConfig(num_steps=3, group_size=2, prompts_per_iteration=2),
                         optim=OptimConfig(lr=1e-2, micro_batch_size=2, steps_per_iteration=1))
    config.model.height = config.model.width = 32
    return Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=ShapesReward())


def velocity(trainer, labels=None):
    model = trainer.model
    x = torch.randn(2, *model.latent_shape(trainer.geometry), generator=torch.Generator().manual_seed(0))
    cond = model.encode_prompts(["a red circle", "two blue squares"])
    if labels is None:
        return model.velocity(x, 0.7, cond, trainer.geometry)
    with trainer.algorithm.control.requested(torch.tensor(labels)):
        return model.velocity(x, 0.7, cond, trainer.geometry)


def test_at_initialization_any_control_gives_the_base_models_output(tmp_path):
    trainer = make_trainer(tmp_path)
    with adapter_disabled(trainer.model.transformer):
        base = velocity(trainer)
    for labels in ([0, 0], [1, 1], [0, 1], [2, 2]):  # 2 is the null class
        assert torch.equal(velocity(trainer, labels), base)  # zero rows and LoRA B = 0 add exact zeros


def test_training_moves_the_class_rows_only_and_the_file_and_checkpoint_round_trip(tmp_path):
    trainer = make_trainer(tmp_path, iterations=2, alpha=0.5)
    summary = trainer.run()
    rows = [r for r in trainer.history if "train/loss" in r]
    assert len(rows) == 2 and all(r["train/kl"] >= 0 for r in rows)
    assert {"classifier/ece_before", "classifier/ece_after", "control/before/accuracy", "control/macro_f1",
            "control/accuracy/small", "control/prompt_reward"} <= set().union(*trainer.history)
    weight = trainer.algorithm.control.weight.detach()
    assert bool((weight[:2].abs().sum(1) > 0).all()) and torch.equal(weight[2], torch.zeros_like(weight[2]))
    moved = velocity(trainer, [1, 1])
    assert not torch.allclose(moved, velocity(trainer, [0, 0]))
    # the saved file, loaded onto a second copy of the trained transformer, conditions it the same way
    pipeline = tiny_sd3_pipeline(seed=0)
    copy = Trainer(trainer.config, model=pipeline, reward=ShapesReward(), resume="latest")
    assert torch.equal(copy.algorithm.control.weight, trainer.algorithm.control.weight)
    assert copy.algorithm.ready and copy.algorithm.control.temperature == trainer.algorithm.control.temperature
    copy.algorithm.control._handle.remove()
    control = load_control(pipeline.transformer, tmp_path / "run" / "control.safetensors")
    assert control.classes == list(SIZE_CLASSES) and control.temperature == trainer.algorithm.control.temperature
    copy.algorithm.control = control
    torch.testing.assert_close(velocity(copy, [1, 1]), moved, rtol=0, atol=0)  # same weights, same ops
    assert summary["samples_seen"] == 2 * 4


def test_temperature_scaling_recovers_an_overconfident_classifiers_temperature():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (4000,), generator=gen)
    calibrated = torch.randn(4000, 3, generator=gen) + 1.5 * torch.nn.functional.one_hot(labels, 3)
    sampled = torch.distributions.Categorical(logits=calibrated).sample()  # labels drawn from the model itself
    overconfident = 3.0 * calibrated
    temperature = fit_temperature(overconfident, sampled)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before, after = expected_calibration_error(overconfident, sampled), expected_calibration_error(
        overconfident / temperature, sampled)
    assert before > 0.1 and after < 0.03, (before, after)


def test_macro_f1_counts_unmeasured_as_wrong():
    target = torch.tensor([0, 0, 1, 1])
    assert macro_f1(target, target, 2) == 1.0
    # class 0: TP 1, FN 1 (unmeasured), FP 0 → 2/3; class 1: TP 2, FP 0, FN 0 → 1
    assert macro_f1(torch.tensor([0, -1, 1, 1]), target, 2) == pytest.approx((2 / 3 + 1) / 2)


def test_the_toy_size_labels_are_measured_back_from_the_rendered_images():
    dataset = ToySizeDataset(n=200)
    measured = measure_size_labels(dataset.images(range(200), 32))
    truth = torch.tensor([SIZE_CLASSES.index(m["label"]) for m in dataset.metadata])
    assert float((measured == truth).float().mean()) >= 0.99  # measured 399/400 on the first 400


def write_manifest(folder, labels):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, label in enumerate(labels):
        Image.new("RGB", (32, 32), "red").save(folder / f"{i}.png")
        lines.append(json.dumps({"prompt": "a red circle", "image": f"{i}.png", "metadata": {"label": label}}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "data.jsonl")


def test_a_dataset_whose_labels_do_not_match_the_classifier_is_refused(tmp_path):
    manifest = write_manifest(tmp_path / "a", ["cat", "dog", "bird"])
    with pytest.raises(ConfigError, match=r"data.jsonl:3: label \('label'\) 'bird' is not one of .*\['cat', 'dog'\]"):
        make_trainer(tmp_path / "ra", dataset=manifest, classes=["cat", "dog"], measure="classifier")
    only_cats = write_manifest(tmp_path / "b", ["cat", "cat"])
    with pytest.raises(ConfigError, match=r"no sample of class\(es\) \['dog'\]"):
        make_trainer(tmp_path / "rb", dataset=only_cats, classes=["cat", "dog"], measure="classifier")


def test_a_label_outside_the_classes_is_refused(tmp_path):
    control = make_trainer(tmp_path).algorithm.control
    with pytest.raises(ConfigError, match=r"'medium' is not one of the classifier's classes \['small', 'large'\]"):
        control.index("medium")
    with pytest.raises(ConfigError, match=r"class indices in \[0, 2\]"):
        with control.requested([0, 3]):
            pass


@pytest.mark.parametrize("kwargs, match", [
    ({"kl_beta": 0.1}, r"weighs the KL with algorithm.alpha"),
    ({"alpha": -1.0}, r"algorithm.alpha must be >= 0"),
    ({"classes": ["a"]}, r"at least 2 distinct labels"),
    ({"calibration_fraction": 1.0}, r"calibration_fraction must lie in \(0, 1\)"),
    ({"classes": ["cat", "dog"]}, r"measure toy_size reads the classes \['small', 'large'\]"),
])
def test_bad_settings_name_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CTRLConfig(**kwargs)


def test_sampling_with_a_control_file_checks_the_file_and_the_label(tmp_path):
    from flowalign.training.control import control_for_sampling

    trainer = make_trainer(tmp_path)
    transformer = tiny_sd3_pipeline(seed=0).transformer
    with pytest.raises(ConfigError, match=r"--control needs the control file"):
        control_for_sampling(transformer, "small", None)
    with pytest.raises(ConfigError, match=r"control file .*control.safetensors' does not exist"):
        control_for_sampling(transformer, "small", None, tmp_path / "run" / "lora")
    trainer.algorithm.control.save(tmp_path / "control.safetensors")
    with pytest.raises(ConfigError, match=r"'huge' is not one of the classifier's classes"):
        control_for_sampling(transformer, "huge", tmp_path / "control.safetensors")
    requested = control_for_sampling(transformer, "large", tmp_path / "control.safetensors")
    with requested(3):
        pass
