"""Speed, FLOP and memory measurements: rollouts, batched log-prob recomputes with backward, trainer iterations.

Timings are wall-clock ``time.perf_counter`` around device-synchronised calls, after ``warmup`` untimed calls.
FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one transformer row; work is counted in
transformer *rows* (one sample at one σ; CFG makes two rows per sample-step).
"""

from __future__ import annotations

import contextlib
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from flowalign.models.base import Conditioning, FlowModel, Geometry
from flowalign.sampling import DynamicsConfig, SDEWindow, Trajectory, make_generators, recompute_log_probs, rollout

aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


#: attention ops the stock FLOP counter misses (CPU flash attention); arguments arrive as shapes
EXTRA_FLOP_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}


@dataclass
class RolloutSpec:
    """One rollout's settings: P prompts (``cond``) × ``group_size`` samples, ``num_steps`` steps."""

    num_steps: int
    group_size: int
    guidance_scale: float
    dynamics: DynamicsConfig
    window: SDEWindow | None = None
    share_initial_noise: bool = False


# ------------------------------------------------------------------------------------------------ basics
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, iterations: int, warmup: int) -> tuple[list[float], object]:
    """Run ``fn`` ``warmup`` times untimed, then ``iterations`` times timed; (seconds per call, last result)."""
    if iterations < 1 or warmup < 0:
        raise ValueError(f"need iterations >= 1 and warmup >= 0, got {iterations} and {warmup}")
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(iterations):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times, result


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """GPU: ``max_memory_allocated`` since the last reset. CPU: the process's peak RSS (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


@contextlib.contextmanager
def count_rows(model: FlowModel, *, skip_compute: bool = False):
    """Count transformer rows (batch entries of every transformer call); ``skip_compute`` returns zeros instead."""
    counter = {"rows": 0, "calls": 0}
    inner = model._forward

    def forward(x, timestep, tensors, geometry, guidance_scale):
        counter["rows"] += x.shape[0]
        counter["calls"] += 1
        return torch.zeros_like(x) if skip_compute else inner(x, timestep, tensors, geometry, guidance_scale)

    model._forward = forward
    try:
        yield counter
    finally:
        del model._forward


def _median(values: list[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------------------------- rollout
def run_rollout(model: FlowModel, cond: Conditioning, geometry: Geometry, spec: RolloutSpec) -> Trajectory:
    batch = len(cond) * spec.group_size
    return rollout(model, cond, geometry, num_steps=spec.num_steps, dynamics=spec.dynamics,
                   generators=make_generators(range(batch), model.device), guidance_scale=spec.guidance_scale,
                   group_size=spec.group_size, window=spec.window, share_initial_noise=spec.share_initial_noise)


def measure_rollout(model: FlowModel, cond: Conditioning, geometry: Geometry, spec: RolloutSpec, *,
                    iterations: int = 3, warmup: int = 1) -> dict:
    """Images (samples) per second of the rollout of ``cond`` × group; also rows per rollout, the trajectory."""
    with count_rows(model) as counter:
        times, traj = timed(lambda: run_rollout(model, cond, geometry, spec), model.device, iterations, warmup)
    seconds = _median(times)
    return {"images_per_s": traj.batch_size / seconds, "seconds": seconds, "times": times,
            "rows": counter["rows"] // (iterations + warmup), "images": traj.batch_size, "trajectory": traj}


def rollout_rows(model: FlowModel, cond: Conditioning, geometry: Geometry, spec: RolloutSpec) -> int:
    """Transformer rows one rollout issues, counted from a run whose transformer returns zeros (cheap)."""
    with torch.no_grad(), count_rows(model, skip_compute=True) as counter:
        run_rollout(model, cond, geometry, spec)
    return counter["rows"]


def shared_prefix_rows(model: FlowModel, cond: Conditioning, geometry: Geometry, spec: RolloutSpec,
                       window: SDEWindow) -> dict:
    """Rows per rollout with an SDE ``window``, without and with a shared initial noise per group."""
    without = rollout_rows(model, cond, geometry, _with(spec, window=window, share_initial_noise=False))
    shared = rollout_rows(model, cond, geometry, _with(spec, window=window, share_initial_noise=True))
    return {"rows_without": without, "rows_shared": shared, "saving": 1.0 - shared / without,
            "window_start": window.start, "window_size": window.size}


def _with(spec: RolloutSpec, **changes) -> RolloutSpec:
    return RolloutSpec(**{**spec.__dict__, **changes})


# ---------------------------------------------------------------------------------------------- training
def measure_training(model: FlowModel, params: list[torch.nn.Parameter], traj: Trajectory, cond: Conditioning, *,
                     micro_batch_size: int, max_micro_batches: int | None = 4, iterations: int = 3,
                     warmup: int = 1) -> dict:
    """(sample, step) pairs per second of log-prob recompute forward + backward on ``params``, in micro-batches.

    ``cond`` has one row per trajectory sample. A timed pass covers the trajectory's trainable pairs, at most
    ``max_micro_batches`` micro-batches of ``micro_batch_size``.
    """
    samples, steps = traj.trainable_pairs()
    if len(samples) == 0:
        raise ValueError("the trajectory has no trainable (stochastic) steps; use an SDE dynamics")
    limit = len(samples) if max_micro_batches is None else min(len(samples), micro_batch_size * max_micro_batches)
    samples, steps = samples[:limit], steps[:limit]

    def one_pass() -> float:
        total = 0.0
        for micro in torch.split(torch.arange(limit), micro_batch_size):
            result = recompute_log_probs(model, traj, cond, samples[micro], steps[micro])
            loss = -result.log_prob.mean() * len(micro) / limit
            loss.backward()
            total += float(loss.detach())
        for p in params:
            p.grad = None
        return total

    with count_rows(model) as counter:
        times, loss = timed(one_pass, model.device, iterations, warmup)
    seconds = _median(times)
    return {"pairs_per_s": limit / seconds, "seconds": seconds, "times": times, "pairs": limit,
            "rows": counter["rows"] // (iterations + warmup), "loss": loss}


def measure_iteration(trainer, *, iterations: int = 1, warmup: int = 1) -> dict:
    """Seconds per full RL iteration of a ``Trainer`` (rollout, decode, reward, advantages, updates)."""
    device = trainer.device if isinstance(trainer.device, torch.device) else torch.device(trainer.device)
    counter = iter(range(10**9))
    metrics: list[dict] = []

    def one() -> dict:
        m = trainer.train_iteration(next(counter))
        metrics.append(m)
        return m

    times, _ = timed(one, device, iterations, warmup)
    timed_metrics = metrics[warmup:]
    out = {"seconds": _median(times), "times": times, "skipped": sum(m.get("skipped", 0) for m in timed_metrics)}
    for key in ("speed/rollout_images_per_s", "speed/train_pairs_per_s", "train/pairs"):
        values = [m[key] for m in timed_metrics if key in m]
        if values:
            out[key] = _median(values)
    return out


# ------------------------------------------------------------------------------------------------- FLOPs
def transformer_flops_per_row(model: FlowModel, cond: Conditioning, geometry: Geometry, guidance_scale: float, *,
                              backward: bool = False) -> int:
    """FLOPs of one transformer call on ONE row (forward, or forward + backward through the adapter).

    Gradient checkpointing is switched off while counting, so its recompute is not counted (model FLOPs).
    """
    transformer = model.transformer
    x = model.initial_noise(geometry, batch_size=1).to(model.dtype)
    timestep = torch.full((1,), 0.5 * model.num_train_timesteps, device=x.device)
    tensors = {k: v[:1] for k, v in cond.tensors.items()}
    checkpointing = getattr(transformer, "is_gradient_checkpointing", False)
    if checkpointing:
        transformer.disable_gradient_checkpointing()
    try:
        with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
            with torch.set_grad_enabled(backward):
                out = model._forward(x, timestep, tensors, geometry, guidance_scale)
                if backward:
                    out.float().square().mean().backward()
        if backward:
            for p in transformer.parameters():
                p.grad = None
    finally:
        if checkpointing:
            transformer.enable_gradient_checkpointing()
    return int(counter.get_total_flops())


def mfu(flops_per_row: int, rows: int, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOP utilisation: achieved FLOP/s over the device's peak; None without a peak."""
    if not peak_tflops or seconds <= 0:
        return None
    return flops_per_row * rows / seconds / (peak_tflops * 1e12)


def achieved_tflops(flops_per_row: int, rows: int, seconds: float) -> float:
    return flops_per_row * rows / seconds / 1e12 if seconds > 0 else math.nan
