"""The plug-in interface every online RL method implements on top of the shared trainer.

A method is an ``Algorithm`` subclass registered under a name with ``@register_algorithm("name")``; its
config is a dataclass subclass of ``AlgorithmConfig`` (selected in YAML by ``algorithm.name``). The trainer
owns sampling, rewards, batching, optimisation, logging and checkpoints; a method supplies:

- ``advantages(rewards, trajectory, valid)``: (B,) or (B, N) advantages from the rewards;
- ``loss(batch)``: the scalar loss of one micro-batch of (sample, step) pairs and its metrics;
- optional hooks (``on_rollout``) and extra state (``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.sampling.dynamics import StepResult
from flowalign.sampling.rollout import Trajectory


@dataclass
class AlgorithmConfig:
    """Base of the method configs; ``name`` selects the registered method."""

    variants: ClassVar[dict[str, type]] = {}
    name: str = "grpo"


@dataclass
class PolicyBatch:
    """One micro-batch of K (sample, step) transitions, new quantities with gradients.

    ``new``: StepResult of the current policy (mean (K, ...) with grad, std (K,), log_prob (K,), sample = x').
    ``old_mean`` (K, ...), ``old_log_prob`` (K,): from the rollout. ``advantages`` (K,).
    ``ref_mean`` (K, ...) or None: reference policy's mean (for KL). ``sigma``/``sigma_next`` (K,).
    ``step_idx`` (K,): which sampling step each pair is (for per-step statistics).
    """

    new: StepResult
    old_mean: Tensor
    old_log_prob: Tensor
    advantages: Tensor
    sigma: Tensor
    sigma_next: Tensor
    step_idx: Tensor
    reduction: str
    ref_mean: Tensor | None = None


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str):
    """Class decorator: register an Algorithm and its ``Config`` under ``name``."""

    def decorate(cls: type[Algorithm]) -> type[Algorithm]:
        ALGORITHMS[name] = cls
        AlgorithmConfig.variants[name] = cls.Config
        return cls

    return decorate


class Algorithm(ABC):
    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    #: whether the trainer must compute the reference policy's mean for each pair
    needs_reference: bool = False

    def __init__(self, config: AlgorithmConfig):
        self.config = config

    @abstractmethod
    def advantages(self, rewards: Tensor, trajectory: Trajectory, valid: Tensor) -> Tensor:
        """(B,) or (B, N) advantages for the trajectory's samples (0 where ``valid`` is False)."""

    @abstractmethod
    def loss(self, batch: PolicyBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss of one micro-batch (mean over its pairs) and detached metrics."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


def build_algorithm(config: AlgorithmConfig) -> Algorithm:
    if config.name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {config.name!r}; expected one of {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[config.name](config)

