"""A new class-label control for a pretrained flow transformer (CTRL), its file format, and the calibration
tools of the control's classifier.

**The control embedding.** ``ControlEmbedding`` holds a table W of shape (K + 1, D): one row per class and a
last row for the null class (no control), D the size of the transformer's pooled text input
(``pooled_projections``: SD3, Flux). Every row starts at zero and the null row stays zero (it is never trained):
"no control" is then exactly the conditioning without an embedding. ``attach(transformer)`` registers a forward
pre-hook that, while ``requested(labels)`` is active, adds W[labels] to ``pooled_projections`` — which the SD3
transformer maps by its text MLP into the timestep embedding that modulates every block. For a batch of 2·B rows
(classifier-free guidance: [unconditional; conditional]) the unconditional half gets the null row. While the
LoRA adapter is disabled (the pretrained reference) nothing is added: the control is part of the adapter.

**File format** (``save``/``load_control``): one safetensors file holding ``control.weight`` (K + 1, D), with
string metadata ``format`` (``flowalign-control-1``), ``classes`` (JSON list), ``null_index`` and
``temperature`` (the classifier's calibration). Use it on a diffusers pipeline without flowalign by adding the
row to the pooled prompt embeddings: ``pipe(prompt_embeds=pe, pooled_prompt_embeds=pooled + W[y], ...)`` (and
``negative_pooled_prompt_embeds=neg_pooled + W[null]``, which equals ``neg_pooled``); or, with flowalign,
``control = load_control(pipe.transformer, path)`` and ``with control.requested(labels): pipe(prompt)``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from flowalign.errors import ConfigError, FlowAlignError
from flowalign.utils.io import atomic_path

FORMAT = "flowalign-control-1"
POOLED_KEY = "pooled_projections"


class ControlEmbedding(nn.Module):
    """W (K + 1, ``dim``), zero-initialized; ``classes`` names the K rows, row K is the null class."""

    def __init__(self, classes: list[str], dim: int):
        super().__init__()
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ConfigError(f"a control needs at least 2 distinct classes, got {classes}")
        self.classes = list(classes)
        self.null_index = len(classes)
        self.weight = nn.Parameter(torch.zeros(len(classes) + 1, dim))
        self.temperature = 1.0  # the classifier's calibration, kept with the weights in the file
        self._labels: Tensor | None = None
        self._adapters: list[BaseTunerLayer] = []
        self._handle = None

    def index(self, label: str) -> int:
        """The row of class ``label``; a ``ConfigError`` names the classes for any other value."""
        if label not in self.classes:
            raise ConfigError(f"control label {label!r} is not one of the classifier's classes {self.classes}")
        return self.classes.index(label)

    def attach(self, transformer: nn.Module) -> ControlEmbedding:
        """Add W[labels] to the transformer's ``pooled_projections`` while ``requested`` is active."""
        if self._handle is not None:
            raise RuntimeError("this control embedding is already attached to a transformer")
        self._adapters = [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]
        self._handle = transformer.register_forward_pre_hook(self._add, with_kwargs=True)
        return self

    def _add(self, module: nn.Module, args: tuple, kwargs: dict):
        if self._labels is None or (self._adapters and self._adapters[0].disable_adapters):
            return None
        pooled = kwargs.get(POOLED_KEY)
        if pooled is None:
            raise FlowAlignError(f"{type(module).__name__} was called without {POOLED_KEY!r}: a control embedding "
                                 "needs a transformer with pooled text conditioning (SD3, Flux)")
        rows, labels = pooled.shape[0], self._labels.to(pooled.device)
        if rows == 2 * len(labels):  # classifier-free guidance: [unconditional; conditional]
            labels = torch.cat([torch.full_like(labels, self.null_index), labels])
        elif rows != len(labels):
            raise FlowAlignError(f"control: {len(labels)} labels requested for a transformer batch of {rows} rows")
        kwargs = {**kwargs, POOLED_KEY: pooled + self.weight[labels].to(pooled.dtype)}
        return args, kwargs

    @contextlib.contextmanager
    def requested(self, labels: Tensor | list[int]) -> Iterator[None]:
        """Within the block, transformer row i is conditioned on class ``labels[i]`` (an index; K = null)."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.ndim != 1 or bool(((labels < 0) | (labels > self.null_index)).any()):
            raise ConfigError(f"control labels must be a 1-D tensor of class indices in [0, {self.null_index}], "
                              f"got {labels.tolist()}")
        previous, self._labels = self._labels, labels
        try:
            yield
        finally:
            self._labels = previous

    def zero_null_grad(self) -> None:
        """Keep the null row at zero: drop its gradient before an optimizer step."""
        if self.weight.grad is not None:
            self.weight.grad[self.null_index] = 0

    def save(self, path: str | os.PathLike) -> None:
        """Write the file format of the module docstring (atomically)."""
        metadata = {"format": FORMAT, "classes": json.dumps(self.classes), "null_index": str(self.null_index),
                    "temperature": repr(float(self.temperature))}
        with atomic_path(path) as tmp:
            save_file({"control.weight": self.weight.detach().float().cpu().contiguous()}, str(tmp), metadata)


def load_control(transformer: nn.Module, path: str | os.PathLike) -> ControlEmbedding:
    """A saved control, attached to ``transformer`` (on its device); ``.temperature`` holds the calibration."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, weight = f.metadata() or {}, f.get_tensor("control.weight")
    except Exception as err:  # noqa: BLE001 — any read failure means the file is not a control
        raise FlowAlignError(f"cannot read control file {str(path)!r}: {err}") from err
    if metadata.get("format") != FORMAT:
        raise FlowAlignError(f"{str(path)!r} is not a control file (format {metadata.get('format')!r}, "
                             f"expected {FORMAT!r})")
    control = ControlEmbedding(json.loads(metadata["classes"]), weight.shape[1])
    with torch.no_grad():
        control.weight.copy_(weight)
    control.temperature = float(metadata["temperature"])
    device = next(transformer.parameters()).device
    return control.to(device).attach(transformer)


