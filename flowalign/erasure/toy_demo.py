"""Toy-world SPM demo: erase a colour ("red") or a shape ("triangle") from assets/toy-sd3, measure it, draw a grid.

Prompts come from the toy world's fixed splits. Training: targets = the train prompts naming the concept in any
phrasing (a shape: singular and plural; surrogate: the prompt without it), anchors = the other train prompts, the
empty prompt and one random direction per step; partial sampling at guidance 1.0, the toy model's inference
guidance. Evaluation: up to ``--eval-prompts`` held-out prompts naming the concept and as many that do not (seeded
draw), ``--repeats`` seeds per prompt (image i: seed i), Euler ODE, guidance 1.0; for a shape also the held-out
prompts naming it in the singular only and in the plural, from the same images. ``--spm FILE`` evaluates a trained
file instead of training. Writes OUT/<concept>.safetensors, OUT/eval.json (erasure reports + timing) and
OUT/grid.png (top: original, bottom: SPM; left half names the concept).

    python -m flowalign.erasure.toy_demo --concept triangle --out runs/erase-triangle
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path

import torch

from flowalign.erasure.evaluate import erasure_report, generate
from flowalign.erasure.files import load_spm
from flowalign.erasure.train import EraseConfig, train_spm
from flowalign.erasure.transport import FacilitatedTransport
from flowalign.models import load_model
from flowalign.toy.prompts import COLORS, SHAPES, parse_prompt, split_prompts
from flowalign.utils.io import save_grid, write_text

TOY_GUIDANCE = 1.0  # the toy model's card samples with guidance 1.0 (no CFG)


def split_by_concept(prompts: list[str], concept: str) -> tuple[list[str], list[str]]:
    """(prompts naming ``concept`` as a colour or shape, the others), each in the given order."""
    named = {p for p in prompts if parse_prompt(p).names(concept)}
    return [p for p in prompts if p in named], [p for p in prompts if p not in named]


def plural_split(prompts: list[str], shape: str) -> tuple[list[str], list[str]]:
    """(prompts naming ``shape`` only in the singular, prompts naming it in the plural)."""
    plural = [p for p in prompts if any(o.shape == shape and o.count > 1 for o in parse_prompt(p).objects)]
    return [p for p in prompts if p not in plural], plural


def _row(label: str, part: dict, key: str) -> str:
    clause = f"{part[key + '_original']:.3f} → {part[key + '_spm']:.3f}" if key + "_spm" in part else "n/a"
    return (f"| {label} ({part['num_prompts']}) | {part['mean_gamma']:.3f} | {part['pixel_mad']:.4f} | "
            f"{part['reward_original']:.3f} → {part['reward_spm']:.3f} | {clause} |")


def main(argv: list[str] | None = None) -> None:
    from reward_models import build_reward

    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(root / "assets" / "toy-sd3"))
    ap.add_argument("--concept", default="red", choices=COLORS + SHAPES)
    ap.add_argument("--no-inflections", action="store_true",
                    help="train on the exact word only and give transport the concept alone (the pre-issue-21 rule)")
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--anchor-weight", type=float, default=1.0)
    ap.add_argument("--eval-prompts", type=int, default=48, help="held-out prompts with and without the concept")
    ap.add_argument("--grid-prompts", type=int, default=4, help="per half of the grid")
    ap.add_argument("--steps", type=int, default=16, help="ODE steps of the evaluation")
    ap.add_argument("--repeats", type=int, default=1, help="images (seeds) per evaluation prompt")
    ap.add_argument("--spm", type=Path, default=None, help="evaluate this SPM file instead of training one")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/erase-toy"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    targets, anchors = split_by_concept(list(split_prompts("train")), args.concept)
    held_with, held_without = split_by_concept(list(split_prompts("heldout")), args.concept)
    rng = random.Random(args.seed)
    eval_with = rng.sample(held_with, min(args.eval_prompts, len(held_with)))
    eval_without = rng.sample(held_without, min(args.eval_prompts, len(held_without)))

    model = load_model(args.model, collapse_zero_padding=True)
    config = EraseConfig([args.concept], inflect=not args.no_inflections, eta=args.eta,
                         anchor_weight=args.anchor_weight, anchor_prompts=anchors, random_anchors=1,
                         anchors_per_step=2, target_prompts=targets, steps=args.train_steps, lr=args.lr,
                         num_inference_steps=10, guidance_scale=TOY_GUIDANCE, seed=args.seed)
    spm_path, train_s = args.spm or args.out / f"{args.concept}.safetensors", 0.0
    if args.spm is None:
        start = time.perf_counter()
        train_spm(model, config, spm_path)
        train_s = time.perf_counter() - start

    spm = load_spm(model, [spm_path])
    transport = FacilitatedTransport(model, spm.concepts if args.no_inflections else spm.phrasings)
    rows = [("target", f"naming {args.concept}"), ("preserve", f"without {args.concept}")]
    groups = {}
    if args.concept in SHAPES:
        groups = dict(zip(("singular", "plural"), plural_split(eval_with, args.concept)))
        rows += [("target_singular", f"… {args.concept} singular only"), ("target_plural", f"… {args.concept}s")]
    report = erasure_report(model, spm, transport, eval_with, eval_without, reward=build_reward("shapes"),
                            steps=args.steps, guidance_scale=TOY_GUIDANCE, seed=args.seed, repeats=args.repeats,
                            target_groups=groups)
    report |= {"spm": str(spm_path), "train_seconds": round(train_s, 1), "train_steps": args.train_steps,
               "threads": args.threads,
               "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
               "num_target_prompts": len(config.targets(0)), "num_anchor_prompts": len(anchors),
               "phrasings": spm.phrasings[0], "inflect": not args.no_inflections}
    write_text(args.out / "eval.json", json.dumps(report, indent=2))

    shown = eval_with[:args.grid_prompts] + eval_without[:args.grid_prompts]
    with spm.disabled():
        before = generate(model, shown, steps=args.steps, guidance_scale=TOY_GUIDANCE, seed=args.seed)
    after = generate(model, shown, spm=spm, transport=transport, steps=args.steps, guidance_scale=TOY_GUIDANCE,
                     seed=args.seed)
    save_grid(torch.cat([before, after]), args.out / "grid.png", nrow=len(shown))

    key = f"concept[{args.concept}]"
    print(f"trained {args.train_steps} steps in {train_s:.0f} s on {len(config.targets(0))} target prompts"
          if args.spm is None else f"evaluated {args.spm}")
    print(f"| held-out prompts | mean γ | pixel MAD | shapes reward orig → SPM | {key} clause orig → SPM |")
    for part, label in rows:
        print(_row(label, report[part], key))
    print(f"wrote {spm_path}, {args.out / 'eval.json'}, {args.out / 'grid.png'}")


if __name__ == "__main__":
    main()
