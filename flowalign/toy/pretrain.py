"""Pretraining of the toy SD3 pipeline on shapes-world scenes of the TRAIN split.

Phase 1 trains the VAE (MSE reconstruction + tiny KL) and sets its shift/scale from latent statistics.
Phase 2 trains the MMDiT and both CLIP text towers with flow matching: x_σ = (1−σ)·x0 + σ·ε, target
v = ε − x0, σ ~ logit-normal(0, 1); prompts dropped to "" with probability ``p_uncond`` (for CFG). With
``foreground_weight`` > 0 the squared error is weighted towards latent pixels on or beside a shape (see
``foreground_weights``), normalised by the mean weight.
The flow learning rate warms up linearly over ``warmup`` steps, then stays constant (``lr_schedule="constant"``)
or decays to 0 along a half cosine (``"cosine"``). With ``init_from`` (an exported toy pipeline folder) the VAE
phase is skipped and the flow phase continues from that pipeline's weights and step count (its
``pretrain_config.json``) with a fresh optimiser, so the data stream goes on where it stopped; warmup and decay
then span only the continued steps.
Every step draws its data and noise from (seed, phase, step) only, so a resumed run repeats exactly.
The resumable state is ``run_dir/checkpoint.safetensors`` (tensors) + ``checkpoint.json`` (the rest), each written
atomically and read without unpickling (``flowalign.utils.safe_state``); a ``checkpoint.pt`` from before that
format is read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusion3Pipeline

from flowalign.errors import ConfigError
from flowalign.models import sd3_attention as collapsed_attention
from flowalign.toy.export import finalize_pipeline_folder
from flowalign.toy.architecture import ToyArchitecture, build_toy_pipeline
from flowalign.toy.scenes import SceneConfig, generate_scenes
from flowalign.utils.safe_state import load_state, load_weights_only, save_state

CHECKPOINT = "checkpoint"  # run_dir/checkpoint.json + checkpoint.safetensors
N_T5_PAD = 256  # zeros the pipeline appends without T5 (its default max_sequence_length)
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class PretrainConfig:
    """All knobs of a pretraining run."""

    seed: int = 0
    vae_steps: int = 400
    flow_steps: int = 4000
    vae_batch: int = 32
    flow_batch: int = 32
    vae_lr: float = 1e-3
    flow_lr: float = 5e-4
    text_lr: float = 2e-4
    warmup: int = 100
    kl_weight: float = 1e-6
    p_uncond: float = 0.1
    foreground_weight: float = 0.0  # >0: latent pixels on or next to a shape weigh 1 + this in the flow loss
    ema_decay: float = 0.999
    log_every: int = 25
    checkpoint_every: int = 200
    snapshot_every: int = 0  # >0: export the EMA pipeline to run_dir/snapshots/step_N every N flow steps
    threads: int = 1
    lr_schedule: str = "constant"  # after warmup: "constant", or "cosine" decay to 0 at flow_steps
    init_from: str | None = None  # an exported toy pipeline folder: continue its flow phase (skips the VAE phase)
    arch: ToyArchitecture = field(default_factory=ToyArchitecture)
    scenes: SceneConfig = field(default_factory=SceneConfig)

    def __post_init__(self) -> None:
        if self.scenes.image_size != self.arch.image_size:
            raise ConfigError(f"scenes.image_size ({self.scenes.image_size}) must equal arch.image_size "
                              f"({self.arch.image_size})")
        for key in ("vae_steps", "flow_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("vae_batch", "flow_batch", "log_every", "checkpoint_every", "threads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.foreground_weight < 0:
            raise ConfigError(f"foreground_weight must be >= 0, got {self.foreground_weight}")
        if not 0 <= self.p_uncond < 1:
            raise ConfigError(f"p_uncond must be in [0, 1), got {self.p_uncond}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")


def _rng(seed: int, phase: int, step: int) -> tuple[list[int], torch.Generator]:
    key = [seed, phase, step]
    return key, torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


def foreground_weights(x: torch.Tensor, factor: int, weight: float) -> torch.Tensor:
    """B×1×h×w loss weights for images ``x`` (B×3×H×W in [−1, 1], white background) and latents ``factor``
    times smaller: 1 + ``weight`` on latent pixels that hold or touch (8-neighbourhood) a non-background pixel."""
    on = ((x - 1).abs().amax(dim=1, keepdim=True) > 0.1).float()
    near = F.max_pool2d(F.max_pool2d(on, factor), 3, stride=1, padding=1)
    return 1 + weight * near


def _scenes(cfg: PretrainConfig, key: list[int], n: int) -> tuple[torch.Tensor, list[str]]:
    images, prompts, _ = generate_scenes(n, key, "train", cfg.scenes)
    return images * 2 - 1, prompts


class Pretrainer:
    """Holds the pipeline, optimisers and EMA; ``run`` trains to the configured steps, resuming if possible."""

    def __init__(self, cfg: PretrainConfig, run_dir: str | os.PathLike, log=print):
        self.cfg, self.run_dir, self.log = cfg, Path(run_dir), log
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.run_dir / f"{CHECKPOINT}.json"  # beside it: checkpoint.safetensors
        self.legacy_ckpt_path = self.run_dir / f"{CHECKPOINT}.pt"
        torch.set_num_threads(cfg.threads)
        self.pipe = build_toy_pipeline(cfg.arch, cfg.seed)
        self.vae_step = self.flow_step = self.flow_start = 0
        self.losses: list[dict] = []
        self.vae_opt = torch.optim.AdamW(self.pipe.vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        groups = [{"params": list(self.pipe.transformer.parameters()), "lr": cfg.flow_lr, "weight_decay": 0.01}]
        groups.append({"params": list(self.pipe.text_encoder.parameters()) + list(self.pipe.text_encoder_2.parameters()),
                       "lr": cfg.text_lr, "weight_decay": 0.0})
        self.flow_opt = torch.optim.AdamW(groups)
        self.ema = self._flow_modules_state()
        if self.ckpt_path.exists() or self.legacy_ckpt_path.exists():
            self._load()
        elif cfg.init_from is not None:
            self._init_from(Path(cfg.init_from))

    def _init_from(self, folder: Path) -> None:
        """Start from an exported toy pipeline: its VAE (calibration included), transformer and text towers (the
        EMA starts there too) and its flow step count; the optimiser starts fresh."""
        made_path = folder / "pretrain_config.json"
        if not made_path.is_file():
            raise ConfigError(f"init_from {str(folder)!r} is not an exported toy pipeline: {made_path.name} is missing")
        made = json.loads(made_path.read_text())
        if made["flow_step"] >= self.cfg.flow_steps:
            raise ConfigError(f"init_from {str(folder)!r} is already at flow step {made['flow_step']}; flow_steps "
                              f"({self.cfg.flow_steps}) must be larger (it counts the source's steps too)")
        source = StableDiffusion3Pipeline.from_pretrained(str(folder), dtype=torch.float32)
        try:
            self.pipe.vae.load_state_dict(source.vae.state_dict())
            for name, module in self._flow_modules().items():
                module.load_state_dict(getattr(source, name).state_dict())
        except RuntimeError as err:
            raise ConfigError(f"init_from {str(folder)!r} does not have this config's architecture ({err})") from err
        self.pipe.vae.register_to_config(shift_factor=source.vae.config.shift_factor,
                                         scaling_factor=source.vae.config.scaling_factor)
        self.ema = self._flow_modules_state()
        self.vae_step, self.flow_step = self.cfg.vae_steps, int(made["flow_step"])
        self.flow_start = self.flow_step
        self.log(json.dumps({"init_from": str(folder), "flow_step": self.flow_step}))

    # --- state -------------------------------------------------------------------------------------
    def _flow_modules(self):
        return {"transformer": self.pipe.transformer, "text_encoder": self.pipe.text_encoder,
                "text_encoder_2": self.pipe.text_encoder_2}

    def _flow_modules_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {k: {n: t.detach().clone() for n, t in m.state_dict().items()} for k, m in self._flow_modules().items()}

    def state(self) -> dict:
        return {"config": asdict(self.cfg), "vae_step": self.vae_step, "flow_step": self.flow_step,
                "flow_start": self.flow_start,
                "vae": self.pipe.vae.state_dict(), "vae_config": dict(self.pipe.vae.config),
                "vae_opt": self.vae_opt.state_dict(), "flow_opt": self.flow_opt.state_dict(),
                "modules": {k: m.state_dict() for k, m in self._flow_modules().items()},
                "ema": self.ema, "losses": self.losses}

    def save_checkpoint(self) -> None:
        save_state(self.state(), self.run_dir, CHECKPOINT)

    def _load(self) -> None:
        path = self.ckpt_path if self.ckpt_path.exists() else self.legacy_ckpt_path  # .pt: the format before
        state = load_state(self.run_dir, CHECKPOINT) if path == self.ckpt_path else load_weights_only(path)
        made = state["config"]  # fields added since a checkpoint was written held their defaults then
        made_arch = {**asdict(ToyArchitecture()), **made["arch"]}
        made_scenes = {**asdict(SceneConfig()), **made.get("scenes", {})}
        expected = (self.cfg.seed, asdict(self.cfg.arch), asdict(self.cfg.scenes))
        if (made["seed"], made_arch, made_scenes) != expected:
            raise ConfigError(f"checkpoint {path} was made with another seed, architecture or scene "
                              "config; use a fresh run directory")
        self.vae_step, self.flow_step = state["vae_step"], state["flow_step"]
        self.flow_start = state.get("flow_start", 0)
        self.pipe.vae.load_state_dict(state["vae"])
        self.pipe.vae.register_to_config(shift_factor=state["vae_config"]["shift_factor"],
                                         scaling_factor=state["vae_config"]["scaling_factor"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.flow_opt.load_state_dict(state["flow_opt"])
        for k, m in self._flow_modules().items():
            m.load_state_dict(state["modules"][k])
        self.ema, self.losses = state["ema"], state["losses"]
        self.log(json.dumps({"resumed": str(path), "vae_step": self.vae_step, "flow_step": self.flow_step}))

    # --- phase 1: VAE --------------------------------------------------------------------------------
    def vae_loss(self, step: int) -> torch.Tensor:
        key, gen = _rng(self.cfg.seed, 1, step)
        x, _ = _scenes(self.cfg, key, self.cfg.vae_batch)
        vae = self.pipe.vae
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean.pow(2) + post.var - 1 - post.logvar).mean()
        return F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x) + self.cfg.kl_weight * kl

    @torch.no_grad()
    def calibrate_vae(self) -> None:
        """SD3 convention: latents = (mean − shift) · scale have mean 0 and std 1 on the data."""
        key, _ = _rng(self.cfg.seed, 9, 0)
        x, _ = _scenes(self.cfg, key, 256)
        z = self.pipe.vae.encode(x).latent_dist.mean
        shift, std = float(z.mean()), float(z.std())
        self.pipe.vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
        self.log(json.dumps({"vae_calibration": {"shift_factor": shift, "scaling_factor": 1.0 / std}}))

    # --- phase 2: flow matching --------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device="cpu", do_classifier_free_guidance=False,
            max_sequence_length=1)
        return embeds, pooled

    def flow_loss(self, step: int) -> torch.Tensor:
        key, gen = _rng(self.cfg.seed, 2, step)
        x, prompts = _scenes(self.cfg, key, self.cfg.flow_batch)
        drop = torch.rand(len(prompts), generator=gen) < self.cfg.p_uncond
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        vae = self.pipe.vae
        with torch.no_grad():
            x0 = (vae.encode(x).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
        sigma = torch.sigmoid(torch.randn(len(prompts), generator=gen))
        eps = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        xs = (1 - s) * x0 + s * eps
        embeds, pooled = self.encode(prompts)
        v = self.pipe.transformer(hidden_states=xs, timestep=sigma * 1000, encoder_hidden_states=embeds,
                                  pooled_projections=pooled, return_dict=False)[0]
        if self.cfg.foreground_weight == 0:
            return F.mse_loss(v, eps - x0)
        w = foreground_weights(x, self.cfg.arch.vae_factor, self.cfg.foreground_weight)
        return ((v - (eps - x0)).pow(2) * w).mean() / w.mean()

    def _update_ema(self) -> None:
        decay = min(self.cfg.ema_decay, (1 + self.flow_step) / (10 + self.flow_step))
        for k, m in self._flow_modules().items():
            for n, t in m.state_dict().items():
                e = self.ema[k][n]
                if t.dtype.is_floating_point:
                    e.mul_(decay).add_(t.detach(), alpha=1 - decay)
                else:
                    e.copy_(t)

    def _lr_scale(self) -> float:
        """Multiplier of the flow learning rates for the step about to run (counted from ``flow_start``)."""
        done, span = self.flow_step - self.flow_start, self.cfg.flow_steps - self.flow_start
        scale = min(1.0, (done + 1) / self.cfg.warmup) if self.cfg.warmup > 0 else 1.0
        if self.cfg.lr_schedule == "cosine":
            scale *= 0.5 * (1 + math.cos(math.pi * done / span))
        return scale

    # --- loop ------------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> list[dict]:
        """Train to the configured steps (or ``stop_after`` more steps, for tests); returns the loss log."""
        cfg, budget, t0 = self.cfg, stop_after, time.time()
        self.pipe.vae.train()
        while self.vae_step < cfg.vae_steps and budget != 0:
            loss = self.vae_loss(self.vae_step)
            self._step(self.vae_opt, loss, self.pipe.vae.parameters())
            self.vae_step += 1
            budget = None if budget is None else budget - 1
            self._record("vae", self.vae_step, loss, t0, cfg.vae_steps)
            if self.vae_step == cfg.vae_steps:
                self.calibrate_vae()
                self.save_checkpoint()
        self.pipe.vae.eval().requires_grad_(False)
        collapsed_attention.install(self.pipe.transformer, N_T5_PAD)
        for m in self._flow_modules().values():
            m.train()
        try:
            while self.flow_step < cfg.flow_steps and budget != 0:
                for g, base in zip(self.flow_opt.param_groups, (cfg.flow_lr, cfg.text_lr)):
                    g["lr"] = base * self._lr_scale()
                loss = self.flow_loss(self.flow_step)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite flow loss at step {self.flow_step}; last checkpoint kept")
                self._step(self.flow_opt, loss, [p for g in self.flow_opt.param_groups for p in g["params"]])
                self.flow_step += 1
                self._update_ema()
                budget = None if budget is None else budget - 1
                self._record("flow", self.flow_step, loss, t0, cfg.flow_steps)
                if cfg.snapshot_every and self.flow_step % cfg.snapshot_every == 0:
                    self.export(self.run_dir / "snapshots" / f"step_{self.flow_step:05d}")
        finally:
            collapsed_attention.uninstall(self.pipe.transformer)
            for m in self._flow_modules().values():
                m.eval()
        return self.losses

    def _step(self, opt, loss, params) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params), 1.0)
        opt.step()

    def _record(self, phase: str, step: int, loss: torch.Tensor, t0: float, total: int) -> None:
        self.losses.append({"phase": phase, "step": step, "loss": float(loss.detach())})
        if step % self.cfg.log_every == 0 or step == total:
            recent = [r["loss"] for r in self.losses[-self.cfg.log_every:] if r["phase"] == phase]
            self.log(json.dumps({"phase": phase, "step": step, "loss": round(sum(recent) / len(recent), 5),
                                 "elapsed_s": round(time.time() - t0, 1)}))
        if step % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()

    # --- export ----------------------------------------------------------------------------------------
    def ema_pipeline(self) -> StableDiffusion3Pipeline:
        pipe = copy.deepcopy(self.pipe)
        collapsed_attention.uninstall(pipe.transformer)
        for k, m in {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder,
                     "text_encoder_2": pipe.text_encoder_2}.items():
            m.load_state_dict(self.ema[k])
            m.eval()
        return pipe

    def export(self, out: str | os.PathLike) -> Path:
        """Save the EMA pipeline with ``save_pretrained`` (written to a temp folder, then renamed)."""
        out = Path(out)
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            import shutil
            shutil.rmtree(tmp)
        self.ema_pipeline().save_pretrained(tmp)
        (tmp / "pretrain_config.json").write_text(json.dumps(
            {"config": asdict(self.cfg), "flow_step": self.flow_step, "vae_step": self.vae_step}, indent=1))
        finalize_pipeline_folder(tmp, self.pipe.transformer.config.joint_attention_dim, self.cfg.seed)
        if out.exists():
            import shutil
            shutil.rmtree(out)
        os.replace(tmp, out)
        return out

