"""The ``flowalign`` command line: ``flowalign <command> [options]``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from flowalign.errors import FlowAlignError

#: sub-command modules under flowalign.commands, each exposing add_parser(subparsers)
COMMANDS = ("sample", "reward", "train", "erase", "demo", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowalign", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module_name = f"flowalign.commands.{name}"
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).add_parser(subparsers)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; dotted overrides may come before or after options
    (``flowalign train recipe.yaml --overwrite optim.lr=3e-4``), which argparse alone rejects."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(item.startswith("-") or "=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FlowAlignError, FileNotFoundError) as err:
        print(f"flowalign {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
