"""``flowalign train CONFIG [key=value ...]``: online RL fine-tuning (also under ``accelerate launch -m flowalign``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="RL fine-tuning from a YAML recipe",
                              description="Train with a YAML recipe from configs/ and dotted overrides, e.g. "
                                          "`flowalign train configs/toy_grpo_guard.yaml optim.lr=3e-4`.")
    p.add_argument("config", help="YAML recipe")
    p.add_argument("overrides", nargs="*", default=[], help="dotted overrides: section.key=value")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from the newest checkpoint of output_dir (or from the given checkpoint folder)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out data.dataset lines without a prompt/image or with an unreadable image (listed in "
                        "the log and summary.json) instead of stopping; the same as data.skip_bad=true")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an output_dir that holds another run (deletes its checkpoints and logs)")
    p.set_defaults(func=run)


def resume_override(args: argparse.Namespace) -> None:
    """``--resume optim.lr=1e-4``: argparse hands the override to --resume as its checkpoint; give it back
    (a value with "=" that is not an existing folder) and resume from the newest checkpoint."""
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        args.overrides = [*args.overrides, args.resume]
        args.resume = "latest"


def run(args: argparse.Namespace) -> int:
    from flowalign.config import load_config
    from flowalign.training.config import TrainConfig

    resume_override(args)
    overrides = [*args.overrides, *(["data.skip_bad=true"] if args.skip_bad else [])]
    config = load_config(TrainConfig, args.config, overrides)  # errors here, before any model loads
    from flowalign.training.trainer import Trainer

    summary = Trainer(config, resume=args.resume, overwrite=args.overwrite).run()
    before, after = summary.get("eval_before", {}), summary.get("eval_after", {})
    for key in sorted(after):
        print(f"{key}: {before.get(key, float('nan')):.4f} -> {after[key]:.4f}")
    print(f"outputs in {summary['output_dir']}")
    return 0
