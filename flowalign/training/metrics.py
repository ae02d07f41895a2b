"""Run metrics: a JSON-lines file (always), tensorboard scalars and images, optional Weights & Biases."""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import torch

from flowalign.errors import ConfigError
from flowalign.utils.io import write_text

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """``log(step, {name: value})`` to ``log_dir/metrics.jsonl`` (+ tensorboard, + wandb).

    Non-main processes pass ``enabled=False``: nothing is created or written. Non-finite values are stored
    as JSON ``null`` and not sent to tensorboard or wandb."""

    def __init__(self, log_dir: Path, *, tensorboard: bool = True, wandb_project: str | None = None,
                 config: dict | None = None, enabled: bool = True, resume_step: int | None = None):
        """``resume_step``: the run continues from that step, so rows (and tensorboard events) logged after it
        by the interrupted run are dropped and logged again, not duplicated."""
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self.path = self.log_dir / METRICS_FILE
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if wandb_project:
            self._wandb = _start_wandb(wandb_project, config, self.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _drop_partial_last_line(self.path)
        if resume_step is not None:
            _drop_rows_after(self.path, resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ConfigError("logging.tensorboard is true but tensorboard is not installed: "
                                  "pip install tensorboard, or set logging.tensorboard=false") from err
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.log_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one row ``{"step": step, **metrics}``; values are numbers (or 1-element tensors)."""
        if not self.enabled:
            return
        if "step" in metrics:
            raise ValueError("metric name 'step' is reserved for the step number")
        clean = {str(k): _finite_or_none(k, v) for k, v in metrics.items()}
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": int(step), **clean}, allow_nan=False) + "\n")
            handle.flush()
        finite = {k: v for k, v in clean.items() if v is not None}
        if self._tb is not None:
            for key, value in finite.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(finite, step=step)

    def log_images(self, step: int, tag: str, images: torch.Tensor) -> None:
        """Images (N, 3, H, W) in [0, 1]."""
        if not self.enabled:
            return
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"log_images expects (N, 3, H, W), got {tuple(images.shape)}")
        images = images.detach().float().clamp(0, 1).cpu()
        if self._tb is not None:
            self._tb.add_images(tag, images, step)
            self._tb.flush()
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: [wandb.Image(img.permute(1, 2, 0).numpy()) for img in images]}, step=step)

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


def _start_wandb(project: str, config: dict | None, log_dir: Path):
    try:
        import wandb
    except ImportError as err:
        raise ConfigError(f"logging.wandb_project is {project!r} but wandb is not installed: "
                          "pip install wandb, or unset logging.wandb_project") from err
    log_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=project, config=config or {}, dir=str(log_dir))


def _finite_or_none(key: object, value: object) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {key!r} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def _drop_partial_last_line(path: Path) -> None:
    """After a crash mid-write the file may end without a newline; cut that fragment so appends stay valid."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def _drop_rows_after(path: Path, step: int) -> None:
    rows = read_metrics(path.parent)
    kept = [row for row in rows if row.get("step", 0) <= step]
    if len(kept) != len(rows):
        write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


def read_metrics(log_dir: Path) -> list[dict]:
    """All logged rows, in order; a truncated last line (a crash mid-write) is ignored."""
    path = Path(log_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ValueError(f"{path}:{number + 1} is not valid JSON") from None
    return rows
