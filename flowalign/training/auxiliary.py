"""Small auxiliary networks on (latent x_σ, σ, pooled text): critics and process reward models (a scalar per
sample) or classifiers (logits), each bundled with its own AdamW optimizer.

Architecture: a latent encoder chosen by the latent's layout — images (C, H, W): two 3×3 convolutions (the
second with stride 2) and an adaptive average pool to ``pool``×``pool``; video (C, T, H, W): the same in 3-D
(pooled to 1×``pool``×``pool``); packed tokens (L, D) (Flux): a per-token MLP, then the mean and the max over
tokens — plus a sinusoidal embedding of σ·1000 and a linear map of the pooled text, concatenated and fed to an
MLP. SiLU activations keep the output smooth in x (process rewards are differentiated w.r.t. the latent).
Inputs are cast to float32; the network runs in float32.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowalign.errors import ConfigError
from flowalign.models.base import FlowModel, Geometry
from flowalign.sampling.dynamics import per_sample

#: averages the gradients of the given parameters across processes, in place
GradientAverager = Callable[[Iterable[nn.Parameter]], None]


@dataclass(frozen=True)
class AuxiliaryConfig:
    """``outputs``: 1 for a scalar head (critic, process reward; forward returns (B,)), K > 1 for K logits
    (B, K). ``text``: whether the pooled text is an input. ``hidden``: channels / widths; ``pool``: spatial grid
    the latent features are pooled to; ``sigma_dim``: size of the sinusoidal σ embedding (even)."""

    outputs: int = 1
    hidden: int = 64
    pool: int = 4
    sigma_dim: int = 32
    text: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        for name in ("outputs", "hidden", "pool", "sigma_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"auxiliary.{name} must be >= 1, got {getattr(self, name)}")
        if self.sigma_dim % 2:
            raise ConfigError(f"auxiliary.sigma_dim must be even (sin and cos halves), got {self.sigma_dim}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"auxiliary.lr must be a finite number > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"auxiliary.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise ConfigError(f"auxiliary.betas must be two numbers in [0, 1), got {self.betas}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"auxiliary.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")


def sinusoidal_embedding(sigma: Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> Tensor:
    """[sin(σ·scale·f_k), cos(σ·scale·f_k)] with f_k = max_period^(−k/(dim/2)), k < dim/2 → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    angles = sigma.float()[:, None] * scale * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def _latent_encoder(latent_shape: tuple[int, ...], hidden: int, pool: int) -> tuple[nn.Module, int]:
    """The latent branch for a per-sample ``latent_shape`` and the size of its output features."""
    if len(latent_shape) == 3:  # (C, H, W)
        return nn.Sequential(
            nn.Conv2d(latent_shape[0], hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
        ), hidden * pool * pool
    if len(latent_shape) == 4:  # (C, T, H, W)
        return nn.Sequential(
            nn.Conv3d(latent_shape[0], hidden, 3, padding=1), nn.SiLU(),
            nn.Conv3d(hidden, hidden, 3, stride=(1, 2, 2), padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool3d((1, pool, pool)), nn.Flatten(),
        ), hidden * pool * pool
    if len(latent_shape) == 2:  # packed tokens (L, D)
        return _TokenEncoder(latent_shape[1], hidden), 2 * hidden
    raise ConfigError(f"auxiliary network: latent shape {latent_shape} is none of (C, H, W), (C, T, H, W), (L, D)")


class _TokenEncoder(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.mlp(tokens)
        return torch.cat([h.mean(1), h.amax(1)], dim=1)


class AuxiliaryNet(nn.Module):
    """f(x_σ, σ, text) → (B,) (``outputs`` = 1) or (B, outputs) logits. ``latent_shape``: one sample's latent
    shape (no batch dimension); ``text_dim``: size of the pooled text (ignored when ``config.text`` is off)."""

    def __init__(self, latent_shape: tuple[int, ...], text_dim: int, config: AuxiliaryConfig = AuxiliaryConfig()):
        super().__init__()
        self.config = config
        self.latent_shape = tuple(latent_shape)
        self.text_dim = text_dim if config.text else 0
        if config.text and text_dim < 1:
            raise ConfigError(f"auxiliary network: text_dim must be >= 1 when text is an input, got {text_dim}")
        self.latent, latent_features = _latent_encoder(self.latent_shape, config.hidden, config.pool)
        self.latent_proj = nn.Linear(latent_features, config.hidden)
        self.sigma_proj = nn.Linear(config.sigma_dim, config.hidden)
        self.text_proj = nn.Linear(self.text_dim, config.hidden) if config.text else None
        branches = 3 if config.text else 2
        self.head = nn.Sequential(
            nn.SiLU(), nn.Linear(branches * config.hidden, config.hidden), nn.SiLU(),
            nn.Linear(config.hidden, config.hidden), nn.SiLU(), nn.Linear(config.hidden, config.outputs),
        )

    @classmethod
    def for_model(cls, model: FlowModel, geometry: Geometry, config: AuxiliaryConfig = AuxiliaryConfig()
                  ) -> AuxiliaryNet:
        """Sized for ``model``'s latents at ``geometry`` and its ``pooled_text`` (measured on the prompt "")."""
        text_dim = model.pooled_text(model.encode_prompts([""])).shape[1] if config.text else 0
        return cls(model.latent_shape(geometry), text_dim, config).to(model.device)

    def forward(self, latents: Tensor, sigma: float | Tensor, text: Tensor | None = None) -> Tensor:
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"auxiliary network built for latents {self.latent_shape}, got {tuple(latents.shape[1:])}")
        batch = latents.shape[0]
        sigma = per_sample(sigma, batch, latents.device)
        parts = [self.latent_proj(self.latent(latents.float())),
                 self.sigma_proj(sinusoidal_embedding(sigma, self.config.sigma_dim))]
        if self.text_proj is not None:
            if text is None or text.shape != (batch, self.text_dim):
                got = None if text is None else tuple(text.shape)
                raise ValueError(f"auxiliary network needs pooled text ({batch}, {self.text_dim}), got {got}")
            parts.append(self.text_proj(text.float()))
        out = self.head(torch.cat(parts, dim=1))
        return out[:, 0] if self.config.outputs == 1 else out


class AuxiliaryTrainer:
    """An ``AuxiliaryNet`` with its own AdamW optimizer, gradient clipping and step count.

    ``update(loss)`` runs backward, an optional ``average_gradients(params)`` (multi-process averaging), clipping
    and one optimizer step. ``regression_step`` / ``classification_step`` are the two usual losses.
    """

    def __init__(self, net: AuxiliaryNet):
        self.net = net
        cfg = net.config
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.steps = 0

    def update(self, loss: Tensor, average_gradients: GradientAverager | None = None) -> dict[str, float]:
        """One optimizer step on ``loss``; returns {"loss", "grad_norm"} (the norm before clipping)."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"auxiliary network loss is not finite ({float(loss)}); no step taken")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.net.parameters() if p.grad is not None]
        if average_gradients is not None:
            average_gradients(params)
        max_norm = self.net.config.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
        self.optimizer.step()
        self.steps += 1
        return {"loss": float(loss.detach()), "grad_norm": float(grad_norm)}

    def regression_step(self, latents: Tensor, sigma: float | Tensor, text: Tensor | None, targets: Tensor,
                        weights: Tensor | None = None, average_gradients: GradientAverager | None = None
                        ) -> dict[str, float]:
        """Mean (optionally ``weights``-weighted) squared error of the scalar output against ``targets`` (B,)."""
        if self.net.config.outputs != 1:
            raise ConfigError(f"regression needs a scalar head (outputs=1), this network has {self.net.config.outputs}")
        err = (self.net(latents, sigma, text) - targets.float()) ** 2
        loss = err.mean() if weights is None else (err * weights).sum() / weights.sum()
        return self.update(loss, average_gradients)

    def classification_step(self, latents: Tensor, sigma: float | Tensor, text: Tensor | None, labels: Tensor,
                            average_gradients: GradientAverager | None = None) -> dict[str, float]:
        """Mean cross-entropy of the logits against integer ``labels`` (B,)."""
        if self.net.config.outputs < 2:
            raise ConfigError("classification needs outputs >= 2 logits, this network has 1")
        return self.update(F.cross_entropy(self.net(latents, sigma, text), labels.long()), average_gradients)

    def state_dict(self) -> dict:
        """Network weights, optimizer state and step count: copies, unaffected by later training steps."""
        return copy.deepcopy({"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "steps": self.steps})

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s weights, optimizer state and step count (the state is copied in)."""
        state = copy.deepcopy(state)
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
