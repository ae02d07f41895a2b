"""Make a saved toy pipeline folder loadable by a plain ``StableDiffusion3Pipeline.from_pretrained(path)``.

- diffusers refuses a folder whose ``text_encoder_3`` is null, so a tiny T5 encoder whose final RMSNorm
  weight is zero is added: it outputs exact zeros, i.e. the same prompt embeddings as "no T5".
- the CLIP towers' weights are stored in float16 (size) with ``config.dtype = float32``, so they load
  and run in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPTextModelWithProjection

from flowalign.models.tiny.text import tiny_t5_encoder
from flowalign.models.tokenizers import build_t5_tokenizer


def finalize_pipeline_folder(folder: str | Path, joint_attention_dim: int, seed: int = 0) -> None:
    folder = Path(folder)
    t5 = tiny_t5_encoder(seed, d_model=joint_attention_dim, num_layers=1)
    with torch.no_grad():
        t5.encoder.final_layer_norm.weight.zero_()
    t5.save_pretrained(folder / "text_encoder_3")
    tokenizer = build_t5_tokenizer()
    tokenizer.save_pretrained(folder / "tokenizer_3")
    for name in ("text_encoder", "text_encoder_2"):
        model = CLIPTextModelWithProjection.from_pretrained(folder / name, dtype=torch.float32)
        model.to(torch.float16).save_pretrained(folder / name)
        config_path = folder / name / "config.json"
        config = json.loads(config_path.read_text())
        config["dtype"] = "float32"
        config_path.write_text(json.dumps(config, indent=2))
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["text_encoder_3"] = ["transformers", type(t5).__name__]
    index["tokenizer_3"] = ["transformers", type(tokenizer).__name__]
    index_path.write_text(json.dumps(index, indent=2))
