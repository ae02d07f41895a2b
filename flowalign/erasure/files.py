"""SPM files (safetensors), attaching to any pipeline of the same architecture, and export as a plain LoRA.

File layout: tensors ``<layer>.down`` (N, in) and ``<layer>.up`` (out, N) for every membrane layer; string
metadata ``format`` = "flowalign-spm/1", ``concepts`` (JSON list, N names), ``phrasings`` (JSON list of N lists:
every phrasing each concept erases, the concept first; absent in older files, whose concept is then its only
phrasing), ``architecture`` (JSON: transformer class, sha256 of its config, sha256 of the membrane layer shapes) and
``hyperparameters`` (JSON, training config). Attaching requires the same transformer class and the same layer
shapes (the config hash may differ, e.g. for another sample size); several files are stacked into one network
(Σ γ_i U_i D_i). A file written before SD3.5's ``attn2`` linears carried membranes loads onto an SD3.5 transformer
with zero (no-op) membranes there, which is exactly what it did.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from flowalign.errors import ConfigError
from flowalign.erasure.membrane import SPMNetwork, check_layers, layer_shapes, merge
from flowalign.models.base import FlowModel
from flowalign.utils.io import atomic_path

FORMAT = "flowalign-spm/1"
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def architecture(transformer: nn.Module) -> dict[str, str]:
    """Class name, config hash and membrane shape-signature hash of a transformer."""
    config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    shapes = sorted((n, *shape) for n, shape in layer_shapes(transformer).items())
    return {"class": type(transformer).__name__, "config_sha": _sha(config), "shapes_sha": _sha(shapes)}


def _transformer(target: DiffusionPipeline | FlowModel | nn.Module) -> nn.Module:
    if isinstance(target, FlowModel):
        return target.transformer
    if isinstance(target, DiffusionPipeline):
        if getattr(target, "transformer", None) is None:
            raise ConfigError(f"{type(target).__name__} has no transformer; SPM supports SD3 and Flux pipelines")
        return target.transformer
    if isinstance(target, nn.Module):
        return target
    raise ConfigError(f"expected a pipeline, FlowModel or transformer, got {type(target).__name__}")


def save_spm(net: SPMNetwork, transformer: nn.Module, path: str | os.PathLike,
             hyperparameters: dict | None = None) -> Path:
    """Write ``net`` (trained for ``transformer``'s architecture) to ``path`` atomically."""
    tensors = {}
    for name in net.layer_names:
        m = net.membrane(name)
        tensors[f"{name}.down"] = m.down.detach().float().cpu().contiguous()
        tensors[f"{name}.up"] = m.up.detach().float().cpu().contiguous()
    metadata = {"format": FORMAT, "concepts": json.dumps(net.concepts), "phrasings": json.dumps(net.phrasings),
                "architecture": json.dumps(architecture(transformer)),
                "hyperparameters": json.dumps(hyperparameters or {}, default=str)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_spm(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Tensors and decoded metadata of an SPM file, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SPM file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types
        raise ConfigError(f"{str(path)!r} is not a safetensors file ({err})") from err
    if raw.get("format") != FORMAT or "concepts" not in raw:
        raise ConfigError(f"{str(path)!r} is not an SPM file: its metadata has no {FORMAT!r} format and concept "
                          "names (write it with flowalign.erasure.save_spm / `flowalign erase train`)")
    try:
        meta = {"concepts": json.loads(raw["concepts"]), "architecture": json.loads(raw.get("architecture", "{}")),
                "hyperparameters": json.loads(raw.get("hyperparameters", "{}"))}
        phrasings = json.loads(raw["phrasings"]) if "phrasings" in raw else None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{str(path)!r} has malformed SPM metadata ({err})") from err
    concepts = meta["concepts"]
    if not isinstance(concepts, list) or not concepts or not all(isinstance(c, str) and c.strip() for c in concepts):
        raise ConfigError(f"{str(path)!r} has no valid concept names in its metadata: {concepts!r}")
    meta["phrasings"] = [[c] for c in concepts] if phrasings is None else phrasings
    if not (isinstance(meta["phrasings"], list) and len(meta["phrasings"]) == len(concepts) and all(
            isinstance(ps, list) and ps and all(isinstance(p, str) and p.strip() for p in ps)
            for ps in meta["phrasings"])):
        raise ConfigError(f"{str(path)!r}: its 'phrasings' metadata must be one non-empty list of non-empty strings "
                          f"per concept ({len(concepts)}), got {meta['phrasings']!r}")
    return tensors, meta


def network_from_file(path: str | os.PathLike, transformer: nn.Module) -> SPMNetwork:
    """An SPMNetwork from ``path``, checked against ``transformer`` (class, layers, shapes); not attached."""
    tensors, meta = read_spm(path)
    arch = meta["architecture"]
    if arch.get("class") and arch["class"] != type(transformer).__name__:
        raise ConfigError(f"SPM file {str(path)!r} was trained on a {arch['class']} but the model's transformer is "
                          f"a {type(transformer).__name__}")
    layers = {}
    for key, tensor in tensors.items():
        name, _, kind = key.rpartition(".")
        if kind not in ("down", "up") or tensor.ndim != 2:
            raise ConfigError(f"SPM file {str(path)!r} has an unexpected tensor {key!r} {tuple(tensor.shape)}")
        if kind == "down":
            layers[name] = (tensor.shape[1], tensors[f"{name}.up"].shape[0]) if f"{name}.up" in tensors else None
    if any(v is None for v in layers.values()) or len(tensors) != 2 * len(layers):
        raise ConfigError(f"SPM file {str(path)!r} has unpaired down/up tensors")
    model_layers = layer_shapes(transformer)
    older = {n: s for n, s in model_layers.items() if n not in layers and ".attn2." in n}  # no-op membranes
    net = SPMNetwork(layers | older, meta["concepts"], phrasings=meta["phrasings"])
    check_layers(net, model_layers, f"the {type(transformer).__name__} it is loaded onto (file {str(path)!r})")
    n = len(meta["concepts"])
    with torch.no_grad():
        for name in older:
            net.membrane(name).up.zero_()
        for name in layers:
            down, up = tensors[f"{name}.down"], tensors[f"{name}.up"]
            if down.shape[0] != n or up.shape[1] != n:
                raise ConfigError(f"SPM file {str(path)!r}: layer {name} has rank {down.shape[0]}/{up.shape[1]} "
                                  f"but {n} concepts in its metadata")
            net.membrane(name).down.copy_(down)
            net.membrane(name).up.copy_(up)
    net.hyperparameters = meta["hyperparameters"]
    return net.to(next(transformer.parameters()).device)


def load_spm(target: DiffusionPipeline | FlowModel | nn.Module, files: str | os.PathLike | Sequence) -> SPMNetwork:
    """Load one or several SPM files, stack them into one network and attach it to ``target``'s transformer."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if not files:
        raise ConfigError("load_spm needs at least one SPM file")
    transformer = _transformer(target)
    nets = [network_from_file(f, transformer) for f in files]
    net = nets[0] if len(nets) == 1 else merge(nets)
    return net.attach(transformer)


def export_lora(spm_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``spm_file`` as a plain rank-N diffusers LoRA (every concept at strength 1) into ``out_dir``.

    ``pipe.load_lora_weights(out_dir)`` then reproduces the membranes at γ = 1 for every prompt: the per-prompt
    facilitated transport is lost in a plain LoRA.
    """
    tensors, meta = read_spm(spm_file)
    state, layers = {}, sorted({k.rpartition(".")[0] for k in tensors})
    for name in layers:
        state[f"transformer.{name}.lora_A.weight"] = tensors[f"{name}.down"].contiguous()
        state[f"transformer.{name}.lora_B.weight"] = tensors[f"{name}.up"].contiguous()
    path = Path(out_dir) / LORA_WEIGHTS_NAME
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "spm_concepts": json.dumps(meta["concepts"])})
    return path
