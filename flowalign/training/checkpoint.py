"""Atomic, resumable checkpoints: ``<output_dir>/checkpoints/iter-000010/``.

A checkpoint folder is assembled under a temporary name and renamed into place only once complete, so a crash
never leaves a half-written checkpoint under a real name. It holds:
``lora/`` (diffusers-format adapter; or ``transformer.safetensors`` for full fine-tuning), ``optimizer.pt``,
``ema.pt`` (optional), ``algorithm.pt``, ``rng.pt`` and ``state.json`` (iteration, metrics so far).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from flowalign.errors import FlowAlignError
from flowalign.utils.io import atomic_dir

STATE_FILE = "state.json"
PREFIX = "iter-"


class CheckpointError(FlowAlignError):
    """A checkpoint is missing, incomplete or unreadable."""


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def rng_state() -> dict:
    """The global generators' states: Python, NumPy, torch CPU and (when present) every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | os.PathLike, iteration: int, write_files, state: dict, keep_last: int) -> Path:
    """Create checkpoint ``iteration``: ``write_files(tmp_folder)`` writes the payload, then the folder is renamed
    into place. Then only the ``keep_last`` newest checkpoints up to this one stay: older ones go, and so do
    newer ones, left by a run this one resumed before its end (its abandoned continuation, whose metrics the
    resume dropped too), so that ``resume="latest"`` finds this run's newest."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    final = checkpoint_dir(output_dir) / f"{PREFIX}{iteration:06d}"
    with atomic_dir(final) as tmp:
        write_files(tmp)
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps({"iteration": iteration, **state}, indent=2))
    existing = list_checkpoints(output_dir)
    kept = [c for c in existing if checkpoint_iteration(c) <= iteration][-keep_last:]
    for folder in existing:
        if folder not in kept:
            shutil.rmtree(folder, ignore_errors=True)
    return final


def checkpoint_iteration(folder: Path) -> int:
    """The iteration in a checkpoint folder's name (``iter-000010`` → 10)."""
    return int(folder.name[len(PREFIX):])


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (folders named ``iter-<digits>``), oldest iteration first; temporary or renamed
    folders (``iter-000010-backup``) are ignored."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_iteration)


def resolve_resume(output_dir: str | os.PathLike, resume: str | None) -> Path | None:
    """``resume``: None (fresh run), "latest" (newest checkpoint of the run, or fresh if none) or a path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    return path


def read_state(folder: Path) -> dict:
    """state.json of a checkpoint, with a clear error when the checkpoint is corrupt."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {STATE_FILE} is missing")
    try:
        state = json.loads(path.read_text())
        int(state["iteration"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(folder)!r} is corrupt: {path.name} unreadable ({err})") from err
    return state


def load_tensor_file(folder: Path, name: str):
    """torch.load of a checkpoint file, with a clear error naming it."""
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {name} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 — any unpickling/zip failure means a corrupt file
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt ({type(err).__name__}: {err})") from err
