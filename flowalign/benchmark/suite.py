"""The whole benchmark: build the model, a real ``Trainer`` with LoRA, then measure and collect every number."""

from __future__ import annotations

import platform
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import diffusers
import torch
from accelerate import Accelerator

from flowalign.benchmark import measure as m
from flowalign.benchmark.models import BenchModel, build_bench_model, parse_dtype
from flowalign.errors import ConfigError
from flowalign.models import Geometry
from flowalign.sampling import DynamicsConfig, SDEWindow
from reward_models.base import RewardModel, RewardOutput, RewardSpec

PROMPTS = ["a red circle on a white background", "two blue squares side by side", "a green triangle above a line",
           "three yellow circles in a row", "a cat sitting on a wooden chair", "a city street at night in the rain",
           "a bowl of fruit on a kitchen table", "a mountain lake at sunrise"]


class Brightness(RewardModel):
    """Mean pixel value: a reward that costs nothing next to the model (images or videos)."""

    spec = RewardSpec(name="bench_brightness", modality="any", needs_prompt=False, nominal_range=(0.0, 1.0))

    def forward(self, images, prompts, metadata=None):
        self.check_inputs(images, prompts, metadata)
        return RewardOutput.from_scores(images.float().flatten(1).mean(1))


@dataclass
class BenchConfig:
    """Every CLI option; ``None`` sizes come from the model (its JSON ``defaults`` or builder)."""

    model: str | None = "tiny-sd3"
    arch: str | None = None
    scale_down: bool = False
    overrides: dict = field(default_factory=dict)  # component → {config key: value}, for --arch
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    steps: int = 10
    group_size: int = 4
    prompts: int = 2
    guidance_scale: float | None = None
    noise_level: float = 0.7
    window_size: int | None = None  # None: every step stochastic
    window_start: int | None = None  # None: middle of the schedule
    share_initial_noise: bool = False
    micro_batch_size: int = 8
    train_micro_batches: int = 4
    lora_rank: int = 32
    iterations: int = 3
    warmup: int = 1
    trainer_iterations: int = 1
    skip_iteration: bool = False
    gradient_checkpointing: bool = False
    peak_tflops: float | None = None  # None: 989 (H100 bf16 dense) on CUDA, not reported on CPU
    seed: int = 0

    def check(self) -> None:
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"unknown --device {self.device!r}; expected cpu or cuda")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but torch sees no CUDA device")
        if self.dtype is not None:
            parse_dtype(self.dtype)
        for name in ("steps", "group_size", "prompts", "micro_batch_size", "train_micro_batches", "lora_rank",
                     "iterations", "trainer_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")
        if self.group_size < 2 and not self.skip_iteration:
            raise ConfigError("--group-size must be >= 2 for a training iteration (group-relative advantages)")
        if self.window_size is not None and not 1 <= self.window_size <= self.steps:
            raise ConfigError(f"--window-size must lie in [1, --steps={self.steps}], got {self.window_size}")

    @property
    def resolved_dtype(self) -> str:
        return self.dtype or ("float32" if self.device == "cpu" else "bfloat16")

    @property
    def resolved_peak(self) -> float | None:
        if self.peak_tflops is not None:
            return self.peak_tflops or None
        return 989.0 if self.device.startswith("cuda") else None


def _window(cfg: BenchConfig, size: int) -> SDEWindow:
    start = cfg.window_start if cfg.window_start is not None else (cfg.steps - size) // 2
    return SDEWindow(start, size)


def _trainer(cfg: BenchConfig, bench: BenchModel, geometry: Geometry, guidance: float, folder: Path):
    from flowalign.training.config import (DataConfig, EMAConfig, EvalConfig, LoggingConfig, ModelConfig,
                                           OptimConfig, SamplingConfig, TrainConfig)
    from flowalign.training.lora import LoRAConfig
    from flowalign.training.trainer import Trainer

    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    window = _window(cfg, cfg.window_size) if cfg.window_size else None
    config = TrainConfig(
        seed=cfg.seed, output_dir=str(folder / "run"), iterations=1,
        model=ModelConfig(path="unused", dtype=cfg.resolved_dtype, height=geometry.height, width=geometry.width,
                          num_frames=geometry.num_frames, gradient_checkpointing=cfg.gradient_checkpointing),
        lora=LoRAConfig(rank=cfg.lora_rank, alpha=2.0 * cfg.lora_rank),
        data=DataConfig(train_prompts=str(prompts), eval_prompts=str(prompts)),
        sampling=SamplingConfig(num_steps=cfg.steps, group_size=max(cfg.group_size, 2), noise_level=cfg.noise_level,
                                prompts_per_iteration=cfg.prompts, rollout_batch_size=cfg.prompts * cfg.group_size,
                                guidance_scale=guidance, share_initial_noise=cfg.share_initial_noise,
                                sde_window_size=cfg.window_size,
                                sde_window_range=[window.start, window.start] if window else None),
        optim=OptimConfig(micro_batch_size=cfg.micro_batch_size, steps_per_iteration=1),
        ema=EMAConfig(enabled=False),
        eval=EvalConfig(max_prompts=1),
        logging=LoggingConfig(tensorboard=False, progress_bar=False, report=False),
    )
    accelerator = Accelerator(cpu=cfg.device == "cpu")
    return Trainer(config, model=bench.model, reward=Brightness(), accelerator=accelerator)


