"""Facilitated transport: how strongly each concept's membrane acts on a prompt.

γ(prompt, concept) = factor · max(cos(pooled(prompt), pooled(concept)), token overlap), clamped to [0, factor].
The cosine uses the pipeline's pooled text embeddings (``pooled_prompt_embeds``: one vector per prompt, never
the padded token sequence); with ``center=True`` (default) the empty prompt's pooled embedding is subtracted
first, which removes the direction every prompt shares (raw CLIP cosines of unrelated prompts are often > 0.5).
Token overlap = share of the concept's tokenizer tokens (special tokens excluded) that occur in the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowalign.models.base import FlowModel


class FacilitatedTransport:
    """Per-prompt permeabilities γ (P, N) of a model's prompts for ``concepts``."""

    def __init__(self, model: FlowModel, concepts: Sequence[str], factor: float = 1.0, center: bool = True,
                 use_cosine: bool = True):
        self.model = model
        self.concepts = list(concepts)
        self.factor = factor
        self.center = center
        self.use_cosine = use_cosine
        self.tokenizer = getattr(model.pipeline, "tokenizer", None)
        self._concept_tokens = [self._tokens(c) for c in self.concepts]

    def _tokens(self, text: str) -> set[int]:
        if self.tokenizer is None:
            return set(text.lower().split())
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return set(int(i) for i in ids)

    def _pooled(self, prompts: list[str]) -> Tensor:
        pooled = self.model.encode_prompts(prompts).tensors["pooled_prompt_embeds"].float()
        if self.center:
            pooled = pooled - self.model.encode_prompts([""]).tensors["pooled_prompt_embeds"].float()
        return pooled

    def cosine(self, prompts: Sequence[str]) -> Tensor:
        """(P, N) cosine similarities of the (centered) pooled embeddings."""
        a = torch.nn.functional.normalize(self._pooled(list(prompts)), dim=-1)
        b = torch.nn.functional.normalize(self._pooled(self.concepts), dim=-1)
        return a @ b.t()

    def overlap(self, prompts: Sequence[str]) -> Tensor:
        """(P, N) share of each concept's tokens present in each prompt."""
        rows = []
        for prompt in prompts:
            tokens = self._tokens(prompt)
            rows.append([len(tokens & c) / max(len(c), 1) for c in self._concept_tokens])
        return torch.tensor(rows, dtype=torch.float32)

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        gamma = self.overlap(prompts)
        if self.use_cosine:
            gamma = torch.maximum(gamma, self.cosine(prompts).cpu())
        return (gamma.clamp(0, 1) * self.factor).to(torch.float32)
