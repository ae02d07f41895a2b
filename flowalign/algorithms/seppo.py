"""SePPO (semi-policy preference optimization) for flow-matching models: winners only, no reward model.

SePPO publishes no training code; this flow-matching form is OUR reconstruction (docs/methods.md, "SePPO"):

- a pool of earlier adapter snapshots (``SnapshotPool``: entry 0 is the base model, then at most ``pool_size``
  snapshots taken every ``snapshot_every`` iterations, the oldest dropped first; the pool is saved in every
  checkpoint, so its size on disk is bounded by (pool_size + 1) adapters);
- each iteration one reference is drawn from the pool (``reference_draw``: ``uniform`` over all entries — the
  paper's choice —, ``latest`` or ``initial`` for the ablation) from a generator of (run seed, iteration), so a
  resumed run draws the same reference;
- the reference generates one sample per winner (``reference_sampler``: ``ode``, the deterministic Euler sampler,
  or ``rollout``, the run's ``sampling`` dynamics with no SDE window; the run's steps and guidance either way; its
  final latent), which takes the loser's place;
- the DPO loss on flow-matching errors with one shared σ and ε per pair, the reference being the drawn entry, and
  the anchor-based criterion (AAF) choosing the sign of the reference sample's term per pair
  (``flowalign.training.preference``).

What it samples: ``batch_size`` winners from ``data.dataset`` (any image manifest, a preference manifest's
winners, or ``toy:sft``) plus as many reference samples (both count as samples seen). Logged: ``train/aaf_rate``
(fraction of pairs pushed away), ``train/implicit_accuracy`` (the policy prefers the winner over the reference
sample), ``seppo/reference_index`` and ``seppo/pool_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from flowalign.algorithms.base import Algorithm, AlgorithmConfig, register_algorithm
from flowalign.algorithms.dpo import check_preference_knobs
from flowalign.errors import ConfigError
from flowalign.sampling import DynamicsConfig, make_generators, rollout
from flowalign.training.flow_matching import SigmaSamplingFields, shared_noise_pair
from flowalign.training.preference import preference_update
from flowalign.training.reference import DRAW_RULES, SnapshotPool
from flowalign.training.seeding import derive_seed, derived_generator

if TYPE_CHECKING:
    from flowalign.training.trainer import Trainer

REFERENCE_SAMPLERS = ("ode", "rollout")


@dataclass
class SePPOConfig(SigmaSamplingFields, AlgorithmConfig):
    """``beta``: β (> 0, velocity units, as DPO); ``batch_size``: winners per iteration and process;
    ``pool_size``: snapshots kept besides the base (>= 1); ``snapshot_every``: iterations between snapshots (>= 1);
    ``reference_draw``: ``uniform``, ``latest`` or ``initial``; ``reference_sampler``: ``ode`` or ``rollout``
    (the run's SDE dynamics on every step); ``criterion``: ``aaf`` (SePPO) or ``dpo``
    (always push the reference sample away: the ablation without AAF); σ density as ``SigmaSamplingFields``."""

    name: str = "seppo"
    beta: float = 1000.0
    batch_size: int = 24
    pool_size: int = 8
    snapshot_every: int = 10
    reference_draw: str = "uniform"
    reference_sampler: str = "ode"
    criterion: str = "aaf"

    def __post_init__(self) -> None:
        check_preference_knobs(self)
        if self.pool_size < 1:
            raise ConfigError(f"algorithm.pool_size must be >= 1 (snapshots kept besides the base), "
                              f"got {self.pool_size}")
        if self.snapshot_every < 1:
            raise ConfigError(f"algorithm.snapshot_every must be >= 1 iterations, got {self.snapshot_every}")
        if self.reference_draw not in DRAW_RULES:
            raise ConfigError(f"algorithm.reference_draw must be one of {', '.join(DRAW_RULES)}, "
                              f"got {self.reference_draw!r}")
        if self.reference_sampler not in REFERENCE_SAMPLERS:
            raise ConfigError(f"algorithm.reference_sampler must be one of {', '.join(REFERENCE_SAMPLERS)}, "
                              f"got {self.reference_sampler!r}")
        if self.criterion not in ("aaf", "dpo"):
            raise ConfigError(f"algorithm.criterion must be 'aaf' or 'dpo', got {self.criterion!r}")


@register_algorithm("seppo")
class SePPO(Algorithm):
    Config = SePPOConfig
    uses_dataset = True

    def setup(self, trainer: Trainer) -> None:
        self.pool = SnapshotPool(trainer.model.trainable_module(), self.config.pool_size)

    def draw_reference(self, trainer: Trainer, it: int) -> int:
        """The pool entry used as reference at iteration ``it`` (the same on every process and after a resume)."""
        return self.pool.draw(derived_generator(trainer.config.seed, "seppo-reference", it), self.config.reference_draw)

    @torch.no_grad()
    def reference_samples(self, trainer: Trainer, prompts: list[str], it: int) -> torch.Tensor:
        """One sample per prompt from the loaded reference: final latents (B, …), float32."""
        s, model = trainer.config.sampling, trainer.model
        use_cfg = model.uses_cfg(s.guidance_scale)
        cond = model.encode_prompts(prompts, trainer.config.data.negative_prompt if use_cfg else None,
                                    with_negative=use_cfg)
        seeds = [derive_seed(trainer.config.seed, "seppo-sample", it, trainer.rank, j) for j in range(len(prompts))]
        dynamics = trainer.dynamics if self.config.reference_sampler == "rollout" else DynamicsConfig("ode", 0.0)
        traj = rollout(model, cond, trainer.geometry, num_steps=s.num_steps, dynamics=dynamics,
                       generators=make_generators(seeds, trainer.device), guidance_scale=s.guidance_scale)
        trainer.count_samples(len(prompts))
        return traj.final.to(trainer.device).float()

    def train_iteration(self, trainer: Trainer, it: int) -> dict[str, float]:
        cfg = self.config
        index = self.draw_reference(trainer, it)
        prompts, pixels, _ = trainer.dataset_batch(cfg.batch_size, it)
        with torch.no_grad():
            winners = trainer.model.encode_pixels(pixels, trainer.geometry)
        with self.pool.loaded(index):
            samples = self.reference_samples(trainer, prompts, it)
        gen = derived_generator(trainer.config.seed, "seppo-noise", it, trainer.rank)
        sigma, noise = shared_noise_pair(winners, samples, gen, cfg.sigma_density)
        metrics = {"seppo/reference_index": float(index), "seppo/pool_size": float(len(self.pool))}
        trained = preference_update(trainer, winners, samples, prompts, sigma, noise, cfg.beta, cfg.criterion,
                                    lambda: self.pool.loaded(index))
        if trained is None:
            return trainer.skip(it, "non-finite loss or gradient", metrics)
        if (it + 1) % cfg.snapshot_every == 0:
            self.pool.add(it + 1)
        metrics.update(trained)
        return metrics

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"pool"}:
            raise ValueError(f"SePPO state must hold 'pool', got keys {sorted(state)}")
        self.pool.load_state_dict(state["pool"])
