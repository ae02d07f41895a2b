"""Atomic, verified, resumable checkpoints: ``<output_dir>/checkpoints/iter-000010/``.

A checkpoint folder is assembled under a temporary name and renamed into place only once complete, so a crash
never leaves a half-written checkpoint under a real name. It holds:
``lora/`` (diffusers-format adapter; or ``transformer.safetensors`` for full fine-tuning), the states written with
``write_state`` (``optimizer``, ``ema`` (optional), ``algorithm``, ``rng``: each ``<name>.safetensors`` for its
tensors and ``<name>.json`` for the rest, see ``flowalign.utils.safe_state``; nothing is unpickled on loading),
``state.json`` (iteration, metrics so far) and, written last, ``checksums.json``: the SHA-256 of every other file.

``verify_checkpoint`` checks every listed file; ``resolve_resume(out, "latest")`` resumes from the newest intact
checkpoint and skips corrupt ones with a warning. No reader deletes anything; a corrupt checkpoint that a later
save would replace or prune is renamed ``iter-000020-corrupt`` instead. Checkpoints from before checksums (files
``*.pt``) still load, with ``torch.load(weights_only=True)`` only: a pickle that needs more is refused.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from flowalign.errors import FlowAlignError
from flowalign.utils.io import atomic_dir, write_text
from flowalign.utils.safe_state import (StateFileError, load_state, load_weights_only, save_state, sha256_file,
                                       state_paths)

STATE_FILE = "state.json"
CHECKSUM_FILE = "checksums.json"
RNG_STATE = "rng"
PREFIX = "iter-"
CORRUPT_SUFFIX = "-corrupt"


class CheckpointError(FlowAlignError):
    """A checkpoint is missing, incomplete, corrupt or unreadable."""


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


def write_state(folder: str | os.PathLike, name: str, obj: Any) -> None:
    """Save a nested state (optimizer, EMA, algorithm, RNG) into a checkpoint folder as ``<name>.safetensors`` +
    ``<name>.json``; an unsupported value raises ``TypeError`` naming its key path."""
    save_state(obj, folder, name)


def read_state_file(folder: str | os.PathLike, name: str) -> Any:
    """What ``write_state(folder, name, ...)`` wrote; in a checkpoint from before this format, ``<name>.pt`` read
    with ``torch.load(weights_only=True)``. Raises ``CheckpointError`` naming the file when it is missing,
    corrupt, or a pickle that could run code."""
    folder = Path(folder)
    json_path, _ = state_paths(folder, name)
    legacy = folder / f"{name}.pt"
    if not json_path.is_file() and not legacy.is_file():
        raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {json_path.name} is missing")
    try:
        return load_state(folder, name) if json_path.is_file() else load_weights_only(legacy)
    except StateFileError as err:
        raise CheckpointError(f"checkpoint {str(folder)!r}: {err}") from err


def write_checksums(folder: Path) -> None:
    """Record the SHA-256 of every file under ``folder`` (paths relative to it, '/'-separated) in checksums.json."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.relative_to(folder).as_posix() != CHECKSUM_FILE)
    write_text(folder / CHECKSUM_FILE, json.dumps({"sha256": {f: sha256_file(folder / f) for f in files}}, indent=1))


def _listed_checksums(folder: Path) -> dict[str, str]:
    path = folder / CHECKSUM_FILE
    try:
        listed = json.loads(path.read_text())["sha256"]
        if not isinstance(listed, dict) or STATE_FILE not in listed:
            raise ValueError(f"it does not list {STATE_FILE}")
        for name, digest in listed.items():
            rel = PurePosixPath(name)
            if rel.is_absolute() or ".." in rel.parts or not isinstance(digest, str):
                raise ValueError(f"entry {name!r}: {digest!r} is not a file in the checkpoint and its hash")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt ({err})") from err
    return listed


def verify_checkpoint(folder: str | os.PathLike) -> bool:
    """Check a checkpoint: state.json readable, and each file checksums.json lists present with its recorded
    SHA-256. True when verified; False for a checkpoint from before checksums (state.json is all that can be
    checked). Raises ``CheckpointError`` naming the first missing, unreadable or mismatched file."""
    folder = Path(folder)
    read_state(folder)
    if not (folder / CHECKSUM_FILE).is_file():
        return False
    for name, expected in _listed_checksums(folder).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {name} is missing")
        try:
            actual = sha256_file(path)
        except OSError as err:
            raise CheckpointError(f"checkpoint file {str(path)!r} is unreadable ({err})") from err
        if actual != expected:
            raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt: its SHA-256 {actual[:16]}… differs "
                                  f"from {expected[:16]}… recorded in {CHECKSUM_FILE}")
    return True


