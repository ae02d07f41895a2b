"""Evaluate rewards on a human-preference dataset (pairwise accuracy, distributions, agreement).

Manifest (``.jsonl`` or ``.csv``), one pair per row, image paths relative to the manifest's folder:

    prompt, image_0, image_1, preferred (0 or 1; empty allowed for ties), tie (optional: true/false/1/0)

Metrics per reward (``Δ = score(image_preferred) − score(other)``):

- ``accuracy`` (ties dropped): mean over non-tie pairs of ``1[Δ > 0] + 0.5·1[Δ = 0]``.
- ``accuracy_with_ties`` (ties counted): over all pairs, the prediction is "tie" if
  ``|s0 − s1| <= tie_margin`` else the higher-scored image; correct if it equals the label.
- score distribution (over distinct images), per-prompt accuracy, and between rewards: the
  preference agreement over non-tie pairs (:func:`_agreement`: 1 if ``sign(s0 − s1)`` is the same for
  both rewards, both-tied included; 0.5 if exactly one reward scores the pair a tie; 0 if they prefer
  different images) and the Pearson/Spearman correlation of image scores.

Pairs whose images a reward marks invalid are left out of that reward's metrics (``n_invalid``).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from reward_models.base import RewardModel
from reward_models.io_utils import BadInputError, read_table, table_columns
from reward_models.scoring import BadItem, ScoreCache, ScoreItem, item_key, score_items

REQUIRED_COLUMNS = ("prompt", "image_0", "image_1", "preferred")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


@dataclass(frozen=True)
class PreferencePair:
    """``preferred`` is 0 or 1, or None for a tie; ``source`` is ``manifest:row``."""

    prompt: str
    image_0: Path
    image_1: Path
    preferred: int | None
    source: str

    @property
    def tie(self) -> bool:
        return self.preferred is None


def _parse_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{what} must be true/false/1/0, got {value!r}")


def _parse_row(row: Mapping[str, Any], base: Path, source: str) -> PreferencePair:
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"column 'prompt' must be a non-empty string, got {prompt!r}")
    tie = _parse_bool(row.get("tie"), "column 'tie'")
    raw = row.get("preferred")
    preferred: int | None
    if tie:
        preferred = None
    else:
        text = str(raw).strip().lower() if raw is not None else ""
        if text in ("0", "1", "0.0", "1.0"):
            preferred = int(float(text))
        elif text == "tie":
            preferred = None
        else:
            raise ValueError(f"column 'preferred' must be 0 or 1 (or 'tie', or tie=true), got {raw!r}")
    paths = []
    for column in ("image_0", "image_1"):
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"column {column!r} must be an image path, got {value!r}")
        path = Path(value)
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ValueError(f"column {column!r}: image {str(path)!r} does not exist")
        paths.append(path)
    return PreferencePair(prompt=prompt, image_0=paths[0], image_1=paths[1], preferred=preferred, source=source)


def read_preference_manifest(path: str | os.PathLike, skip_bad: bool = False
                             ) -> tuple[list[PreferencePair], list[BadItem]]:
    """Parse a preference manifest; wrong columns always raise, bad rows raise unless ``skip_bad``."""
    path = Path(path)
    header = table_columns(path)
    if header is not None:
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise BadInputError(f"{path}: missing columns {missing}; expected {list(REQUIRED_COLUMNS)} "
                                f"(+ optional 'tie'), found {header}")
    pairs: list[PreferencePair] = []
    bad: list[BadItem] = []
    for number, row in read_table(path):
        source = f"{path}:{number}"
        missing = [c for c in REQUIRED_COLUMNS if c not in row and not (c == "preferred" and "tie" in row)]
        if missing:
            if (header is None and number == 1) or not skip_bad:  # wrong schema is never skippable
                raise BadInputError(f"{source}: missing columns {missing}; expected {list(REQUIRED_COLUMNS)} "
                                    f"(+ optional 'tie'), found {sorted(row)}")
            bad.append(BadItem(source, "", f"missing columns {missing}"))
            continue
        try:
            pairs.append(_parse_row(row, path.parent, source))
        except ValueError as err:
            if not skip_bad:
                raise BadInputError(f"{source}: {err}") from err
            bad.append(BadItem(source, "", str(err)))
    if not pairs:
        raise BadInputError(f"{path}: no usable preference pairs" + (f" ({len(bad)} bad rows skipped)" if bad else ""))
    return pairs, bad


# ------------------------------------------------------------------------------------------- metrics


def _pair_correct(delta: float) -> float:
    return 1.0 if delta > 0 else (0.5 if delta == 0 else 0.0)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _agreement(a0: float, a1: float, b0: float, b1: float) -> float:
    """Agreement of two rewards on one pair: same ``sign(s0 − s1)`` → 1 (both tie included),
    exactly one ties → 0.5, opposite preferences → 0."""
    sa, sb = _sign(a0 - a1), _sign(b0 - b1)
    if sa == sb:
        return 1.0
    return 0.5 if sa == 0 or sb == 0 else 0.0


def distribution(values: Sequence[float], bins: int = 20) -> dict[str, Any]:
    """Mean/std/min/max/quantiles and an equal-width histogram (``edges`` has ``bins + 1`` entries)."""
    if not values:
        return {"count": 0}
    t = torch.tensor(values, dtype=torch.float64)
    lo, hi = t.min().item(), t.max().item()
    span = hi - lo if hi > lo else 1.0
    edges = [lo + span * i / bins for i in range(bins + 1)]
    counts = torch.histc(t, bins=bins, min=lo, max=lo + span).long().tolist()
    qs = torch.quantile(t, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)).tolist()
    return {"count": len(values), "mean": t.mean().item(), "std": t.std(unbiased=False).item(), "min": lo,
            "max": hi, "quantiles": dict(zip(["p05", "p25", "p50", "p75", "p95"], qs)),
            "histogram": {"edges": edges, "counts": counts}}


def _ranks(t: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank)."""
    order = torch.argsort(t)
    ranks = torch.empty_like(t)
    ranks[order] = torch.arange(len(t), dtype=t.dtype)
    for value in torch.unique(t):
        mask = t == value
        if mask.sum() > 1:
            ranks[mask] = ranks[mask].mean()
    return ranks


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float | None:
    if len(a) < 2:
        return None
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt((a * a).sum().item() * (b * b).sum().item())
    return None if denom == 0 else (a * b).sum().item() / denom


