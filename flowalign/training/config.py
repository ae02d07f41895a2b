"""The typed configuration of an online RL run (``flowalign train CONFIG [key=value ...]``).

Every section is a dataclass; YAML files and dotted overrides are parsed by ``flowalign.config.load_config``,
which rejects unknown keys (suggesting the closest) before any model loads. ``algorithm.name`` selects the
method; its own fields (e.g. ``algorithm.clip_range``) come from that method's config class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flowalign.algorithms import AlgorithmConfig
from flowalign.algorithms.grpo_guard import GRPOGuardConfig
from flowalign.errors import ConfigError
from flowalign.sampling.dynamics import DynamicsConfig
from flowalign.sampling.schedule import window_placement_problem
from flowalign.training.lora import LoRAConfig

DTYPES = ("float32", "bfloat16", "float16")
OLD_POLICY_SOURCES = ("auto", "rollout", "recompute")


@dataclass
class ModelConfig:
    """``path``: a local pipeline folder or a hub id. Sizes default to the pipeline's."""

    path: str = "assets/toy-sd3"
    dtype: str = "float32"
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    adapter_kwargs: dict[str, bool | int | float | str] = field(default_factory=dict)
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass
class DataConfig:
    """Prompt sources: a built-in set (``toy:train``, ``toy:heldout``), a .txt file (one per line) or a .jsonl
    file (``{"prompt": ..., other metadata}`` per line, metadata passed to the rewards). ``dataset``: offline
    examples for methods that train on them (SFT, offline preference methods): a .jsonl manifest of
    ``{"prompt": ..., "image": path relative to the manifest}`` lines, or ``toy:sft`` (rendered, verifier-perfect
    scenes of the toy training prompts). A dataset line without a prompt or image, or whose image cannot be read,
    is an error naming ``manifest:line``; ``skip_bad: true`` (``flowalign train --skip-bad``) leaves such lines out,
    warns with their count and lists them in ``summary.json`` (``data_skipped``)."""

    train_prompts: str = "toy:train"
    eval_prompts: str = "toy:heldout"
    negative_prompt: str = ""
    dataset: str | None = None
    skip_bad: bool = False


@dataclass
class SamplingConfig:
    """Rollouts: ``prompts_per_iteration`` prompts per process × ``group_size`` samples each."""

    dynamics: str = "flow_sde"
    noise_level: float = 0.7
    log_prob_reduction: str = "mean"
    num_steps: int = 10
    guidance_scale: float = 1.0
    group_size: int = 8
    prompts_per_iteration: int = 4
    rollout_batch_size: int = 16
    share_initial_noise: bool = False
    sde_window_size: int | None = None
    sde_window_range: list[int] | None = None
    train_step_fraction: float = 1.0

    def __post_init__(self) -> None:
        DynamicsConfig(self.dynamics, self.noise_level, self.log_prob_reduction)
        if self.num_steps < 1:
            raise ConfigError(f"sampling.num_steps must be >= 1, got {self.num_steps}")
        if self.group_size < 2:
            raise ConfigError(f"sampling.group_size must be >= 2 (group-relative advantages need a group), "
                              f"got {self.group_size}")
        if self.prompts_per_iteration < 1 or self.rollout_batch_size < 1:
            raise ConfigError("sampling.prompts_per_iteration and sampling.rollout_batch_size must be >= 1")
        if not 0 < self.train_step_fraction <= 1:
            raise ConfigError(f"sampling.train_step_fraction must lie in (0, 1], got {self.train_step_fraction}")
        self._check_window()

    def _check_window(self) -> None:
        """The SDE window must fit the schedule (``window_placement_problem``); a range needs a size."""
        size, window_range = self.sde_window_size, self.sde_window_range
        if size is None:
            if window_range is not None:
                raise ConfigError("sampling.sde_window_range needs sampling.sde_window_size (the window's length)")
            return
        if window_range is not None and len(window_range) != 2:
            raise ConfigError(f"sampling.sde_window_range must be [low, high], got {window_range}")
        low, high = window_range or (0, max(self.num_steps - size, 0))
        if problem := window_placement_problem(self.num_steps, size, low, high):
            field, why = problem
            raise ConfigError(f"sampling.sde_window_{field} {why}")

    @property
    def dynamics_config(self) -> DynamicsConfig:
        return DynamicsConfig(self.dynamics, self.noise_level, self.log_prob_reduction)


