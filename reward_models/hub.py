"""Locate weight files (local path or hub id) and check state-dict keys with clear errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch

from flowalign.errors import FlowAlignError


class CheckpointKeyError(FlowAlignError):
    """A checkpoint's keys do not match the architecture it is loaded into."""


class ChecksumError(FlowAlignError):
    """A weight file's sha256 is not the published one."""


def verify_sha256(path: str | os.PathLike, expected: str, what: str) -> None:
    """Raise ``ChecksumError`` naming ``path``, ``what`` it should be and both digests unless they match."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise ChecksumError(f"{str(path)!r} is not {what}: its sha256 is {digest.hexdigest()}, expected {expected} "
                            "(a changed or corrupted download; delete it to fetch it again)")


def resolve_file(spec: str | os.PathLike, filename: str) -> Path:
    """``spec`` is a file, a folder holding ``filename``, or a hub repo id holding ``filename``."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        candidate = path / filename
        if not candidate.is_file():
            raise FileNotFoundError(f"folder {str(path)!r} has no {filename!r}")
        return candidate
    if str(spec).startswith((".", "/", "~")) or str(spec).count("/") != 1:
        raise FileNotFoundError(f"weight file {str(spec)!r} does not exist (expected a file, a folder with "
                                f"{filename!r}, or a hub repo id 'owner/name')")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(str(spec), filename))
    except Exception as err:  # offline / missing repo: say which file was looked for
        raise FileNotFoundError(f"cannot fetch {filename!r} from hub repo {str(spec)!r}: {err}") from err


def load_state_dict_file(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors``/``.pt``/``.pth`` state dict (optionally nested under ``key``), weights only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointKeyError(f"cannot read checkpoint {str(path)!r}: {err}") from err
    if key is not None and isinstance(state, Mapping) and key in state:
        state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointKeyError(f"checkpoint {str(path)!r} is not a state dict of tensors"
                                 + (f" (looked under key {key!r})" if key else ""))
    return dict(state)


def check_keys(state: Mapping[str, torch.Tensor], expected: Iterable[str], source: str,
               ignore_unexpected: tuple[str, ...] = ()) -> None:
    """Raise ``CheckpointKeyError`` naming missing/unexpected keys (first 10 of each)."""
    expected = set(expected)
    got = set(state)
    missing = sorted(expected - got)
    unexpected = sorted(k for k in got - expected if not (ignore_unexpected and k.endswith(ignore_unexpected)))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:10]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:10]}")
        raise CheckpointKeyError(f"checkpoint {source} does not match the architecture: " + "; ".join(parts))


def load_checked(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                 ignore_unexpected: tuple[str, ...] = ()) -> None:
    """Check keys and shapes, then load strictly."""
    own = module.state_dict()
    check_keys(state, own.keys(), source, ignore_unexpected)
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
           for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointKeyError(f"checkpoint {source} has wrong shapes ({len(bad)}): {bad[:5]}")
    module.load_state_dict({k: state[k] for k in own}, strict=True)
