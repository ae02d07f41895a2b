"""The method interface: every training method is one ``Algorithm`` on the shared ``Trainer``.

A method is an ``Algorithm`` subclass registered with ``@register_algorithm("name")``; its config is a
dataclass subclass of ``AlgorithmConfig`` (selected in YAML by ``algorithm.name``). A method states three things:

- **what it samples**: online rollouts through ``Trainer.sample_iteration`` (optionally with ``RolloutHooks``
  for guidance or per-step evaluation), or offline examples through ``Trainer.dataset_batch`` (set
  ``uses_dataset = True``; the trainer then loads ``data.dataset``);
- **which extra networks it trains**: built in ``setup(trainer)`` (auxiliary nets with their own optimizers,
  snapshot pools), saved through ``state_dict``/``load_state_dict``, which go into every checkpoint;
- **how it updates**: ``train_iteration(trainer, it) -> metrics``, using the trainer's services for the shared
  parts: ``trainer.optimizer``/``trainer.params`` (the adapter), ``apply_update`` (multi-process gradient
  averaging, clipping, the step and the EMA), ``reference_step``/``reference`` (the adapter disabled),
  ``skip`` (an update skipped with its reason), ``reward_metrics``.

The trainer owns everything else: model loading, LoRA, rewards, held-out evaluation, EMA, logging, samples
counted, checkpoints and exact resume. docs/architecture.md walks through the interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from flowalign.errors import ConfigError

if TYPE_CHECKING:
    from flowalign.training.config import TrainConfig
    from flowalign.training.trainer import Trainer


@dataclass
class AlgorithmConfig:
    """Base of the method configs; ``name`` selects the registered method."""

    variants: ClassVar[dict[str, type]] = {}
    name: str = "grpo"


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register_algorithm(name: str):
    """Class decorator: register an Algorithm and its ``Config`` under ``name``."""

    def decorate(cls: type[Algorithm]) -> type[Algorithm]:
        ALGORITHMS[name] = cls
        AlgorithmConfig.variants[name] = cls.Config
        return cls

    return decorate


class Algorithm(ABC):
    """One training method (see the module docstring)."""

    Config: ClassVar[type[AlgorithmConfig]] = AlgorithmConfig
    #: whether the method reads offline examples (``data.dataset``) instead of, or besides, rollouts
    uses_dataset: ClassVar[bool] = False

    def __init__(self, config: AlgorithmConfig):
        self.config = config

    def validate(self, config: TrainConfig) -> None:
        """Cheap checks of the whole run config, before any model loads; raise ``ConfigError``."""
        if self.uses_dataset and not config.data.dataset:
            raise ConfigError(f"algorithm {config.algorithm.name!r} trains on an offline dataset: set "
                              "data.dataset (a .jsonl manifest of prompt/image lines, or toy:sft)")

    def load_dataset(self, config: TrainConfig):
        """The offline dataset ``data.dataset`` names, read once before any model loads (the trainer's
        ``dataset``): an image manifest or built-in set here; a method that needs more of each row overrides it."""
        from flowalign.data import load_image_dataset

        return load_image_dataset(config.data.dataset, skip_bad=config.data.skip_bad)

    def setup(self, trainer: Trainer) -> None:
        """Build extra networks and state once the model, adapter and optimizer exist (before a resume)."""

    @abstractmethod
    def train_iteration(self, trainer: Trainer, it: int) -> dict[str, float]:
        """One iteration: sample, update, return scalar metrics (``trainer.skip`` for a skipped update)."""

    def state_dict(self) -> dict:
        """Everything a resume needs besides the adapter and its optimizer (tensors, numbers, strings)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


def build_algorithm(config: AlgorithmConfig) -> Algorithm:
    if config.name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {config.name!r}; expected one of {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[config.name](config)
