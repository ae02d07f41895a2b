"""Deterministic seeds derived from (run seed, purpose, iteration, process, index).

Every random choice of a run is drawn from a generator seeded this way, never from a running global RNG, so
resuming at iteration k reproduces exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def derived_generator(*parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(derive_seed(*parts))
