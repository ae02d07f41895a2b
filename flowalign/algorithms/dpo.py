"""Diffusion-DPO for flow-matching models, offline (a preference dataset) or online (pairs ranked by a reward).

The loss (``flowalign.training.preference``; the flow-matching form is ours, from Diffusion-DPO's ε-form): winner w
and loser l (latents x0) are re-noised with one σ and one ε per pair, e(x) = mean ‖v(x_σ) − (ε − x0)‖², and

    L = −log sigmoid(−β·((e_θ(w) − e_ref(w)) − (e_θ(l) − e_ref(l)))),

the reference being the base model (the LoRA adapter disabled), with the conditional velocity (no guidance).

What it samples. ``source: dataset``: ``batch_size`` rows with a loser from the preference manifest ``data.dataset``
(``flowalign.data.preference``; winner-only rows are skipped), drawn without replacement while possible; both
images count as samples seen. ``source: online``: the run's group rollouts (``sampling``), scored by the reward;
in every group the samples are ranked by reward and the k-th best is paired with the k-th worst for
k < ``pairs_per_group`` (default group_size // 2) when its reward is strictly higher; the final latents are the
images. Extra networks: none. How it updates: ``preference_update`` (``optim.steps_per_iteration`` steps).

β is in velocity-error units. Diffusion-DPO's β_ε ≈ 5000 on mean ε-errors; at a given σ the ε-error is
(1 − σ)²·(the velocity error) (ε̂ − ε = (1 − σ)·(v̂ − v*)), and E[(1 − σ)²] ≈ 0.29 under the logit-normal σ
density, so β_v ≈ 1500; we default to 1000 and record every recipe's value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flowalign.algorithms.base import Algorithm, AlgorithmConfig, register_algorithm
from flowalign.errors import ConfigError
from flowalign.training.flow_matching import SigmaSamplingFields, shared_noise_pair
from flowalign.training.preference import preference_update
from flowalign.training.seeding import derived_generator

if TYPE_CHECKING:
    from flowalign.training.config import TrainConfig
    from flowalign.training.trainer import Trainer

SOURCES = ("dataset", "online")


def check_preference_knobs(cfg) -> None:
    """β > 0, batch_size >= 1 and the σ sampling knobs, shared by DPO and SePPO configs (errors name the key)."""
    if not cfg.beta > 0:
        raise ConfigError(f"algorithm.beta must be > 0 (velocity-error units, e.g. 1000), got {cfg.beta}")
    cfg.check_sigma_sampling()
    if cfg.batch_size < 1:
        raise ConfigError(f"algorithm.batch_size must be >= 1, got {cfg.batch_size}")


@dataclass
class DPOConfig(SigmaSamplingFields, AlgorithmConfig):
    """``source``: ``dataset`` or ``online``; ``beta``: β (> 0, velocity units); ``batch_size``: pairs per
    iteration and process (offline); ``pairs_per_group``: online pairs per group (None: group_size // 2);
    the training σ density as ``SigmaSamplingFields``."""

    name: str = "dpo"
    source: str = "dataset"
    beta: float = 1000.0
    batch_size: int = 24
    pairs_per_group: int | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"algorithm.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        check_preference_knobs(self)
        if self.pairs_per_group is not None and self.pairs_per_group < 1:
            raise ConfigError(f"algorithm.pairs_per_group must be >= 1 or null, got {self.pairs_per_group}")


def ranked_pairs(rewards: Tensor, group_size: int, pairs_per_group: int) -> tuple[Tensor, Tensor]:
    """Winner and loser indices (into the flat (B,) ``rewards``, groups of ``group_size`` consecutive samples):
    per group the k-th best with the k-th worst, k < min(pairs_per_group, group_size // 2), kept when strictly
    better. Ties in rank are broken by sample order (stable sort)."""
    winners, losers = [], []
    k = min(pairs_per_group, group_size // 2)
    for first in range(0, len(rewards), group_size):
        group = rewards[first : first + group_size]
        order = torch.sort(group, descending=True, stable=True).indices
        for j in range(k):
            w, lose = int(order[j]), int(order[len(group) - 1 - j])
            if group[w] > group[lose]:
                winners.append(first + w)
                losers.append(first + lose)
    return torch.tensor(winners, dtype=torch.long), torch.tensor(losers, dtype=torch.long)


@register_algorithm("dpo")
class DPO(Algorithm):
    Config = DPOConfig
    uses_dataset = True

    def validate(self, config: TrainConfig) -> None:
        if self.config.source == "dataset":
            super().validate(config)
        if not config.lora.enabled:
            raise ConfigError("dpo's reference is the base model (the adapter disabled): set lora.enabled: true")

    def load_dataset(self, config: TrainConfig):
        """``source: dataset``: the preference manifest (winners and losers), with at least one pair."""
        if self.config.source != "dataset":
            return super().load_dataset(config)
        from flowalign.data.preference import load_preference_dataset

        pairs = load_preference_dataset(config.data.dataset, skip_bad=config.data.skip_bad)
        self.pair_rows = pairs.pair_indices()
        if not self.pair_rows:
            raise ConfigError(f"data.dataset {config.data.dataset!r} holds no row with a loser; Diffusion-DPO "
                              "needs pairs (use sft or seppo for winner-only data)")
        return pairs

    def train_iteration(self, trainer: Trainer, it: int) -> dict[str, float]:
        cfg, model = self.config, trainer.model
        metrics: dict[str, float] = {}
        if cfg.source == "dataset":
            prompts, winners, losers = self._dataset_pairs(trainer, it)
        else:
            traj, scored, _ = trainer.sample_iteration(it)
            metrics.update(trainer.reward_metrics(scored))
            if not trainer.on_every_process(bool(scored.valid.all())):
                return trainer.skip(it, "non-finite or invalid rewards", metrics)
            group = trainer.config.sampling.group_size
            w, lose = ranked_pairs(scored.rewards.float(), group, cfg.pairs_per_group or group // 2)
            final = traj.final.to(trainer.device)
            prompts, winners, losers = [traj.prompts[i] for i in w.tolist()], final[w], final[lose]
        gen = derived_generator(trainer.config.seed, "dpo-noise", it, trainer.rank)
        sigma, noise = (shared_noise_pair(winners, losers, gen, cfg.sigma_density) if len(prompts)
                        else (winners.new_zeros(0), winners))
        trained = preference_update(trainer, winners, losers, prompts, sigma, noise, cfg.beta, "dpo",
                                    trainer.reference)
        if trained is None:
            return trainer.skip(it, "non-finite loss or gradient", metrics)
        metrics.update(trained)
        return metrics

    def _dataset_pairs(self, trainer: Trainer, it: int):
        """``batch_size`` (prompt, winner latent, loser latent) from the manifest's rows with a loser."""
        n, rows = self.config.batch_size, self.pair_rows
        gen = derived_generator(trainer.config.seed, "dataset", it, trainer.rank)
        order = torch.cat([torch.randperm(len(rows), generator=gen) for _ in range(-(-n // len(rows)))])[:n]
        index = [rows[i] for i in order.tolist()]
        size = (trainer.geometry.height, trainer.geometry.width)
        pairs = trainer.dataset
        pixels = torch.cat([pairs.images(index, size), pairs.losers(index, size)]).to(trainer.device)
        trainer.count_samples(2 * n)
        with torch.no_grad():
            latents = trainer.model.encode_pixels(pixels, trainer.geometry)
        return [pairs.prompts[i] for i in index], latents[:n], latents[n:]
