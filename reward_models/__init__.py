"""Reward models: a pluggable interface (``RewardModel``), a registry and built-in image/video rewards.

Importing the package registers the built-ins: ``jpeg_compressibility``, ``jpeg_incompressibility``,
``clipscore``, ``pickscore``, ``hpsv2``, ``aesthetic``, ``imagereward``, ``video``, ``composite``, ``callable`` (and
``shapes``/``shapes_soft`` when ``reward_models/shapes.py`` exists).
"""

from __future__ import annotations

import importlib
import importlib.util

from reward_models.base import RewardModel, RewardOutput, RewardSpec, build_reward, register_reward, registered_rewards
from reward_models.callable_reward import CallableReward
from reward_models.composite import CompositeReward
from reward_models import aesthetic, clipscore, hpsv2, imagereward, jpeg, pickscore, video  # noqa: F401  (registration)

if importlib.util.find_spec("reward_models.shapes") is not None:
    from reward_models import shapes  # noqa: F401

__all__ = ["CallableReward", "CompositeReward", "RewardModel", "RewardOutput", "RewardSpec", "build_reward",
           "register_reward", "registered_rewards"]
