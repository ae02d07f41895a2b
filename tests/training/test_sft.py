"""SFT: supervised flow matching on an offline dataset, on the shared trainer."""

import json

import pytest
import torch
from PIL import Image

from flowalign.algorithms.sft import SFTConfig
from flowalign.errors import FlowAlignError
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.training.config import DataConfig, OptimConfig
from flowalign.training.flow_matching import flow_matching_error
from flowalign.training.trainer import Trainer

from trainer_helpers import Redness, tiny_config


def write_dataset(folder, rows):
    """A JSONL manifest with one 32×32 image per (prompt, colour) row."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (prompt, colour) in enumerate(rows):
        Image.new("RGB", (32, 32), colour).save(folder / f"{i}.png")
        lines.append(json.dumps({"prompt": prompt, "image": f"{i}.png"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "data.jsonl"


def sft_config(tmp_path, dataset, **algorithm):
    config = tiny_config(tmp_path, algorithm=SFTConfig(batch_size=4, **algorithm),
                         optim=OptimConfig(lr=1e-2, micro_batch_size=3, steps_per_iteration=2))
    config.data = DataConfig(train_prompts=config.data.train_prompts, eval_prompts=config.data.eval_prompts,
                             dataset=str(dataset))
    config.model.height = config.model.width = 32
    return config


def fixed_error(trainer, prompts, pixels):
    """The flow-matching error at fixed σ and noise (what SFT minimises, without its sampling noise)."""
    model = trainer.model
    with torch.no_grad():
        x0 = model.encode_pixels(pixels, trainer.geometry)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        sigma = torch.linspace(0.2, 0.8, len(prompts))
        return float(flow_matching_error(model, x0, model.encode_prompts(prompts), trainer.geometry, sigma,
                                         noise).mean())


def test_sft_lowers_the_flow_matching_error_and_changes_only_the_adapter(tmp_path):
    dataset = write_dataset(tmp_path / "data", [("a red circle", "red"), ("two blue squares", "blue")])
    config = sft_config(tmp_path, dataset)
    config.iterations = 8
    pipeline = tiny_sd3_pipeline(seed=0)
    trainer = Trainer(config, model=pipeline, reward=Redness())
    frozen = {k: v.clone() for k, v in pipeline.transformer.state_dict().items()}
    prompts = trainer.dataset.prompts
    pixels = trainer.dataset.images(range(len(prompts)), (32, 32))
    before = fixed_error(trainer, prompts, pixels)
    summary = trainer.run()
    with trainer.evaluated_weights():
        after = fixed_error(trainer, prompts, pixels)
    assert after < 0.9 * before, (before, after)
    changed = {k for k, v in pipeline.transformer.state_dict().items() if not torch.equal(v, frozen[k])}
    assert changed and all("lora_" in k for k in changed), sorted(changed)[:5]
    assert summary["samples_seen"] == 8 * 4 and summary["algorithm"] == "sft"


def test_one_sft_step_touches_only_trainable_parameters(tmp_path):
    dataset = write_dataset(tmp_path / "data", [("a red circle", "red")])
    trainer = Trainer(sft_config(tmp_path, dataset), model=tiny_sd3_pipeline(seed=0), reward=Redness())
    model = trainer.model
    trainable = {id(p) for p in trainer.params}
    modules = {k: c for k, c in model.pipeline.components.items() if isinstance(c, torch.nn.Module)}
    before = {(k, name): p.detach().clone() for k, c in modules.items() for name, p in c.named_parameters()}
    metrics = trainer.train_iteration(0)
    assert metrics["train/loss"] > 0 and metrics["train/grad_norm"] > 0
    moved = {(k, name) for k, c in modules.items() for name, p in c.named_parameters()
             if not torch.equal(p, before[k, name])}
    assert moved and all(id(dict(modules[k].named_parameters())[name]) in trainable for k, name in moved)


def test_a_dataset_with_a_missing_image_names_file_and_line_before_the_model_loads(tmp_path):
    dataset = write_dataset(tmp_path / "data", [("a red circle", "red"), ("two blue squares", "blue")])
    (tmp_path / "data" / "1.png").unlink()
    with pytest.raises(FlowAlignError, match=r"data.jsonl:2"):
        Trainer(sft_config(tmp_path, dataset), model="/nonexistent/pipeline", reward=Redness())


def test_a_dataset_with_an_empty_prompt_names_file_and_line(tmp_path):
    dataset = write_dataset(tmp_path / "data", [("a red circle", "red"), ("  ", "blue")])
    with pytest.raises(FlowAlignError, match=r"data.jsonl:2.*prompt"):
        Trainer(sft_config(tmp_path, dataset), model="/nonexistent/pipeline", reward=Redness())


def test_skip_bad_leaves_bad_lines_out_warns_and_lists_them_in_the_summary(tmp_path):
    rows = [("a red circle", "red"), ("  ", "blue"), ("two blue squares", "blue"), ("a green square", "green")]
    dataset = write_dataset(tmp_path / "data", rows)
    (tmp_path / "data" / "3.png").write_bytes(b"not an image")
    config = sft_config(tmp_path, dataset)
    config.data.skip_bad = True
    config.iterations = 1
    with pytest.warns(UserWarning, match=r"left out 2 bad line\(s\).*data.jsonl:2.*data.jsonl:4"):
        trainer = Trainer(config, model=tiny_sd3_pipeline(seed=0), reward=Redness())
    assert trainer.dataset.prompts == ["a red circle", "two blue squares"]
    summary = trainer.run()
    assert [s["line"] for s in summary["data_skipped"]] == [f"{dataset}:2", f"{dataset}:4"]
    assert "cannot read image" in summary["data_skipped"][1]["why"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data_skipped"] == summary["data_skipped"]
