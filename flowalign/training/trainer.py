"""The one training loop of every method: the services a method uses and everything around its update.

``Trainer`` owns the run: model and LoRA adapter, AdamW and EMA, rewards, the offline dataset when the method
reads one, held-out evaluation (ODE sampling, fixed seeds), metrics (with the samples seen), atomic checkpoints
of every trainable module, optimizer and method state, exact resume, the final model and the report. Each
iteration calls ``algorithm.train_iteration(trainer, it)``; the method (``flowalign.algorithms``) uses the
services below: ``sample_iteration``/``sample`` (group rollouts, chunked; decoding and rewards of a chunk overlap
the next chunk's rollout; optional ``RolloutHooks``), ``dataset_batch``, ``reward_metrics``, ``micro_batches``,
``apply_update``, ``reference``/``reference_step`` and ``skip``. Multi-process runs (``accelerate launch``)
shard prompts across processes, gather rewards for the logged statistics, skip an update together when any
process must, and average gradients weighted by each process's share (``apply_update``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from flowalign.algorithms import build_algorithm
from flowalign.config import dump_yaml
from flowalign.errors import ConfigError, FlowAlignError
from flowalign.models import FlowModel, load_model
from flowalign.sampling import (
    DynamicsConfig,
    RolloutHooks,
    SDEWindow,
    StepResult,
    concat_trajectories,
    make_generators,
    recompute_log_probs,
    rollout,
)
from flowalign.training import checkpoint as ckpt
from flowalign.training.config import TrainConfig
from flowalign.training.ema import EMA
from flowalign.training.eval_images import save_eval_images
from flowalign.training.lora import add_lora, load_lora_into, save_lora
from flowalign.training.metrics import MetricsLogger
from flowalign.training.output_dir import claim_output_dir
from flowalign.training.prompts import load_prompts
from flowalign.training.reference import adapter_disabled
from flowalign.training.rewarding import AsyncScorer, ScoredBatch, build_rewards, concat, decode_and_score
from flowalign.training.seeding import derive_seed, derived_generator
from flowalign.utils.io import atomic_dir, write_text
from reward_models.base import RewardModel, build_reward

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TrainingError(FlowAlignError):
    """Training cannot go on (e.g. rewards or losses non-finite too many times in a row)."""


class Trainer:
    """Build with a config (and optionally a ready pipeline/model or reward for tests), then ``run()``."""

    def __init__(self, config: TrainConfig, *, model: FlowModel | DiffusionPipeline | None = None,
                 reward: RewardModel | None = None, accelerator: Accelerator | None = None,
                 resume: str | None = None, overwrite: bool = False):
        """``resume``: None (fresh run), "latest" (the newest checkpoint; fresh if none) or a checkpoint folder.
        A fresh run into an output_dir that holds another run raises ``ConfigError`` unless ``overwrite`` (which
        deletes that run's outputs); this is checked before the model loads."""
        self.config = config
        self.out = Path(config.output_dir)
        # cheap validation first: prompts, algorithm and rewards fail before any model loads
        self.train_set = load_prompts(config.data.train_prompts)
        self.eval_set = load_prompts(config.data.eval_prompts).head(config.eval.max_prompts)
        self.algorithm = build_algorithm(config.algorithm)
        self.algorithm.validate(config)
        self.dataset = self.algorithm.load_dataset(config) if config.data.dataset else None
        report_skipped(self.dataset)
        self.reward = reward if reward is not None else build_rewards(config.reward)
        self.eval_metrics = {name: build_reward(name) for name in config.eval.metrics}
        self.accelerator = accelerator or Accelerator()
        if self.accelerator.mixed_precision != "no":
            warnings.warn(f"accelerate mixed precision {self.accelerator.mixed_precision!r} is not used: the "
                          f"transformer runs in model.dtype ({config.model.dtype}) in rollouts and updates alike, so "
                          "that the on-policy ratio is exactly 1; set model.dtype=bfloat16 to train in bf16",
                          stacklevel=2)
        self.device = self.accelerator.device
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        resume_from = claim_output_dir(self.out, resume, overwrite, self.accelerator)

        torch.manual_seed(derive_seed(config.seed, "init"))
        dtype = DTYPES[config.model.dtype]
        if model is None or isinstance(model, DiffusionPipeline):
            model = load_model(model if model is not None else config.model.path, device=self.device,
                               torch_dtype=dtype, **config.model.adapter_kwargs)
        self.model = model
        model.encode_batch_size = 1  # a prompt's embedding must not depend on its batch: exact resumes
        self.reward.to(self.device)
        for metric in self.eval_metrics.values():
            metric.to(self.device)
        for name, component in model.pipeline.components.items():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False).eval()
        self.params = add_lora(model.transformer, config.lora)
        self.recompute_old_policy = config.optim.old_policy == "recompute" or (
            config.optim.old_policy == "auto" and model.transformer.dtype != torch.float32)
        if config.model.gradient_checkpointing:
            model.transformer.enable_gradient_checkpointing()
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.ema = EMA(self.params, config.ema.decay) if config.ema.enabled else None
        self.geometry = model.resolve_geometry(config.model.height, config.model.width, config.model.num_frames)
        self.dynamics = config.sampling.dynamics_config
        self.iteration = 0
        self.skipped_in_a_row = 0
        self.samples_seen = 0
        self.wall_time_s = 0.0  # training and evaluation time over all sessions of this run (resumes add up)
        self.history: list[dict] = []
        self.algorithm.setup(self)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        self.logger = MetricsLogger(self.out / "logs", tensorboard=config.logging.tensorboard,
                                    wandb_project=config.logging.wandb_project, config=_plain(config),
                                    enabled=self.accelerator.is_main_process,
                                    resume_step=None if resume_from is None else self.iteration)
        if self.accelerator.is_main_process:
            dump_yaml(config, self.out / "config.yaml")

    # ------------------------------------------------------------------------------------------------- run
    def run(self) -> dict:
        """Train until ``config.iterations``; evaluates before training and at the end; returns the summary."""
        cfg = self.config
        session_start, wall_before = time.perf_counter(), self.wall_time_s
        if self.iteration == 0 and not any(h.get("eval_at") == 0 for h in self.history):
            self._log(0, self.evaluate(tag="before"))
        bar = tqdm(range(self.iteration, cfg.iterations), initial=self.iteration, total=cfg.iterations,
                   disable=not (cfg.logging.progress_bar and self.accelerator.is_main_process), desc="train")
        for it in bar:
            metrics = self.train_iteration(it)
            self.iteration = it + 1
            if self.iteration % cfg.eval.every == 0 or self.iteration == cfg.iterations:
                final = self.iteration == cfg.iterations
                metrics.update(self.evaluate(tag="after" if final else None))
            self.wall_time_s = wall_before + time.perf_counter() - session_start
            self._log(self.iteration, metrics)
            bar.set_postfix(reward=f"{metrics.get('reward/mean', float('nan')):.3f}",
                            img_s=f"{metrics.get('speed/rollout_images_per_s', 0):.1f}")
            if self.iteration % cfg.checkpoint.every == 0 or self.iteration == cfg.iterations:
                self.save_checkpoint()
        summary = self.summary()
        if self.accelerator.is_main_process:
            self.save_final_model()
            write_text(self.out / "summary.json", json.dumps(summary, indent=2))
            if cfg.logging.report:
                from flowalign.training.run_report import write_run_report

                write_run_report(self.out, summary)
        self.logger.close()
        return summary

    def _log(self, step: int, metrics: dict) -> None:
        metrics = {**metrics, "samples/seen": self.samples_seen}
        row = {"iteration": step, **{k: float(v) for k, v in metrics.items()}}
        if "eval/reward" in metrics:
            row["eval_at"] = step
        self.history.append(row)
        self.logger.log(step, {k: float(v) for k, v in metrics.items()})

    # ------------------------------------------------------------------------------------------- iteration
    def train_iteration(self, it: int) -> dict[str, float]:
        """One iteration of the configured method (``algorithm.train_iteration``), timed."""
        start = time.perf_counter()
        metrics = self.algorithm.train_iteration(self, it)
        if not metrics.get("skipped"):
            self.skipped_in_a_row = 0
        metrics["speed/iteration_s"] = time.perf_counter() - start
        if torch.cuda.is_available():
            metrics["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return metrics

    def reward_metrics(self, scored: ScoredBatch) -> dict[str, float]:
        """Mean/std of the (gathered) rewards, the non-finite count and each component's mean."""
        rewards = self.accelerator.gather(scored.rewards.to(self.device)).float()
        finite = rewards[torch.isfinite(rewards)]
        metrics = {"reward/mean": float(finite.mean()) if finite.numel() else float("nan"),
                   "reward/std": float(finite.std(unbiased=False)) if finite.numel() > 1 else 0.0,
                   "reward/nonfinite": float((~torch.isfinite(rewards)).sum())}
        for key, value in scored.components.items():
            metrics[f"reward/{key}"] = float(value[torch.isfinite(value)].mean()) if value.numel() else float("nan")
        return metrics

    def skip(self, it: int, why: str, metrics: dict) -> dict:
        """Record an iteration whose update was skipped; stop after ``max_skipped_iterations`` in a row."""
        self.skipped_in_a_row += 1
        metrics["skipped"] = 1.0
        tqdm.write(f"iteration {it}: skipped the update ({why}); {self.skipped_in_a_row} in a row")
        if self.skipped_in_a_row > self.config.max_skipped_iterations:
            last = ckpt.list_checkpoints(self.out)
            where = f"the last checkpoint is {last[-1]}" if last else "no checkpoint was written yet"
            self.logger.close()
            raise TrainingError(f"stopping: {why} in {self.skipped_in_a_row} consecutive iterations "
                                f"(max_skipped_iterations={self.config.max_skipped_iterations}); {where}")
        return metrics

    # -------------------------------------------------------------------------------------------- sampling
    def _window(self, it: int) -> SDEWindow | None:
        s = self.config.sampling
        if s.sde_window_size is None:
            return None
        low, high = s.sde_window_range or (0, s.num_steps - s.sde_window_size)
        return SDEWindow.random(s.num_steps, s.sde_window_size, low=low, high=high,
                                generator=derived_generator(self.config.seed, "window", it))

    def iteration_prompts(self, it: int) -> tuple[list[str], list[dict]]:
        """This process's training prompts of iteration ``it`` and their metadata (one per group)."""
        generator = derived_generator(self.config.seed, "prompts", it, self.rank)
        return self.train_set.sample(self.config.sampling.prompts_per_iteration, generator)

    def sample_iteration(self, it: int, hooks: RolloutHooks | None = None):
        """The group rollouts of ``iteration_prompts(it)`` (see ``sample``)."""
        prompts, metadata = self.iteration_prompts(it)
        return self.sample(prompts, metadata, it, hooks=hooks)

    def sample(self, prompts: list[str], metadata: list[dict], it: int, hooks: RolloutHooks | None = None):
        """Group rollouts for ``prompts`` (chunked), rewards overlapped with the next chunk's rollout.
        Returns (trajectory, scored rewards, conditioning with one row per sample); counts the samples seen."""
        s = self.config.sampling
        use_cfg = self.model.uses_cfg(s.guidance_scale)
        negative = self.config.data.negative_prompt
        window = self._window(it)
        chunk = max(1, s.rollout_batch_size // s.group_size)
        scorer = AsyncScorer(self.model, self.reward)
        trajectories, futures = [], []
        try:
            for first in range(0, len(prompts), chunk):
                part = prompts[first : first + chunk]
                cond = self.model.encode_prompts(part, negative if use_cfg else None, with_negative=use_cfg)
                seeds = [derive_seed(self.config.seed, "rollout", it, self.rank, first * s.group_size + j)
                         for j in range(len(part) * s.group_size)]
                traj = rollout(self.model, cond, self.geometry, num_steps=s.num_steps, dynamics=self.dynamics,
                               generators=make_generators(seeds, self.device), guidance_scale=s.guidance_scale,
                               group_size=s.group_size, window=window, share_initial_noise=s.share_initial_noise,
                               hooks=hooks)
                trajectories.append(traj)
                expanded_meta = [m for m in metadata[first : first + chunk] for _ in range(s.group_size)]
                futures.append(scorer.submit(traj.final, self.geometry, traj.prompts, expanded_meta))
            scored = concat([f.result() for f in futures])
        finally:
            scorer.close()
        traj = concat_trajectories(trajectories)
        self.count_samples(traj.batch_size)
        cond = self.model.encode_prompts(traj.prompts, negative if use_cfg else None, with_negative=use_cfg)
        return traj, scored, cond

    def dataset_batch(self, n: int, it: int, *parts: object):
        """``n`` offline examples of iteration ``it`` from ``data.dataset`` (this process's draw; ``parts`` tell
        several draws of one iteration apart): (prompts, pixels (n,3,H,W) in [0, 1] at the run's geometry,
        metadata). Counts the samples seen."""
        if self.dataset is None:
            raise ConfigError("this method draws offline examples but data.dataset is not set")
        index = self.dataset.sample(n, derived_generator(self.config.seed, "dataset", it, self.rank, *parts))
        pixels = self.dataset.images(index, (self.geometry.height, self.geometry.width))
        self.count_samples(len(index))
        return [self.dataset.prompts[i] for i in index], pixels.to(self.device), [self.dataset.metadata[i]
                                                                                  for i in index]

    def count_samples(self, n: int) -> None:
        """Add this process's ``n`` samples (rollouts or offline examples) to the run's total over processes."""
        self.samples_seen += n * self.world

    # ---------------------------------------------------------------------------------------- optimisation
    def mean_over_processes(self, value: float) -> float:
        if self.world == 1:
            return float(value)
        return float(self.accelerator.reduce(torch.tensor(float(value), device=self.device), reduction="mean"))

    def on_every_process(self, flag: bool) -> bool:
        """True when ``flag`` holds on every process (an all-reduce with several processes)."""
        return self.mean_over_processes(float(flag)) == 1.0

    def micro_batches(self, samples: torch.Tensor, steps: torch.Tensor):
        """The (samples, steps) micro-batches of one optimizer step, in order; none for an empty step (a process
        whose groups all had equal rewards still joins the step's all-reduce)."""
        size = self.config.optim.micro_batch_size
        for first in range(0, len(samples), size):
            yield samples[first : first + size], steps[first : first + size]

    def apply_update(self, finite: bool, totals: dict[str, float], counts: dict[str, int]) -> bool:
        """Finish an optimizer step whose gradients are accumulated in ``self.params``: skip it everywhere when
        ``finite`` is False on any process, average gradients over processes, clip to ``optim.max_grad_norm``
        (logged as grad_norm into ``totals``/``counts``), step AdamW and the EMA. Returns whether it stepped."""
        if not self.on_every_process(finite):  # one process's non-finite loss skips the step everywhere
            self.optimizer.zero_grad(set_to_none=True)
            return False
        if self.world > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad = self.accelerator.reduce(p.grad, reduction="mean")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.max_grad_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        totals["grad_norm"] = totals.get("grad_norm", 0.0) + float(grad_norm)
        counts["grad_norm"] = counts.get("grad_norm", 0) + 1
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        return True

    def reference(self) -> contextlib.AbstractContextManager:
        """The reference policy: the transformer with its adapter disabled, for the ``with`` block."""
        if not self.config.lora.enabled:
            raise ConfigError("the reference policy is the transformer with its adapter disabled: it needs LoRA "
                              "(lora.enabled: true)")
        return adapter_disabled(self.model.transformer)

    @torch.no_grad()
    def reference_step(self, traj, cond, s, t) -> StepResult:
        """The reference policy's transitions (``recompute_log_probs`` with the adapter disabled)."""
        with self.reference():
            return recompute_log_probs(self.model, traj, cond, s, t)

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, tag: str | None = None) -> dict[str, float]:
        """Held-out prompts, ODE sampling, fixed seeds; the training reward, its components and extra metrics."""
        cfg = self.config
        guidance = cfg.eval.guidance_scale if cfg.eval.guidance_scale is not None else cfg.sampling.guidance_scale
        use_cfg = self.model.uses_cfg(guidance)
        num_prompts = len(self.eval_set)
        indices = list(range(self.rank, num_prompts * cfg.eval.samples_per_prompt, self.world))
        rows, grids = [], []
        with self.evaluated_weights():
            for first in range(0, len(indices), cfg.eval.batch_size):
                idx = indices[first : first + cfg.eval.batch_size]
                prompts = [self.eval_set.prompts[i % num_prompts] for i in idx]
                cond = self.model.encode_prompts(prompts, cfg.data.negative_prompt if use_cfg else None,
                                                 with_negative=use_cfg)
                traj = rollout(self.model, cond, self.geometry, num_steps=cfg.eval.num_steps,
                               dynamics=DynamicsConfig("ode", 0.0),
                               generators=make_generators([cfg.eval.seed + i for i in idx], self.device),
                               guidance_scale=guidance)
                scored = decode_and_score(self.model, self.reward, traj.final, self.geometry, prompts,
                                          [self.eval_set.metadata[i % num_prompts] for i in idx])
                extra = {}
                for name, metric in self.eval_metrics.items():  # each metric's score and its components
                    out = metric(scored.pixels.to(self.device), prompts)
                    extra[name] = out.scores.float().cpu()
                    extra.update({f"{name}/{k}": v.float().cpu() for k, v in out.components.items()})
                for j, i in enumerate(idx):
                    row = {"index": i, "reward": float(scored.rewards[j])}
                    row.update({f"{k}": float(v[j]) for k, v in scored.components.items()})
                    row.update({name: float(v[j]) for name, v in extra.items()})
                    rows.append(row)
                if tag is not None and first == 0:
                    shown = idx[:16]
                    grids.append((scored.pixels[:16], prompts[:16], [cfg.eval.seed + i for i in shown]))
        rows = sorted(gather_object(rows) if self.world > 1 else rows, key=lambda r: r["index"])
        metrics = {}
        for key in (k for k in rows[0] if k != "index"):
            values = [r[key] for r in rows if math.isfinite(r[key])]  # e.g. "position" only where stated
            metrics[f"eval/{key}"] = sum(values) / len(values) if values else float("nan")
        if tag is not None and self.accelerator.is_main_process and grids:
            save_eval_images(self.out, tag, *grids[0])  # the same prompts and seeds before and after
        return metrics

    # ------------------------------------------------------------------------------------------ checkpoints
    def evaluated_weights(self) -> contextlib.AbstractContextManager:
        """The weights evaluation uses: the EMA's when it is on and ``eval.use_ema``, else the trained ones."""
        use_ema = self.ema is not None and self.config.eval.use_ema
        return self.ema.swapped() if use_ema else contextlib.nullcontext()

    def save_final_model(self) -> Path:
        """The trained model as evaluated (see ``evaluated_weights``), written atomically: ``lora/`` for diffusers'
        ``load_lora_weights``, or ``transformer/`` (``save_pretrained``) after full fine-tuning."""
        name = "lora" if self.config.lora.enabled else "transformer"
        with self.evaluated_weights(), atomic_dir(self.out / name) as tmp:
            if self.config.lora.enabled:
                save_lora(self.model.pipeline, self.model.transformer, tmp)
            else:
                self.model.transformer.save_pretrained(tmp)
        return self.out / name

    def save_checkpoint(self) -> Path | None:
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        cfg = self.config

        def write(folder: Path) -> None:
            if cfg.lora.enabled:
                save_lora(self.model.pipeline, self.model.transformer, folder / "lora")
            else:
                save_file({n: p.detach().cpu().contiguous() for n, p in self.model.transformer.named_parameters()},
                          folder / "transformer.safetensors")
            ckpt.write_state(folder, "optimizer", self.optimizer.state_dict())
            ckpt.write_state(folder, "algorithm", self.algorithm.state_dict())
            if self.ema is not None:
                ckpt.write_state(folder, "ema", self.ema.state_dict())

        state = {"skipped_in_a_row": self.skipped_in_a_row, "samples_seen": self.samples_seen,
                 "wall_time_s": self.wall_time_s, "history": self.history}
        return ckpt.save_checkpoint(self.out, self.iteration, write, state, cfg.checkpoint.keep_last)

    def load_checkpoint(self, folder: Path) -> None:
        state = ckpt.read_state(folder)
        if self.config.lora.enabled:
            load_lora_into(self.model.transformer, folder / "lora")
        else:
            path = folder / "transformer.safetensors"
            if not path.is_file():
                raise ckpt.CheckpointError(f"checkpoint {str(folder)!r} is incomplete: {path.name} is missing")
            try:
                weights = load_file(path)
            except Exception as err:  # noqa: BLE001 — any safetensors failure means a corrupt file
                raise ckpt.CheckpointError(f"checkpoint file {str(path)!r} is corrupt ({err})") from err
            result = self.model.transformer.load_state_dict(weights, strict=False)  # parameters only, no buffers
            buffers = {name for name, _ in self.model.transformer.named_buffers()}
            missing = sorted(set(result.missing_keys) - buffers)
            if missing or result.unexpected_keys:
                raise ckpt.CheckpointError(
                    f"checkpoint {str(folder)!r} does not fit this transformer: missing {missing[:5]}"
                    f"{'…' if len(missing) > 5 else ''}, unexpected {sorted(result.unexpected_keys)[:5]}")
        self.optimizer.load_state_dict(ckpt.read_state_file(folder, "optimizer"))
        self.algorithm.load_state_dict(ckpt.read_state_file(folder, "algorithm"))
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.read_state_file(folder, "ema"))
        ckpt.set_rng_state(ckpt.read_state_file(folder, ckpt.RNG_STATE))
        self.iteration = int(state["iteration"])
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
        self.samples_seen = int(state.get("samples_seen", 0))
        self.wall_time_s = float(state.get("wall_time_s", 0.0))
        self.history = list(state.get("history", []))

    def summary(self) -> dict:
        evals = [h for h in self.history if "eval/reward" in h]
        out = {"iterations": self.iteration, "output_dir": str(self.out), "algorithm": self.config.algorithm.name,
               "samples_seen": self.samples_seen, "wall_time_s": round(self.wall_time_s, 3)}
        if self.dataset is not None and self.dataset.skipped:
            out["data_skipped"] = [{"line": source, "why": why} for source, why in self.dataset.skipped]
        if evals:
            out["eval_before"] = {k: v for k, v in evals[0].items() if k.startswith("eval/")}
            out["eval_after"] = {k: v for k, v in evals[-1].items() if k.startswith("eval/")}
        return out


def report_skipped(dataset, shown: int = 5) -> None:
    """Warn about the dataset lines left out by ``data.skip_bad`` (the first ``shown`` of them, with why)."""
    if dataset is None or not dataset.skipped:
        return
    listed = "; ".join(f"{source}: {why}" for source, why in dataset.skipped[:shown])
    more = f"; and {len(dataset.skipped) - shown} more" if len(dataset.skipped) > shown else ""
    warnings.warn(f"data.skip_bad: left out {len(dataset.skipped)} bad line(s) of {dataset.name}: {listed}{more} "
                  "(all listed in summary.json's data_skipped)", stacklevel=2)


def _plain(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
