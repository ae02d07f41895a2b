"""Fixed-seed short training runs on the toy model, fingerprinted: a SHA-256 of every trained parameter and of
the logged metrics (timings and sample counts left out) per variant.

Run it from two checkouts on one machine with one thread to show that a refactoring left the numbers unchanged:

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python scripts/check_bitexact.py /tmp/fingerprint [variant ...]

Exact equality is meaningful only on the same machine, library versions and thread count.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import torch

from flowalign.config import load_config
from flowalign.training.config import TrainConfig
from flowalign.training.trainer import Trainer

SHORT_RUN = ["iterations=3", "sampling.prompts_per_iteration=2", "sampling.group_size=4",
             "sampling.rollout_batch_size=8", "sampling.num_steps=6", "sampling.sde_window_size=3",
             "sampling.sde_window_range=[0,2]", "optim.micro_batch_size=5", "eval.every=2", "eval.max_prompts=3",
             "eval.samples_per_prompt=1", "eval.num_steps=4", "checkpoint.every=2", "logging.progress_bar=false",
             "logging.report=false", "logging.tensorboard=false"]
VARIANTS = {
    "guard": [],
    "grpo_kl": ["algorithm.name=grpo", "algorithm.clip_range=1e-4", "algorithm.kl_beta=0.01"],
    "recompute_epochs": ["optim.old_policy=recompute", "optim.inner_epochs=2", "sampling.train_step_fraction=0.6"],
    "global_std_no_ema": ["algorithm.std_scope=batch", "ema.enabled=false", "algorithm.reweight=none"],
}
UNSTABLE = ("speed/", "samples/")


def fingerprint(trainer: Trainer, metrics_file: str) -> tuple[str, str]:
    params = hashlib.sha256()
    for name, p in sorted(trainer.model.transformer.named_parameters()):
        if p.requires_grad:
            params.update(name.encode())
            params.update(p.detach().cpu().numpy().tobytes())
    with open(metrics_file) as f:
        rows = [{k: v for k, v in json.loads(line).items() if not k.startswith(UNSTABLE)} for line in f]
    return params.hexdigest()[:16], hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for the runs")
    parser.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)} (default: all)")
    args = parser.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; expected any of {', '.join(VARIANTS)}")
    torch.set_num_threads(1)
    for name, extra in VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        config = load_config(TrainConfig, "configs/toy_grpo_guard.yaml",
                             SHORT_RUN + extra + [f"output_dir={args.out}/{name}"])
        trainer = Trainer(config, overwrite=True)
        trainer.run()
        params, metrics = fingerprint(trainer, f"{args.out}/{name}/logs/metrics.jsonl")
        print(f"{name:20s} params {params}  metrics {metrics}", flush=True)


if __name__ == "__main__":
    main()
