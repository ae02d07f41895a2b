"""Atomic output: write files and folders under a temporary name beside the target, then rename them into place.

The contents are flushed to disk (fsync) before the rename and the folder after it, so that after a crash or a
power loss the target holds either the old or the complete new contents. Modes follow the umask, as for any
file the user writes (the temporary files' private 0600 / 0700 is not kept).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid


def _umask() -> int:
    """The process umask, read from /proc where it can be (``os.umask`` sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders cannot be opened for this on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_durable(root: Path) -> None:
    """fsync every file under ``root`` (or ``root`` itself) and set the umask's modes."""
    mask = _umask()
    paths = [root] if root.is_file() else [root, *root.rglob("*")]
    for path in paths:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
        if path.is_file():
            _fsync(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _make_durable(Path(tmp))
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it takes ``path``'s place (an existing folder there
    is replaced), so a crash leaves either the old folder or the complete new one, never a partial one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _make_durable(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] → RGB PIL image."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def save_png(image: torch.Tensor, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        to_pil(image).save(tmp, format="PNG")


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int) -> None:
    """Images (N, 3, H, W) in [0, 1] as one PNG with ``nrow`` images per row."""
    save_png(make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=1.0), path)
