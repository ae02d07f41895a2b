"""Dense rewards during a rollout: one-step projections x̂0 of intermediate latents, decoded and scored.

``DenseProjections`` is a ``RolloutHooks.on_step`` callback. After a stochastic step i (σ → σ', x → x') it
projects the new latent to a clean sample with one Euler step of the current policy,

    x̂0 = x' − σ'·v_θ(x', σ', text)            (σ runs 1 = noise → 0 = data; v ≈ ε − x0),

with the rollout's guidance. v_θ(x', σ') is the velocity the rollout computes anyway for its next step (the whole
chunk's rows in one batch), so the projection costs no transformer call: it is made when step i + 1 reports its
velocity. x̂0 goes to a worker thread that decodes it and scores it with the training reward, while the rollout
goes on (the same overlap as the final reward's). ``every``: score every ``every``-th stochastic step of a rollout (1 =
all of them); a step ending at σ' = 0 is never projected (x̂0 = x', whose score is the final reward).
Costs are measured: ``forward_s`` (the projections' arithmetic on the rollout's thread), ``score_s``
(decode + reward in the worker, overlapped), ``wait_s`` (time the rollout's thread waited for the worker after
the rollout ended). The worker keeps only the scores, not the decoded pixels.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.models.base import Conditioning, FlowModel, Geometry
from flowalign.sampling.dynamics import StepResult
from reward_models.base import RewardModel, registered_reward


@dataclass
class DenseRewards:
    """Scores (B, N) float32 (NaN where a step was not projected), ``scored`` (B, N) bool, ``valid`` (B, N)
    (scored and the reward model marked it valid and finite), and the measured costs in seconds."""

    scores: Tensor
    scored: Tensor
    valid: Tensor
    forward_s: float
    score_s: float
    wait_s: float

    @property
    def evaluations(self) -> int:
        return int(self.scored.sum())


class DenseProjections:
    """Collects the projections of one iteration's rollouts (one or more chunks, in the trainer's order).

    ``sigmas``: the rollout's schedule (N+1,); ``metadata``: one dict per sample of the iteration, in rollout
    order (the rows of the chunks, one after another), passed to the reward like the final reward's.
    """

    def __init__(self, model: FlowModel, reward: RewardModel, geometry: Geometry, sigmas: Tensor,
                 every: int, metadata: list[dict] | None = None):
        if every < 1:
            raise ConfigError(f"dense rewards: every must be >= 1, got {every}")
        self.model, self.reward, self.geometry = model, reward, geometry
        self.sigmas = sigmas.float().cpu()
        self.every, self.metadata = every, metadata
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._chunks: list[dict[int, Future]] = []  # per chunk: step -> future of (scores, valid, seconds)
        self._rows: list[int] = []  # rows of each chunk (set at its first stochastic step)
        self._stochastic = 0
        self._pending: int | None = None  # a step whose x' is projected with the next step's velocity
        self.forward_s = 0.0

    def on_step(self, i: int, x: Tensor, result: StepResult, cond: Conditioning, velocity: Tensor) -> None:
        if i == 0:  # a new chunk's rollout starts
            self._chunks.append({})
            self._rows.append(0)
            self._stochastic = 0
            self._pending = None
        if self._pending is not None:  # x is the pending step's x', velocity is v(x', σ') with the rollout's guidance
            self._project(self._pending, x, float(self.sigmas[i]), velocity, cond)
            self._pending = None
        if not bool((result.std > 0).all()):
            return
        k, self._stochastic = self._stochastic, self._stochastic + 1
        self._rows[-1] = x.shape[0]
        if k % self.every or float(self.sigmas[i + 1]) == 0.0:
            return
        self._pending = i

    def _project(self, i: int, x: Tensor, sigma: float, velocity: Tensor, cond: Conditioning) -> None:
        """Score x̂0 = x − σ·v for step ``i`` in the worker."""
        start = time.perf_counter()
        with torch.no_grad():
            x0_hat = x - sigma * velocity.detach()
        self.forward_s += time.perf_counter() - start
        first = sum(self._rows[:-1])
        meta = self.metadata[first : first + x.shape[0]] if self.metadata is not None else [{}] * x.shape[0]
        if len(meta) != x.shape[0]:
            raise ValueError(f"dense rewards: metadata has {len(self.metadata)} entries, the rollout reached "
                             f"{first + x.shape[0]} samples")
        self._chunks[-1][i] = self._pool.submit(self._score, x0_hat, list(cond.prompts), meta)

    def _score(self, x0_hat: Tensor, prompts: list[str], metadata: list[dict]) -> tuple[Tensor, Tensor, float]:
        # imported here: rewarding imports the training config, which imports every algorithm (and so this module)
        from flowalign.training.rewarding import decode_and_score

        start = time.perf_counter()
        scored = decode_and_score(self.model, self.reward, x0_hat, self.geometry, prompts, metadata)
        return scored.rewards, scored.valid, time.perf_counter() - start

    def collect(self, num_steps: int) -> DenseRewards:
        """Wait for every score and assemble them as (B, N) in rollout order; shuts the worker down."""
        start = time.perf_counter()
        try:
            blocks, score_s = [], 0.0
            for futures, rows in zip(self._chunks, self._rows):
                scores = torch.full((rows, num_steps), float("nan"))
                scored = torch.zeros((rows, num_steps), dtype=torch.bool)
                valid = torch.zeros((rows, num_steps), dtype=torch.bool)
                for i, future in futures.items():
                    s, v, seconds = future.result()
                    scores[:, i], scored[:, i], valid[:, i] = s, True, v
                    score_s += seconds
                blocks.append((scores, scored, valid))
        finally:
            self._pool.shutdown(wait=True)
        if not blocks:
            empty = torch.zeros((0, num_steps), dtype=torch.bool)
            return DenseRewards(empty.float(), empty, empty, self.forward_s, score_s, time.perf_counter() - start)
        scores, scored, valid = (torch.cat(parts) for parts in zip(*blocks))
        return DenseRewards(scores, scored, valid, self.forward_s, score_s, time.perf_counter() - start)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def declared_modality(name: str) -> str | None:
    """The modality a registered reward class declares in its class-level ``spec`` (None: set per instance or
    unknown before it is built, e.g. a ``module:Class`` path or a factory)."""
    target = registered_reward(name)
    if not isinstance(target, type):
        return None
    for klass in target.__mro__:
        if "spec" in vars(klass) and klass is not RewardModel:
            return vars(klass)["spec"].modality
    return None


def check_scores_outputs(reward_names: list[str], video: bool, where: str) -> None:
    """Raise ``ConfigError`` when a configured reward cannot score the model's decoded outputs (images, or
    videos when ``video``): checked from the class declarations, before any model or reward loads."""
    kind = "video" if video else "image"
    for name in reward_names:
        modality = declared_modality(name)
        if modality is not None and modality not in ("any", kind):
            raise ConfigError(f"{where}: reward {name!r} scores {modality}s, but the decoded projections are "
                              f"{kind}s; choose a reward that scores {kind}s or set {where}=0")


def check_reward_instance(reward: RewardModel, video: bool, where: str) -> None:
    """The same check on a built reward (its ``spec.modality``)."""
    kind = "video" if video else "image"
    modality = reward.spec.modality
    if modality not in ("any", kind):
        raise ConfigError(f"{where}: reward {reward.spec.name!r} scores {modality}s, but the decoded projections "
                          f"are {kind}s; choose a reward that scores {kind}s or set {where}=0")
