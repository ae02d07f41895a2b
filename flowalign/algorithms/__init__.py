"""Training methods as plug-ins on one shared core (see ``base.Algorithm``)."""

from flowalign.algorithms import grpo, grpo_guard  # noqa: F401  (registration)
from flowalign.algorithms.base import ALGORITHMS, Algorithm, AlgorithmConfig, PolicyBatch, build_algorithm, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig", "PolicyBatch", "build_algorithm", "register_algorithm"]