@dataclass
class RewardMetrics:
    n_pairs: int
    n_ties: int
    n_invalid: int
    accuracy: float | None
    accuracy_with_ties: float | None
    distribution: dict[str, Any]
    per_prompt: dict[str, dict[str, Any]]


@dataclass
class EvalReport:
    manifest: str
    n_pairs: int
    n_ties: int
    tie_margin: float
    rewards: dict[str, RewardMetrics]
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_metrics(pairs: Sequence[PreferencePair], scores: Mapping[str, Sequence[tuple[float | None, float | None]]],
                    tie_margin: float = 0.0, manifest: str = "", skipped: Sequence[BadItem] = ()) -> EvalReport:
    """Metrics from per-pair ``(score_0, score_1)`` for each reward (None = invalid)."""
    rewards: dict[str, RewardMetrics] = {}
    for name, pair_scores in scores.items():
        if len(pair_scores) != len(pairs):
            raise ValueError(f"reward {name!r}: {len(pair_scores)} score pairs for {len(pairs)} preference pairs")
        correct, correct_ties, n_invalid = [], [], 0
        per_prompt: dict[str, list[float]] = {}
        for pair, (s0, s1) in zip(pairs, pair_scores):
            if s0 is None or s1 is None:
                n_invalid += 1
                continue
            predicted = None if abs(s0 - s1) <= tie_margin else (0 if s0 > s1 else 1)
            correct_ties.append(1.0 if predicted == pair.preferred else 0.0)
            if pair.tie:
                continue
            delta = (s0 - s1) if pair.preferred == 0 else (s1 - s0)
            correct.append(_pair_correct(delta))
            per_prompt.setdefault(pair.prompt, []).append(correct[-1])
        seen: dict[Path, float] = {}
        for pair, (s0, s1) in zip(pairs, pair_scores):
            for path, s in ((pair.image_0, s0), (pair.image_1, s1)):
                if s is not None:
                    seen[path] = s
        rewards[name] = RewardMetrics(
            n_pairs=len(pairs), n_ties=sum(p.tie for p in pairs), n_invalid=n_invalid,
            accuracy=sum(correct) / len(correct) if correct else None,
            accuracy_with_ties=sum(correct_ties) / len(correct_ties) if correct_ties else None,
            distribution=distribution(list(seen.values())),
            per_prompt={p: {"n": len(v), "accuracy": sum(v) / len(v)} for p, v in sorted(per_prompt.items())},
        )
    agreement: dict[str, dict[str, Any]] = {}
    names = list(scores)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            same, total, xs, ys = 0.0, 0, [], []
            for pair, (a0, a1), (b0, b1) in zip(pairs, scores[a], scores[b]):
                if None in (a0, a1, b0, b1):
                    continue
                xs += [a0, a1]
                ys += [b0, b1]
                if not pair.tie:
                    total += 1
                    same += _agreement(a0, a1, b0, b1)
            ta, tb = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
            agreement[f"{a} vs {b}"] = {
                "pairs": total, "preference_agreement": same / total if total else None,
                "pearson": _pearson(ta, tb), "spearman": _pearson(_ranks(ta), _ranks(tb)) if len(xs) > 1 else None,
            }
    return EvalReport(manifest=manifest, n_pairs=len(pairs), n_ties=sum(p.tie for p in pairs), tie_margin=tie_margin,
                      rewards=rewards, agreement=agreement, skipped=[asdict(s) for s in skipped])


