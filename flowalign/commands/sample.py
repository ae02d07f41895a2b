"""``flowalign sample``: generate images (or video frames) from a pipeline with a chosen dynamics."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from flowalign.commands import DEVICE_HELP, DTYPE_NAMES, resolve_device
from flowalign.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate images or videos from a pipeline",
                              description="Generate images (or video frames) with an ODE or SDE sampler; saves PNGs "
                                          "and a grid.")
    p.add_argument("--model", required=True, help="pipeline folder or hub id (SD3, Flux or Wan)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompt-file", type=Path, help="a text file with one prompt per line")
    p.add_argument("--negative-prompt", default=None, help="negative prompt for classifier-free guidance")
    p.add_argument("--num-per-prompt", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dynamics", default="ode", help="ode (default), flow_sde, dance_sde or cps (docs/sampling.md)")
    p.add_argument("--noise-level", type=float, default=0.7)
    p.add_argument("--sde-window", type=int, nargs=2, metavar=("START", "SIZE"), default=None)
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--num-frames", type=int, help="video models only")
    p.add_argument("--image", default=None,
                   help="image-to-video models: the conditioning image (a file), or a .jsonl of prompt/image lines")
    p.add_argument("--lora", type=Path, default=None, help="a trained adapter folder (e.g. runs/x/lora) to load")
    p.add_argument("--control", default=None, metavar="LABEL",
                   help="a CTRL control class to condition on (needs the control file; docs/methods.md)")
    p.add_argument("--control-file", type=Path, default=None,
                   help="the control file (default: control.safetensors beside the --lora folder)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
    p.add_argument("--out", type=Path, default=Path("outputs/samples"))
    p.set_defaults(func=run)


def read_prompts(prompts: list[str], prompt_file: Path | None) -> list[str]:
    prompts = list(prompts)
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise ConfigError(f"prompt file {str(prompt_file)!r} does not exist")
        prompts += [line.strip() for line in prompt_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("no prompts: pass --prompt TEXT or --prompt-file FILE (one prompt per line)")
    return prompts


def run(args: argparse.Namespace) -> int:
    import contextlib

    import torch

    from flowalign.models import load_model
    from flowalign.sampling import DynamicsConfig, SDEWindow, make_generators, rollout
    from flowalign.utils.io import save_grid, save_png, write_text

    prompts = read_prompts(args.prompt, args.prompt_file)
    device = resolve_device(args.device)
    if args.num_per_prompt < 1 or args.batch_size < 1:
        raise ConfigError("--num-per-prompt and --batch-size must be >= 1")
    dynamics = DynamicsConfig(args.dynamics, args.noise_level if args.dynamics != "ode" else 0.0)
    window = SDEWindow(*args.sde_window) if args.sde_window else None
    extra = {"image": args.image} if args.image is not None else {}
    model = load_model(args.model, device=device, torch_dtype=getattr(torch, args.dtype), **extra)
    geometry = model.resolve_geometry(args.height, args.width, args.num_frames)
    if args.lora is not None:
        model.pipeline.load_lora_weights(str(args.lora))
    control = None
    if args.control is not None:
        from flowalign.training.control import control_for_sampling

        control = control_for_sampling(model.transformer, args.control, args.control_file, args.lora)
    use_cfg = model.uses_cfg(args.guidance_scale)
    expanded = [p for p in prompts for _ in range(args.num_per_prompt)]
    seeds = [args.seed + i for i in range(len(expanded))]
    pixels = []
    for start in range(0, len(expanded), args.batch_size):
        batch_prompts = expanded[start : start + args.batch_size]
        cond = model.encode_prompts(batch_prompts, args.negative_prompt, with_negative=use_cfg)
        requested = control(len(batch_prompts)) if control is not None else contextlib.nullcontext()
        with requested:
            traj = rollout(model, cond, geometry, num_steps=args.steps, dynamics=dynamics, window=window,
                           generators=make_generators(seeds[start : start + args.batch_size], device),
                           guidance_scale=args.guidance_scale)
        with torch.no_grad():
            pixels.append(model.decode(traj.final, geometry).cpu())
    images = torch.cat(pixels)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = []
    for i, (prompt, seed, item) in enumerate(zip(expanded, seeds, images)):
        if item.ndim == 4:  # video (T, 3, H, W): one PNG per frame
            paths = [f"{i:05d}/frame_{t:03d}.png" for t in range(item.shape[0])]
            for path, frame in zip(paths, item):
                save_png(frame, args.out / path)
        else:
            paths = [f"{i:05d}.png"]
            save_png(item, args.out / paths[0])
        manifest.append({"index": i, "prompt": prompt, "seed": seed, "files": paths})
    grid = images if images.ndim == 4 else images.flatten(0, 1)
    save_grid(grid, args.out / "grid.png", nrow=args.num_per_prompt if images.ndim == 4 else images.shape[1])
    write_text(args.out / "samples.json", json.dumps({"model": str(args.model), "steps": args.steps,
                                                      "dynamics": dataclasses.asdict(dynamics),
                                                      "guidance_scale": args.guidance_scale,
                                                      "lora": None if args.lora is None else str(args.lora),
                                                      "control": args.control,
                                                      "samples": manifest}, indent=2))
    wrote = "samples.json"
    if images.ndim == 4:  # a score manifest (`flowalign reward score --manifest`): one row per image
        write_text(args.out / "samples.jsonl", "".join(
            json.dumps({"image": m["files"][0], "prompt": m["prompt"], "seed": m["seed"]}) + "\n" for m in manifest))
        wrote += ", samples.jsonl"
    print(f"wrote {len(manifest)} samples, grid.png and {wrote} to {args.out}")
    return 0
