"""One run per output folder: a fresh run refuses a folder that holds another run unless told to overwrite it."""

from __future__ import annotations

import shutil
from pathlib import Path

from flowalign.errors import ConfigError
from flowalign.training.checkpoint import checkpoint_dir, list_checkpoints
from flowalign.training.metrics import METRICS_FILE

#: what a run writes into its output folder (removed by ``overwrite``)
RUN_OUTPUTS = ("checkpoints", "logs", "lora", "report.html", "summary.json", "config.yaml",
               "eval_before.png", "eval_after.png")


def previous_run(output_dir: Path) -> list[str]:
    """What of an earlier run is in ``output_dir``: its checkpoints and / or logged metrics."""
    found, checkpoints = [], list_checkpoints(output_dir)
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint(s) in {checkpoint_dir(output_dir)}")
    if (output_dir / "logs" / METRICS_FILE).is_file():
        found.append(f"metrics in {output_dir / 'logs' / METRICS_FILE}")
    return found


def prepare_fresh_output_dir(output_dir: Path, *, overwrite: bool, is_main: bool) -> None:
    """Before a run that starts at iteration 0: clear an earlier run's outputs (``overwrite``) or refuse."""
    found = previous_run(output_dir)
    if not found:
        return
    if not overwrite:
        raise ConfigError(f"output_dir {str(output_dir)!r} already holds a run ({'; '.join(found)}). Continue it "
                          f"with --resume, start over with --overwrite, or set another output_dir=...")
    if is_main:
        for name in RUN_OUTPUTS:
            path = output_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
