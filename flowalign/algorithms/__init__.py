"""Training methods as plug-ins on one shared core (see ``base.Algorithm`` and docs/architecture.md)."""

from flowalign.algorithms.base import ALGORITHMS, Algorithm, AlgorithmConfig, build_algorithm, register_algorithm
from flowalign.algorithms.policy_gradient import PolicyBatch, PolicyGradient
from flowalign.algorithms import grpo, grpo_guard, sft  # noqa: F401,E402  (registration)

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig", "PolicyBatch", "PolicyGradient", "build_algorithm",
           "register_algorithm"]
