"""Pickle-free state files: every supported type comes back with its type, dtype, shape and value; bad input and
damaged files give errors naming the key path or the file."""

import math
import random
from collections import OrderedDict
from enum import Enum

import numpy as np
import pytest
import torch

from flowalign.training.checkpoint import rng_state, set_rng_state
from flowalign.utils.safe_state import StateFileError, load_state, load_weights_only, save_state


def assert_identical(got, want, where="obj"):
    """Same type, same structure, same values (nan == nan); tensors and arrays also same dtype and shape. Exact:
    saving copies the bytes, so nothing is recomputed."""
    assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got, want.cpu()) or (got.is_floating_point() and torch.equal(got.isnan(), want.isnan())
                                                and torch.equal(got.nan_to_num(), want.nan_to_num())), where
    elif isinstance(want, (np.ndarray, np.generic)):
        assert got.dtype == want.dtype and np.shape(got) == np.shape(want), where
        np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        assert [type(k) for k in got] == [type(k) for k in want], f"{where}: key types differ"
        for key in want:
            assert_identical(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_identical(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), where
    else:
        assert got == want and (not isinstance(want, float) or math.copysign(1, got) == math.copysign(1, want)), where


EVERYTHING = {
    "tensors": [torch.tensor(2.5), torch.arange(6, dtype=torch.int64).reshape(2, 3).t(),  # 0-d, non-contiguous
                torch.tensor([True, False]), torch.zeros(0, 3), torch.randn(3, dtype=torch.bfloat16),
                torch.tensor([1.0, math.nan, -math.inf], dtype=torch.float16), torch.arange(4, dtype=torch.uint8),
                torch.nn.Parameter(torch.ones(2)).data, torch.tensor([2**40], dtype=torch.int64)],
    "arrays": (np.arange(5, dtype=np.uint32), np.array(3.5), np.zeros((2, 0), dtype=np.float16),
               np.array([[1 + 2j]], dtype=np.complex64), np.array([True, False]), np.asfortranarray(np.eye(3))),
    "numpy scalars": [np.float64(0.1), np.int16(-7), np.bool_(True)],
    "floats": [0.1, -0.0, 1e300, 5e-324, math.nan, math.inf, -math.inf, 1.0],
    "ints": [0, -1, 2**70, True, False],
    "text": ["", "ünïcode ✓", "$tuple", "{\"$tensor\": 0}"],
    "none": None,
    7: {"int keys": {0: "a", 1: "b"}, 2.5: "float key", None: "none key", True: "bool key", "$x": "dollar key"},
    "nested": ((), [], {}, ((1,), [(2, [3])])),
}


def test_every_supported_type_round_trips_exactly(tmp_path):
    json_path, tensor_path = save_state(EVERYTHING, tmp_path, "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]
    assert json_path.name == "s.json" and tensor_path.name == "s.safetensors"
    assert b"pickle" not in json_path.read_bytes() and json_path.read_text().startswith("{")
    assert_identical(load_state(tmp_path, "s"), EVERYTHING)
    # dict subclasses and Parameters come back as their plain base types, with the same contents and order
    save_state(OrderedDict(b=torch.nn.Parameter(torch.ones(2)), a=1), tmp_path, "sub")
    back = load_state(tmp_path, "sub")
    assert type(back) is dict and list(back) == ["b", "a"] and type(back["b"]) is torch.Tensor


def test_an_adamw_state_after_two_steps_round_trips_and_resumes_identically(tmp_path):
    def model_and_optimizer():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
        return model, torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9), weight_decay=0.01)

    def step(model, optimizer, i):
        optimizer.zero_grad()
        model(torch.full((2, 4), float(i))).pow(2).mean().backward()
        optimizer.step()

    model, optimizer = model_and_optimizer()
    for i in range(2):
        step(model, optimizer, i)
    state = optimizer.state_dict()
    assert set(state["state"]) == {0, 1, 2, 3} and state["state"][0]["step"].ndim == 0
    save_state({"optimizer": state, "model": model.state_dict()}, tmp_path, "opt")
    loaded = load_state(tmp_path, "opt")
    assert_identical(loaded["optimizer"], state)
    assert isinstance(loaded["optimizer"]["param_groups"][0]["betas"], tuple)
    # a fresh copy restored from the files takes the same third step: same process, same ops, same bytes in
    twin, twin_optimizer = model_and_optimizer()
    twin.load_state_dict(loaded["model"])
    twin_optimizer.load_state_dict(loaded["optimizer"])
    step(model, optimizer, 2)
    step(twin, twin_optimizer, 2)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def draws():
    return [random.random() for _ in range(3)], np.random.rand(3).tolist(), np.random.randn(3).tolist(), \
        torch.rand(3).tolist()


