"""Run metrics: a JSON-lines file (always), tensorboard scalars and images, optional Weights & Biases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from flowalign.errors import ConfigError

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """``log(step, {name: value})``; non-main processes pass ``enabled=False`` and log nothing."""

    def __init__(self, log_dir: Path, *, tensorboard: bool = True, wandb_project: str | None = None,
                 config: dict | None = None, enabled: bool = True):
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.log_dir / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError as err:
                raise ConfigError("logging.wandb_project is set but wandb is not installed: "
                                  "pip install 'flowalign[wandb]'") from err
            self._wandb = wandb.init(project=wandb_project, config=config or {}, dir=str(self.log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        with open(self.log_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps({"step": step, **clean}) + "\n")
            handle.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if value is not None:
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if v is not None}, step=step)

    def log_images(self, step: int, tag: str, images: torch.Tensor) -> None:
        """Images (N, 3, H, W) in [0, 1]."""
        if self.enabled and self._tb is not None:
            self._tb.add_images(tag, images.detach().float().clamp(0, 1).cpu(), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(log_dir: Path) -> list[dict]:
    """All logged rows; a truncated last line (a crash mid-write) is ignored."""
    path = Path(log_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ValueError(f"{path}:{number + 1} is not valid JSON") from None
    return rows
