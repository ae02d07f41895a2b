"""Tiny offline pipelines for tests, benchmarks and the toy world (no network, seeded random weights)."""

from flowalign.models.tiny.flux import tiny_flux_pipeline
from flowalign.models.tiny.flux2 import tiny_flux2_klein_pipeline
from flowalign.models.tiny.qwen_image import tiny_qwen_image_pipeline
from flowalign.models.tiny.sd3 import tiny_sd3_pipeline, tiny_vae
from flowalign.models.tiny.text import tiny_clip_text_encoder, tiny_t5_encoder
from flowalign.models.tiny.wan import tiny_wan_pipeline
from flowalign.models.tiny.wan_i2v import tiny_wan_i2v_pipeline

__all__ = [
    "tiny_clip_text_encoder",
    "tiny_flux2_klein_pipeline",
    "tiny_flux_pipeline",
    "tiny_qwen_image_pipeline",
    "tiny_sd3_pipeline",
    "tiny_t5_encoder",
    "tiny_vae",
    "tiny_wan_i2v_pipeline",
    "tiny_wan_pipeline",
]
