"""Reference access: the adapter-disabled base model and the SnapshotPool (exact restoration, reproducible
draws, eviction, checkpoints)."""

import pytest
import torch
from torch import nn

from flowalign.errors import ConfigError
from flowalign.models.sd3 import SD3Model
from flowalign.models.tiny import tiny_sd3_pipeline
from flowalign.training.lora import LoRAConfig, add_lora
from flowalign.training.reference import SnapshotPool, adapter_disabled, reference_velocity

PROMPTS = ["a red circle", "two blue squares"]


def perturb(params, seed, scale=0.05):
    with torch.no_grad():
        for i, p in enumerate(params):
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed * 100 + i)))


class Setup:
    """A tiny SD3 with a LoRA adapter, fixed inputs, and v(x) of the un-adapted model."""

    def __init__(self):
        self.model = SD3Model(tiny_sd3_pipeline(seed=0))
        self.geometry = self.model.default_geometry()
        self.cond = self.model.encode_prompts(PROMPTS)
        self.x = self.model.initial_noise(self.geometry, [torch.Generator().manual_seed(s) for s in (0, 1)])
        self.base_v = self.v()
        self.params = add_lora(self.model.transformer, LoRAConfig(rank=4, alpha=8))

    @torch.no_grad()
    def v(self):
        return self.model.velocity(self.x, 0.6, self.cond, self.geometry)


@pytest.fixture()
def setup():
    return Setup()


def test_adapter_disabled_is_the_base_model_and_restores_state(setup):
    perturb(setup.params, 1)
    adapted = setup.v()
    assert not torch.equal(adapted, setup.base_v)
    with adapter_disabled(setup.model.transformer):
        # disabled peft layers call the wrapped base layer alone: exactly the un-adapted computation
        assert torch.equal(setup.v(), setup.base_v)
    assert torch.equal(setup.v(), adapted)
    assert all(p.requires_grad for p in setup.params)
    with pytest.raises(RuntimeError, match="boom"), adapter_disabled(setup.model.transformer):
        raise RuntimeError("boom")
    assert torch.equal(setup.v(), adapted) and all(p.requires_grad for p in setup.params)
    torch.testing.assert_close(reference_velocity(setup.model, setup.x, 0.6, setup.cond, setup.geometry),
                               setup.base_v, rtol=0, atol=0)


def test_adapter_disabled_keeps_an_already_disabled_adapter_disabled(setup):
    perturb(setup.params, 1)
    setup.model.transformer.disable_adapters()
    with adapter_disabled(setup.model.transformer):
        pass
    assert torch.equal(setup.v(), setup.base_v)


def test_adapter_disabled_needs_an_adapter():
    with pytest.raises(ConfigError, match="no LoRA adapter"), adapter_disabled(nn.Linear(2, 2)):
        pass


def test_pool_entries_reproduce_their_weights_and_live_weights_come_back_exactly(setup):
    pool = SnapshotPool(setup.model.transformer, capacity=3)
    perturb(setup.params, 1)
    pool.add(step=10)
    first = setup.v()
    perturb(setup.params, 2)
    pool.add(step=20)
    perturb(setup.params, 3)
    live = {n: p for n, p in setup.model.transformer.named_parameters() if p.requires_grad}
    live_values = {n: p.detach().clone() for n, p in live.items()}
    live_storage = {n: p.data_ptr() for n, p in live.items()}
    live_v = setup.v()
    assert len(pool) == 3 and pool.steps == [None, 10, 20]
    with pool.loaded(0):
        assert torch.equal(setup.v(), setup.base_v)  # entry 0: the adapter disabled
    with pool.loaded(1):
        assert torch.equal(setup.v(), first)  # the same values in the same module: the same computation
    with pytest.raises(RuntimeError, match="boom"), pool.loaded(2):
        raise RuntimeError("boom")
    for n, p in live.items():  # exact by construction: the very same storage is put back
        assert p.data_ptr() == live_storage[n] and torch.equal(p, live_values[n]) and p.requires_grad
    assert torch.equal(setup.v(), live_v)


def test_pool_base_also_resets_trainable_tensors_outside_the_adapter(setup):
    """E.g. a new conditioning embedding trained next to the LoRA: the base entry puts back its initial value."""
    extra = setup.model.transformer.context_embedder.bias
    extra.requires_grad_(True)
    pool = SnapshotPool(setup.model.transformer, capacity=1)
    assert list(pool.state_dict()["base"]) == ["context_embedder.bias"]  # LoRA tensors: disabled, not stored
    perturb(setup.params, 1)
    perturb([extra], 2, scale=0.5)
    changed = extra.detach().clone()
    with pool.loaded(0):
        assert torch.equal(setup.v(), setup.base_v)
    assert torch.equal(extra, changed)
    # the adapter switched off alone keeps the live embedding
    assert not torch.equal(reference_velocity(setup.model, setup.x, 0.6, setup.cond, setup.geometry), setup.base_v)