def run_benchmark(cfg: BenchConfig, log=print) -> dict:
    """Run every measurement; returns a JSON-ready dict (``results``, ``environment``, ``config``, ``notes``)."""
    cfg.check()
    device = torch.device(cfg.device)
    dtype = parse_dtype(cfg.resolved_dtype)
    log(f"building {cfg.arch or cfg.model} on {device} in {cfg.resolved_dtype} ...")
    bench = build_bench_model(cfg.model if cfg.arch is None else None, cfg.arch, device=device, dtype=dtype,
                              scale_down=cfg.scale_down, overrides=cfg.overrides)
    model = bench.model
    geometry = replace(bench.geometry, height=cfg.height or bench.geometry.height,
                       width=cfg.width or bench.geometry.width,
                       num_frames=cfg.num_frames or bench.geometry.num_frames)
    guidance = cfg.guidance_scale if cfg.guidance_scale is not None else bench.guidance_scale
    use_cfg = model.uses_cfg(guidance)
    with tempfile.TemporaryDirectory(prefix="flowalign-bench-") as tmp:
        trainer = _trainer(cfg, bench, geometry, guidance, Path(tmp))  # adds LoRA (and checkpointing)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(cfg.prompts)]
        cond = model.encode_prompts(prompts, with_negative=use_cfg)
        spec = m.RolloutSpec(cfg.steps, cfg.group_size, guidance, DynamicsConfig("flow_sde", cfg.noise_level),
                             _window(cfg, cfg.window_size) if cfg.window_size else None, cfg.share_initial_noise)
        r: dict = {}

        log("rollout ...")
        m.reset_peak_memory(device)
        roll = m.measure_rollout(model, cond, geometry, spec, iterations=cfg.iterations, warmup=cfg.warmup)
        r["memory_rollout_gib"] = m.peak_memory_gib(device)
        traj = roll.pop("trajectory")
        r["rollout"] = roll

        log("training forward + backward ...")
        rows_cond = model.encode_prompts(traj.prompts, with_negative=use_cfg)
        m.reset_peak_memory(device)
        train = m.measure_training(model, trainer.params, traj, rows_cond, micro_batch_size=cfg.micro_batch_size,
                                   max_micro_batches=cfg.train_micro_batches, iterations=cfg.iterations,
                                   warmup=cfg.warmup)
        r["memory_train_gib"] = m.peak_memory_gib(device)
        r["train"] = train
        del traj

        log("FLOPs ...")
        fwd = m.transformer_flops_per_row(model, cond, geometry, guidance)
        fwd_bwd = m.transformer_flops_per_row(model, cond, geometry, guidance, backward=True)
        peak = cfg.resolved_peak
        r["flops"] = {"forward_per_row": fwd, "forward_backward_per_row": fwd_bwd,
                      "rollout_tflops_per_s": m.achieved_tflops(fwd, roll["rows"], roll["seconds"]),
                      "train_tflops_per_s": m.achieved_tflops(fwd_bwd, train["rows"], train["seconds"]),
                      "rollout_mfu": m.mfu(fwd, roll["rows"], roll["seconds"], peak),
                      "train_mfu": m.mfu(fwd_bwd, train["rows"], train["seconds"], peak), "peak_tflops": peak}

        prefix_window = _window(cfg, min(cfg.window_size or 2, cfg.steps))
        r["shared_prefix"] = m.shared_prefix_rows(model, cond, geometry, spec, prefix_window)

        if not cfg.skip_iteration:
            log("full RL iteration (Trainer.train_iteration) ...")
            m.reset_peak_memory(device)
            r["iteration"] = m.measure_iteration(trainer, iterations=cfg.trainer_iterations, warmup=cfg.warmup)
            r["memory_iteration_gib"] = m.peak_memory_gib(device)
        trainer.logger.close()
    return {"results": r, "environment": environment(cfg, bench, geometry, guidance, cond, trainer.params),
            "config": asdict(cfg), "notes": bench.notes, "model": bench.label, "model_info": bench.info}


def environment(cfg: BenchConfig, bench: BenchModel, geometry: Geometry, guidance: float, cond, params) -> dict:
    model = bench.model
    device = torch.device(cfg.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    embeds = cond.tensors["prompt_embeds"]
    return {
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "device": str(device), "device_name": name, "cpu_threads": torch.get_num_threads(),
        "dtype": cfg.resolved_dtype, "family": model.family, "geometry": asdict(geometry),
        "guidance_scale": guidance, "cfg_rows_per_sample_step": 2 if model.uses_cfg(guidance) else 1,
        "latent_shape": list(model.latent_shape(geometry)), "text_tokens": int(embeds.shape[1]),
        "transformer_params": sum(p.numel() for n, p in model.transformer.named_parameters() if "lora_" not in n),
        "lora_params": sum(p.numel() for p in params),
        "gradient_checkpointing": cfg.gradient_checkpointing,
    }
