"""Pluggable reward-model interface and registry.

Conventions
-----------
- ``images``: float tensor in [0, 1], ``B×3×H×W`` (images) or ``B×T×3×H×W`` (videos), any device.
- ``prompts``: ``list[str]`` of length B; ``metadata``: ``list[dict]`` of length B or ``None``.
- ``forward`` returns a :class:`RewardOutput`: ``scores`` float32 ``(B,)``, ``valid`` bool ``(B,)``
  (scores of invalid entries are meaningless and must be ignored), per-term ``components`` and ``info``.
- Higher is better for every reward (``spec.direction == "higher_is_better"``).

Writing a custom reward::

    from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward

    @register_reward("brightness")
    class Brightness(RewardModel):
        spec = RewardSpec(name="brightness", modality="image", needs_prompt=False,
                          differentiable=True, nominal_range=(0.0, 1.0))

        def forward(self, images, prompts, metadata=None):
            self.check_inputs(images, prompts, metadata)
            scores = images.float().mean(dim=(1, 2, 3))
            return RewardOutput.from_scores(scores)

    reward = build_reward("brightness")          # or build_reward("my_pkg.rewards:Brightness")
"""

from __future__ import annotations

import abc
import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import torch

from flowalign.errors import ConfigError, FlowAlignError

Modality = Literal["image", "video", "any"]
_RANGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class RewardSpec:
    """Static description of a reward: what it scores and how its values behave."""

    name: str
    modality: Modality = "image"
    needs_prompt: bool = True
    differentiable: bool = False
    direction: Literal["higher_is_better"] = "higher_is_better"
    nominal_range: tuple[float, float] = (float("-inf"), float("inf"))

    def __post_init__(self) -> None:
        if self.modality not in ("image", "video", "any"):
            raise ConfigError(f"RewardSpec {self.name!r}: modality must be 'image', 'video' or 'any', got {self.modality!r}")
        if self.direction != "higher_is_better":
            raise ConfigError(f"RewardSpec {self.name!r}: direction must be 'higher_is_better', got {self.direction!r}")
        lo, hi = self.nominal_range
        if not lo <= hi:
            raise ConfigError(f"RewardSpec {self.name!r}: nominal_range must satisfy lo <= hi, got {self.nominal_range}")


@dataclass
class RewardOutput:
    """Scores for a batch: ``scores`` float32 (B,), ``valid`` bool (B,), components (B,) each."""

    scores: torch.Tensor
    valid: torch.Tensor
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.scores, torch.Tensor) or self.scores.dim() != 1:
            raise FlowAlignError(f"RewardOutput.scores must be a 1-D tensor (B,), got {_describe(self.scores)}")
        self.scores = self.scores.float()
        if not isinstance(self.valid, torch.Tensor) or self.valid.shape != self.scores.shape:
            raise FlowAlignError(
                f"RewardOutput.valid must be a tensor of shape {tuple(self.scores.shape)}, got {_describe(self.valid)}"
            )
        self.valid = self.valid.to(device=self.scores.device, dtype=torch.bool)
        for key, value in self.components.items():
            if not isinstance(value, torch.Tensor) or value.shape != self.scores.shape:
                raise FlowAlignError(
                    f"RewardOutput.components[{key!r}] must have shape {tuple(self.scores.shape)}, got {_describe(value)}"
                )

    @classmethod
    def from_scores(cls, scores: torch.Tensor, valid: torch.Tensor | None = None, **kwargs: Any) -> "RewardOutput":
        """All-valid output (non-finite scores are marked invalid) from a (B,) tensor."""
        scores = torch.as_tensor(scores).float()
        finite = torch.isfinite(scores.detach())
        valid = finite if valid is None else (torch.as_tensor(valid, device=scores.device).bool() & finite)
        return cls(scores=scores, valid=valid, **kwargs)

    def __len__(self) -> int:
        return self.scores.shape[0]


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


