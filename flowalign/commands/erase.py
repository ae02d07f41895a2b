"""``flowalign erase train|apply|eval|export``: SPM concept erasure (see docs/erasure.md)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flowalign.commands.sample import read_prompts
from flowalign.erasure import FacilitatedTransport, export_lora, load_spm
from flowalign.erasure.evaluate import erasure_report, generate
from flowalign.erasure.train import EraseConfig, train_spm
from flowalign.models import load_model
from flowalign.utils.io import save_grid, save_png, write_text


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="pipeline folder or hub id (SD3 or Flux)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--collapse-zero-padding", action="store_true", help="SD3 without T5: faster, same velocity")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--height", type=int, default=None, help="image height (default: the pipeline's)")
    p.add_argument("--width", type=int, default=None, help="image width (default: the pipeline's)")


def _transport_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spm", action="append", required=True, type=Path, help="SPM file (repeatable)")
    p.add_argument("--factor", type=float, default=1.0, help="strength factor on γ")
    p.add_argument("--no-transport", action="store_true", help="γ = factor for every prompt")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("erase", help="SPM concept erasure: train, apply, eval, export")
    sub = p.add_subparsers(dest="erase_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train membranes erasing concepts (latent anchoring)")
    _model_args(t)
    t.add_argument("--concept", action="append", default=[], help="concept to erase (repeatable)")
    t.add_argument("--surrogate", default="")
    t.add_argument("--eta", type=float, default=1.0)
    t.add_argument("--anchor-weight", type=float, default=1.0, help="λ")
    t.add_argument("--anchor-prompt", action="append", default=[])
    t.add_argument("--anchor-file", type=Path, help="anchor prompts, one a line")
    t.add_argument("--random-anchors", type=int, default=0)
    t.add_argument("--anchors-per-step", type=int, default=2)
    t.add_argument("--target-file", type=Path, help="prompts; those containing a concept become its targets")
    t.add_argument("--train-steps", type=int, default=200)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--sampling-steps", type=int, default=10)
    t.add_argument("--guidance-scale", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=0)
    t.add_argument("--out", required=True, type=Path, help="SPM file (.safetensors)")
    t.set_defaults(func=run_train)

    a = sub.add_parser("apply", help="generate with SPMs attached (PNGs, grid.png, samples.json)")
    _model_args(a)
    _transport_args(a)
    a.add_argument("--prompt", action="append", default=[])
    a.add_argument("--prompt-file", type=Path)
    a.add_argument("--out", type=Path, default=Path("outputs/erase"))
    a.set_defaults(func=run_apply)

    e = sub.add_parser("eval", help="erasure on target prompts, preservation on others (JSON)")
    _model_args(e)
    _transport_args(e)
    e.add_argument("--target-file", required=True, type=Path, help="prompts containing the concepts")
    e.add_argument("--preserve-file", required=True, type=Path, help="prompts without them")
    e.add_argument("--reward", default=None, help="reward name (e.g. shapes)")
    e.add_argument("--component", default="color", help="reward component measuring the concept")
    e.add_argument("--out", type=Path, default=Path("outputs/erase/eval.json"))
    e.set_defaults(func=run_eval)

    x = sub.add_parser("export", help="write an SPM file as a plain diffusers LoRA (strength 1, no transport)")
    x.add_argument("--spm", required=True, type=Path)
    x.add_argument("--out", required=True, type=Path, help="output folder")
    x.set_defaults(func=lambda args: print(f"wrote {export_lora(args.spm, args.out)}") or 0)


def _load(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {"collapse_zero_padding": True} if args.collapse_zero_padding else {}
    return load_model(args.model, device=args.device, **kwargs)


def run_train(args: argparse.Namespace) -> int:
    anchors = list(args.anchor_prompt) + (read_prompts([], args.anchor_file) if args.anchor_file else [])
    targets = read_prompts([], args.target_file) if args.target_file else []
    config = EraseConfig(args.concept, surrogate=args.surrogate, eta=args.eta, anchor_weight=args.anchor_weight,
                         anchor_prompts=anchors, random_anchors=args.random_anchors,
                         anchors_per_step=args.anchors_per_step, target_prompts=targets, steps=args.train_steps,
                         lr=args.lr, num_inference_steps=args.sampling_steps, guidance_scale=args.guidance_scale,
                         seed=args.seed, checkpoint_every=args.checkpoint_every,
                         height=args.height, width=args.width)
    model = _load(args)
    start = time.perf_counter()
    train_spm(model, config, args.out)
    print(f"wrote {args.out} ({', '.join(config.concepts)}) in {time.perf_counter() - start:.1f} s")
    return 0


def _attach(args):
    model = _load(args)
    spm = load_spm(model, args.spm)
    spm.scale = args.factor
    transport = None if args.no_transport else FacilitatedTransport(model, spm.concepts, factor=args.factor)
    return model, spm, transport


def run_apply(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompt, args.prompt_file)
    model, spm, transport = _attach(args)
    kw = dict(steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size,
              height=args.height, width=args.width)
    with spm.disabled():
        before = generate(model, prompts, **kw)
    after = generate(model, prompts, spm=spm, transport=transport, **kw)
    gammas = transport(prompts).tolist() if transport else [[args.factor] * spm.num_concepts] * len(prompts)
    manifest = []
    for i, (prompt, image) in enumerate(zip(prompts, after)):
        save_png(image, args.out / f"{i:05d}.png")
        manifest.append({"index": i, "prompt": prompt, "seed": args.seed + i, "gamma": gammas[i],
                         "file": f"{i:05d}.png"})
    save_grid(torch.cat([before, after]), args.out / "grid.png", nrow=len(prompts))
    write_text(args.out / "samples.json", json.dumps({"model": str(args.model), "spm": [str(s) for s in args.spm],
                                                      "concepts": spm.concepts, "samples": manifest,
                                                      "grid": "row 1: original, row 2: with SPM"}, indent=2))
    print(f"wrote {len(prompts)} images and grid.png (top: original, bottom: SPM) to {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    targets, others = read_prompts([], args.target_file), read_prompts([], args.preserve_file)
    reward = None
    if args.reward:
        from reward_models import build_reward
        reward = build_reward(args.reward)
    model, spm, transport = _attach(args)
    report = erasure_report(model, spm, transport, targets, others, reward=reward, erase_component=args.component,
                            steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
                            batch_size=args.batch_size, height=args.height, width=args.width)
    report |= {"model": str(args.model), "spm": [str(s) for s in args.spm], "factor": args.factor,
               "transport": not args.no_transport}
    write_text(args.out, json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


