"""Sampling: SDE/ODE dynamics with exact log-probs, σ schedules and batched rollouts."""

from flowalign.sampling.dynamics import DYNAMICS, DynamicsConfig, StepResult, gaussian_log_prob, gaussian_log_ratio, kl_divergence, step
from flowalign.sampling.rollout import (
    RolloutHooks,
    Trajectory,
    concat_trajectories,
    make_generators,
    recompute_log_probs,
    rollout,
)
from flowalign.sampling.schedule import SDEWindow

__all__ = [
    "DYNAMICS",
    "DynamicsConfig",
    "SDEWindow",
    "StepResult",
    "Trajectory",
    "concat_trajectories",
    "gaussian_log_prob",
    "gaussian_log_ratio",
    "kl_divergence",
    "make_generators",
    "recompute_log_probs",
    "rollout",
    "RolloutHooks",
    "step",
]
