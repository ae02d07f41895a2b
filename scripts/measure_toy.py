"""Measure the toy pipeline for its model card: held-out "shapes" accuracy (Euler ODE, fixed seeds),
quality, time for a batch of 8, and an image grid. Prints a table; ``--json`` writes the numbers.

HF_HUB_OFFLINE=1 python scripts/measure_toy.py --model assets/toy-sd3 --json assets/toy-sd3-metrics.json \
    --grid assets/toy-sd3-grid.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from flowalign.models.loading import load_model  # noqa: E402
from flowalign.toy.evaluate import EvalConfig, evaluate, sample  # noqa: E402
from flowalign.utils.io import save_png, write_text  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets/toy-sd3")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--samples-per-prompt", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--grid", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    cfg = EvalConfig(steps=a.steps, guidance=a.guidance, samples_per_prompt=a.samples_per_prompt)
    result = evaluate(model, cfg)
    prompts8 = result["prompts"][:8]
    sample(model, prompts8, list(range(8)), cfg)  # warm-up
    t0 = time.perf_counter()
    sample(model, prompts8, list(range(8)), cfg)
    batch8 = time.perf_counter() - t0
    row = {k: result[k] for k in ("accuracy", "strict_accuracy", "color", "shape", "count", "position", "quality",
                                  "n_images")}
    row.update({"steps": a.steps, "guidance": a.guidance, "batch8_s": batch8, "threads": a.threads,
                "cpu": platform.processor() or platform.machine(), "torch": torch.__version__})
    for k, v in row.items():
        print(f"{k:16s} {v:.4f}" if isinstance(v, float) else f"{k:16s} {v}")
    if a.json:
        write_text(a.json, json.dumps(row, indent=1) + "\n")
    if a.grid:
        imgs = torch.nn.functional.interpolate(result["images"][:24], scale_factor=2, mode="nearest")
        save_png(make_grid(imgs, nrow=8, padding=2, pad_value=0.5), a.grid)
        write_text(Path(a.grid).with_suffix(".txt"), "\n".join(result["prompts"][:24]) + "\n")


if __name__ == "__main__":
    main()