class RewardModel(torch.nn.Module, metaclass=abc.ABCMeta):
    """Abstract base class: subclasses set ``spec`` and implement ``forward(images, prompts, metadata=None)``.

    A subclass that does not implement ``forward`` cannot be instantiated (``TypeError``).
    """

    spec: RewardSpec = RewardSpec(name="reward", modality="any", needs_prompt=False)

    @classmethod
    def create(cls, **kwargs: Any) -> "RewardModel":
        """Build from config keyword arguments (``build_reward`` calls this); weight loaders override it."""
        return cls(**kwargs)

    @abc.abstractmethod
    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None,
                metadata: Sequence[dict] | None = None) -> RewardOutput:
        """Score a batch; see the module docstring for the tensor conventions."""

    @property
    def device(self) -> torch.device:
        for tensor in list(self.parameters()) + list(self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def check_inputs(self, images: torch.Tensor, prompts: Sequence[str] | None,
                     metadata: Sequence[dict] | None = None) -> int:
        """Validate shapes, range, prompts (non-empty if ``spec.needs_prompt``) and modality; return B."""
        name = self.spec.name
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise FlowAlignError(f"reward {name!r}: images must be a float tensor in [0, 1], got {_describe(images)}")
        if images.dim() == 4:
            kind = "image"
        elif images.dim() == 5:
            kind = "video"
        else:
            raise FlowAlignError(
                f"reward {name!r}: images must be B×3×H×W (images) or B×T×3×H×W (videos), got shape {tuple(images.shape)}"
            )
        if images.shape[-3] != 3:
            raise FlowAlignError(f"reward {name!r}: images must have 3 channels at dim -3, got shape {tuple(images.shape)}")
        if self.spec.modality != "any" and kind != self.spec.modality:
            hint = " (wrap it in reward_models.video.VideoReward to score videos)" if kind == "video" else ""
            article = "an" if kind == "image" else "a"
            raise FlowAlignError(f"reward {name!r} scores {self.spec.modality}s but got {article} {kind} batch "
                                 f"of shape {tuple(images.shape)}{hint}")
        if images.numel():
            lo, hi = images.detach().aminmax()
            if lo.item() < -_RANGE_TOLERANCE or hi.item() > 1 + _RANGE_TOLERANCE:
                raise FlowAlignError(f"reward {name!r}: images must lie in [0, 1], got values in [{lo.item():.4g}, {hi.item():.4g}]")
        batch = images.shape[0]
        if self.spec.needs_prompt:
            if prompts is None:
                raise FlowAlignError(f"reward {name!r} needs prompts, got None")
        if prompts is not None:
            if isinstance(prompts, str) or len(prompts) != batch:
                raise FlowAlignError(f"reward {name!r}: prompts must be a list of {batch} strings (one per sample), "
                                     f"got {type(prompts).__name__} of length {len(prompts)}")
            bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
            if bad:
                raise FlowAlignError(f"reward {name!r}: prompts[{bad[0]}] is {type(prompts[bad[0]]).__name__}, expected str")
            empty = [i for i, p in enumerate(prompts) if not p.strip()] if self.spec.needs_prompt else []
            if empty:
                more = f" ({len(empty)} empty in all)" if len(empty) > 1 else ""
                raise FlowAlignError(f"reward {name!r} needs a non-empty prompt for every sample, but "
                                     f"prompts[{empty[0]}] is {prompts[empty[0]]!r}{more}")
        if metadata is not None and len(metadata) != batch:
            raise FlowAlignError(f"reward {name!r}: metadata must have {batch} entries, got {len(metadata)}")
        return batch


# ----------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[RewardModel] | Callable[..., RewardModel]] = {}


def register_reward(name: str) -> Callable:
    """Decorator registering a RewardModel subclass (or a factory returning one) under ``name``."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"register_reward: name must be a non-empty string, got {name!r}")

    def decorator(obj):
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
            raise ConfigError(f"reward name {name!r} is already registered to {_qualname(existing)}")
        _REGISTRY[name] = obj
        return obj

    return decorator


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def registered_rewards() -> list[str]:
    """Sorted names of the registered rewards."""
    return sorted(_REGISTRY)


def registered_reward(name: str) -> type[RewardModel] | Callable[..., RewardModel] | None:
    """The class or factory registered under ``name`` (not built), or None when no reward has that name."""
    return _REGISTRY.get(name)


def import_object(path: str) -> Any:
    """Import ``"package.module:Attribute"`` with an error naming the path."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"import path must look like 'package.module:Name', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"cannot import module {module_name!r} from {path!r}: {err}") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


def _unknown_name_error(name: str) -> ConfigError:
    known = registered_rewards()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown reward {name!r}{hint} Known rewards: {', '.join(known) or '(none)'}; "
                       f"or give a 'module:Class' path")


def _instantiate(target: Any, kwargs: Mapping[str, Any], label: str) -> RewardModel:
    if isinstance(target, RewardModel):
        if kwargs:
            raise ConfigError(f"reward {label!r} is already an instance; it takes no kwargs, got {sorted(kwargs)}")
        return target
    if isinstance(target, type) and issubclass(target, RewardModel):
        if inspect.isabstract(target):
            missing = sorted(getattr(target, "__abstractmethods__", ()))
            raise ConfigError(f"reward {label!r} resolves to the abstract class {_qualname(target)}, "
                              f"which does not implement {', '.join(missing)}")
        reward = target.create(**kwargs)
    elif callable(target) and not isinstance(target, type):
        reward = target(**kwargs)
    else:
        raise ConfigError(f"reward {label!r} resolves to {target!r}, which is neither a RewardModel subclass nor a factory")
    if not isinstance(reward, RewardModel):
        raise ConfigError(f"reward factory {label!r} returned {type(reward).__name__}, expected a RewardModel")
    return reward


def build_reward(spec: str | Mapping[str, Any] | RewardModel, **overrides: Any) -> RewardModel:
    """Build a reward from a registered name, a ``"module:Class"`` path, an instance, or a config dict.

    A config dict is ``{"name": <registered name>, "kwargs": {...}}`` or ``{"target": "module:Class",
    "kwargs": {...}}``; ``overrides`` update ``kwargs``.
    """
    if isinstance(spec, RewardModel):
        return _instantiate(spec, overrides, spec.spec.name)
    if isinstance(spec, str):
        key, kwargs = spec, dict(overrides)
    elif isinstance(spec, Mapping):
        allowed = {"name", "target", "kwargs"}
        extra = set(spec) - allowed
        if extra:
            raise ConfigError(f"reward config has unknown keys {sorted(extra)}; expected {sorted(allowed)}")
        if ("name" in spec) == ("target" in spec):
            raise ConfigError(f"reward config needs exactly one of 'name' or 'target', got keys {sorted(spec)}")
        key = spec.get("name", spec.get("target"))
        if not isinstance(key, str):
            raise ConfigError(f"reward config 'name'/'target' must be a string, got {key!r}")
        raw_kwargs = spec.get("kwargs") or {}
        if not isinstance(raw_kwargs, Mapping):
            raise ConfigError(f"reward config 'kwargs' must be a mapping, got {type(raw_kwargs).__name__}")
        kwargs = {**raw_kwargs, **overrides}
    else:
        raise ConfigError(f"reward spec must be a name, 'module:Class' path, dict or RewardModel, got {type(spec).__name__}")
    if key in _REGISTRY:
        return _instantiate(_REGISTRY[key], kwargs, key)
    if ":" in key:
        return _instantiate(import_object(key), kwargs, key)
    raise _unknown_name_error(key)