def test_the_full_rng_state_round_trips_and_replays_the_same_draws(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    saved = rng_state()
    save_state(saved, tmp_path, "rng")
    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded = load_state(tmp_path, "rng")
    assert_identical(loaded, saved)
    set_rng_state(loaded)
    assert draws() == expected  # exact: the generators restart from identical states


class Colour(Enum):
    RED = 1


@pytest.mark.parametrize("obj, where, what", [
    ({"a": [1, {"b": {1, 2}}]}, r"obj\['a'\]\[1\]\['b'\]", "unsupported type builtins.set"),
    ({"a": (torch.float32,)}, r"obj\['a'\]\[0\]", "unsupported type torch.dtype"),
    ({"colour": Colour.RED}, r"obj\['colour'\]", "Colour"),
    ({"x": np.array([object()])}, r"obj\['x'\]", "not a plain numeric dtype"),
    ({(1, 2): 3}, r"obj:", "key \\(1, 2\\) of type tuple"),
    ({"sparse": torch.eye(2).to_sparse()}, r"obj\['sparse'\]", "only dense tensors"),
])
def test_unsupported_values_are_refused_naming_their_key_path(tmp_path, obj, where, what):
    with pytest.raises(TypeError, match=rf"cannot save {where}.*{what}"):
        save_state(obj, tmp_path, "obj")
    assert list(tmp_path.iterdir()) == []  # nothing is written


def test_a_container_holding_itself_is_refused(tmp_path):
    loop = [1]
    loop.append(loop)
    with pytest.raises(TypeError, match=r"cannot save obj\[1\]: it contains itself"):
        save_state(loop, tmp_path, "obj")


def test_damaged_or_mismatched_files_are_refused_naming_the_file(tmp_path):
    save_state({"w": torch.arange(64, dtype=torch.float32)}, tmp_path, "a")
    tensors = tmp_path / "a.safetensors"
    original = tensors.read_bytes()
    flipped = bytearray(original)
    flipped[-1] ^= 0x01  # a bit of the tensor data
    tensors.write_bytes(bytes(flipped))
    with pytest.raises(StateFileError, match=rf"{tensors}' is corrupt or from another save: its SHA-256"):
        load_state(tmp_path, "a")
    # a tensors file from another save of the same name (an interrupted save's half) is not mixed in
    save_state({"w": torch.zeros(64)}, tmp_path / "other", "a")
    tensors.write_bytes((tmp_path / "other" / "a.safetensors").read_bytes())
    with pytest.raises(StateFileError, match="from another save"):
        load_state(tmp_path, "a")
    tensors.write_bytes(original)
    assert torch.equal(load_state(tmp_path, "a")["w"], torch.arange(64, dtype=torch.float32))
    (tmp_path / "a.json").write_text('{"format": "flowalign.safe_state", "version": 1')
    with pytest.raises(StateFileError, match=r"a.json' is corrupt"):
        load_state(tmp_path, "a")
    (tmp_path / "a.json").unlink()
    with pytest.raises(StateFileError, match=r"a.json' is missing"):
        load_state(tmp_path, "a")
    with pytest.raises(ValueError, match="plain file name"):
        save_state({}, tmp_path, "../escape")


def test_a_malformed_tag_is_refused(tmp_path):
    json_path, _ = save_state({"t": (1, 2)}, tmp_path, "a")
    json_path.write_text(json_path.read_text().replace('"$tuple"', '"$set"'))
    with pytest.raises(StateFileError, match=r"a.json' is corrupt: unknown or malformed tag '\$set'"):
        load_state(tmp_path, "a")


def test_a_legacy_pickle_of_tensors_and_numpy_arrays_loads_with_weights_only(tmp_path):
    state = {"rng": rng_state(), "step": torch.tensor(2.0), "betas": (0.9, 0.99)}
    torch.save(state, tmp_path / "old.pt")
    assert_identical(load_weights_only(tmp_path / "old.pt"), state)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(StateFileError, match=r"bad.pt' was refused.*may hold code"):
        load_weights_only(tmp_path / "bad.pt")
