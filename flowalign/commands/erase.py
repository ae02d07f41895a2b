"""``flowalign erase train|apply|eval|export``: SPM concept erasure (see docs/erasure.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowalign.commands import DEVICE_HELP


def _run(action: str):
    """The action's runner, imported when it runs (torch and diffusers load only then)."""
    def call(args: argparse.Namespace) -> int:
        from flowalign.commands import erase_run

        return getattr(erase_run, action)(args)
    return call


class _AliasAction(argparse.Action):
    """``--alias TEXT``: one more phrasing of the ``--concept`` given last (``args.alias``: concept -> aliases)."""

    def __call__(self, parser, namespace, values, option_string=None):
        concepts = getattr(namespace, "concept", None) or []
        if not concepts:
            parser.error(f"{option_string} {values!r} must follow the --concept it is an alias of")
        aliases = {k: list(v) for k, v in (getattr(namespace, self.dest, None) or {}).items()}
        aliases.setdefault(concepts[-1], []).append(values)
        setattr(namespace, self.dest, aliases)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="pipeline folder or hub id (SD3 or Flux)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--collapse-zero-padding", action="store_true", help="SD3 without T5: faster, same velocity")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the pipeline's)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the pipeline's)")


def _transport_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spm", action="append", required=True, type=Path, help="SPM file (repeatable)")
    p.add_argument("--factor", type=float, default=1.0, help="strength factor on γ")
    p.add_argument("--no-transport", action="store_true", help="γ = factor for every prompt")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="default: the pipeline's own (SD3 7.0, Flux 3.5); use the one the SPM was trained for")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("erase", help="SPM concept erasure: train, apply, eval, export")
    sub = p.add_subparsers(dest="erase_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train membranes erasing concepts (latent anchoring)")
    _model_args(t)
    t.add_argument("--concept", action="append", default=[], help="concept to erase (repeatable)")
    t.add_argument("--alias", action=_AliasAction, default={},
                   help="another phrasing of the --concept before it (repeatable), e.g. --concept dog --alias puppy")
    t.add_argument("--no-inflections", action="store_true",
                   help="do not add the singular/plural forms of the concepts and aliases")
    t.add_argument("--surrogate", default="")
    t.add_argument("--eta", type=float, default=1.0)
    t.add_argument("--anchor-weight", type=float, default=1.0, help="λ")
    t.add_argument("--anchor-prompt", action="append", default=[])
    t.add_argument("--anchor-file", type=Path, help="anchor prompts, one a line (those naming a concept are skipped)")
    t.add_argument("--no-empty-anchor", action="store_true", help="do not anchor the empty prompt on every step")
    t.add_argument("--random-anchors", type=int, default=1)
    t.add_argument("--anchors-per-step", type=int, default=2)
    t.add_argument("--target-file", type=Path, help="prompts; those containing a concept become its targets")
    t.add_argument("--train-steps", type=int, default=200)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--sampling-steps", type=int, default=10, help="x_σ after 1 .. n−1 of n Euler steps (n >= 2)")
    t.add_argument("--guidance-scale", type=float, default=None,
                   help="of the partial sampling: the one you generate with (default: the pipeline's own)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=0)
    t.add_argument("--out", required=True, type=Path, help="SPM file (.safetensors)")
    t.set_defaults(func=_run("run_train"))

    a = sub.add_parser("apply", help="generate with SPMs attached (PNGs, grid.png, samples.json)")
    _model_args(a)
    _transport_args(a)
    a.add_argument("--prompt", action="append", default=[])
    a.add_argument("--prompt-file", type=Path)
    a.add_argument("--out", type=Path, default=Path("outputs/erase"))
    a.set_defaults(func=_run("run_apply"))

    e = sub.add_parser("eval", help="erasure on target prompts, preservation on others (JSON)")
    _model_args(e)
    _transport_args(e)
    e.add_argument("--target-file", required=True, type=Path, help="prompts containing the concepts")
    e.add_argument("--preserve-file", required=True, type=Path, help="prompts without them")
    e.add_argument("--reward", default=None, help="reward name (e.g. shapes)")
    e.add_argument("--component", default="color", help="reward component measuring the concept")
    e.add_argument("--out", type=Path, default=Path("outputs/erase/eval.json"))
    e.set_defaults(func=_run("run_eval"))

    x = sub.add_parser("export", help="write an SPM file as a plain diffusers LoRA (strength 1, no transport)")
    x.add_argument("--spm", required=True, type=Path)
    x.add_argument("--out", required=True, type=Path, help="output folder")
    x.set_defaults(func=_run("run_export"))
