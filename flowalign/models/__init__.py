"""Model adapters: one small interface (``FlowModel``) over diffusers pipelines, one file per family."""

from flowalign.models.base import Conditioning, FlowModel, Geometry
from flowalign.models.loading import ADAPTERS, adapter_class, load_model, load_pipeline

__all__ = ["ADAPTERS", "Conditioning", "FlowModel", "Geometry", "adapter_class", "load_model", "load_pipeline"]
