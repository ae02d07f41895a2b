"""Offline datasets of prompts and images: a JSONL manifest (``flowalign.data.manifest``) or a built-in set."""

from __future__ import annotations

from pathlib import Path

from flowalign.data.dataset import ImageDataset, fit_image
from flowalign.data.manifest import MANIFEST_SUFFIXES, ManifestDataset
from flowalign.data.preference import PreferenceDataset, load_preference_dataset
from flowalign.errors import ConfigError

BUILTIN_DATASETS = ("toy:sft",)


def load_image_dataset(spec: str, *, seed: int = 0, images_per_prompt: int | None = None,
                       skip_bad: bool = False) -> ImageDataset:
    """A dataset from its spec: the path of a JSONL manifest, or ``"toy:sft"`` (rendered scenes for the toy
    training prompts, ``images_per_prompt`` each (default 4), drawn from ``seed``). ``seed`` and
    ``images_per_prompt`` only apply to built-in sets; ``skip_bad`` (manifests) leaves bad lines out and lists them
    in the dataset's ``skipped``."""
    if spec == "toy:sft":
        from flowalign.toy.sft_data import DEFAULT_IMAGES_PER_PROMPT, ToySFTDataset

        return ToySFTDataset(seed, DEFAULT_IMAGES_PER_PROMPT if images_per_prompt is None else images_per_prompt)
    if spec.startswith("toy:"):
        raise ConfigError(f"unknown built-in dataset {spec!r}; built-in: {', '.join(BUILTIN_DATASETS)}")
    if images_per_prompt is not None:
        raise ConfigError(f"dataset {spec!r}: images_per_prompt applies to built-in datasets only")
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"dataset {spec!r} is not a file (expected a JSONL manifest: "
                          f"{', '.join(MANIFEST_SUFFIXES)}) nor a built-in dataset ({', '.join(BUILTIN_DATASETS)})")
    return ManifestDataset(path, skip_bad=skip_bad)


__all__ = ["BUILTIN_DATASETS", "ImageDataset", "ManifestDataset", "PreferenceDataset", "fit_image", "load_image_dataset",
           "load_preference_dataset"]
