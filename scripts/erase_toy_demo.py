"""Toy-world SPM demo: erase a colour (default "red") from assets/toy-sd3, measure it, draw a before/after grid.

Prompts come from the toy world's fixed splits. Training: targets = the train prompts naming the colour (surrogate:
the prompt without it), anchors = the other train prompts. Evaluation: ``--eval-prompts`` held-out prompts naming
the colour and as many that do not (seeded draw), seeds 0.., Euler ODE. Writes OUT/<colour>.safetensors,
OUT/eval.json (erasure_report + timing) and OUT/grid.png (top: original, bottom: SPM; left half names the colour).

    python scripts/erase_toy_demo.py --concept red --out runs/erase-red
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path

import torch

from flowalign.erasure import FacilitatedTransport, load_spm
from flowalign.erasure.evaluate import erasure_report, generate
from flowalign.erasure.train import EraseConfig, train_spm
from flowalign.models import load_model
from flowalign.toy.prompts import COLORS, parse_prompt, split_prompts
from flowalign.utils.io import save_grid, write_text
from reward_models import build_reward

ROOT = Path(__file__).resolve().parents[1]


def split_by_colour(prompts: list[str], colour: str) -> tuple[list[str], list[str]]:
    named = {p for p in prompts if parse_prompt(p).names(colour)}
    return [p for p in prompts if p in named], [p for p in prompts if p not in named]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "assets" / "toy-sd3"))
    ap.add_argument("--concept", default="red", choices=COLORS)
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--anchor-weight", type=float, default=1.0)
    ap.add_argument("--eval-prompts", type=int, default=48, help="held-out prompts with and without the concept")
    ap.add_argument("--grid-prompts", type=int, default=4, help="per half of the grid")
    ap.add_argument("--steps", type=int, default=16, help="ODE steps of the evaluation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/erase-toy"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    targets, anchors = split_by_colour(list(split_prompts("train")), args.concept)
    held_with, held_without = split_by_colour(list(split_prompts("heldout")), args.concept)
    rng = random.Random(args.seed)
    n = min(args.eval_prompts, len(held_with), len(held_without))
    eval_with, eval_without = rng.sample(held_with, n), rng.sample(held_without, n)

    model = load_model(args.model, collapse_zero_padding=True)
    config = EraseConfig([args.concept], eta=args.eta, anchor_weight=args.anchor_weight, anchor_prompts=anchors,
                         random_anchors=1, anchors_per_step=2, target_prompts=targets, steps=args.train_steps,
                         lr=args.lr, num_inference_steps=10, seed=args.seed)
    spm_path = args.out / f"{args.concept}.safetensors"
    start = time.perf_counter()
    train_spm(model, config, spm_path)
    train_s = time.perf_counter() - start

    spm = load_spm(model, [spm_path])
    transport = FacilitatedTransport(model, spm.concepts)
    report = erasure_report(model, spm, transport, eval_with, eval_without, reward=build_reward("shapes"),
                            steps=args.steps, seed=args.seed)
    report |= {"train_seconds": round(train_s, 1), "train_steps": args.train_steps, "threads": args.threads,
               "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
               "num_target_prompts": len(targets), "num_anchor_prompts": len(anchors)}
    write_text(args.out / "eval.json", json.dumps(report, indent=2))

    shown = eval_with[:args.grid_prompts] + eval_without[:args.grid_prompts]
    with spm.disabled():
        before = generate(model, shown, steps=args.steps, seed=args.seed)
    after = generate(model, shown, spm=spm, transport=transport, steps=args.steps, seed=args.seed)
    save_grid(torch.cat([before, after]), args.out / "grid.png", nrow=len(shown))

    key = f"concept[{args.concept}]"
    print(f"trained {args.train_steps} steps in {train_s:.0f} s; {n} held-out prompts per row")
    print(f"| prompts | mean γ | pixel MAD | shapes reward orig → SPM | {key} clause orig → SPM |")
    for part, label in (("target", f"naming {args.concept}"), ("preserve", f"without {args.concept}")):
        r = report[part]
        clause = (f"{r[key + '_original']:.3f} → {r[key + '_spm']:.3f}" if key + "_spm" in r else "n/a")
        print(f"| {label} | {r['mean_gamma']:.3f} | {r['pixel_mad']:.4f} | "
              f"{r['reward_original']:.3f} → {r['reward_spm']:.3f} | {clause} |")
    print(f"wrote {spm_path}, {args.out / 'eval.json'}, {args.out / 'grid.png'}")


if __name__ == "__main__":
    main()
