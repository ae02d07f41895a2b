"""What the benchmark runs on: a tiny builder, a pipeline folder, or a random-weight architecture spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from flowalign.benchmark.arch import build_arch_pipeline, cast_module, full_text_encoder_params, load_arch_spec
from flowalign.errors import ConfigError
from flowalign.models import FlowModel, Geometry, load_model
from flowalign.models.loading import adapter_class, read_model_index

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: guidance scale each family is usually sampled with (Flux: the embedded guidance, no CFG)
FAMILY_GUIDANCE = {"sd3": 4.5, "flux": 3.5, "wan": 5.0, "qwen_image": 4.0, "wan_i2v": 5.0,
                   "flux2_klein": 4.0}
#: name → (builder, default geometry, guidance scale as the real family is sampled)
TINY = {
    "tiny-sd3": ("tiny_sd3_pipeline", Geometry(32, 32), 4.5),
    "tiny-flux": ("tiny_flux_pipeline", Geometry(32, 32), 3.5),
    "tiny-wan": ("tiny_wan_pipeline", Geometry(32, 32, 9), 5.0),
    "tiny-qwen-image": ("tiny_qwen_image_pipeline", Geometry(32, 32), 4.0),
    "tiny-wan-i2v": ("tiny_wan_i2v_pipeline", Geometry(32, 32, 9), 5.0),
    "tiny-flux2-klein": ("tiny_flux2_klein_pipeline", Geometry(32, 32), 4.0),
}


@dataclass
class BenchModel:
    """A ready FlowModel with its default geometry and guidance, and notes for the report."""

    model: FlowModel
    label: str
    geometry: Geometry
    guidance_scale: float
    default_steps: int | None = None
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _adapter_kwargs(family: str, geometry: Geometry | None) -> dict:
    """Video families take the benchmark's geometry as default; image-to-video gets one gray conditioning image."""
    kwargs = {"geometry": geometry} if family in ("wan", "wan_i2v") and geometry is not None else {}
    if family == "wan_i2v":
        from PIL import Image

        kwargs["image"] = Image.new("RGB", (geometry.width, geometry.height) if geometry else (832, 480), (128,) * 3)
    return kwargs


def _wrap(pipeline, device: torch.device, geometry: Geometry | None = None, extra: dict | None = None) -> FlowModel:
    cls = adapter_class(type(pipeline).__name__)
    return cls(pipeline, device=device, **_adapter_kwargs(cls.family, geometry), **(extra or {}))


def build_bench_model(model: str | None = None, arch: str | None = None, *, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, scale_down: bool = False,
                      overrides: dict[str, dict] | None = None) -> BenchModel:
    """``model``: a ``TINY`` name (tiny-sd3, tiny-flux, ...) | a pipeline folder; or ``arch``: a configs/models JSON
    (``scale_down``/``overrides``: see ``load_arch_spec``)."""
    device = torch.device(device)
    if (model is None) == (arch is None):
        raise ConfigError(f"give exactly one of --model ({', '.join(TINY)} or a pipeline folder) "
                          "and --arch (configs/models/NAME.json)")
    if arch is not None:
        spec = load_arch_spec(arch, scale_down=scale_down, overrides=overrides)
        d = spec.defaults
        geometry = Geometry(d["height"], d["width"], d.get("num_frames"))
        pipeline = build_arch_pipeline(spec, device=device, dtype=dtype)
        full = full_text_encoder_params(spec)
        used = sum(p.numel() for n, c in pipeline.components.items() if n.startswith("text_encoder") and c is not None
                   for p in c.parameters())
        layers = "/".join(str(e.get("benchmark_layers")) for e in spec.text_encoders.values())
        changed = " (scaled down/overridden)" if scale_down or overrides else ""
        note = (f"random weights{changed}; text encoders at real hidden sizes but {layers} layers "
                f"({used / 1e9:.2f}B of {full / 1e9:.2f}B params): prompt embeddings are cached in training, "
                f"so text-encoder cost is not measured and peak memory excludes the missing "
                f"{(full - used) * torch.finfo(dtype).bits / 8 / 2**30:.1f} GiB of text-encoder weights")
        return BenchModel(_wrap(pipeline, device, geometry, spec.adapter_kwargs),
                          f"{spec.name} ({spec.source}){changed}", geometry,
                          float(d.get("guidance_scale", 1.0)), d.get("steps"), [note],
                          {"arch": spec.path, "source": spec.source, "scale_down": scale_down,
                           "overrides": overrides or {},
                           "text_encoder_params_used": used, "text_encoder_params_full": full})
    if overrides:
        raise ConfigError("--override applies to --arch architectures only")
    if model in TINY:
        import flowalign.models.tiny as tiny

        builder, geometry, guidance = TINY[model]
        pipeline = getattr(tiny, builder)()
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                cast_module(component, dtype)
        pipeline.to(device)
        return BenchModel(_wrap(pipeline, device, geometry), model, geometry, guidance,
                          notes=["tiny builder, random weights"])
    if Path(model).is_dir():
        family = adapter_class(read_model_index(model)["_class_name"]).family
        loaded = load_model(model, device=device, torch_dtype=dtype, **_adapter_kwargs(family, None))
        geometry = loaded.default_geometry()
        return BenchModel(loaded, str(model), geometry, FAMILY_GUIDANCE[loaded.family],
                          notes=[f"pipeline folder {model}"])
    raise ConfigError(f"unknown --model {model!r}: expected one of {', '.join(TINY)} or an existing pipeline folder "
                      f"(for a full-size architecture use --arch configs/models/NAME.json)")
