"""The ``flowalign erase`` actions (parsed in ``flowalign.commands.erase``); heavy imports live here."""

from __future__ import annotations

import argparse
import json
import time

import torch

from flowalign.commands import resolve_device
from flowalign.commands.sample import read_prompts
from flowalign.erasure import FacilitatedTransport, export_lora, load_spm
from flowalign.erasure.evaluate import erasure_report, generate
from flowalign.erasure.train import EraseConfig, train_spm
from flowalign.models import load_model
from flowalign.utils.io import save_grid, save_png, write_text


def _load(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {"collapse_zero_padding": True} if args.collapse_zero_padding else {}
    return load_model(args.model, device=resolve_device(args.device), **kwargs)


def run_train(args: argparse.Namespace) -> int:
    anchors = list(args.anchor_prompt) + (read_prompts([], args.anchor_file) if args.anchor_file else [])
    targets = read_prompts([], args.target_file) if args.target_file else []
    config = EraseConfig(args.concept, surrogate=args.surrogate, eta=args.eta, anchor_weight=args.anchor_weight,
                         anchor_prompts=anchors, random_anchors=args.random_anchors,
                         anchors_per_step=args.anchors_per_step, target_prompts=targets, steps=args.train_steps,
                         lr=args.lr, num_inference_steps=args.sampling_steps, guidance_scale=args.guidance_scale,
                         seed=args.seed, checkpoint_every=args.checkpoint_every,
                         height=args.height, width=args.width, aliases=args.alias,
                         inflect=not args.no_inflections, empty_anchor=not args.no_empty_anchor)
    model = _load(args)
    start = time.perf_counter()
    train_spm(model, config, args.out)
    print(f"wrote {args.out} ({', '.join(config.concepts)}) in {time.perf_counter() - start:.1f} s")
    return 0


def _attach(args):
    model = _load(args)
    spm = load_spm(model, args.spm)
    spm.scale = args.factor
    transport = None if args.no_transport else FacilitatedTransport(model, spm.phrasings, factor=args.factor)
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


def run_export(args: argparse.Namespace) -> int:
    print(f"wrote {export_lora(args.spm, args.out)}")
    return 0
