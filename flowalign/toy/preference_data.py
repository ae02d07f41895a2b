"""The toy preference set: for each shapes-world prompt a winner (a rendered, verifier-correct scene) and a loser
(a sample of the base toy model that the verifier fails), written as files.

``python -m flowalign.toy.preference_data --out data/toy-preference`` writes into ``--out`` (atomically, as one
folder):

- ``train.jsonl``: the preference manifest (``flowalign.data.preference``) of the TRAINING prompts, one line per
  prompt: ``{"prompt", "image": winners/…, "loser": losers/… or null, "metadata": {"loser_seed", "loser_score"}}``;
- ``heldout_pairs.jsonl``: the HELD-OUT prompts' pairs with a loser, in ``flowalign reward eval``'s format
  (``prompt, image_0, image_1, preferred``; which image is image_0 is drawn from the seed), for the implicit-reward
  evaluation of a trained policy beside reward models;
- ``summary.json``: counts (prompts, pairs, prompts whose ``tries`` samples all passed) and the settings.

Winner of prompt j: ``toy.scenes.generate_scenes`` from the key ``[seed, split, j]`` (the renderer makes no
ambiguous scene: toy:sft measured every one verifier-perfect). Loser: the model samples prompt j with seeds
``seed·10⁶ + 1000·t + j`` for tries t = 0, 1, … < ``tries`` (Euler ODE, ``steps`` steps, CFG ``guidance``: the demo's
sampling), each image quantized to 8 bits as it is stored, and the first one whose "shapes" verdict is not fully
correct (score < 1) is the loser; when every try passes, the line has no loser (a winner-only row).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from flowalign.models.base import FlowModel
from flowalign.toy.evaluate import EvalConfig, sample_jobs
from flowalign.toy.prompts import split_prompts
from flowalign.toy.scenes import generate_scenes
from flowalign.toy.verify import verify
from flowalign.utils.io import atomic_dir, save_png, write_text


@dataclass(frozen=True)
class ToyPreferenceConfig:
    """Sampling of the losers (see the module docstring) and which prompts (``max_prompts`` per split, None: all)."""

    seed: int = 0
    tries: int = 4
    steps: int = 10
    guidance: float = 1.0
    batch: int = 128
    max_prompts: int | None = None

    def __post_init__(self) -> None:
        if self.tries < 1 or self.steps < 1 or self.batch < 1:
            raise ValueError(f"tries, steps and batch must be >= 1, got {self.tries}, {self.steps}, {self.batch}")


def quantized(images: torch.Tensor) -> torch.Tensor:
    """Images as a PNG stores them: rounded to 8 bits."""
    return (images.clamp(0, 1) * 255).round() / 255


def find_losers(model: FlowModel, prompts: list[str], cfg: ToyPreferenceConfig, size: int):
    """Per prompt the first failing sample (image, seed, score) over ``cfg.tries`` tries, or None."""
    losers: list[tuple[torch.Tensor, int, float] | None] = [None] * len(prompts)
    sampling = EvalConfig(steps=cfg.steps, guidance=cfg.guidance, batch=cfg.batch, image_size=size)
    for t in range(cfg.tries):
        todo = [j for j, found in enumerate(losers) if found is None]
        if not todo:
            break
        jobs = [(prompts[j], cfg.seed * 10**6 + 1000 * t + j) for j in todo]
        images = quantized(sample_jobs(model, jobs, sampling))
        scores, _ = verify(images, [p for p, _ in jobs])
        for k, j in enumerate(todo):
            if float(scores[k]) < 1.0:
                losers[j] = (images[k], jobs[k][1], float(scores[k]))
    return losers


def write_split(model: FlowModel, folder: Path, split: str, cfg: ToyPreferenceConfig, size: int) -> list[dict]:
    """Winner and loser PNGs of ``split``'s prompts under ``folder``; returns one row per prompt."""
    prompts = list(split_prompts(split))[: cfg.max_prompts]
    losers = find_losers(model, prompts, cfg, size)
    rows = []
    for j, (prompt, loser) in enumerate(zip(prompts, losers)):
        winner, _, _ = generate_scenes(1, [cfg.seed, {"train": 0, "heldout": 1}[split], j], prompts=[prompt])
        save_png(quantized(winner[0]), folder / split / "winners" / f"{j:04d}.png")
        row = {"prompt": prompt, "image": f"{split}/winners/{j:04d}.png", "loser": None, "metadata": {}}
        if loser is not None:
            save_png(loser[0], folder / split / "losers" / f"{j:04d}.png")
            row["loser"] = f"{split}/losers/{j:04d}.png"
            row["metadata"] = {"loser_seed": loser[1], "loser_score": loser[2]}
        rows.append(row)
    return rows


def reward_eval_rows(rows: list[dict], seed: int) -> list[dict]:
    """The rows with a loser in ``flowalign reward eval``'s format, image order drawn from ``seed``."""
    rng = random.Random(seed)
    out = []
    for row in (r for r in rows if r["loser"] is not None):
        swap = rng.random() < 0.5
        images = [row["loser"], row["image"]] if swap else [row["image"], row["loser"]]
        out.append({"prompt": row["prompt"], "image_0": images[0], "image_1": images[1], "preferred": int(swap)})
    return out


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def generate_toy_preferences(model: FlowModel, out: str | Path, cfg: ToyPreferenceConfig = ToyPreferenceConfig(),
                             size: int = 32) -> dict:
    """Write the toy preference set into ``out`` (replaced atomically); returns the summary."""
    with atomic_dir(out) as tmp:
        train = write_split(model, tmp, "train", cfg, size)
        heldout = write_split(model, tmp, "heldout", cfg, size)
        write_text(tmp / "train.jsonl", _jsonl(train))
        write_text(tmp / "heldout_pairs.jsonl", _jsonl(reward_eval_rows(heldout, cfg.seed)))
        summary = {"config": asdict(cfg), "image_size": size}
        for name, rows in (("train", train), ("heldout", heldout)):
            pairs = sum(r["loser"] is not None for r in rows)
            summary[name] = {"prompts": len(rows), "pairs": pairs, "all_tries_passed": len(rows) - pairs}
        write_text(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (replaced)")
    parser.add_argument("--model", default="assets/toy-sd3", help="the toy pipeline (default: the shipped one)")
    defaults = ToyPreferenceConfig()
    for name in ("seed", "tries", "steps", "batch", "max_prompts"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--guidance", type=float, default=defaults.guidance)
    args = parser.parse_args(argv)
    from flowalign.models import load_model
    from flowalign.resources import resolve

    model = load_model(resolve(args.model), collapse_zero_padding=True)
    cfg = ToyPreferenceConfig(args.seed, args.tries, args.steps, args.guidance, args.batch, args.max_prompts)
    print(json.dumps(generate_toy_preferences(model, args.out, cfg), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
