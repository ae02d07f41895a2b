"""Auxiliary networks on (latent, σ, pooled text): shapes for every latent layout, regression and classification
losses fall on fixed synthetic sets, checkpoints include the optimizer."""

import pytest
import torch

from flowalign.errors import ConfigError
from flowalign.training.auxiliary import AuxiliaryConfig, AuxiliaryNet, AuxiliaryTrainer, sinusoidal_embedding

LAYOUTS = {"sd3": (4, 16, 16), "flux": (64, 16), "wan": (4, 3, 4, 4)}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def synthetic(latent_shape, n=64, text_dim=8, seed=0):
    """Latents, σ, text and a target that needs all three inputs: a latent statistic, σ and a text feature."""
    latents = torch.randn(n, *latent_shape, generator=gen(seed))
    sigma = torch.rand(n, generator=gen(seed + 1))
    text = torch.randn(n, text_dim, generator=gen(seed + 2))
    target = latents.flatten(1)[:, : latents[0].numel() // 2].mean(1) * 4 + torch.cos(3 * sigma) + text[:, 0]
    return latents, sigma, text, target


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_output_shapes_and_gradient_in_the_latent(layout):
    shape = LAYOUTS[layout]
    torch.manual_seed(0)
    critic = AuxiliaryNet(shape, text_dim=8, config=AuxiliaryConfig(hidden=16))
    latents, sigma, text, _ = synthetic(shape, n=3)
    latents.requires_grad_(True)
    out = critic(latents, sigma, text)
    assert out.shape == (3,) and out.dtype == torch.float32
    (grad,) = torch.autograd.grad(out.sum(), latents)
    assert grad.abs().sum() > 0  # process rewards are differentiated w.r.t. x
    classifier = AuxiliaryNet(shape, text_dim=0, config=AuxiliaryConfig(outputs=5, hidden=16, text=False))
    assert classifier(latents.detach(), 0.0).shape == (3, 5)


def test_regression_loss_falls_on_a_fixed_set():
    torch.manual_seed(0)
    latents, sigma, text, target = synthetic(LAYOUTS["sd3"], n=32)
    held_out = synthetic(LAYOUTS["sd3"], n=64, seed=10)
    trainer = AuxiliaryTrainer(AuxiliaryNet(LAYOUTS["sd3"], 8, AuxiliaryConfig(hidden=16, lr=5e-3)))

    @torch.no_grad()
    def held_out_loss():
        return float(((trainer.net(*held_out[:3]) - held_out[3]) ** 2).mean())

    before = held_out_loss()
    losses = [trainer.regression_step(latents, sigma, text, target)["loss"] for _ in range(80)]
    assert trainer.steps == 80
    # measured: training set 1.00 → 7e-5 (fitted), held-out set 1.19 → 0.65 (target variance 1.2)
    assert losses[-1] < 0.01 * losses[0], (losses[0], losses[-1])
    assert held_out_loss() < 0.8 * before


def test_weighted_regression_ignores_zero_weight_samples():
    latents, sigma, text, target = synthetic(LAYOUTS["flux"], n=8)
    garbage = target.clone()
    garbage[4:] = 1e3
    torch.manual_seed(0)
    weighted = AuxiliaryTrainer(AuxiliaryNet(LAYOUTS["flux"], 8, AuxiliaryConfig(hidden=16)))
    loss_weighted = weighted.regression_step(latents, sigma, text, garbage, torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    torch.manual_seed(0)
    first_four = AuxiliaryTrainer(AuxiliaryNet(LAYOUTS["flux"], 8, AuxiliaryConfig(hidden=16)))
    loss_four = first_four.regression_step(latents[:4], sigma[:4], text[:4], target[:4])
    # the same four samples, batched with four more of weight 0: float32 rounding of the sums only
    assert loss_weighted["loss"] == pytest.approx(loss_four["loss"], rel=1e-5)
    for a, b in zip(weighted.net.parameters(), first_four.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_classification_loss_falls_on_a_fixed_set():
    torch.manual_seed(0)
    latents = torch.randn(48, *LAYOUTS["wan"], generator=gen(0))
    labels = torch.arange(48) % 3
    latents[:, 0] += 2.0 * (labels.float() - 1).view(-1, 1, 1, 1)  # the class shifts channel 0
    trainer = AuxiliaryTrainer(AuxiliaryNet(LAYOUTS["wan"], 0, AuxiliaryConfig(outputs=3, hidden=16, text=False,
                                                                                  lr=3e-3)))
    losses = [trainer.classification_step(latents, 0.0, None, labels)["loss"] for _ in range(60)]
    assert losses[0] > 0.9 and losses[-1] < 0.2, (losses[0], losses[-1])  # chance level is log 3 = 1.10
    accuracy = (trainer.net(latents, 0.0).argmax(1) == labels).float().mean()
    assert accuracy > 0.95


def test_checkpoint_includes_the_optimizer():
    torch.manual_seed(0)
    latents, sigma, text, target = synthetic(LAYOUTS["sd3"], n=16)
    trainer = AuxiliaryTrainer(AuxiliaryNet(LAYOUTS["sd3"], 8, AuxiliaryConfig(hidden=16)))
    for _ in range(3):
        trainer.regression_step(latents, sigma, text, target)
    state = trainer.state_dict()
    torch.manual_seed(1)  # different initial weights: everything must come from the state
    resumed = AuxiliaryTrainer(AuxiliaryNet(LAYOUTS["sd3"], 8, AuxiliaryConfig(hidden=16)))
    resumed.load_state_dict(state)
    assert resumed.steps == 3
    trainer.regression_step(latents, sigma, text, target)
    resumed.regression_step(latents, sigma, text, target)
    for a, b in zip(trainer.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)  # same weights, Adam moments and inputs in two modules of one process
    fresh_moments = AuxiliaryTrainer(AuxiliaryNet(LAYOUTS["sd3"], 8, AuxiliaryConfig(hidden=16)))
    fresh_moments.net.load_state_dict(state["net"])
    fresh_moments.regression_step(latents, sigma, text, target)
    assert not all(torch.equal(a, b) for a, b in zip(trainer.net.parameters(), fresh_moments.net.parameters()))


def test_gradient_averaging_hook_sees_the_gradients_before_the_step():
    torch.manual_seed(0)
    latents, sigma, text, target = synthetic(LAYOUTS["flux"], n=4)
    trainer = AuxiliaryTrainer(AuxiliaryNet(LAYOUTS["flux"], 8, AuxiliaryConfig(hidden=16)))
    before = [p.detach().clone() for p in trainer.net.parameters()]

    def zero(params):  # a reducer that cancels every gradient: AdamW with zero gradients and no decay stays put
        for p in params:
            p.grad.zero_()

    trainer.regression_step(latents, sigma, text, target, average_gradients=zero)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.net.parameters()))


def test_for_model_sizes_the_network_from_the_model(sd3_model):
    geometry = sd3_model.default_geometry()
    net = AuxiliaryNet.for_model(sd3_model, geometry, AuxiliaryConfig(hidden=8))
    cond = sd3_model.encode_prompts(["a red circle", "two blue squares"])
    x = sd3_model.initial_noise(geometry, batch_size=2)
    assert net(x, torch.tensor([0.2, 0.9]), sd3_model.pooled_text(cond)).shape == (2,)


def test_sinusoidal_embedding_values():
    emb = sinusoidal_embedding(torch.tensor([0.0, 0.5]), 4)
    # frequencies 1 and 10000^(-1/2) = 0.01 on σ·1000
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0],
                             [torch.sin(torch.tensor(500.0)), torch.sin(torch.tensor(5.0)),
                              torch.cos(torch.tensor(500.0)), torch.cos(torch.tensor(5.0))]])
    torch.testing.assert_close(emb, expected, rtol=0, atol=1e-5)  # float32 sin of 500 rad: ~3e-5 abs at most


def test_bad_configuration_and_inputs_are_rejected():
    with pytest.raises(ConfigError, match="sigma_dim must be even"):
        AuxiliaryConfig(sigma_dim=5)
    with pytest.raises(ConfigError, match="lr"):
        AuxiliaryConfig(lr=0)
    with pytest.raises(ConfigError, match="latent shape"):
        AuxiliaryNet((4,), 8)
    net = AuxiliaryNet(LAYOUTS["sd3"], 8, AuxiliaryConfig(hidden=8))
    with pytest.raises(ValueError, match="pooled text"):
        net(torch.zeros(2, *LAYOUTS["sd3"]), 0.5)
    with pytest.raises(ValueError, match="built for latents"):
        net(torch.zeros(2, 4, 8, 8), 0.5, torch.zeros(2, 8))
    with pytest.raises(ConfigError, match="classification needs"):
        AuxiliaryTrainer(net).classification_step(torch.zeros(2, *LAYOUTS["sd3"]), 0.5, torch.zeros(2, 8),
                                                  torch.zeros(2))
