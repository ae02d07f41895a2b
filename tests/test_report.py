"""Metrics log and the self-contained HTML report."""

import re

import torch

from flowalign.training.metrics import MetricsLogger, read_metrics
from flowalign.training.report import curves_from_metrics, write_report


def test_metrics_log_round_trip_with_nan_and_truncated_line(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        logger.log(1, {"reward": 0.5, "loss": float("nan")})
        logger.log(2, {"reward": 0.7})
        logger.log_images(2, "grid", torch.rand(2, 3, 8, 8))
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "rew')
    rows = read_metrics(tmp_path)
    assert rows == [{"step": 1, "reward": 0.5, "loss": None}, {"step": 2, "reward": 0.7}]
    assert any((tmp_path / "tensorboard").iterdir())


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "x", enabled=False)
    logger.log(1, {"a": 1.0})
    logger.close()
    assert not (tmp_path / "x").exists()


def test_report_is_self_contained(tmp_path):
    rows = [{"step": i, "reward": i / 10, "acc": None if i == 2 else 0.3} for i in range(5)]
    curves = {"reward": curves_from_metrics(rows, ["reward", "acc"]), "empty": {}}
    assert len(curves["reward"]["acc"]) == 4
    path = write_report(tmp_path / "r.html", title="run <1>", summary={"prompt": "<b>x</b>", "acc": 0.5},
                        curves=curves, tables={"steps": [{"step": 0, "ratio": 1.0}]},
                        images={"grid": torch.rand(3, 8, 8)})
    text = path.read_text()
    assert "run &lt;1&gt;" in text and "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text
    polylines = re.findall(r'<polyline data-name="([^"]+)"[^>]*points="([^"]*)"', text)
    assert {name: len(points.split()) for name, points in polylines} == {"reward": 5, "acc": 4}
    assert "no data" in text
    assert "data:image/png;base64," in text
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary files left
