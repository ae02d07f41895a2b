"""Can AC-Flow's critic predict the shaped reward of rollouts it has not seen? A held-out check on the toy model.

Samples ``--batches`` iterations of toy rollouts (6 training prompts × 8 samples each, ODE, 10 steps; every batch
has its own prompts), scores them with the shapes verifier, shapes the rewards as AC-Flow does (per-prompt z-score,
clip 3), and trains the critic (``training/auxiliary.py``, as ``configs/toy_ac_flow.yaml`` builds it) on the states
of all but the last ``--heldout`` batches. Prints the mean squared error on the training and the held-out states
by σ band, next to the held-out target's variance (what predicting 0 scores).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python scripts/ac_flow_critic_check.py --epochs 2 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from flowalign.algorithms.advantages import group_advantages  # noqa: E402
from flowalign.models import load_model  # noqa: E402
from flowalign.sampling import DynamicsConfig, make_generators, rollout  # noqa: E402
from flowalign.training.auxiliary import AuxiliaryConfig, AuxiliaryNet, AuxiliaryTrainer  # noqa: E402
from flowalign.training.prompts import load_prompts  # noqa: E402
from flowalign.training.rewarding import decode_and_score  # noqa: E402
from reward_models.base import build_reward  # noqa: E402

PROMPTS, GROUP, STEPS = 6, 8, 10
BANDS = {"all": (0.0, 1.01), "σ > 0.7": (0.7, 1.01), "0.3 ≤ σ ≤ 0.7": (0.3, 0.7001), "σ < 0.3": (0.0, 0.3)}


@torch.no_grad()
def rollout_states(model, batches: int):
    """States (x_σ_i, σ_i, pooled text, shaped reward of the sample), batch after batch, sample-major."""
    geometry, prompts, shapes = model.resolve_geometry(None, None), load_prompts("toy:train"), build_reward("shapes")
    parts = []
    for b in range(batches):
        idx = range(b * PROMPTS, (b + 1) * PROMPTS)
        cond = model.encode_prompts([prompts.prompts[i] for i in idx])
        traj = rollout(model, cond, geometry, num_steps=STEPS, dynamics=DynamicsConfig("ode", 0.0),
                       generators=make_generators(range(b * PROMPTS * GROUP, (b + 1) * PROMPTS * GROUP)),
                       group_size=GROUP)
        meta = [prompts.metadata[i] for i in idx for _ in range(GROUP)]
        scored = decode_and_score(model, shapes, traj.final, geometry, traj.prompts, meta)
        shaped = group_advantages(scored.rewards, traj.group_index, clip=3.0)
        text = model.pooled_text(model.encode_prompts(traj.prompts))
        parts.append((traj.latents[:, :STEPS].flatten(0, 1), traj.sigmas[:STEPS].repeat(traj.batch_size),
                      text.repeat_interleave(STEPS, 0), shaped.repeat_interleave(STEPS)))
    return [torch.cat(p) for p in zip(*parts)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets/toy-sd3")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--heldout", type=int, default=2)
    ap.add_argument("--epochs", type=int, nargs="+", default=[2, 20])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=96)
    args = ap.parse_args(argv)
    if not 0 < args.heldout < args.batches:
        ap.error(f"--heldout must lie in [1, --batches - 1], got {args.heldout} of {args.batches}")
    model = load_model(args.model, device="cpu", torch_dtype=torch.float32, collapse_zero_padding=True)
    latents, sigmas, text, target = rollout_states(model, args.batches)
    n_train = (args.batches - args.heldout) * PROMPTS * GROUP * STEPS
    geometry = model.resolve_geometry(None, None)
    print(f"held-out target variance {float(target[n_train:].var(unbiased=False)):.3f} (what predicting 0 scores)")
    for epochs in args.epochs:
        torch.manual_seed(0)
        net = AuxiliaryNet(model.latent_shape(geometry), text.shape[1], AuxiliaryConfig(hidden=64, lr=args.lr))
        critic, gen = AuxiliaryTrainer(net), torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for batch in torch.randperm(n_train, generator=gen).split(args.batch_size):
                critic.regression_step(latents[batch], sigmas[batch], text[batch], target[batch])
        with torch.no_grad():
            error = (net(latents, sigmas, text) - target) ** 2
        for name, part in (("train", slice(0, n_train)), ("held-out", slice(n_train, None))):
            e, s = error[part], sigmas[part]
            bands = ", ".join(f"{k} {float(e[(s >= lo) & (s < hi)].mean()):.3f}" for k, (lo, hi) in BANDS.items())
            print(f"epochs {epochs:3d} lr {args.lr:g}  {name:8s} MSE: {bands}")


if __name__ == "__main__":
    main()