def test_a_graph_built_before_loading_a_snapshot_still_backpropagates(setup):
    perturb(setup.params, 1)
    pool = SnapshotPool(setup.model.transformer, capacity=2)
    pool.add(step=1)
    perturb(setup.params, 2)

    def loss():
        return setup.model.velocity(setup.x, 0.6, setup.cond, setup.geometry).square().mean()

    loss().backward()
    expected = [p.grad.clone() for p in setup.params]
    for p in setup.params:
        p.grad = None
    policy_loss = loss()
    with pool.loaded(1), torch.no_grad():
        loss()
    policy_loss.backward()  # an in-place copy into the parameters would fail here
    for p, g in zip(setup.params, expected):
        assert torch.equal(p.grad, g)  # the same graph on the same values, run twice on one module


def test_draws_are_reproducible_from_the_generator_seed_and_cover_the_pool(setup):
    pool = SnapshotPool(setup.model.transformer, capacity=4)
    for step in range(3):
        pool.add(step)

    def draws(seed, n=400):
        g = torch.Generator().manual_seed(seed)
        return [pool.draw(g) for _ in range(n)]

    assert draws(5) == draws(5) and draws(5) != draws(6)
    counts = torch.bincount(torch.tensor(draws(7)), minlength=4)
    assert counts.sum() == 400 and counts.min() > 60  # uniform over 4 entries: 100 each, sd ≈ 9
    assert pool.draw(torch.Generator(), "latest") == 3 and pool.draw(torch.Generator(), "initial") == 0
    with pytest.raises(ConfigError, match="unknown reference draw rule"):
        pool.draw(torch.Generator(), "random")


def test_eviction_drops_the_oldest_snapshot_and_never_the_base(setup):
    pool = SnapshotPool(setup.model.transformer, capacity=2)
    for step, seed in ((1, 1), (2, 2), (3, 3)):
        perturb(setup.params, seed)
        pool.add(step)
    last = setup.v()
    assert pool.steps == [None, 2, 3]
    with pool.loaded(2):
        assert torch.equal(setup.v(), last)
    with pool.loaded(0):
        assert torch.equal(setup.v(), setup.base_v)


def test_pool_checkpoint_round_trip(setup, tmp_path):
    pool = SnapshotPool(setup.model.transformer, capacity=2)
    perturb(setup.params, 1)
    pool.add(7)
    snap_v = setup.v()
    torch.save(pool.state_dict(), tmp_path / "pool.pt")

    other = Setup()
    restored = SnapshotPool(other.model.transformer, capacity=1)
    restored.load_state_dict(torch.load(tmp_path / "pool.pt", weights_only=True))  # tensors and plain data only
    assert restored.capacity == 2 and restored.steps == [None, 7]
    with restored.loaded(1):
        # a second tiny model built from the same seed: identical weights and ops, so the same numbers
        assert torch.equal(other.v(), snap_v)

    plain = SnapshotPool(nn.Linear(3, 2), capacity=1)
    with pytest.raises(ConfigError, match="other parameters"):
        plain.load_state_dict(pool.state_dict())


def test_pool_on_a_module_without_adapter_keeps_a_base_copy():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    initial = {n: p.detach().clone() for n, p in layer.named_parameters()}
    pool = SnapshotPool(layer, capacity=1)
    with torch.no_grad():
        layer.weight.add_(1.0)
    changed = layer.weight.detach().clone()
    with pool.loaded(0):
        assert torch.equal(layer.weight, initial["weight"]) and torch.equal(layer.bias, initial["bias"])
        with pytest.raises(RuntimeError, match="nested"), pool.loaded(0):
            pass
        with pytest.raises(RuntimeError, match="while another entry"):
            pool.add(1)
    assert torch.equal(layer.weight, changed)
    state = pool.state_dict()
    assert torch.equal(state["base"]["weight"], initial["weight"])
    with pytest.raises(IndexError, match="out of range"), pool.loaded(1):
        pass


def test_pool_arguments_are_checked(setup):
    with pytest.raises(ConfigError, match="capacity"):
        SnapshotPool(setup.model.transformer, capacity=0)
    with pytest.raises(ConfigError, match="not parameters"):
        SnapshotPool(setup.model.transformer, capacity=1, names=["nope.weight"])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        SnapshotPool(frozen, capacity=1)
