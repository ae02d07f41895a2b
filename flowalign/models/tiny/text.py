"""Tiny text encoders with the real tokenizers, for offline pipelines (random weights, seeded)."""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

from flowalign.models.tokenizers import CLIP_VOCAB_SIZE, build_t5_tokenizer


def tiny_clip_text_encoder(seed: int, hidden_size: int = 32, projection_dim: int = 32,
                           num_layers: int = 2) -> CLIPTextModelWithProjection:
    """A CLIP text tower over the full CLIP vocabulary (pooling at the real eos id 49407)."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=2, max_position_embeddings=77,
        projection_dim=projection_dim, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModelWithProjection(config).eval()


def tiny_t5_encoder(seed: int, d_model: int = 32, num_layers: int = 2, umt5: bool = False,
                    vocab_size: int | None = None) -> T5EncoderModel | UMT5EncoderModel:
    """A T5 (or UMT5, for Wan) encoder sized to ``build_t5_tokenizer()``'s vocabulary."""
    torch.manual_seed(seed)
    vocab_size = vocab_size or len(build_t5_tokenizer())
    kwargs = dict(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=num_layers,
                  num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
    return T5EncoderModel(T5Config(**kwargs)).eval()
