#!/usr/bin/env python
"""Speed and memory of rollouts, training and full RL iterations; prints a table, optionally writes JSON.

    python scripts/benchmark.py                                   # quick CPU run on tiny-sd3 (< 1 min)
    python scripts/benchmark.py --arch configs/models/sd3.5-medium.json --device cuda --height 512 --width 512

See docs/benchmarks.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowalign.benchmark import BenchConfig, format_table, run_benchmark  # noqa: E402
from flowalign.errors import FlowAlignError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = p.add_argument_group("model (one of)")
    what.add_argument("--model", help="tiny-sd3 | tiny-flux | tiny-wan | a pipeline folder (default: tiny-sd3)")
    what.add_argument("--arch", help="a full-size architecture with random weights: configs/models/NAME.json")
    what.add_argument("--scale-down", action="store_true", help="use the JSON's scale_down section (tests)")
    what.add_argument("--override", action="append", default=[], metavar="COMPONENT.KEY=VALUE",
                      help="change an --arch config value (JSON value), e.g. transformer.num_layers=4")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--num-frames", type=int, help="video frames (Wan)")
    p.add_argument("--steps", type=int, default=10, help="sampling steps per rollout")
    p.add_argument("--group-size", type=int, default=4, help="samples per prompt")
    p.add_argument("--prompts", type=int, default=2, help="prompts per rollout / iteration")
    p.add_argument("--guidance-scale", type=float, help="default: the family's usual value")
    p.add_argument("--window-size", type=int, help="SDE window size (default: every step stochastic)")
    p.add_argument("--window-start", type=int, help="SDE window start (default: middle)")
    p.add_argument("--share-initial-noise", action="store_true", help="groups share their initial noise")
    p.add_argument("--micro-batch-size", type=int, default=8, help="(sample, step) pairs per training forward")
    p.add_argument("--train-micro-batches", type=int, default=4, help="micro-batches per timed training pass")
    p.add_argument("--lora-rank", type=int, default=32)
    p.add_argument("--iterations", type=int, default=3, help="timed repetitions of rollout and training")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--trainer-iterations", type=int, default=1, help="timed Trainer iterations")
    p.add_argument("--skip-iteration", action="store_true", help="skip the full Trainer iteration")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float,
                   help="device peak for MFU (default 989 = H100 bf16 dense on CUDA; 0: no MFU)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", help="write every number and the environment to this file")
    return p.parse_args(argv)


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """["transformer.num_layers=4", ...] → {"transformer": {"num_layers": 4}} (values parsed as JSON)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        component, dot, name = key.partition(".")
        if not sep or not dot or not component or not name:
            raise ValueError(f"--override {item!r} must look like COMPONENT.KEY=VALUE, e.g. transformer.num_layers=4")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(component, {})[name] = parsed
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = {k: v for k, v in vars(args).items() if k not in ("json", "threads", "override")}
    try:
        options["overrides"] = parse_overrides(args.override)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if options["model"] is None and options["arch"] is None:
        options["model"] = "tiny-sd3"
    try:
        result = run_benchmark(BenchConfig(**options), log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (FlowAlignError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
