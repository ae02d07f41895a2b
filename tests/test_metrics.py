"""MetricsLogger: JSON lines with nulls for non-finite values, tensorboard, lazy wandb, crash tolerance."""

import json
import sys
import types

import pytest
import torch

from flowalign.errors import ConfigError
from flowalign.training.metrics import MetricsLogger, read_metrics


def test_jsonl_rows_with_null_for_non_finite(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"reward": 0.5, "loss": float("nan"), "grad": float("inf")})
        logger.log(2, {"reward": torch.tensor(0.75), "count": 3})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert [json.loads(line) for line in text.splitlines()] == [
        {"step": 1, "reward": 0.5, "loss": None, "grad": None}, {"step": 2, "reward": 0.75, "count": 3.0}]
    assert read_metrics(tmp_path) == [json.loads(line) for line in text.splitlines()]


def test_each_row_is_flushed_before_close(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(0, {"a": 1.0})
    assert read_metrics(tmp_path) == [{"step": 0, "a": 1.0}]
    logger.close()


def test_tensorboard_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"reward/mean": 0.5, "loss": float("nan")})
        logger.log(2, {"reward/mean": 0.7})
        logger.log_images(2, "grid", torch.rand(2, 3, 8, 8))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("reward/mean")] == [(1, 0.5), (2, 0.7)]
    assert "loss" not in events.Tags()["scalars"]  # non-finite values are skipped
    (image,) = events.Images("grid")  # add_images tiles the batch into one image
    assert (image.step, image.width, image.height) == (2, 16, 8)


def test_bad_inputs_are_rejected(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(ValueError, match="metric 'name' must be a number, got str 'x'"):
            logger.log(0, {"name": "x"})
        with pytest.raises(ValueError, match="'step' is reserved"):
            logger.log(0, {"step": 1.0})
        with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
            logger.log_images(0, "grid", torch.rand(3, 8, 8))
    assert read_metrics(tmp_path) == []


def test_truncated_last_line_is_ignored_and_repaired_on_reopen(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"reward": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 2, "rew')  # a crash mid-write
    assert read_metrics(tmp_path) == [{"step": 1, "reward": 0.5}]
    with MetricsLogger(tmp_path, tensorboard=False) as logger:  # a resumed run appends cleanly
        logger.log(2, {"reward": 0.6})
    assert read_metrics(tmp_path) == [{"step": 1, "reward": 0.5}, {"step": 2, "reward": 0.6}]


def test_corrupt_middle_line_raises(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2 is not valid JSON"):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path / "missing") == []


def test_disabled_logger_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not even wandb is touched
    logger = MetricsLogger(tmp_path / "x", wandb_project="p", enabled=False)
    logger.log(1, {"a": 1.0})
    logger.log_images(1, "grid", torch.rand(1, 3, 4, 4))
    logger.close()
    assert not (tmp_path / "x").exists()


def test_wandb_missing_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ConfigError, match="wandb_project is 'proj' but wandb is not installed"):
        MetricsLogger(tmp_path, tensorboard=False, wandb_project="proj")


def test_wandb_receives_finite_metrics(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or Run(),
                                 Image=lambda array: ("image", array.shape))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsLogger(tmp_path, tensorboard=False, wandb_project="proj", config={"seed": 1}) as logger:
        logger.log(3, {"a": 1.0, "b": float("nan")})
        logger.log_images(3, "grid", torch.rand(2, 3, 4, 5))
    assert calls[0] == ("init", {"project": "proj", "config": {"seed": 1}, "dir": str(tmp_path)})
    assert calls[1] == ("log", {"a": 1.0}, 3)
    assert calls[2] == ("log", {"grid": [("image", (4, 5, 3))] * 2}, 3)
    assert calls[3] == ("finish",)
