"""Image datasets from a JSONL manifest, with the conventions of ``flowalign reward eval``.

One JSON object per line (blank lines skipped)::

    {"prompt": "two red circles", "image": "images/0001.png", "metadata": {"source": "..."}}

``image`` is a path relative to the manifest's folder (or absolute), ``metadata`` an optional dict. Lines are
checked when the manifest is read: invalid JSON, a missing or empty prompt, a missing image file or one that
cannot be opened as an image raise ``BadInputError`` naming the manifest and the 1-based line (with
``skip_bad=True`` such lines are left out and listed in ``skipped`` as ``(manifest:line, why)``); an image whose
pixels turn out to be corrupt when loaded later is reported the same way. Other keys are ignored (the preference
format adds its own image keys to this one).
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from PIL import Image

from flowalign.data.dataset import ImageDataset
from reward_models.io_utils import BadInputError, load_image, read_table

MANIFEST_SUFFIXES = (".jsonl", ".ndjson")
Parsed = TypeVar("Parsed")


def row_prompt(row: dict[str, Any], source: str) -> str:
    """The row's non-empty ``prompt``, or ``BadInputError`` naming ``source`` (``manifest:line``)."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise BadInputError(f"{source}: 'prompt' must be a string, got {prompt!r}; expected "
                            '{"prompt": ..., "image": ...}')
    if not prompt.strip():
        raise BadInputError(f"{source}: the prompt is empty")
    return prompt


def row_image(row: dict[str, Any], key: str, base: Path, source: str) -> Path:
    """The image file named by ``row[key]`` (relative to ``base``), checked to exist and to open as an image."""
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"{source}: {key!r} must be an image path (relative to {str(base)!r}), got {value!r}")
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        raise BadInputError(f"{source}: {key!r}: image {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as err:  # PIL raises many types for files that are not images
        raise BadInputError(f"{source}: {key!r}: cannot read image {str(path)!r}: {err}") from err
    return path


def row_metadata(row: dict[str, Any], source: str) -> dict:
    metadata = row.get("metadata", {})
    if not isinstance(metadata, dict):
        raise BadInputError(f"{source}: 'metadata' must be an object, got {metadata!r}")
    return metadata


def manifest_rows(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """``(source, row)`` for every non-blank line of a JSONL manifest; ``source`` is ``manifest:line``."""
    path = Path(path)
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise BadInputError(f"dataset manifest {str(path)!r} must be a JSONL file ({', '.join(MANIFEST_SUFFIXES)}), "
                            f"one object per line")
    rows = [(f"{path}:{number}", row) for number, row in read_table(path)]
    if not rows:
        raise BadInputError(f"dataset manifest {str(path)!r} holds no samples")
    return rows


def parse_manifest(path: Path, parse: Callable[[dict[str, Any], Path, str], Parsed], skip_bad: bool
                   ) -> tuple[list[tuple[str, Parsed]], list[tuple[str, str]]]:
    """``([(source, parse(row, folder, source))], skipped)`` over the manifest's lines. A line whose ``parse``
    raises ``BadInputError`` stops the read, or with ``skip_bad`` is left out and listed in ``skipped`` as
    ``(source, why)``; a manifest with no good line is an error either way."""
    kept, skipped = [], []
    for source, row in manifest_rows(path):
        try:
            kept.append((source, parse(row, path.parent, source)))
        except BadInputError as err:
            if not skip_bad:
                raise
            skipped.append((source, str(err)))
    if not kept:
        raise BadInputError(f"dataset manifest {str(path)!r}: every line was skipped as bad ({len(skipped)} lines; "
                            f"the first: {skipped[0][1]})")
    return kept, skipped


class ManifestDataset(ImageDataset):
    """The samples of a JSONL manifest; images are read from disk when asked for (nothing is kept in memory)."""

    def __init__(self, path: str | os.PathLike, *, skip_bad: bool = False) -> None:
        path = Path(path)
        kept, skipped = parse_manifest(path, lambda row, base, source: (
            row_prompt(row, source), row_image(row, "image", base, source), row_metadata(row, source)), skip_bad)
        prompts, images, metadata = (list(column) for column in zip(*(parsed for _, parsed in kept)))
        super().__init__(str(path), prompts, metadata, [source for source, _ in kept], images)
        self.skipped = skipped

    def load(self, index: int) -> torch.Tensor:
        try:
            return load_image(self.image_paths[index])
        except BadInputError as err:
            raise BadInputError(f"{self.sources[index]}: {err}") from err
