"""File helpers for scoring/evaluation: image loading, JSONL/CSV manifests, atomic writes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from flowalign.errors import FlowAlignError
from flowalign.utils.io import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class BadInputError(FlowAlignError):
    """A manifest row, image or column is unusable; the message names the file and row."""


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """RGB image as float32 ``3×H×W`` in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as err:  # PIL raises many types for corrupt files
        raise BadInputError(f"cannot read image {str(path)!r}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def read_table(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a ``.jsonl`` (one object per line) or ``.csv`` (header row) file as ``(row_number, dict)``.

    Row numbers are 1-based lines for JSONL and 1-based data rows (header excluded) for CSV. Blank
    JSONL lines are skipped; a line that is not a JSON object raises ``BadInputError`` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"manifest {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    row = err
                if not isinstance(row, dict):
                    raise BadInputError(f"{path}: line {number} is not a JSON object ({row})")
                yield number, row
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise BadInputError(f"{path}: CSV file is empty (expected a header row)")
            for number, row in enumerate(reader, start=1):
                yield number, dict(row)
    else:
        raise BadInputError(f"manifest {str(path)!r} must end in .jsonl or .csv, got {suffix!r}")


def table_columns(path: str | os.PathLike) -> list[str] | None:
    """CSV header columns (None for JSONL, whose keys are checked per row)."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        return None
    with path.open(encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle), None)
    if header is None:
        raise BadInputError(f"{path}: CSV file is empty (expected a header row)")
    return header


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` (newlines as given) atomically: ``flowalign.utils.io.atomic_path`` (fsynced, mode
    ``0o666 & ~umask`` as a plain ``open(path, "w")`` would give)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    import io

    if not rows:
        return ""
    columns = list(rows[0])
    for row in rows[1:]:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
