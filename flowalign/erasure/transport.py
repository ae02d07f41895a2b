"""Facilitated transport: how strongly each concept's membrane acts on a prompt.

γ(prompt, concept) = factor · max(cos(pooled(prompt), pooled(concept)), token overlap), clamped to [0, factor].
The cosine uses the pipeline's pooled text embeddings (``pooled_prompt_embeds``: one vector per prompt, never
the padded token sequence); with ``center=True`` (default) the empty prompt's pooled embedding is subtracted
first, which removes the direction every prompt shares (raw CLIP cosines of unrelated prompts are often > 0.5).
Token overlap = share of the concept's tokenizer tokens (special tokens excluded) that occur in the prompt.
A concept given as several phrasings (``SPMNetwork.phrasings``: the concept, its aliases, their singular/plural
forms) takes the token overlap's maximum over them ("two red circles" shares no BPE token with "circle", but every
token with "circles"); the cosine is the concept's own: a cosine maximum over more phrasings only adds γ to
unrelated prompts (toy model, held-out prompts without red: mean γ 0.04 with "red", 0.32 with max("red", "reds")).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowalign.errors import ConfigError
from flowalign.models.base import FlowModel


class FacilitatedTransport:
    """Per-prompt permeabilities γ (P, N) of a model's prompts for N concepts.

    ``concepts``: per concept, its name or the list of its phrasings (pass ``spm.phrasings`` for a loaded SPM).
    """

    def __init__(self, model: FlowModel, concepts: Sequence[str | Sequence[str]], factor: float = 1.0,
                 center: bool = True, use_cosine: bool = True):
        self.model = model
        self.phrasings = [[c] if isinstance(c, str) else [str(p) for p in c] for c in concepts]
        if not self.phrasings or not all(self.phrasings):
            raise ConfigError(f"facilitated transport needs at least one phrasing per concept, got {concepts!r}")
        self.concepts = [ps[0] for ps in self.phrasings]
        self.factor = factor
        self.center = center
        self.use_cosine = use_cosine
        self.tokenizer = getattr(model.pipeline, "tokenizer", None)
        self._phrasing_tokens = [[self._tokens(p) for p in ps] for ps in self.phrasings]

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
        """(P, N) cosine similarities of the (centered) pooled embeddings of the prompts and the concepts."""
        a = torch.nn.functional.normalize(self._pooled(list(prompts)), dim=-1)
        b = torch.nn.functional.normalize(self._pooled(self.concepts), dim=-1)
        return a @ b.t()

    def overlap(self, prompts: Sequence[str]) -> Tensor:
        """(P, N) share of a phrasing's tokens present in each prompt, the maximum over each concept's phrasings."""
        rows = []
        for prompt in prompts:
            tokens = self._tokens(prompt)
            rows.append([max(len(tokens & t) / max(len(t), 1) for t in ts) for ts in self._phrasing_tokens])
        return torch.tensor(rows, dtype=torch.float32)

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        gamma = self.overlap(prompts)
        if self.use_cosine:
            gamma = torch.maximum(gamma, self.cosine(prompts).cpu())
        return (gamma.clamp(0, 1) * self.factor).to(torch.float32)
