"""Batched scoring of (image file, prompt) items with a resumable on-disk cache.

The cache is one JSON file per reward configuration, ``{"spec": config, "scores": {key: score | null}}``
(null = the reward marked it invalid), keyed by ``sha1(absolute path | size | mtime_ns | prompt)`` so
edited files are re-scored. The file is named after the reward's label (:func:`reward_label`: the name,
plus a hash of the kwargs when there are any); a file whose stored ``spec`` differs from the reward's
(or has none) is ignored with a warning and its scores recomputed. It is rewritten atomically after
every batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from reward_models.base import RewardModel
from reward_models.io_utils import BadInputError, atomic_write_json, load_image


@dataclass(frozen=True)
class ScoreItem:
    """One image to score; ``source`` names where it came from (``file:row``) for error messages."""

    path: Path
    prompt: str
    source: str = ""


def item_key(item: ScoreItem) -> str:
    stat = item.path.stat()
    raw = f"{item.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{item.prompt}"
    return hashlib.sha1(raw.encode("utf-8")).hexdigest()


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def reward_label(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Label and canonical config ``{"reward": name, "kwargs": {...}}`` of a reward spec.

    The label is the name (or ``module:Class`` path), plus ``[<8 hex>]`` (sha1 of the kwargs as sorted
    JSON) when the kwargs are non-empty, so two configurations of one reward get distinct labels.
    """
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping):
        name, kwargs = spec.get("name") or spec.get("target"), dict(spec.get("kwargs") or {})
    else:
        raise TypeError(f"reward spec must be a name or a config mapping, got {type(spec).__name__}")
    config = json.loads(_canonical_json({"reward": str(name), "kwargs": kwargs}))
    if not kwargs:
        return str(name), config
    digest = hashlib.sha1(_canonical_json(config["kwargs"]).encode("utf-8")).hexdigest()[:8]
    return f"{name}[{digest}]", config


