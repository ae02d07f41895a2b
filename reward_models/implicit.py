"""A trained policy's implicit reward, as a ``RewardModel``: preference accuracy of a policy and of reward models
on one table, through ``flowalign reward eval`` (``reward_models.evaluate``) unchanged.

The DPO objective makes r(x, c) = −β·E_{σ,ε}[e_θ(x) − e_ref(x)] the policy's implicit reward, with
e(x) = mean ‖v(x_σ, σ, c) − (ε − x0)‖² the flow-matching error of the image's latent x0 (σ = 1 noise → 0 data),
θ the adapter on and ref the base model (adapter disabled). We estimate it with ``noise_draws`` draws of (σ, ε)
that are the SAME for every image (drawn from ``seed`` alone, σ from the logit-normal density), so that the two
images of a pair share their noise as in training, and a score does not depend on the batch it is computed in.
Higher is better; equal weights give 0 for every image (a tie on every pair: accuracy 1/2).

    flowalign reward eval --manifest heldout_pairs.jsonl --out report \
      --reward '{"target": "reward_models.implicit:ImplicitReward",
                 "kwargs": {"model": "assets/toy-sd3", "lora": "runs/dpo/lora"}}' --reward shapes
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from flowalign.errors import ConfigError
from flowalign.training.flow_matching import SigmaSampling, flow_matching_error, sample_sigmas
from flowalign.training.reference import adapter_disabled, has_adapter
from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward


@register_reward("implicit")
class ImplicitReward(RewardModel):
    """``model``: a pipeline folder / hub id (then ``lora``: a folder saved by training, loaded with diffusers'
    ``load_lora_weights``) or a ``FlowModel`` whose transformer already holds the adapter; ``beta``: the scale
    (> 0; DPO's β gives the trained reward's units); ``noise_draws`` (>= 1) and ``seed``: the shared (σ, ε) draws;
    ``adapter_kwargs``: passed to the model's adapter (e.g. ``collapse_zero_padding`` for the toy model)."""

    spec = RewardSpec(name="implicit", modality="image", needs_prompt=True, differentiable=False)

    def __init__(self, model, lora: str | None = None, beta: float = 1000.0, noise_draws: int = 4, seed: int = 0,
                 adapter_kwargs: dict | None = None) -> None:
        super().__init__()
        if not beta > 0:
            raise ConfigError(f"implicit reward: beta must be > 0, got {beta}")
        if noise_draws < 1:
            raise ConfigError(f"implicit reward: noise_draws must be >= 1, got {noise_draws}")
        if isinstance(model, (str, os.PathLike)):
            from flowalign.models import load_model
            from flowalign.resources import resolve

            model = load_model(resolve(str(model)), **(adapter_kwargs or {}))
            if lora is None:
                raise ConfigError("implicit reward: give 'lora', the trained adapter's folder (e.g. runs/dpo/lora)")
            model.pipeline.load_lora_weights(str(lora))
        elif lora is not None:
            raise ConfigError("implicit reward: 'lora' applies when 'model' is a path")
        if not has_adapter(model.trainable_module()):
            raise ConfigError("implicit reward: the model holds no LoRA adapter; the implicit reward compares the "
                              "adapter with the base model")
        self.flow, self.beta, self.noise_draws, self.seed = model, float(beta), int(noise_draws), int(seed)

    def to(self, *args, **kwargs):
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self.flow.pipeline.to(device)
            self.flow.device = torch.device(device)
            self.flow._prompt_cache.clear()
        return super().to(*args, **kwargs)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, prompts: Sequence[str] | None, metadata=None) -> RewardOutput:
        batch = self.check_inputs(images, prompts, metadata)
        flow = self.flow
        geometry = flow.resolve_geometry(images.shape[-2], images.shape[-1])
        x0 = flow.encode_pixels(images.to(flow.device).float(), geometry)
        cond = flow.encode_prompts(list(prompts))
        gen = torch.Generator().manual_seed(self.seed)
        difference = torch.zeros(batch, device=x0.device)
        for _ in range(self.noise_draws):
            sigma = sample_sigmas(1, gen, SigmaSampling(), x0.device).expand(batch)
            noise = torch.randn((1, *x0.shape[1:]), generator=gen).to(x0).expand_as(x0)
            with adapter_disabled(flow.trainable_module()):
                reference = flow_matching_error(flow, x0, cond, geometry, sigma, noise)
            difference += flow_matching_error(flow, x0, cond, geometry, sigma, noise) - reference
        return RewardOutput.from_scores(-self.beta * difference.cpu() / self.noise_draws)