def evaluate_preferences(rewards: Mapping[str, RewardModel], manifest: str | os.PathLike, *, batch_size: int = 8,
                         cache_dir: str | os.PathLike | None = None, skip_bad: bool = False, tie_margin: float = 0.0,
                         progress: bool = True, specs: Mapping[str, Mapping[str, Any]] | None = None) -> EvalReport:
    """Read the manifest, score every image with every reward (cached, batched), compute metrics.

    ``specs``: each reward's JSON config by name, stored in its cache file and checked on load
    (see ``ScoreCache``); the CLI passes ``reward_label``'s configs.
    """
    specs = specs or {}
    pairs, skipped = read_preference_manifest(manifest, skip_bad=skip_bad)
    all_scores: dict[str, list[tuple[float | None, float | None]]] = {}
    for name, reward in rewards.items():
        items = [ScoreItem(p, pair.prompt, pair.source) for pair in pairs for p in (pair.image_0, pair.image_1)]
        results, bad = score_items(reward, items, batch_size=batch_size, skip_bad=skip_bad, desc=f"{name}",
                                   cache=ScoreCache.for_reward(cache_dir, name, specs.get(name)),
                                   progress=progress)
        bad_sources = {b.source for b in bad}
        known = {s.source + s.path for s in skipped}
        skipped += [b for b in bad if b.source + b.path not in known]
        if bad_sources:
            pairs_kept = [p for p in pairs if p.source not in bad_sources]
            all_scores = {k: [s for s, p in zip(v, pairs) if p.source not in bad_sources] for k, v in all_scores.items()}
            pairs = pairs_kept
        all_scores[name] = [(results.get(item_key(ScoreItem(p.image_0, p.prompt))),
                             results.get(item_key(ScoreItem(p.image_1, p.prompt)))) for p in pairs]
    if not pairs:
        raise BadInputError(f"{manifest}: every pair was skipped as bad ({len(skipped)} rows)")
    return compute_metrics(pairs, all_scores, tie_margin=tie_margin, manifest=str(manifest), skipped=skipped)