@dataclass
class RewardConfig:
    """``weights``: reward name (registered, or "module:Class") → weight; ``kwargs``: name → constructor kwargs."""

    weights: dict[str, float] = field(default_factory=lambda: {"shapes": 1.0})
    kwargs: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.weights:
            raise ConfigError("reward.weights is empty; name at least one reward, e.g. {shapes: 1.0}")
        extra = set(self.kwargs) - set(self.weights)
        if extra:
            raise ConfigError(f"reward.kwargs has entries {sorted(extra)} for rewards not in reward.weights")


@dataclass
class OptimConfig:
    """AdamW on the trainable parameters; ``micro_batch_size`` (sample, step) pairs per forward;
    the iteration's pairs are split into ``steps_per_iteration`` optimizer steps (later ones are off-policy).

    ``old_policy``: where the ratio's old mean μ_old comes from. ``rollout``: stored while sampling.
    ``recompute``: recomputed under the iteration's starting weights in the very micro-batch of the update, so
    that old and new share their numerics (in bf16 a transition's μ depends on the batch it was computed in by
    more than GRPO-Guard's clip range; the first optimizer step then reuses its own forward, and later steps
    cost one extra forward without gradients per pair). ``auto``: ``recompute`` unless model.dtype is float32.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    micro_batch_size: int = 16
    steps_per_iteration: int = 2
    inner_epochs: int = 1
    old_policy: str = "auto"

    def __post_init__(self) -> None:
        if self.old_policy not in OLD_POLICY_SOURCES:
            raise ConfigError(f"optim.old_policy must be one of {', '.join(OLD_POLICY_SOURCES)}, "
                              f"got {self.old_policy!r}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.micro_batch_size < 1 or self.steps_per_iteration < 1 or self.inner_epochs < 1:
            raise ConfigError("optim.micro_batch_size, optim.steps_per_iteration and optim.inner_epochs must be >= 1")


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = 0.9

    def __post_init__(self) -> None:
        if not 0 <= self.decay < 1:
            raise ConfigError(f"ema.decay must lie in [0, 1), got {self.decay}")


@dataclass
class EvalConfig:
    """Held-out evaluation with ODE sampling and fixed seeds: image k shows prompt k mod P (P prompts) with seed
    ``seed + k``, for k < P·samples_per_prompt. More samples per prompt shrink the noise of the mean (one image
    per prompt on 60 prompts leaves a standard error of about 0.03 on a partial-credit reward)."""

    every: int = 5
    num_steps: int = 20
    guidance_scale: float | None = None
    seed: int = 1234
    max_prompts: int | None = None
    samples_per_prompt: int = 1
    batch_size: int = 32
    metrics: list[str] = field(default_factory=list)
    use_ema: bool = True

    def __post_init__(self) -> None:
        for name in ("every", "num_steps", "batch_size", "samples_per_prompt"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"eval.max_prompts must be >= 1 or null, got {self.max_prompts}")


@dataclass
class CheckpointConfig:
    """A checkpoint every ``every`` iterations; the ``keep_last`` newest are kept."""

    every: int = 10
    keep_last: int = 2

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep_last < 1:
            raise ConfigError(f"checkpoint.every and checkpoint.keep_last must be >= 1, got {self.every} and "
                              f"{self.keep_last}")


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb_project: str | None = None
    progress_bar: bool = True
    report: bool = True


@dataclass
class TrainConfig:
    seed: int = 0
    output_dir: str = "runs/train"
    iterations: int = 20
    max_skipped_iterations: int = 3
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    algorithm: AlgorithmConfig = field(default_factory=GRPOGuardConfig)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
