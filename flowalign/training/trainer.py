"""The one training loop of every online method (GRPO, GRPO-Guard, and the methods built on them).

One iteration: prompts → group rollouts (chunked; decoding and rewards of a chunk overlap the next chunk's
rollout) → rewards → ``algorithm.advantages`` → optimisation over shuffled (sample, step) micro-batches with
``algorithm.loss`` (log-probs recomputed with gradients, many steps per forward) → EMA → metrics → periodic
held-out evaluation (ODE sampling, fixed seeds) → atomic checkpoints. Multi-process runs (``accelerate
launch``) shard prompts across processes (each normalises its own groups' advantages), gather rewards for the
logged statistics, skip an update together when any process must, and average gradients weighted by each
process's number of pairs (the per-pair mean over all processes).
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

from flowalign.algorithms import PolicyBatch, build_algorithm
from flowalign.algorithms.advantages import signal_fraction
from flowalign.config import dump_yaml
from flowalign.errors import ConfigError, FlowAlignError
from flowalign.models import FlowModel, load_model
from flowalign.sampling import (
    DynamicsConfig,
    SDEWindow,
    Trajectory,
    concat_trajectories,
    make_generators,
    recompute_log_probs,
    rollout,
)
from flowalign.training import checkpoint as ckpt
from flowalign.training.config import TrainConfig
from flowalign.training.ema import EMA
from flowalign.training.lora import add_lora, load_lora_into, save_lora
from flowalign.training.metrics import MetricsLogger
from flowalign.training.output_dir import claim_output_dir
from flowalign.training.prompts import load_prompts
from flowalign.training.rewarding import AsyncScorer, ScoredBatch, build_rewards, concat, decode_and_score
from flowalign.training.seeding import derive_seed, derived_generator
from flowalign.utils.io import atomic_dir, save_grid, write_text
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
        if self.algorithm.needs_reference and not config.lora.enabled:
            raise ConfigError("a KL term (algorithm.kl_beta > 0) needs LoRA (lora.enabled: true): the reference "
                              "policy is the transformer with its adapter disabled")
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
        self.history: list[dict] = []
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
        row = {"iteration": step, **{k: float(v) for k, v in metrics.items()}}
        if "eval/reward" in metrics:
            row["eval_at"] = step
        self.history.append(row)
        self.logger.log(step, {k: float(v) for k, v in metrics.items()})

    # ------------------------------------------------------------------------------------------- iteration
    def train_iteration(self, it: int) -> dict[str, float]:
        cfg, s = self.config, self.config.sampling
        start = time.perf_counter()
        prompts, metadata = self.train_set.sample(s.prompts_per_iteration,
                                                  derived_generator(cfg.seed, "prompts", it, self.rank))
        traj, scored, cond = self.sample(prompts, metadata, it)
        rollout_time = time.perf_counter() - start
        rewards, valid = scored.rewards, scored.valid
        metrics = self._reward_metrics(scored)
        if not self._on_every_process(bool(valid.all())):
            invalid = int(self.accelerator.reduce((~valid).sum().to(self.device), reduction="sum"))
            return self._skip(it, f"{invalid} non-finite or invalid rewards", metrics)
        advantages = self.algorithm.advantages(rewards, traj, valid)
        train_start = time.perf_counter()
        opt_metrics, pairs = self.optimize(traj, cond, advantages, it)
        if opt_metrics is None:
            return self._skip(it, "non-finite loss or gradient", metrics)
        self.skipped_in_a_row = 0
        metrics.update(opt_metrics)
        metrics["advantage/nonzero_frac"] = signal_fraction(advantages)
        metrics["speed/rollout_images_per_s"] = traj.batch_size * self.world / max(rollout_time, 1e-9)
        metrics["speed/train_pairs_per_s"] = pairs * self.world / max(time.perf_counter() - train_start, 1e-9)
        metrics["speed/iteration_s"] = time.perf_counter() - start
        if torch.cuda.is_available():
            metrics["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return metrics

    def _reward_metrics(self, scored: ScoredBatch) -> dict[str, float]:
        rewards = self.accelerator.gather(scored.rewards.to(self.device)).float()
        finite = rewards[torch.isfinite(rewards)]
        metrics = {"reward/mean": float(finite.mean()) if finite.numel() else float("nan"),
                   "reward/std": float(finite.std(unbiased=False)) if finite.numel() > 1 else 0.0,
                   "reward/nonfinite": float((~torch.isfinite(rewards)).sum())}
        for key, value in scored.components.items():
            metrics[f"reward/{key}"] = float(value[torch.isfinite(value)].mean()) if value.numel() else float("nan")
        return metrics

    def _skip(self, it: int, why: str, metrics: dict) -> dict:
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

    def sample(self, prompts: list[str], metadata: list[dict], it: int):
        """Group rollouts for ``prompts`` (chunked), rewards overlapped with the next chunk's rollout."""
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
                               group_size=s.group_size, window=window, share_initial_noise=s.share_initial_noise)
                trajectories.append(traj)
                expanded_meta = [m for m in metadata[first : first + chunk] for _ in range(s.group_size)]
                futures.append(scorer.submit(traj.final, self.geometry, traj.prompts, expanded_meta))
            scored = concat([f.result() for f in futures])
        finally:
            scorer.close()
        traj = concat_trajectories(trajectories)
        cond = self.model.encode_prompts(traj.prompts, negative if use_cfg else None, with_negative=use_cfg)
        return traj, scored, cond

    # ---------------------------------------------------------------------------------------- optimisation
    def optimize(self, traj: Trajectory, cond, advantages: torch.Tensor, it: int):
        """PPO-style updates over the iteration's (sample, step) pairs; returns (metrics | None, #pairs)."""
        cfg = self.config
        samples, steps = traj.trainable_pairs()
        per_sample = advantages if advantages.ndim == 1 else advantages.abs().sum(1)
        keep = per_sample[samples] != 0  # groups with equal rewards carry no signal: skip their compute
        samples, steps = samples[keep], steps[keep]
        if cfg.sampling.train_step_fraction < 1.0 and len(samples):
            draw = torch.rand(len(samples), generator=derived_generator(cfg.seed, "steps", it, self.rank))
            keep = draw < cfg.sampling.train_step_fraction
            samples, steps = samples[keep], steps[keep]
        plan = self._update_plan(samples, steps, it)
        old = self._recomputed_old_policy(traj, cond, plan) if self.recompute_old_policy else [None] * len(plan)
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        n_pairs = 0
        for (chunk_samples, chunk_steps), chunk_old in zip(plan, old):
            ok = self._optimizer_step(traj, cond, advantages, chunk_samples, chunk_steps, totals, counts, chunk_old)
            if not ok:
                return None, n_pairs
            n_pairs += len(chunk_samples)
        metrics = {f"train/{k}": v / counts[k] for k, v in totals.items()}
        metrics["train/pairs"] = float(n_pairs)
        return metrics, n_pairs

    def _mean_over_processes(self, value: float) -> float:
        if self.world == 1:
            return float(value)
        return float(self.accelerator.reduce(torch.tensor(float(value), device=self.device), reduction="mean"))

    def _on_every_process(self, flag: bool) -> bool:
        """True when ``flag`` holds on every process (an all-reduce with several processes)."""
        return self._mean_over_processes(float(flag)) == 1.0

    def _update_plan(self, samples: torch.Tensor, steps: torch.Tensor, it: int) -> list[tuple]:
        """(samples, steps) of each optimizer step: ``inner_epochs`` shuffles of the pairs, each split into
        ``steps_per_iteration`` chunks; an empty chunk is kept only with several processes (each process takes
        part in every all-reduce)."""
        optim, plan = self.config.optim, []
        for epoch in range(optim.inner_epochs):
            order = torch.randperm(len(samples), generator=derived_generator(self.config.seed, "order", it, epoch,
                                                                               self.rank))
            plan += [(samples[c], steps[c]) for c in torch.tensor_split(order, optim.steps_per_iteration)
                     if self.world > 1 or len(c)]
        return plan

    def _micro_batches(self, samples: torch.Tensor, steps: torch.Tensor):
        """The (samples, steps) micro-batches of one optimizer step, in order; none for an empty step (a process
        whose groups all had equal rewards still joins the step's all-reduce)."""
        for first in range(0, len(samples), self.config.optim.micro_batch_size):
            yield (samples[first : first + self.config.optim.micro_batch_size],
                   steps[first : first + self.config.optim.micro_batch_size])

    @torch.no_grad()
    def _recomputed_old_policy(self, traj, cond, plan) -> list[list | None]:
        """μ_old and log π_old of every planned micro-batch, computed now (before any update) in the very batch
        the update will use. The first optimizer step is None: its own forward runs at these weights."""
        return [None] + [[(r.mean, r.log_prob) for r in (recompute_log_probs(self.model, traj, cond, s, t)
                                                          for s, t in self._micro_batches(*chunk))]
                         for chunk in plan[1:]]

    def _optimizer_step(self, traj, cond, advantages, samples, steps, totals, counts, old=None) -> bool:
        """One optimizer step over the pairs (samples, steps); ``old`` as from ``_recomputed_old_policy``
        (None with ``optim.old_policy`` rollout: the rollout's means)."""
        self.optimizer.zero_grad(set_to_none=True)
        # the per-pair mean over all processes, after the gradients' mean over processes
        total = self._mean_over_processes(len(samples))
        if total == 0:  # no process has a pair; an Adam step on zero gradients would still move the weights
            return True
        finite = True
        for m, (s, t) in enumerate(self._micro_batches(samples, steps)):
            # no autocast: recomputing in another precision than the rollout's breaks ratio == 1 on-policy
            new = recompute_log_probs(self.model, traj, cond, s, t)
            if not self.recompute_old_policy:
                old_mean, old_log_prob = traj.means[s, t].to(self.device), traj.log_probs[s, t].to(self.device)
            elif old is None:  # the iteration's first step: nothing has changed since the rollout
                old_mean, old_log_prob = new.mean.detach(), new.log_prob.detach()
            else:
                old_mean, old_log_prob = old[m]
            ref_mean = self._reference_mean(traj, cond, s, t) if self.algorithm.needs_reference else None
            sig = traj.sigmas.to(self.device)
            adv = advantages[s] if advantages.ndim == 1 else advantages[s, t]
            batch = PolicyBatch(new=new, old_mean=old_mean, old_log_prob=old_log_prob, advantages=adv.to(self.device),
                                sigma=sig[t.to(self.device)], sigma_next=sig[t.to(self.device) + 1],
                                step_idx=t, reduction=self.dynamics.log_prob_reduction, ref_mean=ref_mean)
            loss, metrics = self.algorithm.loss(batch)
            if not torch.isfinite(loss):
                finite = False
                break
            (loss * len(s) / total).backward()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(s)
                counts[k] = counts.get(k, 0) + len(s)
        if not self._on_every_process(finite):  # one process's non-finite loss skips the step everywhere
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

    @torch.no_grad()
    def _reference_mean(self, traj, cond, s, t) -> torch.Tensor:
        transformer = self.model.transformer
        transformer.disable_adapters()
        try:
            return recompute_log_probs(self.model, traj, cond, s, t).mean
        finally:
            transformer.enable_adapters()

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
                extra = {name: metric(scored.pixels.to(self.device), prompts).scores.float().cpu()
                         for name, metric in self.eval_metrics.items()}
                for j, i in enumerate(idx):
                    row = {"index": i, "reward": float(scored.rewards[j])}
                    row.update({f"{k}": float(v[j]) for k, v in scored.components.items()})
                    row.update({name: float(v[j]) for name, v in extra.items()})
                    rows.append(row)
                if tag is not None and first == 0:
                    grids.append(scored.pixels[:16])
        rows = sorted(gather_object(rows) if self.world > 1 else rows, key=lambda r: r["index"])
        metrics = {}
        for key in (k for k in rows[0] if k != "index"):
            values = [r[key] for r in rows if math.isfinite(r[key])]  # e.g. "position" only where stated
            metrics[f"eval/{key}"] = sum(values) / len(values) if values else float("nan")
        if tag is not None and self.accelerator.is_main_process and grids:
            pixels = grids[0]
            if pixels.ndim == 5:  # videos: one row of frames per sample
                save_grid(pixels[:4].flatten(0, 1), self.out / f"eval_{tag}.png", nrow=pixels.shape[1])
            else:
                save_grid(pixels, self.out / f"eval_{tag}.png", nrow=8)
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
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            torch.save(self.algorithm.state_dict(), folder / "algorithm.pt")
            if self.ema is not None:
                torch.save(self.ema.state_dict(), folder / "ema.pt")

        state = {"skipped_in_a_row": self.skipped_in_a_row, "history": self.history}
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
        self.optimizer.load_state_dict(ckpt.load_tensor_file(folder, "optimizer.pt"))
        self.algorithm.load_state_dict(ckpt.load_tensor_file(folder, "algorithm.pt"))
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.load_tensor_file(folder, "ema.pt"))
        ckpt.set_rng_state(ckpt.load_tensor_file(folder, "rng.pt"))
        self.iteration = int(state["iteration"])
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
        self.history = list(state.get("history", []))

    def summary(self) -> dict:
        evals = [h for h in self.history if "eval/reward" in h]
        out = {"iterations": self.iteration, "output_dir": str(self.out)}
        if evals:
            out["eval_before"] = {k: v for k, v in evals[0].items() if k.startswith("eval/")}
            out["eval_after"] = {k: v for k, v in evals[-1].items() if k.startswith("eval/")}
        return out


def _plain(config: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
