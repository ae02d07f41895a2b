"""Exact shortcut for SD3 without T5 (or with an all-zero T5): the pipeline appends ``max_sequence_length``
(256) all-zero T5 tokens. The MMDiT context stream has no positional embedding, so these tokens stay
identical at every layer, and attention over n identical keys equals attention over one of them with its
logit raised by log n. Encoding with ``max_sequence_length=1`` and this processor (the single zero token is
the LAST context token) gives the same velocity as the full sequence (float32 rounding, ~1e-6) with 255 fewer
context tokens. Used by the toy pretraining and, opt-in, by ``SD3Model(collapse_zero_padding=True)``.

Only the joint (image + context) attentions get the collapsed processor: SD3.5's dual-attention blocks
(``dual_attention_layers``) also hold an image-only self-attention ``attn2``, which sees no context tokens and
has no ``add_q_proj``; it keeps its own processor.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0


class CollapsedPadJointAttnProcessor:
    """JointAttnProcessor2_0 where the last context token stands for ``n_pad`` identical tokens."""

    def __init__(self, n_pad: int):
        self.log_n = math.log(n_pad)

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, *a, **k):
        if encoder_hidden_states is None:  # no context stream, no padding to collapse (e.g. SD3.5's attn2)
            return JointAttnProcessor2_0()(attn, hidden_states, None, attention_mask, *a, **k)
        b, n_img = hidden_states.shape[0], hidden_states.shape[1]

        def heads(t):
            return t.view(b, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

        q, kk, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            kk = attn.norm_k(kk)
        cq = heads(attn.add_q_proj(encoder_hidden_states))
        ck = heads(attn.add_k_proj(encoder_hidden_states))
        cv = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            cq = attn.norm_added_q(cq)
        if attn.norm_added_k is not None:
            ck = attn.norm_added_k(ck)
        q, kk, v = torch.cat([q, cq], 2), torch.cat([kk, ck], 2), torch.cat([v, cv], 2)
        bias = torch.zeros(kk.shape[2], dtype=q.dtype, device=q.device)
        bias[-1] = self.log_n
        out = F.scaled_dot_product_attention(q, kk, v, attn_mask=bias.view(1, 1, 1, -1))
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * out.shape[-1]).to(q.dtype)
        hs, ehs = out[:, :n_img], out[:, n_img:]
        if not attn.context_pre_only:
            ehs = attn.to_add_out(ehs)
        hs = attn.to_out[1](attn.to_out[0](hs))
        return hs, ehs


@contextlib.contextmanager
def collapsed_padding(transformer, n_pad: int) -> Iterator[None]:
    """Use the collapsed processor inside the block, then restore the transformer's own processors."""
    original = transformer.attn_processors
    install(transformer, n_pad)
    try:
        yield
    finally:
        transformer.set_attn_processor(original)


def _is_joint(module) -> bool:
    return isinstance(module, Attention) and getattr(module, "add_q_proj", None) is not None


def install(transformer, n_pad: int) -> None:
    """The collapsed processor on every joint attention (those with ``add_q_proj``); others keep theirs."""
    processor = CollapsedPadJointAttnProcessor(n_pad)
    joint = {f"{name}.processor" for name, module in transformer.named_modules() if _is_joint(module)}
    transformer.set_attn_processor({key: processor if key in joint else current
                                    for key, current in transformer.attn_processors.items()})


def uninstall(transformer) -> None:
    transformer.set_attn_processor(JointAttnProcessor2_0())
