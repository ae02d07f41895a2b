"""One run per output folder: a fresh run refuses a folder that holds another run unless told to overwrite it,
and nothing deletes files that no run wrote (an ``output_dir`` pointed by mistake at a model folder is left alone)."""

from __future__ import annotations

import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from flowalign.training.eval_images import EVAL_IMAGE_FILES
from flowalign.errors import ConfigError
from flowalign.training.checkpoint import CheckpointError, checkpoint_dir, list_checkpoints, resolve_resume
from flowalign.training.metrics import METRICS_FILE

#: what a run writes into its output folder (removed by ``overwrite``)
RUN_OUTPUTS = ("checkpoints", "logs", "lora", "transformer", "report.html", "summary.json", "config.yaml",
               *EVAL_IMAGE_FILES)
#: written into the folder when a run claims it: its outputs are then the trainer's to replace
RUN_MARKER = ".flowalign-run"


def previous_run(output_dir: Path) -> list[str]:
    """What of an earlier run is in ``output_dir``: its checkpoints, logged metrics and other outputs."""
    found, checkpoints = [], list_checkpoints(output_dir)
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint(s) in {checkpoint_dir(output_dir)}")
    if (output_dir / "logs" / METRICS_FILE).is_file():
        found.append(f"metrics in {output_dir / 'logs' / METRICS_FILE}")
    found += [name for name in RUN_OUTPUTS if name not in ("checkpoints", "logs") and (output_dir / name).exists()]
    return found


def written_by_a_run(output_dir: Path) -> bool:
    """The folder was claimed by a run (its marker), or holds a run's checkpoints or metrics."""
    return ((output_dir / RUN_MARKER).is_file() or bool(list_checkpoints(output_dir))
            or (output_dir / "logs" / METRICS_FILE).is_file())


def clear_run_outputs(output_dir: Path) -> None:
    for name in RUN_OUTPUTS:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _fresh_run_problem(output_dir: Path, resume: str | None, overwrite: bool) -> ConfigError | None:
    """Why a fresh run may not clear ``output_dir``, or None."""
    present = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if present and not written_by_a_run(output_dir):
        return ConfigError(f"output_dir {str(output_dir)!r} holds {', '.join(present)} that no flowalign run wrote "
                           f"(no {RUN_MARKER} marker, checkpoints or metrics); a run would replace them, so it "
                           "refuses this folder even with --overwrite. Set another output_dir=...")
    stale = previous_run(output_dir)
    if stale and resume is None and not overwrite:
        return ConfigError(f"output_dir {str(output_dir)!r} already holds a run ({'; '.join(stale)}). Continue it "
                           f"with --resume (Trainer(resume='latest')), start over with --overwrite "
                           f"(Trainer(overwrite=True)), or set another output_dir=...")
    return None


def claim_output_dir(output_dir: Path, resume: str | None, overwrite: bool, accelerator: Accelerator) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run, for which ``output_dir`` is cleared first.

    A fresh run (``resume`` None) into a folder holding another run raises ``ConfigError`` unless ``overwrite``;
    ``resume="latest"`` with no checkpoint starts fresh and clears the stale outputs. Outputs that no run wrote
    (no marker, checkpoint or metrics) are never cleared: the run refuses the folder. The main process decides
    and tells the others, so every process agrees even without a shared file system."""
    if overwrite and resume is not None:
        raise ConfigError("resume and overwrite exclude each other: resume continues the run in output_dir, "
                          "overwrite deletes it")
    verdict: list = [None]
    if accelerator.is_main_process:
        try:
            found = resolve_resume(output_dir, resume)
            verdict = [str(found) if found is not None else _fresh_run_problem(output_dir, resume, overwrite)]
        except CheckpointError as err:  # raised on every process below, so none waits for the others
            verdict = [err]
    if accelerator.num_processes > 1:
        broadcast_object_list(verdict)
    (found,) = verdict
    if isinstance(found, Exception):
        raise found
    if found is None:
        if accelerator.is_main_process:
            clear_run_outputs(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / RUN_MARKER).write_text("this folder holds a flowalign training run\n")
        accelerator.wait_for_everyone()
        return None
    return Path(found)
