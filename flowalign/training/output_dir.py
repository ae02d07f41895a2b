"""One run per output folder: a fresh run refuses a folder that holds another run unless told to overwrite it."""

from __future__ import annotations

import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from flowalign.errors import ConfigError
from flowalign.training.checkpoint import CheckpointError, checkpoint_dir, list_checkpoints, resolve_resume
from flowalign.training.metrics import METRICS_FILE

#: what a run writes into its output folder (removed by ``overwrite``)
RUN_OUTPUTS = ("checkpoints", "logs", "lora", "transformer", "report.html", "summary.json", "config.yaml",
               "eval_before.png", "eval_after.png")


def previous_run(output_dir: Path) -> list[str]:
    """What of an earlier run is in ``output_dir``: its checkpoints and / or logged metrics."""
    found, checkpoints = [], list_checkpoints(output_dir)
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint(s) in {checkpoint_dir(output_dir)}")
    if (output_dir / "logs" / METRICS_FILE).is_file():
        found.append(f"metrics in {output_dir / 'logs' / METRICS_FILE}")
    return found


def clear_run_outputs(output_dir: Path) -> None:
    for name in RUN_OUTPUTS:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def claim_output_dir(output_dir: Path, resume: str | None, overwrite: bool, accelerator: Accelerator) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run, for which ``output_dir`` is cleared first.

    A fresh run (``resume`` None) into a folder holding another run raises ``ConfigError`` unless ``overwrite``;
    ``resume="latest"`` with no checkpoint starts fresh and clears the stale outputs. The main process decides
    and tells the others, so every process agrees even without a shared file system."""
    if overwrite and resume is not None:
        raise ConfigError("resume and overwrite exclude each other: resume continues the run in output_dir, "
                          "overwrite deletes it")
    verdict: list = [None, []]
    if accelerator.is_main_process:
        try:
            found = resolve_resume(output_dir, resume)
            verdict = [None if found is None else str(found), [] if found or resume else previous_run(output_dir)]
        except CheckpointError as err:  # raised on every process below, so none waits for the others
            verdict = [err, []]
    if accelerator.num_processes > 1:
        broadcast_object_list(verdict)
    found, stale = verdict
    if isinstance(found, CheckpointError):
        raise found
    if stale and not overwrite:
        raise ConfigError(f"output_dir {str(output_dir)!r} already holds a run ({'; '.join(stale)}). Continue it "
                          f"with --resume (Trainer(resume='latest')), start over with --overwrite "
                          f"(Trainer(overwrite=True)), or set another output_dir=...")
    if found is None:
        if accelerator.is_main_process:
            clear_run_outputs(output_dir)
        accelerator.wait_for_everyone()
        return None
    return Path(found)
