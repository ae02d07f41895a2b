"""Which sampling steps are stochastic (and trained): the SDE window.

Steps are indexed 0..N−1 in sampling order (step i goes σ_i → σ_{i+1}, σ_0 ≈ 1). Outside the window the
sampler takes ODE steps, so a group that shares its initial noise shares every latent up to the window and
branches there (Flow-GRPO-Fast / MixGRPO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowalign.errors import ConfigError


def window_placement_problem(num_steps: int, size: int, low: int, high: int) -> tuple[str, str] | None:
    """Why a window of ``size`` steps cannot start anywhere in [low, high] of ``num_steps``: (``"size"`` or
    ``"range"``, the reason), or None when 1 <= size <= num_steps and 0 <= low <= high <= num_steps − size."""
    if not 1 <= size <= num_steps:
        return "size", f"must lie in [1, num_steps={num_steps}], got {size}"
    if not 0 <= low <= high <= num_steps - size:
        return "range", (f"[{low}, {high}]: the start must satisfy 0 <= low <= high <= num_steps - size = "
                         f"{num_steps - size}")
    return None


@dataclass(frozen=True)
class SDEWindow:
    """Steps ``start .. start + size − 1`` are stochastic; ``size=None`` means all steps from ``start`` on."""

    start: int = 0
    size: int | None = None

    def __post_init__(self) -> None:
        if self.start < 0:
            raise ConfigError(f"SDE window start must be >= 0, got {self.start}")
        if self.size is not None and self.size < 1:
            raise ConfigError(f"SDE window size must be >= 1, got {self.size}")

    def stop(self, num_steps: int) -> int:
        return num_steps if self.size is None else self.start + self.size

    def mask(self, num_steps: int) -> torch.Tensor:
        """(num_steps,) bool: True where the step is stochastic."""
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        if self.stop(num_steps) > num_steps or self.start >= num_steps:
            raise ConfigError(
                f"SDE window [{self.start}, {self.stop(num_steps)}) does not fit in {num_steps} sampling steps"
            )
        mask = torch.zeros(num_steps, dtype=torch.bool)
        mask[self.start : self.stop(num_steps)] = True
        return mask

    @staticmethod
    def random(num_steps: int, size: int, *, low: int = 0, high: int | None = None,
               generator: torch.Generator | None = None) -> SDEWindow:
        """A window of ``size`` steps starting uniformly in [low, high] (default: anywhere it fits)."""
        high = num_steps - size if high is None else high
        if problem := window_placement_problem(num_steps, size, low, high):
            field, why = problem
            raise ConfigError(f"cannot place an SDE window of {size} steps with start in [{low}, {high}] in "
                              f"{num_steps} steps: its {field} {why}")
        start = int(torch.randint(low, high + 1, (1,), generator=generator))
        return SDEWindow(start, size)