class ScoreCache:
    """Persistent ``key → score`` map for one reward (``path=None`` keeps it in memory only).

    ``spec`` (the reward's JSON config) is stored in the file and checked on load: a file written for
    another spec, or without one, is ignored with a warning and overwritten, i.e. its scores are
    recomputed. With ``spec=None`` nothing is checked.
    """

    def __init__(self, path: str | os.PathLike | None, spec: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.spec = json.loads(_canonical_json(spec)) if spec is not None else None
        self.scores: dict[str, float | None] = {}
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise BadInputError(f"score cache {str(self.path)!r} is corrupt ({err}); delete it to start over") from err
            if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
                raise BadInputError(f"score cache {str(self.path)!r} must hold an object with a 'scores' mapping")
            stored = data.get("spec")
            if self.spec is not None and stored != self.spec:
                warnings.warn(f"score cache {str(self.path)!r} was written for reward {stored!r}, not "
                              f"{self.spec!r}; ignoring it and recomputing the scores", stacklevel=2)
            else:
                self.scores = data["scores"]
                self.spec = stored if self.spec is None else self.spec

    @staticmethod
    def for_reward(cache_dir: str | os.PathLike | None, label: str,
                   spec: Mapping[str, Any] | None = None) -> "ScoreCache":
        """The cache file ``<cache_dir>/<label as a file name>.json`` (in memory if ``cache_dir`` is None)."""
        if cache_dir is None:
            return ScoreCache(None, spec)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "reward"
        return ScoreCache(Path(cache_dir) / f"{slug}.json", spec)

    def save(self) -> None:
        if self.path is not None:
            data = {"spec": self.spec, "scores": self.scores} if self.spec is not None else {"scores": self.scores}
            atomic_write_json(self.path, data)


@dataclass
class BadItem:
    source: str
    path: str
    error: str


def score_items(reward: RewardModel, items: Sequence[ScoreItem], *, batch_size: int = 8,
                cache: ScoreCache | None = None, skip_bad: bool = False, desc: str = "scoring",
                progress: bool = True) -> tuple[dict[str, float | None], list[BadItem]]:
    """Score every distinct item; returns ``{item_key: score or None}`` and the skipped bad items.

    Images in one reward call must share a size, so each batch is split by image size. A missing or
    unreadable image, or an empty prompt for a reward that needs prompts, raises ``BadInputError``
    naming it (and its manifest row) unless ``skip_bad``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cache = cache or ScoreCache(None)
    results: dict[str, float | None] = {}
    bad: list[BadItem] = []
    pending: dict[str, ScoreItem] = {}
    for item in items:
        if reward.spec.needs_prompt and not item.prompt.strip():
            message = (f"image {str(item.path)!r} ({item.source}) has an empty prompt, but reward "
                       f"{reward.spec.name!r} needs one (from the CLI: pass --prompt, put a <stem>.txt next to "
                       f"each image, or use a --manifest with a 'prompt' column)")
            if not skip_bad:
                raise BadInputError(message)
            bad.append(BadItem(item.source, str(item.path), message))
            continue
        try:
            key = item_key(item)
        except OSError as err:
            message = f"image {str(item.path)!r} ({item.source}) cannot be read: {err.strerror or err}"
            if not skip_bad:
                raise BadInputError(message) from err
            bad.append(BadItem(item.source, str(item.path), message))
            continue
        if key in cache.scores:
            results[key] = cache.scores[key]
        elif key not in results:
            pending[key] = item
    todo = list(pending.items())
    bar = tqdm(total=len(todo), desc=desc, disable=not progress, unit="img")
    for start in range(0, len(todo), batch_size):
        groups: dict[tuple[int, int], list[tuple[str, ScoreItem, torch.Tensor]]] = {}
        for key, item in todo[start : start + batch_size]:
            try:
                image = load_image(item.path)
            except BadInputError as err:
                message = f"{err} ({item.source})" if item.source else str(err)
                if not skip_bad:
                    raise BadInputError(message) from err
                bad.append(BadItem(item.source, str(item.path), message))
                continue
            groups.setdefault(tuple(image.shape[-2:]), []).append((key, item, image))
        for group in groups.values():
            images = torch.stack([g[2] for g in group]).to(reward.device)
            with torch.no_grad():
                out = reward(images, [g[1].prompt for g in group], None)
            for (key, _, _), score, valid in zip(group, out.scores.tolist(), out.valid.tolist()):
                value = float(score) if valid else None
                results[key] = cache.scores[key] = value
        cache.save()
        bar.update(len(todo[start : start + batch_size]))
    bar.close()
    return results, bad


def list_image_folder(folder: str | os.PathLike, prompt: str | None = None) -> list[ScoreItem]:
    """Images in ``folder`` (sorted, non-recursive); prompt = ``prompt`` or the sidecar ``<stem>.txt``.

    With neither, the prompt is empty: fine for prompt-free rewards; ``score_items`` rejects such an
    item for a reward that needs prompts (``spec.needs_prompt``).
    """
    from reward_models.io_utils import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"image folder {str(folder)!r} does not exist")
    items = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        text = prompt
        sidecar = path.with_suffix(".txt")
        if text is None and sidecar.is_file():
            text = sidecar.read_text(encoding="utf-8").strip()
        items.append(ScoreItem(path, text or "", source=str(path)))
    if not items:
        raise BadInputError(f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return items


def read_score_manifest(path: str | os.PathLike, prompt: str | None = None, skip_bad: bool = False
                        ) -> tuple[list[ScoreItem], list[BadItem]]:
    """``.jsonl``/``.csv`` with column ``image`` (relative to the manifest) and ``prompt`` (or ``prompt`` arg)."""
    from reward_models.io_utils import read_table, table_columns

    path = Path(path)
    needed = ["image"] + ([] if prompt is not None else ["prompt"])
    header = table_columns(path)
    if header is not None and any(c not in header for c in needed):
        raise BadInputError(f"{path}: missing columns {[c for c in needed if c not in header]}; "
                            f"expected {needed}, found {header}")
    items, bad = [], []
    for number, row in read_table(path):
        source = f"{path}:{number}"
        missing = [c for c in needed if not isinstance(row.get(c), str) or not row.get(c).strip()]
        if missing:
            if (header is None and number == 1 and any(c not in row for c in needed)) or not skip_bad:
                raise BadInputError(f"{source}: columns {missing} must be non-empty strings; found keys {sorted(row)}")
            bad.append(BadItem(source, str(row.get("image", "")), f"missing/empty columns {missing}"))
            continue
        image = Path(row["image"])
        items.append(ScoreItem(image if image.is_absolute() else path.parent / image,
                               prompt if prompt is not None else row["prompt"], source))
    return items, bad
