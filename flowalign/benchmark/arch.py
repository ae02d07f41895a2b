"""Full-size architectures with RANDOM weights, built from ``configs/models/*.json``.

A spec file holds the published component configs of one model (``source``: the hub repo they come from):
``transformer``, ``vae``, ``scheduler`` and ``text_encoders`` (each ``{"class": ..., "config": {...}}``).
Text encoders keep their real hidden sizes but are built with ``benchmark_layers`` layers (prompt embeddings
are cached in training, so their cost is not what the benchmark measures). ``scale_down`` holds per-component
overrides that shrink the model for CPU tests; ``overrides`` applies any others.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import DiffusionPipeline, ModelMixin

from flowalign.errors import ConfigError
from flowalign.models.tokenizers import build_clip_tokenizer, build_t5_tokenizer

PIPELINES = {"StableDiffusion3Pipeline", "FluxPipeline", "WanPipeline", "QwenImagePipeline",
             "WanImageToVideoPipeline", "Flux2KleinPipeline"}
COMPONENTS = ("transformer", "vae", "scheduler")
#: optional components: an image encoder (transformers class, full size) with its ``processor`` settings
#: (a ``CLIPImageProcessor`` sized to the encoder's ``image_size``), for image-conditioned pipelines
IMAGE_ENCODER = "image_encoder"
#: config key holding a text encoder's layer count, by class ("a.b": key b of the nested config a)
LAYER_KEYS = {"CLIPTextModel": "num_hidden_layers", "CLIPTextModelWithProjection": "num_hidden_layers",
              "T5EncoderModel": "num_layers", "UMT5EncoderModel": "num_layers",
              "Qwen2_5_VLForConditionalGeneration": "text_config.num_hidden_layers",
              "Qwen3ForCausalLM": "num_hidden_layers"}
T5_TOKENIZER_SIZE = 4000


@dataclass
class ArchSpec:
    """A parsed spec file (after scale-down and overrides)."""

    name: str
    source: str
    pipeline: str
    note: str
    defaults: dict[str, Any]
    components: dict[str, dict[str, Any]]  # transformer, vae, scheduler
    text_encoders: dict[str, dict[str, Any]]
    path: str | None = None
    #: keyword arguments for the family's adapter (e.g. which text-encoder layers the shortened encoder has)
    adapter_kwargs: dict[str, Any] = field(default_factory=dict)


def load_arch_spec(path: str | Path, *, scale_down: bool = False,
                   overrides: dict[str, dict[str, Any]] | None = None) -> ArchSpec:
    """Read and check a spec file; ``scale_down`` applies its ``scale_down`` section, then ``overrides``."""
    path = Path(path)
    if not path.is_file():
        known = sorted(p.name for p in Path("configs/models").glob("*.json")) if Path("configs/models").is_dir() else []
        hint = f"; available: {', '.join('configs/models/' + k for k in known)}" if known else ""
        raise ConfigError(f"architecture file {str(path)!r} does not exist{hint}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"architecture file {str(path)!r} is not valid JSON: {err}") from err
    return parse_arch_spec(raw, scale_down=scale_down, overrides=overrides, path=str(path))


def parse_arch_spec(raw: dict, *, scale_down: bool = False, overrides: dict | None = None,
                    path: str | None = None) -> ArchSpec:
    where = path or "architecture spec"
    for key in ("name", "source", "pipeline", *COMPONENTS, "text_encoders"):
        if key not in raw:
            raise ConfigError(f"{where} has no {key!r} entry")
    if raw["pipeline"] not in PIPELINES:
        raise ConfigError(f"{where}: pipeline {raw['pipeline']!r} is not one of {', '.join(sorted(PIPELINES))}")
    components = {k: copy.deepcopy(raw[k]) for k in (*COMPONENTS, IMAGE_ENCODER) if k in raw}
    encoders = copy.deepcopy(raw["text_encoders"])
    defaults = dict(raw.get("defaults", {}))
    layers: list[dict] = []
    if scale_down:
        if "scale_down" not in raw:
            raise ConfigError(f"{where} has no 'scale_down' section")
        layers.append(raw["scale_down"])
    if overrides:
        layers.append(overrides)
    for layer in layers:
        for target, values in layer.items():
            if target == "defaults":
                defaults.update(values)
            elif target in components:
                components[target]["config"].update(values)
            elif target in encoders:
                encoders[target]["config"].update(values)
            else:
                known = ", ".join(["defaults", *components, *encoders])
                raise ConfigError(f"{where}: override target {target!r} is not a component; expected one of {known}")
    for name, entry in {**components, **encoders}.items():
        if "class" not in entry or "config" not in entry:
            raise ConfigError(f"{where}: component {name!r} needs 'class' and 'config'")
    return ArchSpec(raw["name"], raw["source"], raw["pipeline"], raw.get("note", ""), defaults, components,
                    encoders, path, dict(raw.get("adapter_kwargs", {})))


@contextlib.contextmanager
def _construct_on(device: torch.device, dtype: torch.dtype):
    """Allocate (and randomly initialise) new modules directly on ``device`` in ``dtype``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast like ``from_pretrained(dtype=...)``: the class's ``_keep_in_fp32_modules`` stay float32 (diffusers:
    any dtype; transformers: float16, or always for ``_keep_in_fp32_modules_strict``)."""
    keep = list(getattr(module, "_keep_in_fp32_modules_strict", None) or [])
    if isinstance(module, ModelMixin) or dtype == torch.float16:
        keep += list(getattr(module, "_keep_in_fp32_modules", None) or [])
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if any(k in name.split(".") for k in keep) else dtype)
    return module.eval().requires_grad_(False)


def _class(library, name: str, where: str):
    cls = getattr(library, name, None)
    if cls is None:
        raise ConfigError(f"{where}: unknown class {name!r} in {library.__name__}")
    return cls


def _text_encoder(entry: dict, name: str) -> torch.nn.Module:
    cls_name = entry["class"]
    if cls_name not in LAYER_KEYS:
        raise ConfigError(f"text encoder {name!r}: class {cls_name!r} is not one of {', '.join(LAYER_KEYS)}")
    cls = _class(transformers, cls_name, f"text encoder {name!r}")
    config = copy.deepcopy(entry["config"])
    *nested, key = LAYER_KEYS[cls_name].split(".")
    section = config
    for name_ in nested:
        section = section[name_]
    section[key] = int(entry.get("benchmark_layers", section[key]))
    if entry.get("tokenizer") == "t5" and config["vocab_size"] < T5_TOKENIZER_SIZE:
        raise ConfigError(f"text encoder {name!r}: vocab_size {config['vocab_size']} is smaller than the "
                          f"T5 tokenizer's {T5_TOKENIZER_SIZE}")
    return cls(cls.config_class(**config))


def _tokenizer(kind: str | None, name: str):
    if kind == "clip":
        return build_clip_tokenizer()
    if kind == "t5":
        return build_t5_tokenizer(T5_TOKENIZER_SIZE)
    if kind == "qwen":
        from flowalign.models.tiny.qwen_text import build_qwen_tokenizer

        return build_qwen_tokenizer()
    raise ConfigError(f"text encoder {name!r}: tokenizer must be 'clip', 't5' or 'qwen', got {kind!r}")


def build_arch_pipeline(spec: ArchSpec | str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, seed: int = 0) -> DiffusionPipeline:
    """The spec's diffusers pipeline with random weights, allocated on ``device`` in ``dtype``."""
    if not isinstance(spec, ArchSpec):
        spec = load_arch_spec(spec)
    device = torch.device(device)
    torch.manual_seed(seed)
    parts: dict[str, Any] = {}
    with _construct_on(device, dtype):
        for name in ("transformer", "vae"):
            entry = spec.components[name]
            cls = _class(diffusers, entry["class"], f"{spec.name} {name}")
            parts[name] = cast_module(cls(**entry["config"]), dtype)
        for name, entry in spec.text_encoders.items():
            parts[name] = cast_module(_text_encoder(entry, name), dtype)
        if IMAGE_ENCODER in spec.components:
            entry = spec.components[IMAGE_ENCODER]
            cls = _class(transformers, entry["class"], f"{spec.name} {IMAGE_ENCODER}")
            parts[IMAGE_ENCODER] = cast_module(cls(cls.config_class(**entry["config"])), dtype)
            size = entry["config"]["image_size"]  # the processor resizes and crops to the encoder's input size
            parts["image_processor"] = transformers.CLIPImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **entry.get("processor", {}))
    sched = spec.components["scheduler"]
    parts["scheduler"] = _class(diffusers, sched["class"], f"{spec.name} scheduler")(**sched["config"])
    for name, entry in spec.text_encoders.items():
        parts[name.replace("text_encoder", "tokenizer")] = _tokenizer(entry.get("tokenizer"), name)
    cls = getattr(diffusers, spec.pipeline)
    return cls(**parts)


def full_text_encoder_params(spec: ArchSpec) -> int:
    """Parameters the text encoders would have at their published depth (counted on the meta device)."""
    total = 0
    for name, entry in spec.text_encoders.items():
        full = {k: v for k, v in entry.items() if k != "benchmark_layers"}
        with torch.device("meta"):
            total += sum(p.numel() for p in _text_encoder(full, name).parameters())
    return total
