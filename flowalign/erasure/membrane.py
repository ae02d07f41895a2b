"""Rank-1 membranes: one (D, U) pair per concept on each attention / feed-forward linear of a transformer.

Convention: a membrane on ``y = W x`` adds Σ_i γ_i · U_i (D_i x), with D_i (1 × in) and U_i (out × 1); the N
concepts of one ``SPMNetwork`` are stored stacked, ``down`` (N × in) and ``up`` (out × N), i.e. a rank-N LoRA
whose N ranks have their own per-sample strength γ (B × N). U starts at zero, so a fresh network is a no-op.

The membranes are forward hooks on the existing ``nn.Linear`` modules (the transformer is neither copied nor
re-wired, its state dict is unchanged): ``attach`` adds them, ``detach`` removes them, ``disabled()`` switches
them off temporarily. peft is not used for the membrane because peft's LoRA scale is one number per layer,
while facilitated transport needs a different γ for every sample of a batch (and every concept).

A layer wrapped by a peft LoRA (``pipe.load_lora_weights``, or ``flowalign.training.lora.add_lora``) keeps its
module name and counts as the linear it wraps: its shape is read from ``base_layer`` and the hook sits on the
wrapper, so ``y = W x + (LoRA) + Σ_i γ_i U_i (D_i x)`` with x the wrapper's input (the same x as the base
linear's). An SPM therefore attaches to a pipeline with LoRAs loaded exactly as to the plain pipeline. Attach
after loading or unloading LoRAs: unloading puts the plain linear back in the wrapper's place (detach and attach
again then).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from flowalign.errors import ConfigError

#: linear layers (suffixes inside a block) that carry membranes: MMDiT joint blocks (SD3, SD3.5, Flux), every
#: attention and feed-forward linear: the joint attention ``attn``, SD3.5's second (image-only) self-attention
#: ``attn2`` in its ``dual_attention_layers`` blocks, and both feed-forwards (the last SD3 block, context_pre_only,
#: has no to_add_out / ff_context) …
JOINT_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    # Qwen-Image's double-stream feed-forwards (image and text streams)
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
    # FLUX.2's double-stream SwiGLU feed-forwards
    "ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out",
)
#: … and Flux single-stream blocks (attention q/k/v; proj_mlp is the feed-forward's input, proj_out the shared
#: output of attention and feed-forward). Not covered, in either: the AdaLN modulation linears (norm*.linear),
#: which map the timestep/pooled embedding to shifts and scales, not the tokens (the original SPM covers attention
#: and feed-forward only).
SINGLE_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out",
                  # FLUX.2's single-stream blocks fuse q, k, v and the feed-forward input in one linear, and the
                  # attention and feed-forward outputs in another
                  "attn.to_qkv_mlp_proj", "attn.to_out")
BLOCK_LISTS = {"transformer_blocks": JOINT_TARGETS, "single_transformer_blocks": SINGLE_TARGETS}


def _base_linear(module: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` computing ``module``'s W x: the module itself, or the base layer of a peft wrapper."""
    if isinstance(module, BaseTunerLayer):
        module = module.get_base_layer()
    return module if isinstance(module, nn.Linear) else None


def target_layers(transformer: nn.Module) -> dict[str, nn.Module]:
    """The membrane-carrying linears of ``transformer`` by their module name (e.g. transformer_blocks.0.attn.to_q).

    Each is a plain ``nn.Linear`` or a peft LoRA wrapper of one (the module the hook goes on); shapes: layer_shapes.
    """
    found: dict[str, nn.Module] = {}
    for name, module in transformer.named_modules():
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] in BLOCK_LISTS and parts[2] in BLOCK_LISTS[parts[0]] \
                and _base_linear(module) is not None:
            found[name] = module
    if not found:
        raise ConfigError(f"{type(transformer).__name__} has no attention/feed-forward linears in "
                          f"transformer_blocks or single_transformer_blocks; SPM supports SD3 and Flux transformers")
    return found


