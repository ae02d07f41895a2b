"""How much room a toy pipeline leaves for RL, and where: best-of-N on the held-out prompts, the clauses split by
the shape they ask for, and what a single requested shape is drawn as. Prints tables; ``--json`` writes the numbers.

    HF_HUB_OFFLINE=1 python scripts/toy_headroom.py                          # the shipped model
    HF_HUB_OFFLINE=1 python scripts/toy_headroom.py --lora runs/demo/lora    # after the demo

Definitions (best-of-n, top quarter, seeds): ``flowalign/toy/headroom.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from flowalign.models.loading import load_model, load_pipeline  # noqa: E402
from flowalign.toy.evaluate import EvalConfig  # noqa: E402
from flowalign.toy.headroom import DEFAULT_BASE_SEED, heldout_headroom, single_shapes  # noqa: E402
from flowalign.utils.io import write_text  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets/toy-sd3")
    ap.add_argument("--lora", default=None, help="a LoRA folder (e.g. runs/demo/lora), fused before sampling")
    ap.add_argument("--seeds", type=int, default=16, help="seeds per held-out prompt")
    ap.add_argument("--single-seeds", type=int, default=10, help="seeds per single-shape prompt")
    ap.add_argument("--seed", type=int, default=DEFAULT_BASE_SEED,
                    help="base seed; image i of prompt j of P uses seed + P*i + j, as the trainer's evaluation")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.seeds < 1 or a.single_seeds < 1:
        ap.error(f"--seeds and --single-seeds must be >= 1, got {a.seeds} and {a.single_seeds}")
    torch.set_num_threads(a.threads)
    pipe = load_pipeline(a.model)
    if a.lora:
        pipe.load_lora_weights(a.lora)
        pipe.fuse_lora()
    model = load_model(pipe)
    cfg = EvalConfig(steps=a.steps, guidance=a.guidance, batch=a.batch)
    result = {"model": a.model, "lora": a.lora, "seeds": a.seeds, "seed": a.seed, "steps": a.steps,
              "guidance": a.guidance, "heldout": heldout_headroom(model, a.seeds, cfg, base_seed=a.seed),
              "single_shapes": single_shapes(model, a.single_seeds, cfg, base_seed=a.seed)}
    held = result["heldout"]
    print(f"held-out, {a.seeds} seeds per prompt")
    for key in ("mean", *(k for k in held if k.startswith("best_of")), "top_quarter"):
        print(f"  {key:24s} {held[key]:.3f}")
    for group, label in (("by_kind", "kind"), ("clauses", "clause")):
        for key, value in held[group].items():
            print(f"  {label:6s} {key:17s} {value:.3f}")
    print("single shapes: asked -> classified as (mean fill, filled box corners)")
    for shape, row in result["single_shapes"].items():
        print(f"  {shape:9s} {row['classified']} (fill {row['fill']:.2f}, corners {row['corners']:.2f})")
    if a.json:
        write_text(a.json, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