def _set_aside_if_corrupt(folder: Path) -> bool:
    """Rename a corrupt checkpoint ``iter-N`` to ``iter-N-corrupt`` (which no resume picks up) so that a save
    replacing or pruning it deletes nothing the user was warned about; True when it was moved."""
    try:
        verify_checkpoint(folder)
        return False
    except CheckpointError as err:
        target, n = folder.with_name(folder.name + CORRUPT_SUFFIX), 1
        while target.exists():
            n += 1
            target = folder.with_name(f"{folder.name}{CORRUPT_SUFFIX}-{n}")
        os.replace(folder, target)
        warnings.warn(f"checkpoint {str(folder)!r} is corrupt ({err}); kept as {target.name} instead of being "
                      "replaced", stacklevel=3)
        return True


def save_checkpoint(output_dir: str | os.PathLike, iteration: int, write_files, state: dict, keep_last: int) -> Path:
    """Create checkpoint ``iteration``: ``write_files(tmp_folder)`` writes the payload, then the RNG states,
    state.json and checksums.json are added and the folder is renamed into place. Then only the ``keep_last``
    newest checkpoints up to this one stay: older ones go, and so do newer ones, left by a run this one resumed
    before its end (its abandoned continuation, whose metrics the resume dropped too), so that
    ``resume="latest"`` finds this run's newest. A corrupt checkpoint in the way is renamed, not deleted."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    final = checkpoint_dir(output_dir) / f"{PREFIX}{iteration:06d}"
    if final.is_dir():  # only after resuming from an older checkpoint
        _set_aside_if_corrupt(final)
    with atomic_dir(final) as tmp:
        write_files(tmp)
        write_state(tmp, RNG_STATE, rng_state())
        (tmp / STATE_FILE).write_text(json.dumps({"iteration": iteration, **state}, indent=2))
        write_checksums(tmp)
    existing = list_checkpoints(output_dir)
    kept = [c for c in existing if checkpoint_iteration(c) <= iteration][-keep_last:]
    for folder in existing:
        if folder in kept or (checkpoint_iteration(folder) > iteration and _set_aside_if_corrupt(folder)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
    return final


def checkpoint_iteration(folder: Path) -> int:
    """The iteration in a checkpoint folder's name (``iter-000010`` → 10)."""
    return int(folder.name[len(PREFIX):])


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints (folders named ``iter-<digits>``), oldest iteration first; temporary or renamed
    folders (``iter-000010-backup``, ``iter-000010-corrupt``) are ignored."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=checkpoint_iteration)


def _verified(folder: Path) -> Path:
    """``folder`` after ``verify_checkpoint``, with a warning when it predates checksums."""
    if not verify_checkpoint(folder):
        warnings.warn(f"checkpoint {str(folder)!r} has no {CHECKSUM_FILE} (written by an older flowalign): its "
                      "files cannot be verified", stacklevel=3)
    return folder


def resolve_resume(output_dir: str | os.PathLike, resume: str | None) -> Path | None:
    """``resume``: None (fresh run), "latest" or a checkpoint folder; returns the verified checkpoint, or None.

    "latest" tries the run's checkpoints newest first and takes the first intact one, warning about (and
    skipping) each corrupt or incomplete newer one; with no checkpoint it is a fresh run (None), but when
    checkpoints exist and none is intact it raises ``CheckpointError`` listing them. A given folder that is
    missing or corrupt raises ``CheckpointError`` naming the file. Nothing is deleted."""
    if resume is None:
        return None
    if resume == "latest":
        found, problems = list_checkpoints(output_dir), []
        for folder in reversed(found):
            try:
                return _verified(folder)
            except CheckpointError as err:
                warnings.warn(f"skipping checkpoint {str(folder)!r}: {err}", stacklevel=2)
                problems.append(f"{folder.name}: {err}")
        if problems:
            raise CheckpointError(f"no intact checkpoint to resume from in {str(checkpoint_dir(output_dir))!r} "
                                  f"({'; '.join(problems)}); they are left as they are: repair one and pass it "
                                  "as resume, or start over with overwrite")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    return _verified(path)


def read_state(folder: Path) -> dict:
    """state.json of a checkpoint, with a clear error when the checkpoint is corrupt."""
    path = folder / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {STATE_FILE} is missing")
    try:
        state = json.loads(path.read_text())
        int(state["iteration"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(folder)!r} is corrupt: {path.name} unreadable ({err})") from err
    return state
