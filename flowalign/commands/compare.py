"""``flowalign compare RECIPE... --seeds 0 1 2 [--parallel N] [--threads T] [--out DIR] [--include JSON]
[key=value ...]``."""

from __future__ import annotations

import argparse
import os

from flowalign.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="train recipes × seeds at equal budget and compare held-out metrics",
        description="Train every recipe with every seed (`flowalign train RECIPE seed=S output_dir=OUT/<recipe>/"
                    "seed-S`), keep finished runs, resume unfinished ones, and write OUT/compare.md, compare.html "
                    "and compare.json: held-out metrics as mean ± std over seeds, learning curves, an "
                    "accuracy-vs-quality scatter. Overrides (key=value) apply to every run. See docs/compare.md.")
    p.add_argument("recipes", nargs="*", metavar="RECIPE", help="YAML recipes (and key=value overrides)")
    p.add_argument("--seeds", nargs="+", required=True, metavar="SEED", help="training seeds, e.g. 0 1 2")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP/MKL threads per run (default: CPU count // parallel, at least 1)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--include", action="append", default=[], metavar="COMPARE_JSON[:NAME,...]",
                   help="reuse recipes of an earlier comparison (its compare.json; all of them, or those named) "
                        "instead of training them again; repeatable")
    p.add_argument("--reach", default=None, metavar="NAME",
                   help="also report the samples each recipe needed to reach recipe NAME's final mean accuracy")
    p.set_defaults(func=run, overrides=[])


def split_inputs(args: argparse.Namespace) -> tuple[list[str], list[int], list[str]]:
    """(recipes, seeds, overrides): a ``key=value`` word is an override wherever it stands (argparse gives the
    ones after ``--seeds`` to the seeds)."""
    words = [*args.recipes, *args.seeds, *args.overrides]
    overrides = [w for w in words if "=" in w]
    recipes = [w for w in args.recipes if "=" not in w]
    seeds = []
    for word in (w for w in args.seeds if "=" not in w):
        try:
            seeds.append(int(word))
        except ValueError:
            raise ConfigError(f"--seeds: {word!r} is not an integer seed (recipes go before --seeds)") from None
    return recipes, seeds, overrides


def run(args: argparse.Namespace) -> int:
    from flowalign.compare.outputs import run_comparison
    from flowalign.compare.plan import build_plan

    recipes, seeds, overrides = split_inputs(args)
    parallel = args.parallel
    threads = args.threads if args.threads is not None else max(1, (os.cpu_count() or 1) // max(parallel, 1))
    plan = build_plan(recipes, seeds, args.out, overrides, parallel=parallel, threads=threads,
                      includes=args.include, reach=args.reach)
    data = run_comparison(plan)
    print(f"wrote {plan.out / 'compare.md'}, compare.html and compare.json")
    if data["failed_runs"]:
        print(f"{data['failed_runs']} run(s) failed; see their logs (listed in compare.md)")
        return 1
    return 0