# ------------------------------------------------------------------------------------------ calibration
def expected_calibration_error(logits: Tensor, labels: Tensor, bins: int = 10) -> float:
    """ECE of the top-class confidence: Σ_b |B_b|/n · |accuracy(B_b) − confidence(B_b)| over ``bins``
    equal-width confidence bins."""
    probs = logits.float().softmax(-1)
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += float(inside.float().mean() * (correct[inside].mean() - confidence[inside].mean()).abs())
    return ece


def fit_temperature(logits: Tensor, labels: Tensor, grid: int = 401) -> float:
    """The temperature T in [0.05, 20] (log-spaced ``grid``) minimizing the NLL of softmax(logits / T)."""
    temperatures = torch.logspace(torch.log10(torch.tensor(0.05)), torch.log10(torch.tensor(20.0)), grid)
    logits = logits.float()
    nll = torch.stack([nn.functional.cross_entropy(logits / t, labels) for t in temperatures])
    return float(temperatures[int(nll.argmin())])


def macro_f1(predicted: Tensor, target: Tensor, classes: int) -> float:
    """Mean over ``classes`` of F1 = 2·TP / (2·TP + FP + FN); a prediction of −1 (unmeasurable) is wrong."""
    scores = []
    for k in range(classes):
        tp = float(((predicted == k) & (target == k)).sum())
        fp = float(((predicted == k) & (target != k)).sum())
        fn = float(((predicted != k) & (target == k)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return sum(scores) / classes


def control_for_sampling(transformer: nn.Module, label: str, path: str | os.PathLike | None,
                         lora: str | os.PathLike | None = None):
    """``flowalign sample --control LABEL``: load the control file (``path``, else ``control.safetensors``
    beside the ``lora`` folder) onto ``transformer`` and return ``n ↦ requested([index(LABEL)] * n)``."""
    if path is None:
        if lora is None:
            raise ConfigError("--control needs the control file: pass --control-file FILE (or --lora DIR of a CTRL "
                              "run, whose control.safetensors lies beside it)")
        path = Path(lora).parent / "control.safetensors"
    if not Path(path).is_file():
        raise ConfigError(f"control file {str(path)!r} does not exist")
    control = load_control(transformer, path)
    index = control.index(label)
    return lambda n: control.requested(torch.full((n,), index))
