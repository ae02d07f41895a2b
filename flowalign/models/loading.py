"""Load a pipeline (hub id, local folder or object) and wrap it in its family's ``FlowModel``."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from flowalign.errors import UnsupportedModelError
from flowalign.models.base import FlowModel
from flowalign.resources import resolve

#: diffusers pipeline class name → "module:Adapter"
ADAPTERS: dict[str, str] = {
    "StableDiffusion3Pipeline": "flowalign.models.sd3:SD3Model",
    "FluxPipeline": "flowalign.models.flux:FluxModel",
    "WanPipeline": "flowalign.models.wan:WanModel",
    "QwenImagePipeline": "flowalign.models.qwen_image:QwenImageModel",
    "WanImageToVideoPipeline": "flowalign.models.wan_i2v:WanImageToVideoModel",
    "Flux2KleinPipeline": "flowalign.models.flux2:Flux2KleinModel",
}


def adapter_class(pipeline_class_name: str) -> type[FlowModel]:
    if pipeline_class_name not in ADAPTERS:
        raise UnsupportedModelError(
            f"unsupported pipeline family {pipeline_class_name!r}; supported: {', '.join(ADAPTERS)}"
        )
    module, name = ADAPTERS[pipeline_class_name].split(":")
    return getattr(importlib.import_module(module), name)


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~")) and not os.path.isabs(path)


def read_model_index(path: str | os.PathLike) -> dict:
    """A local pipeline folder's model_index.json, with clear errors."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"pipeline folder {str(folder)!r} does not exist")
    index = folder / "model_index.json"
    if not index.is_file():
        raise UnsupportedModelError(
            f"{str(folder)!r} is not a diffusers pipeline folder: it has no model_index.json"
        )
    try:
        content = json.loads(index.read_text())
        content["_class_name"]
    except (json.JSONDecodeError, KeyError) as err:
        raise UnsupportedModelError(f"{index} is not a valid model_index.json ({err})") from err
    return content


def load_pipeline(path: str | os.PathLike, torch_dtype: torch.dtype = torch.float32, **kwargs) -> DiffusionPipeline:
    """``from_pretrained`` on a local folder or a hub id, checking the family before any weight loads."""
    path_str = resolve(path)  # a missing relative path to shipped data means the shipped copy
    if Path(path_str).exists() or not _looks_like_hub_id(path_str):
        index = read_model_index(path_str)
        cls = adapter_class(index["_class_name"]).pipeline_class
        # components saved as [null, null] (e.g. SD3 without T5) must be passed as None explicitly
        absent = {k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]}
        return cls.from_pretrained(path_str, dtype=torch_dtype, **{**absent, **kwargs})
    pipeline = DiffusionPipeline.from_pretrained(path_str, dtype=torch_dtype, **kwargs)
    adapter_class(type(pipeline).__name__)
    return pipeline


def load_model(pipeline: str | os.PathLike | DiffusionPipeline, *, device: str | torch.device | None = None,
               torch_dtype: torch.dtype = torch.float32, **adapter_kwargs) -> FlowModel:
    """Wrap a pipeline object, a local pipeline folder or a hub id in its family's adapter."""
    if not isinstance(pipeline, DiffusionPipeline):
        if Path(str(pipeline)).is_dir():  # adapter arguments are checked before any weight loads
            check = getattr(adapter_class(read_model_index(pipeline)["_class_name"]), "check_adapter_kwargs", None)
            if check is not None:
                check(adapter_kwargs)
        pipeline = load_pipeline(pipeline, torch_dtype=torch_dtype)
    return adapter_class(type(pipeline).__name__)(pipeline, device=device, **adapter_kwargs)
