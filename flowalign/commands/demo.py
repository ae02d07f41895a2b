"""``flowalign demo``: GRPO-Guard on the shipped toy model (CPU, no downloads), then the HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "configs" / "toy_grpo_guard.yaml"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="GRPO-Guard on the toy shapes world (CPU, ~6 min), with a report",
                              description="Runs configs/toy_grpo_guard.yaml on assets/toy-sd3 and writes "
                                          "runs/demo/report.html.")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. iterations=5")
    p.add_argument("--resume", action="store_true",
                   help="continue runs/demo from its newest checkpoint (without it the demo starts over)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowalign.commands.train import run as train

    defaults = [f"model.path={ROOT / 'assets' / 'toy-sd3'}"]
    return train(argparse.Namespace(config=str(DEMO_CONFIG), overrides=defaults + list(args.overrides),
                                    resume="latest" if args.resume else None, overwrite=not args.resume))
