"""Preference datasets: prompts with a winning image and a losing image (or none), as a JSONL manifest.

One JSON object per line (blank lines skipped), paths relative to the manifest's folder (or absolute)::

    {"prompt": "two red circles", "image": "w/0001.png", "loser": "l/0001.png", "metadata": {...}}
    {"prompt": "a blue square", "image": "w/0002.png", "loser": null}

``image`` is the WINNER (the key of an image manifest, so the same file trains SFT on the winners), ``loser`` the
losing image or null/absent (winner-only rows serve SePPO, which needs no loser). The conventions are those of
``flowalign.data.manifest``: a line without a winner, a missing file or one that does not open as an image raises
``BadInputError`` naming the manifest and the 1-based line; with ``skip_bad=True`` such lines are left out and
listed in ``skipped`` as ``(manifest:line, why)``. ``pair_indices()`` are the rows that hold a loser.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from flowalign.data.dataset import ImageDataset, fit_image
from flowalign.data.manifest import parse_manifest, row_image, row_metadata, row_prompt
from reward_models.io_utils import BadInputError, load_image

WINNER_KEY, LOSER_KEY = "image", "loser"


def preference_row(row: dict, base: Path, source: str) -> tuple[str, Path, Path | None, dict]:
    """(prompt, winner path, loser path or None, metadata) of one manifest row, checked."""
    prompt = row_prompt(row, source)
    if row.get(WINNER_KEY) in (None, ""):
        raise BadInputError(f"{source}: the line has no winner: {WINNER_KEY!r} must name the winning image "
                            f"(expected {{\"prompt\": ..., \"{WINNER_KEY}\": winner, \"{LOSER_KEY}\": loser or null}})")
    winner = row_image(row, WINNER_KEY, base, source)
    loser = None if row.get(LOSER_KEY) is None else row_image(row, LOSER_KEY, base, source)
    return prompt, winner, loser, row_metadata(row, source)


class PreferenceDataset(ImageDataset):
    """A preference manifest; its images (``load``/``images``) are the winners, ``losers`` the losing images."""

    def __init__(self, path: str | os.PathLike, *, skip_bad: bool = False) -> None:
        path = Path(path)
        kept, skipped = parse_manifest(path, preference_row, skip_bad)
        prompts, winners, losers, metadata = (list(column) for column in zip(*(parsed for _, parsed in kept)))
        super().__init__(str(path), prompts, metadata, [source for source, _ in kept], winners)
        self.loser_paths: list[Path | None] = losers
        self.skipped = skipped

    def pair_indices(self) -> list[int]:
        """Rows that hold a loser (the pairs Diffusion-DPO trains on)."""
        return [i for i, loser in enumerate(self.loser_paths) if loser is not None]

    def _read(self, path: Path, index: int) -> torch.Tensor:
        try:
            return load_image(path)
        except BadInputError as err:
            raise BadInputError(f"{self.sources[index]}: {err}") from err

    def load(self, index: int) -> torch.Tensor:
        return self._read(self.image_paths[index], index)

    def losers(self, indices: list[int] | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
        """(K, 3, H, W) losing images of rows ``indices`` fitted to ``size``; a row without a loser is an error."""
        out = []
        for i in (int(i) for i in indices):
            if self.loser_paths[i] is None:
                raise BadInputError(f"{self.sources[i]}: the row has no loser")
            out.append(fit_image(self._read(self.loser_paths[i], i), size))
        return torch.stack(out)


def load_preference_dataset(spec: str, *, skip_bad: bool = False) -> PreferenceDataset:
    """The preference manifest at ``spec`` (see the module docstring)."""
    if not Path(spec).is_file():
        raise BadInputError(f"preference dataset {spec!r} is not a file (expected a JSONL manifest of "
                            f"{{\"prompt\", \"{WINNER_KEY}\", \"{LOSER_KEY}\"}} lines)")
    return PreferenceDataset(spec, skip_bad=skip_bad)
