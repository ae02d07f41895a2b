"""Conditioning images for image-to-video families: one image for every prompt, or a prompt → image manifest.

A source is an image file (or a PIL image) used for every prompt, a ``.jsonl`` manifest of
``{"prompt": ..., "image": path relative to the manifest}`` lines, or a mapping prompt → image file / PIL image.
Images are read once, as RGB, when first asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Union

from PIL import Image

from flowalign.errors import ConfigError
from reward_models.io_utils import read_table

ImageLike = Union[str, os.PathLike, Image.Image]
ImageSource = Union[ImageLike, Mapping[str, ImageLike]]
MANIFEST_SUFFIXES = (".jsonl", ".ndjson")


def _open_rgb(image: ImageLike, where: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise ConfigError(f"{where}: conditioning image {str(path)!r} does not exist")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except Exception as err:  # PIL raises many types for files that are not images
        raise ConfigError(f"{where}: cannot read conditioning image {str(path)!r}: {err}") from err


def _read_manifest(path: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for number, row in read_table(path):
        prompt, image = row.get("prompt"), row.get("image")
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(image, str) or not image.strip():
            raise ConfigError(f"{path}:{number}: expected {{\"prompt\": <text>, \"image\": <path>}}, got {row}")
        images[prompt] = Path(image) if Path(image).is_absolute() else path.parent / image
    if not images:
        raise ConfigError(f"conditioning image manifest {str(path)!r} holds no lines")
    return images


class ConditioningImages:
    """The conditioning image of each prompt (see the module docstring), indexed for the adapter's caches."""

    def __init__(self, source: ImageSource, where: str = "conditioning images"):
        self.where = where
        self._single: ImageLike | None = None
        self._mapping: Mapping[str, ImageLike] = {}
        if isinstance(source, Mapping):
            self._mapping = dict(source)
        elif not isinstance(source, Image.Image) and Path(source).suffix.lower() in MANIFEST_SUFFIXES:
            self.where = str(source)
            self._mapping = _read_manifest(Path(source))
        else:
            self._single = source
            _open_rgb(source, where)  # fail now on a missing or unreadable file
        self._index: dict[str, int] = {}  # prompt (or "" for the single image) → position in self.images
        self.images: list[Image.Image] = []

    def index(self, prompt: str) -> int:
        """The position of ``prompt``'s image in ``images`` (reading the image the first time)."""
        key = "" if self._single is not None else prompt
        if key not in self._index:
            if self._single is not None:
                image = _open_rgb(self._single, self.where)
            elif prompt in self._mapping:
                image = _open_rgb(self._mapping[prompt], self.where)
            else:
                raise ConfigError(f"{self.where} has no conditioning image for the prompt {prompt!r} "
                                  f"({len(self._mapping)} prompts listed)")
            self._index[key] = len(self.images)
            self.images.append(image)
        return self._index[key]
