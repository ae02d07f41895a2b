"""Training methods as plug-ins on one shared core (see ``base.Algorithm`` and docs/architecture.md).

Every module of this package is imported here, so that each method's ``@register_algorithm`` runs: adding a
method is adding one file.
"""

import importlib
import pkgutil

from flowalign.algorithms.base import ALGORITHMS, Algorithm, AlgorithmConfig, build_algorithm, register_algorithm
from flowalign.algorithms.policy_gradient import PolicyBatch, PolicyGradient

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig", "PolicyBatch", "PolicyGradient", "build_algorithm",
           "register_algorithm"]
