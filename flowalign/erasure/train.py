"""Latent-anchoring training of SPM membranes, in velocity space.

For concept i (its membrane alone on, γ = e_i) and a target prompt t with surrogate s, at x_σ reached by running
the model WITH that membrane on (no gradient) along its Euler ODE from seeded noise to a random σ of the schedule
(prompt t, ``guidance_scale``), as METHODS.md §7 and the original SPM/LECO training do:
    erase  = ‖v'(x, t) − [v(x, s) − η·(v(x, t) − v(x, s))]‖²
    anchor = λ·‖v'(x, a) − v(x, a)‖²   for anchor prompts a and/or random text-embedding directions at t's norm
v = original model (membranes off, no gradient), v' = with the membrane; ‖·‖² is a mean over elements. Both are
conditional velocities (no CFG); a model whose ``guidance_scale`` is not a CFG weight (Flux-dev's embedded
guidance) gets ``guidance_scale`` in them too, as in the partial sampling and at inference.
Every concept is matched by its phrasings (``phrasing.py``: the concept, its ``aliases`` and their singular/plural
forms): targets default to the phrasings themselves; with ``target_prompts`` they are the prompts naming any
phrasing, whose surrogate is the prompt with every phrasing replaced by ``surrogate`` (no surrogate names the
concept). Anchors (on by default): the empty prompt on every step, ``anchors_per_step`` of the ``anchor_prompts``
that do not name the concept, and ``random_anchors`` random directions. x_σ is sampled with the guidance used at
inference (default: the pipeline's own default, as ``pipe(prompt)``) and never at pure noise (k ≥ 1 Euler steps,
as the original's ``randint(1, steps)``). Each concept has its own Adam state (a step of concept i moves only i).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowalign.errors import ConfigError
from flowalign.erasure import phrasing
from flowalign.erasure.files import save_spm
from flowalign.erasure.membrane import SPMNetwork
from flowalign.models.base import Conditioning, FlowModel


@dataclass
class EraseConfig:
    """Hyper-parameters of one erasure run (one membrane per concept, all saved in one file)."""

    concepts: list[str]
    aliases: dict[str, list[str]] = field(default_factory=dict)  # concept -> further phrasings it erases
    inflect: bool = True  # add the singular/plural forms of the concept and its aliases (phrasing.py)
    surrogate: str = ""
    eta: float = 1.0  # how far past the surrogate the target is pushed
    anchor_weight: float = 1.0  # λ
    anchor_prompts: list[str] = field(default_factory=list)
    empty_anchor: bool = True  # the empty prompt is an anchor on every step
    random_anchors: int = 1  # random text-embedding anchors per step
    anchors_per_step: int = 2  # anchor prompts per step (from anchor_prompts)
    target_prompts: list[str] = field(default_factory=list)
    steps: int = 200
    lr: float = 1e-3
    num_inference_steps: int = 10  # schedule of the partial sampling (x_σ after 1 .. n−1 Euler steps)
    guidance_scale: float | None = None  # of the partial sampling: the one used at inference (None: pipeline's)
    height: int | None = None  # image size of the partial sampling (None: the pipeline's default)
    width: int | None = None
    seed: int = 0
    checkpoint_every: int = 0  # 0: only at the end

    def __post_init__(self) -> None:
        self.concepts = [str(c) for c in self.concepts]
        if not self.concepts:
            raise ConfigError("give at least one concept to erase (--concept TEXT)")
        empty = [c for c in self.concepts if not c.strip()]
        if empty:
            raise ConfigError(f"concept {empty[0]!r} is empty; a concept must be non-empty text")
        unknown = sorted(set(self.aliases) - set(self.concepts))
        if unknown:
            raise ConfigError(f"aliases given for {unknown}, which are not among the concepts {self.concepts}")
        self.aliases = {c: [str(a) for a in v] for c, v in self.aliases.items()}
        if self.steps < 1 or self.lr <= 0 or self.num_inference_steps < 2:
            raise ConfigError(f"steps and lr must be positive and num_inference_steps >= 2 (x_σ is taken after 1 to "
                              f"n−1 steps), got {self.steps}, {self.lr}, {self.num_inference_steps}")
        if self.anchor_weight < 0 or self.random_anchors < 0 or self.anchors_per_step < 0:
            raise ConfigError("anchor_weight, random_anchors and anchors_per_step must be >= 0")
        for i, concept in enumerate(self.concepts):
            if phrasing.names(self.surrogate, self.phrasings(i)):
                raise ConfigError(f"surrogate {self.surrogate!r} names the concept {concept!r} it replaces")

    def phrasings(self, concept_index: int) -> list[str]:
        """Every phrasing concept ``concept_index`` erases: itself, its aliases, their inflections."""
        concept = self.concepts[concept_index]
        return phrasing.phrasings(concept, self.aliases.get(concept, []), self.inflect)

    def targets(self, concept_index: int) -> list[tuple[str, str]]:
        """(target prompt, surrogate prompt) pairs: the target prompts naming any phrasing (each with every
        phrasing replaced by the surrogate, repeated until none is left), else each phrasing itself."""
        phrases = self.phrasings(concept_index)
        pairs = []
        for prompt in self.target_prompts:
            if phrasing.names(prompt, phrases):
                surrogate = prompt
                while phrasing.names(surrogate, phrases):  # "red red fox fox" -> "red fox" -> ""
                    surrogate = phrasing.remove(surrogate, phrases, self.surrogate)
                pairs.append((prompt, surrogate))
        return pairs or [(p, self.surrogate) for p in phrases]

    def anchors(self, concept_index: int) -> list[str]:
        """The anchor prompts usable for concept ``concept_index``: those not naming any of its phrasings."""
        phrases = self.phrasings(concept_index)
        return [a for a in self.anchor_prompts if not phrasing.names(a, phrases)]


def inference_guidance(model: FlowModel) -> float:
    """The guidance a plain ``pipe(prompt)`` call uses: the default of the pipeline's ``guidance_scale`` argument
    (SD3: 7.0, Flux: 3.5); 1.0 when the pipeline has none."""
    parameter = inspect.signature(type(model.pipeline).__call__).parameters.get("guidance_scale")
    default = None if parameter is None else parameter.default
    return float(default) if isinstance(default, (int, float)) else 1.0


def random_anchor(tensors: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """Random directions with the per-token (per-row) norms of ``tensors`` (zero rows stay zero)."""
    out = {}
    for key, t in tensors.items():
        r = torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t.device)
        r = r / r.norm(dim=-1, keepdim=True) * t.float().norm(dim=-1, keepdim=True)
        out[key] = r.to(t.dtype)
    return out


def _cat(conds: list[dict[str, Tensor]]) -> Conditioning:
    return Conditioning([""] * sum(next(iter(c.values())).shape[0] for c in conds),
                        {k: torch.cat([c[k] for c in conds]) for k in conds[0]})


class EraseTrainer:
    """Trains an ``SPMNetwork`` on ``model`` (attached during training; detached by ``close``)."""

    def __init__(self, model: FlowModel, config: EraseConfig, net: SPMNetwork | None = None):
        self.model, self.config = model, config
        model.transformer.requires_grad_(False)
        phrasings = [config.phrasings(i) for i in range(len(config.concepts))]
        self.net = net or SPMNetwork.for_transformer(model.transformer, config.concepts, seed=config.seed,
                                                     phrasings=phrasings)
        self.net.attach(model.transformer)
        self.net.train()
        # One Adam per concept, each over all membrane parameters: a step of concept i has exactly zero gradient
        # outside i's rows of ``down`` / columns of ``up`` (γ = e_i), so optimizer i's moments stay exactly zero
        # there and it moves only concept i (one shared Adam kept moving the others on their moments).
        self.optimizers = [torch.optim.Adam(self.net.parameters(), lr=config.lr) for _ in config.concepts]
        self.guidance_scale = (inference_guidance(model) if config.guidance_scale is None
                               else float(config.guidance_scale))
        self.rng = random.Random(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.geometry = model.resolve_geometry(config.height, config.width)
        self.sigmas = model.schedule(config.num_inference_steps, self.geometry)
        self._targets = [config.targets(i) for i in range(len(config.concepts))]
        self._anchors = [config.anchors(i) for i in range(len(config.concepts))]
        self.step_index = 0
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def partial_sample(self, cond: Conditioning, k: int, concept_index: int) -> Tensor:
        """x at σ_k: Euler ODE from seeded noise, k steps, prompt ``cond``, with concept ``concept_index``'s
        membrane ON (γ = e_i, its current weights, no gradient): the latents the erased model itself visits
        (METHODS.md §7, as in the original SPM/LECO training), so the losses are taken where the SPM acts."""
        x = self.model.initial_noise(self.geometry, [torch.Generator().manual_seed(self.rng.randrange(2**31))])
        cfg = self.model.uses_cfg(self.guidance_scale)
        if cfg and not cond.has_negative:
            cond = self.model.encode_prompts(cond.prompts, with_negative=True)
        gamma = torch.zeros(self.net.num_concepts)
        gamma[concept_index] = 1.0
        with self.net.strength(gamma):
            for i in range(k):
                v = self.model.velocity(x, self.sigmas[i], cond, self.geometry, self.guidance_scale)
                x = x + (self.sigmas[i + 1] - self.sigmas[i]) * v
        return x

    def loss_guidance(self) -> float:
        """``guidance_scale`` of the loss velocities, which are conditional-only: the configured one where it is no
        CFG weight for this model (Flux-dev's embedded guidance, or CFG ≤ 1), else 1 (SD3: v(x, c), no CFG mix)."""
        g = self.guidance_scale
        return 1.0 if self.model.uses_cfg(g) else g

    def losses(self, concept_index: int) -> dict[str, Tensor]:
        """Erase and anchor losses for one concept at one partially sampled latent."""
        cfg, model = self.config, self.model
        target, surrogate = self.rng.choice(self._targets[concept_index])
        t_cond, s_cond = model.encode_prompts([target]), model.encode_prompts([surrogate])
        k = self.rng.randrange(1, cfg.num_inference_steps)  # never pure noise (σ_0), never the final x_0
        x, sigma = self.partial_sample(t_cond, k, concept_index), self.sigmas[k]
        pool = self._anchors[concept_index]
        prompts = ([""] if cfg.empty_anchor else []) + self.rng.sample(pool, min(cfg.anchors_per_step, len(pool)))
        anchors = [model.encode_prompts([a]).tensors for a in prompts]
        anchors += [random_anchor(t_cond.tensors, self.generator) for _ in range(cfg.random_anchors)]
        use_anchors = bool(anchors) and cfg.anchor_weight > 0
        orig = _cat([t_cond.tensors, s_cond.tensors] + (anchors if use_anchors else []))
        guidance = self.loss_guidance()
        with torch.no_grad(), self.net.disabled():
            v = model.velocity(x.expand(len(orig), *x.shape[1:]), sigma, orig, self.geometry, guidance)
        v_t, v_s, v_a = v[:1], v[1:2], v[2:]
        goal = v_s - cfg.eta * (v_t - v_s)
        new = _cat([t_cond.tensors] + (anchors if use_anchors else []))
        gamma = torch.zeros(len(new), self.net.num_concepts)
        gamma[:, concept_index] = 1.0
        with self.net.strength(gamma):
            v_new = model.velocity(x.expand(len(new), *x.shape[1:]), sigma, new, self.geometry, guidance)
        out = {"erase": torch.mean((v_new[:1] - goal) ** 2)}
        out["anchor"] = torch.mean((v_new[1:] - v_a) ** 2) if use_anchors else torch.zeros(())
        out["loss"] = out["erase"] + cfg.anchor_weight * out["anchor"]
        return out

    def step(self) -> dict[str, float]:
        concept_index = self.step_index % self.net.num_concepts
        losses = self.losses(concept_index)
        optimizer = self.optimizers[concept_index]
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        self.step_index += 1
        record = {k: float(v.detach()) for k, v in losses.items()} | {"step": self.step_index, "concept": concept_index}
        self.history.append(record)
        return record

    def save(self, path: str | os.PathLike) -> Path:
        hyper = dataclasses.asdict(self.config) | {"trained_steps": self.step_index,
                                                   "guidance_scale": self.guidance_scale}
        hyper.pop("anchor_prompts"), hyper.pop("target_prompts")
        hyper |= {"num_anchor_prompts": len(self.config.anchor_prompts),
                  "num_target_prompts": len(self.config.target_prompts)}
        return save_spm(self.net, self.model.transformer, path, hyper)

    def train(self, out: str | os.PathLike | None = None, progress: bool = True) -> SPMNetwork:
        start = time.perf_counter()
        bar = tqdm(range(self.step_index, self.config.steps), disable=not progress, desc="erase")
        for _ in bar:
            record = self.step()
            bar.set_postfix(erase=f"{record['erase']:.4f}", anchor=f"{record['anchor']:.4f}")
            if out is not None and self.config.checkpoint_every and self.step_index % self.config.checkpoint_every == 0:
                self.save(out)
        if out is not None:
            self.save(out)
        self.seconds = time.perf_counter() - start
        return self.net

    def close(self) -> SPMNetwork:
        self.net.detach()
        self.net.eval()
        return self.net


def train_spm(model: FlowModel, config: EraseConfig, out: str | os.PathLike | None = None,
              progress: bool = True) -> SPMNetwork:
    """Train membranes for ``config.concepts`` on ``model``; save to ``out`` (atomic); return them detached."""
    trainer = EraseTrainer(model, config)
    try:
        trainer.train(out, progress)
    finally:
        trainer.close()
    return trainer.net