def layer_shapes(transformer: nn.Module) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every membrane-carrying linear (of the base linear for a peft wrapper)."""
    shapes = {}
    for name, module in target_layers(transformer).items():
        base = _base_linear(module)
        shapes[name] = (base.in_features, base.out_features)
    return shapes


class Membrane(nn.Module):
    """The N concept membranes of one linear layer: ``down`` (N, in), ``up`` (out, N), float32."""

    def __init__(self, in_features: int, out_features: int, num_concepts: int, generator: torch.Generator | None = None):
        super().__init__()
        down = torch.randn(num_concepts, in_features, generator=generator) / in_features**0.5
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(out_features, num_concepts))

    def delta(self, x: Tensor, gamma: Tensor) -> Tensor:
        """Σ_i γ_i U_i D_i x for x (B, ..., in); γ (N,) for all samples or (B, N) per sample."""
        h = x @ self.down.to(x.dtype).t()  # (B, ..., N)
        if gamma.ndim == 2:
            gamma = gamma.view(gamma.shape[0], *([1] * (h.ndim - 2)), gamma.shape[1])
        return (h * gamma.to(h.dtype)) @ self.up.to(x.dtype).t()


def _key(layer: str) -> str:
    return layer.replace(".", "__")


class SPMNetwork(nn.Module):
    """Membranes for ``concepts`` on every target linear of one transformer architecture.

    Strength: by default every concept has γ = ``scale``; inside ``with net.strength(g)`` γ is ``g``, a (N,)
    or per-sample (B, N) tensor. A transformer batch of k·B rows (classifier-free guidance runs [uncond; cond])
    reuses the B rows' strengths for each of the k blocks. ``phrasings[i]``: every phrasing concept i erases
    (itself first; facilitated transport takes the maximum over them); default: the concept alone.
    """

    def __init__(self, layers: dict[str, tuple[int, int]], concepts: Sequence[str], seed: int = 0,
                 phrasings: Sequence[Sequence[str]] | None = None):
        super().__init__()
        concepts = [str(c) for c in concepts]
        if not concepts:
            raise ConfigError("an SPM needs at least one concept")
        if any(not c.strip() for c in concepts):
            raise ConfigError(f"concepts must be non-empty strings, got {concepts!r}")
        phrasings = [[c] for c in concepts] if phrasings is None else [[str(p) for p in ps] for ps in phrasings]
        if len(phrasings) != len(concepts) or any(not ps or not all(p.strip() for p in ps) for ps in phrasings):
            raise ConfigError(f"an SPM needs one non-empty list of non-empty phrasings per concept {concepts}, got "
                              f"{phrasings!r}")
        self.concepts = concepts
        self.phrasings = phrasings
        self.layer_names = sorted(layers)
        generator = torch.Generator().manual_seed(seed)
        self.membranes = nn.ModuleDict({
            _key(name): Membrane(layers[name][0], layers[name][1], len(concepts), generator)
            for name in self.layer_names})
        self.scale = 1.0
        self.enabled = True
        self._gamma: Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._attached_to: nn.Module | None = None

    @classmethod
    def for_transformer(cls, transformer: nn.Module, concepts: Sequence[str], seed: int = 0,
                        phrasings: Sequence[Sequence[str]] | None = None) -> SPMNetwork:
        """A fresh (no-op) network shaped for ``transformer``, on its device."""
        layers = layer_shapes(transformer)
        device = next(transformer.parameters()).device
        return cls(layers, concepts, seed, phrasings).to(device)

    def membrane(self, layer: str) -> Membrane:
        return self.membranes[_key(layer)]

    @property
    def num_concepts(self) -> int:
        return len(self.concepts)

    # --- hooks -----------------------------------------------------------------------------------
    def attach(self, transformer: nn.Module) -> SPMNetwork:
        """Register the membranes as forward hooks on ``transformer``'s linears (shapes must match).

        A linear wrapped by a peft LoRA is hooked on the wrapper: the membrane adds to the LoRA'd output.
        """
        if self._handles:
            raise ConfigError("this SPM is already attached; detach() it first")
        layers = target_layers(transformer)
        check_layers(self, layer_shapes(transformer), f"{type(transformer).__name__}")
        for name in self.layer_names:
            self._handles.append(layers[name].register_forward_hook(self._hook(self.membrane(name))))
        self._attached_to = transformer
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._attached_to = None

    def _hook(self, membrane: Membrane):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
            if not self.enabled:
                return None
            return output + membrane.delta(inputs[0], self._batch_gamma(inputs[0]))
        return hook

    def _batch_gamma(self, x: Tensor) -> Tensor:
        if self._gamma is None:
            return torch.full((self.num_concepts,), self.scale, device=x.device)
        gamma = self._gamma.to(x.device)
        if gamma.ndim == 1:
            return gamma
        rows = x.shape[0]
        if rows % gamma.shape[0]:
            raise ConfigError(f"per-sample SPM strengths have {gamma.shape[0]} rows but the transformer batch has "
                              f"{rows}; it must be a multiple")
        return gamma.repeat(rows // gamma.shape[0], 1)

    # --- switches --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Temporarily the original model (membranes off)."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    @contextlib.contextmanager
    def strength(self, gamma: Tensor | Sequence[float] | float) -> Iterator[None]:
        """Temporarily set γ: a number (all concepts), (N,) per concept, or (B, N) per sample and concept."""
        gamma = torch.as_tensor(gamma, dtype=torch.float32)
        if gamma.ndim == 0:
            gamma = gamma.expand(self.num_concepts)
        if gamma.ndim > 2 or gamma.shape[-1] != self.num_concepts:
            raise ConfigError(f"SPM strength must be a number, ({self.num_concepts},) or (batch, "
                              f"{self.num_concepts}); got shape {tuple(gamma.shape)}")
        previous, self._gamma = self._gamma, gamma
        try:
            yield
        finally:
            self._gamma = previous


def check_layers(net: SPMNetwork, layers: dict[str, tuple[int, int]], where: str) -> None:
    """Raise a ConfigError naming ``where`` unless ``net``'s layers and shapes are exactly ``layers``."""
    missing = sorted(set(layers) - set(net.layer_names))
    extra = sorted(set(net.layer_names) - set(layers))
    if missing or extra:
        raise ConfigError(f"SPM layers do not match {where}: {len(extra)} SPM layers absent from the model "
                          f"(e.g. {extra[:3]}), {len(missing)} model layers without a membrane (e.g. {missing[:3]}); "
                          "an SPM only attaches to the architecture it was trained on")
    for name in net.layer_names:
        m = net.membrane(name)
        shape = (m.down.shape[1], m.up.shape[0])
        if shape != tuple(layers[name]):
            raise ConfigError(f"SPM layer {name} has (in, out) = {shape} but {where} has {tuple(layers[name])}; "
                              "an SPM only attaches to the architecture it was trained on")


def merge(networks: Sequence[SPMNetwork]) -> SPMNetwork:
    """One network holding all concepts of ``networks`` (stacked ranks): applying it equals applying all."""
    if not networks:
        raise ConfigError("merge needs at least one SPM")
    first = networks[0]
    for other in networks[1:]:
        check_layers(other, {n: (first.membrane(n).down.shape[1], first.membrane(n).up.shape[0])
                             for n in first.layer_names}, "the first SPM")
    concepts = [c for net in networks for c in net.concepts]
    phrasings = [p for net in networks for p in net.phrasings]
    layers = {n: (first.membrane(n).down.shape[1], first.membrane(n).up.shape[0]) for n in first.layer_names}
    merged = SPMNetwork(layers, concepts, phrasings=phrasings).to(first.membrane(first.layer_names[0]).down.device)
    with torch.no_grad():
        for name in first.layer_names:
            merged.membrane(name).down.copy_(torch.cat([net.membrane(name).down for net in networks]))
            merged.membrane(name).up.copy_(torch.cat([net.membrane(name).up for net in networks], dim=1))
    merged.scale = first.scale
    return merged
