"""``flowalign demo``: GRPO-Guard on the shipped toy model (CPU, no downloads), then the HTML report.

The recipe and the model are the copies shipped with flowalign (``flowalign.resources``), so the demo runs from
any folder and from a wheel install; its outputs go to ``runs/demo`` under the current folder.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="GRPO-Guard on the toy shapes world (CPU, ~6 min), with a report",
                              description="Runs the shipped recipe configs/toy_grpo_guard.yaml on the shipped "
                                          "assets/toy-sd3 and writes runs/demo/report.html under the current "
                                          "folder. Overrides change the recipe, e.g. a quick check: "
                                          "`flowalign demo iterations=2 eval.max_prompts=4 output_dir=runs/quick`.")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. iterations=5")
    p.add_argument("--resume", action="store_true",
                   help="continue runs/demo from its newest checkpoint (without it the demo starts over)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowalign.commands.train import run as train
    from flowalign.resources import DEMO_RECIPE, TOY_MODEL, shipped

    defaults = [f"model.path={shipped(TOY_MODEL)}"]
    return train(argparse.Namespace(config=str(shipped(DEMO_RECIPE)), overrides=defaults + list(args.overrides),
                                    resume="latest" if args.resume else None, overwrite=not args.resume,
                                    skip_bad=False))
