"""LoRA adapters on the transformer (peft), saved in diffusers format with their alpha.

A saved folder holds ``pytorch_lora_weights.safetensors`` written by the pipeline class's own
``save_lora_weights`` together with the adapter config (rank, alpha, targets) as metadata, so
``pipe.load_lora_weights(folder)`` restores the trained model at full strength.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

from flowalign.errors import ConfigError

#: attention projections of MMDiT (SD3), Flux and Wan blocks
DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


@dataclass
class LoRAConfig:
    """``enabled=False`` trains the whole transformer instead (full fine-tuning)."""

    enabled: bool = True
    rank: int = 32
    alpha: float = 64.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    init: str = "gaussian"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty; name at least one linear layer (e.g. to_q)")
        if self.dropout != 0.0:
            raise ConfigError(f"lora.dropout must be 0, got {self.dropout}: the policy's rollouts and updates must "
                              "be the same function (ratio == 1 on-policy), so the transformer runs without dropout")


def add_lora(transformer: nn.Module, config: LoRAConfig) -> list[nn.Parameter]:
    """Freeze the transformer, add a LoRA adapter, return the trainable parameters (float32)."""
    transformer.requires_grad_(False)
    if not config.enabled:
        transformer.requires_grad_(True)
        return [p for p in transformer.parameters()]
    names = [name for name, _ in transformer.named_modules()]
    present = [t for t in config.target_modules if any(n == t or n.endswith("." + t) for n in names)]
    typos = [t for t in config.target_modules if t not in present and t not in DEFAULT_TARGETS]
    if typos:
        raise ConfigError(f"lora.target_modules {typos} match no layer of {type(transformer).__name__}")
    if not present:
        raise ConfigError(f"lora.target_modules {config.target_modules} match no layer of {type(transformer).__name__}")
    transformer.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                       init_lora_weights=config.init, target_modules=present))
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def lora_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}


def save_lora(pipeline: DiffusionPipeline, transformer: nn.Module, folder: str | os.PathLike) -> Path:
    """Write the adapter in diffusers format (with its peft config as metadata) into ``folder``."""
    folder = Path(folder)
    type(pipeline).save_lora_weights(
        folder,
        transformer_lora_layers=lora_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
    )
    return folder / LORA_WEIGHTS_NAME


def load_lora_into(transformer: nn.Module, folder: str | os.PathLike) -> None:
    """Load weights saved by ``save_lora`` into an already-added adapter (exact, for resuming)."""
    path = Path(folder) / LORA_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"LoRA weights {str(path)!r} not found")
    state = {k.removeprefix("transformer."): v for k, v in load_file(path).items()}
    result = set_peft_model_state_dict(transformer, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{path} has keys the adapter does not: {unexpected[:5]}")
