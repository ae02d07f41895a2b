"""Access to a reference model: the base model (the LoRA adapter disabled) or an earlier adapter snapshot.

``adapter_disabled(transformer)`` runs a block with every LoRA layer switched off and restores the adapters'
on/off state and every parameter's ``requires_grad`` flag on exit (peft's own toggle changes both).

``SnapshotPool`` keeps copies (on the CPU) of the trainable tensors of a module, SePPO-style: entry 0 is the
base model — the adapter disabled, with any trainable tensor outside the LoRA layers (e.g. a new conditioning
embedding) at its value when the pool was made; for a module without an adapter (full fine-tuning), all
trainable tensors at that value — followed by snapshots added during training, oldest first.
``with pool.loaded(i):`` puts entry i's tensors into the module and afterwards restores the live tensors
exactly (the very same tensor objects). Eviction rule: the pool keeps the base and at most ``capacity``
snapshots; adding one more drops the oldest snapshot (never the base), so the pool spans the base and the
latest ``capacity`` snapshots.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from flowalign.errors import ConfigError
from flowalign.models.base import Conditioning, FlowModel, Geometry

DRAW_RULES = ("uniform", "latest", "initial")


def has_adapter(module: nn.Module) -> bool:
    """Whether ``module`` holds peft (LoRA) layers."""
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


@contextlib.contextmanager
def adapter_disabled(transformer: nn.Module) -> Iterator[None]:
    """Run the block on the base model: all adapter layers off; their previous state and every parameter's
    ``requires_grad`` are restored on exit (also on an exception)."""
    layers = [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ConfigError(f"{type(transformer).__name__} has no LoRA adapter to disable; the base model as "
                          "reference needs LoRA training (with full fine-tuning use a SnapshotPool's entry 0)")
    was_disabled = [layer.disable_adapters for layer in layers]
    requires_grad = [(p, p.requires_grad) for p in transformer.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, disabled in zip(layers, was_disabled):
            layer.enable_adapters(not disabled)
        for p, flag in requires_grad:
            p.requires_grad_(flag)


@dataclass
class Snapshot:
    """The trainable tensors (CPU clones) at training step ``step``."""

    step: int
    tensors: dict[str, Tensor]


class SnapshotPool:
    """The base model (entry 0) and up to ``capacity`` snapshots of ``module``'s trainable tensors (entries
    1…n, oldest first). ``names``: which parameters to snapshot (default: those with ``requires_grad``)."""

    def __init__(self, module: nn.Module, capacity: int, names: Sequence[str] | None = None):
        if capacity < 1:
            raise ConfigError(f"snapshot pool capacity must be >= 1, got {capacity}")
        params = dict(module.named_parameters())
        names = list(names) if names is not None else [n for n, p in params.items() if p.requires_grad]
        if not names:
            raise ConfigError(f"{type(module).__name__} has no trainable parameters to snapshot")
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ConfigError(f"snapshot names {unknown[:3]} are not parameters of {type(module).__name__}")
        self.module = module
        self.capacity = capacity
        self._params = {n: params[n] for n in names}
        self._base_disables_adapter = has_adapter(module)
        lora = {n for n in names if "lora_" in n} if self._base_disables_adapter else set()
        self._base = {n: t for n, t in self._copy_live().items() if n not in lora}
        self._snapshots: list[Snapshot] = []
        self._loaded = False

    def __len__(self) -> int:
        return 1 + len(self._snapshots)

    @property
    def steps(self) -> list[int | None]:
        """The training step of each entry (None for the base)."""
        return [None, *(s.step for s in self._snapshots)]

    def _copy_live(self) -> dict[str, Tensor]:
        """CPU clones of every snapshotted tensor."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self._params.items()}

    def add(self, step: int) -> int:
        """Snapshot the live tensors (taken at training ``step``); drops the oldest snapshot beyond capacity.
        Returns the new entry's index."""
        if self._loaded:
            raise RuntimeError("cannot add a snapshot while another entry is loaded into the module")
        self._snapshots.append(Snapshot(int(step), self._copy_live()))
        if len(self._snapshots) > self.capacity:
            self._snapshots.pop(0)
        return len(self) - 1

    def draw(self, generator: torch.Generator, rule: str = "uniform") -> int:
        """An entry index: ``uniform`` over all entries (base included) from ``generator``; ``latest`` the newest
        entry (the base while there is no snapshot); ``initial`` the base (0)."""
        if rule not in DRAW_RULES:
            raise ConfigError(f"unknown reference draw rule {rule!r}; expected one of {', '.join(DRAW_RULES)}")
        if rule == "initial":
            return 0
        if rule == "latest":
            return len(self) - 1
        return int(torch.randint(len(self), (1,), generator=generator, device=generator.device))

    @contextlib.contextmanager
    def loaded(self, index: int) -> Iterator[None]:
        """Run the block with entry ``index`` in the module; the live tensors are restored exactly on exit."""
        if not 0 <= index < len(self):
            raise IndexError(f"snapshot index {index} out of range for a pool of {len(self)} entries")
        if self._loaded:
            raise RuntimeError("a snapshot is already loaded; pool.loaded(...) blocks cannot be nested")
        self._loaded = True
        try:
            with contextlib.ExitStack() as stack:
                if index == 0 and self._base_disables_adapter:
                    stack.enter_context(adapter_disabled(self.module))
                tensors = self._base if index == 0 else self._snapshots[index - 1].tensors
                stack.enter_context(self._swapped_in(tensors))
                yield
        finally:
            self._loaded = False

    @contextlib.contextmanager
    def _swapped_in(self, tensors: dict[str, Tensor]) -> Iterator[None]:
        """Point each named parameter's ``.data`` at a copy of ``tensors`` and back at its own tensor afterwards:
        the live values come back exactly (the same tensors), and graphs built before the block stay valid (no
        in-place change of a tensor autograd saved)."""
        live = {n: self._params[n].data for n in tensors}
        try:
            for n, t in tensors.items():
                self._params[n].data = t.to(self._params[n].device, copy=True)
            yield
        finally:
            for n, t in live.items():
                self._params[n].data = t

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain data: capacity, parameter names, whether the base disables an adapter, the base's
        stored tensors, the snapshots."""
        return {
            "capacity": self.capacity,
            "names": list(self._params),
            "base_disables_adapter": self._base_disables_adapter,
            "base": self._base,
            "snapshots": [{"step": s.step, "tensors": s.tensors} for s in self._snapshots],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a pool saved by ``state_dict`` for the same module (names, shapes and dtypes must match)."""
        if list(state["names"]) != list(self._params):
            raise ConfigError("snapshot pool checkpoint was saved for other parameters: "
                              f"{sorted(set(state['names']) ^ set(self._params))[:3]} differ")
        if bool(state["base_disables_adapter"]) != self._base_disables_adapter:
            raise ConfigError("snapshot pool checkpoint and module disagree on whether the base disables a LoRA "
                              "adapter (LoRA vs full fine-tuning)")
        if set(state["base"]) != set(self._base):
            raise ConfigError(f"snapshot pool checkpoint stores base tensors {sorted(state['base'])[:3]}, this pool "
                              f"{sorted(self._base)[:3]}")
        for i, snapshot in enumerate(state["snapshots"], start=1):
            if set(snapshot["tensors"]) != set(self._params):
                raise ConfigError(f"snapshot pool checkpoint: entry {i} lacks or adds tensors "
                                  f"{sorted(set(snapshot['tensors']) ^ set(self._params))[:3]}")
        for tensors in [state["base"], *(s["tensors"] for s in state["snapshots"])]:
            for n, t in tensors.items():
                p = self._params[n]
                if t.shape != p.shape or t.dtype != p.dtype:
                    raise ConfigError(f"snapshot pool checkpoint: {n} is {tuple(t.shape)} {t.dtype}, "
                                      f"the module's is {tuple(p.shape)} {p.dtype}")
        self.capacity = int(state["capacity"])
        self._base = dict(state["base"])
        self._snapshots = [Snapshot(int(s["step"]), dict(s["tensors"])) for s in state["snapshots"]]


@contextlib.contextmanager
def using_reference(model: FlowModel, pool: SnapshotPool | None = None, index: int = 0) -> Iterator[None]:
    """Run the block on the reference: the adapter disabled when ``pool`` is None (trainable tensors outside the
    LoRA layers keep their live values; a pool's entry 0 resets them too), else the pool's entry ``index``."""
    if pool is None:
        with adapter_disabled(model.trainable_module()):
            yield
    else:
        with pool.loaded(index):
            yield


@torch.no_grad()
def reference_velocity(model: FlowModel, x: Tensor, sigma: float | Tensor, cond: Conditioning, geometry: Geometry,
                       guidance_scale: float = 1.0, *, pool: SnapshotPool | None = None, index: int = 0) -> Tensor:
    """v_ref(x, σ) (float32, no gradient) from the reference chosen as in ``using_reference``."""
    with using_reference(model, pool, index):
        return model.velocity(x, sigma, cond, geometry, guidance_scale)
