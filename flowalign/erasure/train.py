"""Latent-anchoring training of SPM membranes, in velocity space.

For concept i (its membrane alone on, γ = e_i) and a target prompt t with surrogate s, at x_σ reached by running
the model WITH that membrane on (no gradient) along its Euler ODE from seeded noise to a random σ of the schedule
(prompt t, ``guidance_scale``), as METHODS.md §7 and the original SPM/LECO training do:
    erase  = ‖v'(x, t) − [v(x, s) − η·(v(x, t) − v(x, s))]‖²
    anchor = λ·‖v'(x, a) − v(x, a)‖²   for anchor prompts a and/or random text-embedding directions at t's norm
v = original model (membranes off, no gradient), v' = with the membrane; ‖·‖² is a mean over elements. Both are
conditional velocities (no CFG); a model whose ``guidance_scale`` is not a CFG weight (Flux-dev's embedded
guidance) gets ``guidance_scale`` in them too, as in the partial sampling and at inference.
Target prompts default to the concept itself; with ``target_prompts`` those containing the concept are used and
their surrogate is the prompt with the concept replaced by ``surrogate``.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowalign.errors import ConfigError
from flowalign.erasure.files import save_spm
from flowalign.erasure.membrane import SPMNetwork
from flowalign.models.base import Conditioning, FlowModel


@dataclass
class EraseConfig:
    """Hyper-parameters of one erasure run (one membrane per concept, all saved in one file)."""

    concepts: list[str]
    surrogate: str = ""
    eta: float = 1.0  # how far past the surrogate the target is pushed
    anchor_weight: float = 1.0  # λ
    anchor_prompts: list[str] = field(default_factory=list)
    random_anchors: int = 0  # random text-embedding anchors per step
    anchors_per_step: int = 2  # anchor prompts per step (from anchor_prompts)
    target_prompts: list[str] = field(default_factory=list)
    steps: int = 200
    lr: float = 1e-3
    num_inference_steps: int = 10  # schedule of the partial sampling
    guidance_scale: float = 1.0  # for the partial sampling; embedded guidance (Flux-dev) also for the losses
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
        if self.steps < 1 or self.lr <= 0 or self.num_inference_steps < 1:
            raise ConfigError(f"steps, lr and num_inference_steps must be positive, got {self.steps}, {self.lr}, "
                              f"{self.num_inference_steps}")
        if self.anchor_weight < 0 or self.random_anchors < 0 or self.anchors_per_step < 0:
            raise ConfigError("anchor_weight, random_anchors and anchors_per_step must be >= 0")

    def targets(self, concept: str) -> list[tuple[str, str]]:
        """(target prompt, surrogate prompt) pairs for ``concept``."""
        pattern = re.compile(rf"\b{re.escape(concept)}\b", re.IGNORECASE)
        pairs = [(p, " ".join(pattern.sub(self.surrogate, p).split())) for p in self.target_prompts if pattern.search(p)]
        return pairs or [(concept, self.surrogate)]


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
        self.net = net or SPMNetwork.for_transformer(model.transformer, config.concepts, seed=config.seed)
        self.net.attach(model.transformer)
        self.net.train()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.rng = random.Random(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.geometry = model.resolve_geometry(config.height, config.width)
        self.sigmas = model.schedule(config.num_inference_steps, self.geometry)
        self.step_index = 0
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def partial_sample(self, cond: Conditioning, k: int, concept_index: int) -> Tensor:
        """x at σ_k: Euler ODE from seeded noise, k steps, prompt ``cond``, with concept ``concept_index``'s
        membrane ON (γ = e_i, its current weights, no gradient): the latents the erased model itself visits
        (METHODS.md §7, as in the original SPM/LECO training), so the losses are taken where the SPM acts."""
        x = self.model.initial_noise(self.geometry, [torch.Generator().manual_seed(self.rng.randrange(2**31))])
        cfg = self.model.uses_cfg(self.config.guidance_scale)
        if cfg and not cond.has_negative:
            cond = self.model.encode_prompts(cond.prompts, with_negative=True)
        gamma = torch.zeros(self.net.num_concepts)
        gamma[concept_index] = 1.0
        with self.net.strength(gamma):
            for i in range(k):
                v = self.model.velocity(x, self.sigmas[i], cond, self.geometry, self.config.guidance_scale)
                x = x + (self.sigmas[i + 1] - self.sigmas[i]) * v
        return x

    def loss_guidance(self) -> float:
        """``guidance_scale`` of the loss velocities, which are conditional-only: the configured one where it is no
        CFG weight for this model (Flux-dev's embedded guidance, or CFG ≤ 1), else 1 (SD3: v(x, c), no CFG mix)."""
        g = self.config.guidance_scale
        return 1.0 if self.model.uses_cfg(g) else g

    def losses(self, concept_index: int) -> dict[str, Tensor]:
        """Erase and anchor losses for one concept at one partially sampled latent."""
        cfg, model = self.config, self.model
        target, surrogate = self.rng.choice(cfg.targets(cfg.concepts[concept_index]))
        t_cond, s_cond = model.encode_prompts([target]), model.encode_prompts([surrogate])
        k = self.rng.randrange(cfg.num_inference_steps)
        x, sigma = self.partial_sample(t_cond, k, concept_index), self.sigmas[k]
        anchors = [model.encode_prompts([a]).tensors for a in
                   self.rng.sample(cfg.anchor_prompts, min(cfg.anchors_per_step, len(cfg.anchor_prompts)))]
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
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        self.step_index += 1
        record = {k: float(v.detach()) for k, v in losses.items()} | {"step": self.step_index, "concept": concept_index}
        self.history.append(record)
        return record

    def save(self, path: str | os.PathLike) -> Path:
        hyper = dataclasses.asdict(self.config) | {"trained_steps": self.step_index}
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
