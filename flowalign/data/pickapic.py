"""Convert a Pick-a-Pic-style export (parquet, or JSON/JSONL) into a preference manifest (``data.preference``).

Input rows (Pick-a-Pic v2's columns): ``caption`` (or ``prompt``); the two images as bytes ``jpg_0``/``jpg_1``
(raw bytes in parquet, base64 text in JSON) or as paths ``image_0``/``image_1`` (relative to the input's folder);
labels ``label_0``/``label_1`` (1 and 0 for a preference, 0.5 and 0.5 for a tie). A tie has no winner and is left out
(counted). Written: ``OUT/images/<row>_w.<ext>`` and ``<row>_l.<ext>`` (the original bytes) and ``OUT/pairs.jsonl``,
one ``{"prompt", "image", "loser", "metadata": {"source": "input:row"}}`` per pair. Rows are numbered from 1 (the
JSONL line, or the parquet/JSON-array row). A bad row (no caption, missing or non-numeric labels, an image that is
missing or does not decode) raises ``BadInputError`` naming the input and row, or with ``skip_bad`` is left out and
listed in the summary.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from flowalign.utils.io import atomic_dir, write_text
from reward_models.io_utils import BadInputError, read_table

FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp"}


def export_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based row, row) of a ``.parquet`` (needs pyarrow), ``.json`` (an array of objects) or ``.jsonl`` export."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise BadInputError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or convert the export "
                                "to JSONL") from err
        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
    elif suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise BadInputError(f"{path}: cannot read a JSON array of rows: {err}") from err
        if not isinstance(rows, list):
            raise BadInputError(f"{path}: expected a JSON array of row objects, got {type(rows).__name__}")
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise BadInputError(f"{path}:{number}: row is not an object")
            yield number, row
    else:
        yield from read_table(path)


def _image_bytes(row: dict, k: int, base: Path) -> bytes:
    """Image ``k`` (0 or 1) of the row as file bytes, checked to decode."""
    if row.get(f"jpg_{k}") is not None:
        raw = row[f"jpg_{k}"]
        if isinstance(raw, str):
            try:
                raw = base64.b64decode(raw, validate=True)
            except binascii.Error as err:
                raise ValueError(f"'jpg_{k}' is not base64-encoded image bytes ({err})") from err
        if not isinstance(raw, bytes):
            raise ValueError(f"'jpg_{k}' must be image bytes, got {type(raw).__name__}")
        what = f"'jpg_{k}'"
    elif isinstance(row.get(f"image_{k}"), str):
        path = Path(row[f"image_{k}"])
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ValueError(f"'image_{k}': image {str(path)!r} does not exist")
        raw, what = path.read_bytes(), f"'image_{k}' ({path})"
    else:
        raise ValueError(f"image {k} is missing: expected 'jpg_{k}' (bytes) or 'image_{k}' (a path)")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
    except Exception as err:  # PIL raises many types for data that is not an image
        raise ValueError(f"{what} cannot be read as an image: {err}") from err
    return raw


def _winner(row: dict) -> int | None:
    """0 or 1 for the preferred image, None for a tie."""
    try:
        labels = float(row["label_0"]), float(row["label_1"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"labels 'label_0' and 'label_1' must be numbers, got {row.get('label_0')!r} and "
                         f"{row.get('label_1')!r}") from err
    return None if labels[0] == labels[1] else int(labels[1] > labels[0])


def convert_pickapic(source: str | os.PathLike, out: str | os.PathLike, *, skip_bad: bool = False) -> dict:
    """Write ``out`` (replaced atomically) from the export ``source``; returns the summary (pairs, ties, skipped)."""
    source = Path(source)
    lines, ties, skipped = [], 0, []
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for number, row in export_rows(source):
            where = f"{source}:{number}"
            try:
                prompt = row.get("caption", row.get("prompt"))
                if not isinstance(prompt, str) or not prompt.strip():
                    raise ValueError(f"the caption is missing or empty (got {prompt!r})")
                winner = _winner(row)
                if winner is None:
                    ties += 1
                    continue
                images = [_image_bytes(row, k, source.parent) for k in (winner, 1 - winner)]
            except ValueError as err:
                if not skip_bad:
                    raise BadInputError(f"{where}: {err}") from err
                skipped.append({"source": where, "why": str(err)})
                continue
            names = []
            for raw, tag in zip(images, ("w", "l")):
                with Image.open(io.BytesIO(raw)) as image:
                    ext = FORMATS.get(image.format or "", "png")
                names.append(f"images/{number:06d}_{tag}.{ext}")
                (tmp / names[-1]).write_bytes(raw)
            lines.append(json.dumps({"prompt": prompt, "image": names[0], "loser": names[1],
                                     "metadata": {"source": where}}))
        if not lines:
            raise BadInputError(f"{source}: no usable preference pair ({ties} ties, {len(skipped)} bad rows)")
        write_text(tmp / "pairs.jsonl", "\n".join(lines) + "\n")
    return {"pairs": len(lines), "ties": ties, "skipped": skipped, "manifest": str(Path(out) / "pairs.jsonl")}
