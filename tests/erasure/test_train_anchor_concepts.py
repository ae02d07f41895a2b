"""Latent anchoring keeps anchor prompts in place, and every concept of a multi-concept SPM gets trained."""

import torch

from flowalign.erasure.train import EraseConfig, EraseTrainer
from flowalign.models import load_model
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.sampling import make_generators

ANCHORS = ["a blue square", "two green circles"]


def _drift(model, net, prompts):
    """Mean ‖v'(x, a) − v(x, a)‖² of the trained membranes (γ = 1) against the original model, over a few σ."""
    g = model.default_geometry()
    x = model.initial_noise(g, make_generators([3] * len(prompts)))
    cond = model.encode_prompts(prompts)
    net.attach(model.transformer)
    try:
        total = 0.0
        with torch.no_grad():
            for sigma in (0.9, 0.6, 0.3):
                with net.strength(1.0):
                    on = model.velocity(x, sigma, cond, g)
                with net.disabled():
                    off = model.velocity(x, sigma, cond, g)
                total += float(((on - off) ** 2).mean())
    finally:
        net.detach()
    return total / 3


def test_anchor_loss_keeps_anchor_velocities_close_to_the_original():
    """METHODS.md §7: λ·‖v'(x, a) − v(x, a)‖² enters the loss. The same short run with λ = 1 moves the anchors'
    velocities far less than with λ = 0 (same seed, same latents, same erase targets)."""
    model = load_model(tiny_sd3_pipeline())
    drift = {}
    for weight in (1.0, 0.0):
        trainer = EraseTrainer(model, EraseConfig(["red"], anchor_prompts=ANCHORS, anchor_weight=weight, steps=6,
                                                  lr=2e-2, num_inference_steps=3, height=32, width=32))
        trainer.train(progress=False)
        trainer.close()
        if weight > 0:
            # the anchor term is part of the loss (from step 2 on: the zero-init membranes are a no-op at step 1)
            assert all(h["anchor"] > 0 and h["loss"] > h["erase"] for h in trainer.history[1:])
        drift[weight] = _drift(model, trainer.net, ANCHORS)
    assert drift[0.0] > 0
    assert drift[1.0] < 0.3 * drift[0.0], drift


def test_every_concept_of_one_spm_is_trained():
    """Two concepts in one SPM: steps alternate between them, a step moves only its concept's ``up`` column
    (γ = e_i), and after two steps both columns have left their zero init."""
    model = load_model(tiny_sd3_pipeline())
    trainer = EraseTrainer(model, EraseConfig(["red", "blue"], steps=2, lr=1e-2, num_inference_steps=2,
                                              height=32, width=32))

    def ups():
        return torch.stack([m.up.detach().abs().sum(0) for m in trainer.net.membranes.values()]).sum(0)  # (N,)

    assert ups().tolist() == [0.0, 0.0]
    trainer.step()
    first = ups()
    assert first[0] > 0 and first[1] == 0
    trainer.step()
    second = ups()
    assert second[0] > 0 and second[1] > 0
    assert [h["concept"] for h in trainer.history] == [0, 1]
    trainer.close()
