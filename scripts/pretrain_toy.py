"""Pretrain the shapes-world toy SD3 pipeline and save it with ``save_pretrained``.

The shipped model (assets/README.md): 4000 flow steps at a constant learning rate:

    HF_HUB_OFFLINE=1 python scripts/pretrain_toy.py --out assets/toy-sd3 --run-dir runs/toy

Continuing an exported pipeline for 4000 more steps with a foreground-weighted loss and a cosine decay (the
stronger model measured in docs/training.md, "A better-trained toy model"; not shipped):

    HF_HUB_OFFLINE=1 python scripts/pretrain_toy.py --init-from assets/toy-sd3 --steps 8000 \
        --foreground-weight 4 --lr-schedule cosine --out runs/toy-stage2/final --run-dir runs/toy-stage2

Resumes from RUN_DIR/checkpoint.json + checkpoint.safetensors when present (same seed and architecture required).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowalign.toy.pretrain import LR_SCHEDULES, PretrainConfig, Pretrainer  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    d = PretrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="assets/toy-sd3", help="pipeline folder written at the end")
    ap.add_argument("--run-dir", default="runs/toy", help="checkpoint, log and snapshots")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--vae-steps", type=int, default=d.vae_steps)
    ap.add_argument("--steps", type=int, default=d.flow_steps,
                    help="flow-matching steps in all (with --init-from: including the source's)")
    ap.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                    help="flow learning rate after warmup: constant, or a cosine decay to 0 at --steps")
    ap.add_argument("--init-from", default=None,
                    help="an exported toy pipeline folder: continue its flow phase with a fresh optimiser")
    ap.add_argument("--batch", type=int, default=d.flow_batch)
    ap.add_argument("--lr", type=float, default=d.flow_lr)
    ap.add_argument("--snapshot-every", type=int, default=d.snapshot_every)
    ap.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    ap.add_argument("--log-every", type=int, default=d.log_every)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--foreground-weight", type=float, default=d.foreground_weight,
                    help="extra flow-loss weight on latent pixels on or next to a shape (0: plain MSE)")
    ap.add_argument("--patch-size", type=int, default=d.arch.patch_size, choices=(1, 2),
                    help="transformer patch size (2: each token covers 4x4 image pixels, 1: 2x2)")
    ap.add_argument("--min-size", type=int, default=d.scenes.min_size, help="smallest shape side (pixels)")
    ap.add_argument("--max-size", type=int, default=d.scenes.max_size, help="largest shape side (pixels)")
    ap.add_argument("--gap", type=int, default=d.scenes.gap, help="free pixels kept between shapes")
    a = ap.parse_args(argv)
    cfg = PretrainConfig(seed=a.seed, vae_steps=a.vae_steps, flow_steps=a.steps, flow_batch=a.batch, flow_lr=a.lr,
                         snapshot_every=a.snapshot_every, checkpoint_every=a.checkpoint_every,
                         log_every=a.log_every, threads=a.threads, foreground_weight=a.foreground_weight,
                         lr_schedule=a.lr_schedule, init_from=a.init_from,
                         arch=replace(d.arch, patch_size=a.patch_size),
                         scenes=replace(d.scenes, min_size=a.min_size, max_size=a.max_size, gap=a.gap))
    log_file = Path(a.run_dir) / "log.jsonl"
    Path(a.run_dir).mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        print(line, flush=True)
        with open(log_file, "a") as fh:
            fh.write(line + "\n")

    t0 = time.time()
    trainer = Pretrainer(cfg, a.run_dir, log=log)
    trainer.run()
    trainer.save_checkpoint()
    out = trainer.export(a.out)
    log(f'{{"saved": "{out}", "wall_s": {time.time() - t0:.1f}}}')


if __name__ == "__main__":
    main()
