"""Typed configs from YAML + dotted overrides: merging, coercion, tagged unions and every error."""

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest

from flowalign.config import dump_yaml, from_dict, load_config, to_dict
from flowalign.errors import ConfigError
from flowalign.training.config import TrainConfig


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)
    pair: tuple[float, float] = (0.9, 0.99)
    window: int | None = None


@dataclass
class Method:
    variants: ClassVar[dict[str, type]] = {}
    name: str = "plain"


@dataclass
class Plain(Method):
    name: str = "plain"


@dataclass
class Fancy(Method):
    name: str = "fancy"
    strength: float = 1.0


Method.variants.update(plain=Plain, fancy=Fancy)


@dataclass
class Outer:
    seed: int = 0
    inner: Inner = field(default_factory=Inner)
    method: Method = field(default_factory=Plain)
    weights: dict[str, float] = field(default_factory=dict)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ninner:\n  lr: 1e-3\n  tags: [x]\nmethod: {name: fancy, strength: 2}\n")
    cfg = load_config(Outer, path, ["inner.steps=5", "inner.tags=[a, b]", "weights.shapes=0.5", "inner.window=3"])
    assert cfg.seed == 3 and cfg.inner.lr == 1e-3 and cfg.inner.steps == 5
    assert cfg.inner.tags == ["a", "b"] and cfg.weights == {"shapes": 0.5} and cfg.inner.window == 3
    assert isinstance(cfg.method, Fancy) and cfg.method.strength == 2.0


def test_tagged_union_defaults_and_switches():
    assert isinstance(from_dict(Outer, {}).method, Plain)
    assert isinstance(load_config(Outer, overrides=["method.name=fancy"]).method, Fancy)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["inner.lrr=1"], r"unknown config key 'inner.lrr'; did you mean 'inner.lr'\?"),
        (["zzz=1"], r"unknown config key 'zzz'; valid keys: seed, inner, method, weights"),
        (["inner.steps=many"], r"inner.steps must be an integer, got str 'many'"),
        (["inner.lr=fast"], r"inner.lr must be a number, got str 'fast'"),
        (["inner.mode=c"], r"inner.mode must be one of 'a', 'b', got 'c'"),
        (["inner.pair=[1]"], r"inner.pair must have 2 values"),
        (["method.name=fancyy"], r"unknown method.name 'fancyy'; expected one of fancy, plain; did you mean 'fancy'\?"),
        (["method.strength=2"], r"unknown config key 'method.strength'"),
        (["seed"], r"override 'seed' must look like section.key=value"),
        (["inner..lr=1"], r"has an empty key"),
    ],
)
def test_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, overrides=overrides)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(Outer, bad)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(Outer, overrides=["method.name=fancy", "inner.tags=[q]"])
    dump_yaml(cfg, tmp_path / "out.yaml")
    again = load_config(Outer, tmp_path / "out.yaml")
    assert again == cfg and to_dict(again)["inner"]["pair"] == [0.9, 0.99]


def test_every_shipped_recipe_parses():
    from pathlib import Path

    recipes = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))
    assert recipes
    for recipe in recipes:
        cfg = load_config(TrainConfig, recipe)
        assert cfg.algorithm.name in ("grpo", "grpo_guard"), recipe


def test_train_config_validation_runs_post_init():
    with pytest.raises(ConfigError, match="sampling.group_size must be >= 2"):
        load_config(TrainConfig, overrides=["sampling.group_size=1"])
    with pytest.raises(ConfigError, match="algorithm.reweight must be one of"):
        load_config(TrainConfig, overrides=["algorithm.name=grpo_guard", "algorithm.reweight=x"])
