"""Per-sample membrane strength under classifier-free guidance, and centered facilitated transport."""

import pytest
import torch

from flowalign.erasure import FacilitatedTransport, SPMNetwork
from flowalign.models import load_model
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.sampling import make_generators

PROMPTS = ["two red circles", "a blue square"]


def _randomized(model, concepts, seed):
    net = SPMNetwork.for_transformer(model.transformer, concepts).attach(model.transformer)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.membranes.values():
            m.up.copy_(torch.randn(m.up.shape, generator=g) * 0.05)
    return net


def _cfg_velocity(model, prompts, guidance=3.0):
    g = model.default_geometry()
    x = model.initial_noise(g, make_generators([0] * len(prompts)))
    with torch.no_grad():
        return model.velocity(x, 0.6, model.encode_prompts(prompts, with_negative=True), g, guidance)


def test_per_sample_strength_under_cfg_matches_separate_runs():
    """With CFG the transformer batch is [uncond; cond] (2B rows): sample b's γ must apply to rows b and B + b,
    so a batch with γ = (1, 0) equals the two prompts run alone (membrane on / off)."""
    model = load_model(tiny_sd3_pipeline())
    assert model.uses_cfg(3.0)
    net = _randomized(model, ["red"], 2)
    with net.strength(torch.tensor([[1.0], [0.0]])):
        both = _cfg_velocity(model, PROMPTS)
    alone = _cfg_velocity(model, PROMPTS[:1])
    with net.disabled():
        off = _cfg_velocity(model, PROMPTS[1:])
        plain = _cfg_velocity(model, PROMPTS[:1])
    assert not torch.allclose(alone, plain, atol=1e-3)  # the membrane acts
    assert torch.allclose(both[:1], alone, atol=1e-5) and torch.allclose(both[1:], off, atol=1e-5)
    # two concepts, three samples: each sample's (γ_red, γ_blue) row in both CFG halves
    net.detach()
    net2 = _randomized(model, ["red", "blue"], 3)
    prompts = PROMPTS + ["three green squares"]
    gammas = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.0]])
    with net2.strength(gammas):
        batch = _cfg_velocity(model, prompts)
    for i, p in enumerate(prompts):
        with net2.strength(gammas[i]):
            assert torch.allclose(batch[i:i + 1], _cfg_velocity(model, [p]), atol=1e-5), p
    net2.detach()


def _pooled(model, prompts):
    return model.encode_prompts(prompts).tensors["pooled_prompt_embeds"].float()


def test_transport_gamma_uses_the_centered_pooled_cosine():
    """γ = factor · clamp(max(cos(pooled(p) − pooled(""), pooled(c) − pooled("")), overlap)), checked against a
    hand computation on prompts without the concept's token, where centered and raw cosines differ clearly."""
    model = load_model(tiny_sd3_pipeline())
    prompts = ["a blue square", "a blue triangle", "three green squares", "two yellow circles"]
    concepts = ["red", "dog"]
    empty = _pooled(model, [""])
    p, c = _pooled(model, prompts), _pooled(model, concepts)
    unit = torch.nn.functional.normalize
    centered = unit(p - empty, dim=-1) @ unit(c - empty, dim=-1).t()
    raw = unit(p, dim=-1) @ unit(c, dim=-1).t()
    assert (centered - raw).abs().max() > 0.3  # the test separates the two

    transport = FacilitatedTransport(model, concepts, factor=0.5)
    assert (transport.overlap(prompts) == 0).all()
    assert torch.allclose(transport.cosine(prompts), centered, atol=1e-5)
    assert torch.allclose(transport(prompts), 0.5 * centered.clamp(0, 1), atol=1e-5)
    # center=False is the raw cosine
    assert torch.allclose(FacilitatedTransport(model, concepts, center=False).cosine(prompts), raw, atol=1e-5)
    # the concept itself: centered cosine 1
    assert transport.cosine(concepts).diagonal() == pytest.approx([1.0, 1.0], abs=1e-5)
