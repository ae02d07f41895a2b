"""Typed configs from YAML + dotted overrides: merging, coercion, tagged unions and every error."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from flowalign.algorithms import ALGORITHMS

from flowalign.config import dump_yaml, from_dict, load_config, parse_override, register_variant, to_dict
from flowalign.errors import ConfigError
from flowalign.training.config import TrainConfig


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)
    pair: tuple[float, float] = (0.9, 0.99)
    sizes: tuple[int, ...] = ()
    window: int | None = None
    flag: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"inner.steps must be >= 1, got {self.steps}")


@dataclass
class Method:
    variants: ClassVar[dict[str, type]] = {}
    name: str = "plain"


@register_variant(Method, "plain")
@dataclass
class Plain(Method):
    name: str = "plain"


@register_variant(Method, "fancy")
@dataclass
class Fancy(Method):
    name: str = "fancy"
    strength: float = 1.0


@dataclass
class Outer:
    seed: int = 0
    path: str = "assets/toy-sd3"
    inner: Inner = field(default_factory=Inner)
    extra: Inner | None = None
    method: Method = field(default_factory=Plain)
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Needs:
    value: int
    other: int = 1


def test_yaml_then_data_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ninner:\n  lr: 1e-3\n  tags: [x]\n  steps: 7\nmethod: {name: fancy, strength: 2}\n")
    cfg = load_config(Outer, path, ["inner.steps=5", "inner.tags=[a, b]", "weights.shapes=0.5", "inner.window=3"],
                      data={"seed": 4, "inner": {"mode": "b"}})
    assert cfg.seed == 4 and cfg.inner.lr == 1e-3 and cfg.inner.steps == 5 and cfg.inner.mode == "b"
    assert cfg.inner.tags == ["a", "b"] and cfg.weights == {"shapes": 0.5} and cfg.inner.window == 3
    assert isinstance(cfg.method, Fancy) and cfg.method.strength == 2.0


def test_coercion():
    cfg = load_config(Outer, overrides=["inner.lr=3", "inner.pair=[1, 2]", "inner.sizes=[4, 5, 6]", "path=123",
                                        "inner.flag=true", "extra.steps=2", "inner.window=null"])
    assert cfg.inner.lr == 3.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.pair == (1.0, 2.0) and cfg.inner.sizes == (4, 5, 6) and cfg.path == "123"
    assert cfg.inner.flag is True and cfg.extra == Inner(steps=2) and cfg.inner.window is None
    # YAML 1.1 reads "1e-4" (no dot) as a string; float fields accept it.
    assert from_dict(Inner, {"lr": "1e-4"}).lr == 1e-4
    assert load_config(Outer, overrides=["inner.lr=1e-4"]).inner.lr == 1e-4


def test_override_values_parse_as_yaml():
    assert parse_override("model.path=assets/toy-sd3") == ("model.path", "assets/toy-sd3")
    assert parse_override("lora.target_modules=[to_q,to_k]") == ("lora.target_modules", ["to_q", "to_k"])
    assert parse_override("a.b=") == ("a.b", "")
    assert parse_override("a.b=x=y") == ("a.b", "x=y")
    assert parse_override("ema.enabled=false") == ("ema.enabled", False)
    assert load_config(Outer, overrides=["path="]).path == ""


def test_tagged_union_defaults_and_switches():
    assert isinstance(from_dict(Outer, {}).method, Plain)
    assert isinstance(load_config(Outer, overrides=["method.name=fancy"]).method, Fancy)
    assert load_config(Outer, overrides=["method.strength=3", "method.name=fancy"]).method.strength == 3.0


def test_base_recipe_is_merged_under_the_file(tmp_path):
    (tmp_path / "parent.yaml").write_text("seed: 1\ninner: {lr: 0.5, steps: 3}\nmethod: {name: fancy, strength: 2}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: ../parent.yaml\ninner: {steps: 4}\nmethod: {name: plain}\n")
    cfg = load_config(Outer, tmp_path / "sub" / "child.yaml", ["inner.tags=[t]"])
    assert cfg.seed == 1 and cfg.inner.lr == 0.5 and cfg.inner.steps == 4 and cfg.inner.tags == ["t"]
    assert isinstance(cfg.method, Plain)  # another variant replaces the base's (its 'strength' is not kept)
    for order in (["method.name=fancy", "method.strength=5"], ["method.strength=5", "method.name=fancy"]):
        switched = load_config(Outer, tmp_path / "sub" / "child.yaml", order).method
        assert isinstance(switched, Fancy) and switched.strength == 5.0  # override order does not matter
    (tmp_path / "parent.yaml").write_text("base: sub/child.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_config(Outer, tmp_path / "sub" / "child.yaml")
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"orphan.yaml'.*its base 'nowhere.yaml'.*does not exist"):
        load_config(Outer, tmp_path / "orphan.yaml")
    (tmp_path / "lone.yaml").write_text("base: [a, b]\n")
    with pytest.raises(ConfigError, match="'base' must be the path of another YAML file"):
        load_config(Outer, tmp_path / "lone.yaml")


def test_a_mapping_value_replaces_a_free_form_mapping_and_a_dotted_key_sets_one_entry(tmp_path):
    """``reward.weights={pickscore: 1}`` means "this reward mix", not "add pickscore to the recipe's"."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("reward: {weights: {shapes: 1.0}, kwargs: {shapes: {margin: 3.0}}}\n")
    replaced = load_config(TrainConfig, recipe, ["reward.weights={shapes_graded: 1.0}", "reward.kwargs={}"])
    assert replaced.reward.weights == {"shapes_graded": 1.0} and replaced.reward.kwargs == {}
    added = load_config(TrainConfig, recipe, ["reward.weights.shapes_quality=0.5"]).reward
    assert added.weights == {"shapes": 1.0, "shapes_quality": 0.5} and added.kwargs == {"shapes": {"margin": 3.0}}
    nested = load_config(TrainConfig, recipe, ["reward.kwargs.shapes.min_area=4"]).reward.kwargs
    assert nested == {"shapes": {"margin": 3.0, "min_area": 4}}
    child = tmp_path / "child.yaml"  # a child recipe's mapping replaces too; the rest of the section is kept
    child.write_text("base: r.yaml\nreward: {weights: {pickscore: 1.0}}\n")
    with pytest.raises(ConfigError, match="reward.kwargs has entries"):  # the base's kwargs name 'shapes'
        load_config(TrainConfig, child)
    assert load_config(TrainConfig, child, ["reward.kwargs={}"]).reward.weights == {"pickscore": 1.0}


def test_register_variant_rejects_misuse():
    with pytest.raises(TypeError, match="not a subclass"):
        register_variant(Method, "x")(Inner)
    with pytest.raises(TypeError, match="already Plain"):
        register_variant(Method, "plain")(Fancy)
    with pytest.raises(TypeError, match="no 'variants"):
        register_variant(Fancy, "y")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["inner.lrr=1"], r"unknown config key 'inner.lrr'; did you mean 'inner.lr'\?"),
        (["zzz=1"], r"unknown config key 'zzz'; valid keys: seed, path, inner, extra, method, weights"),
        (["inner.steps=many"], r"inner.steps must be an integer \(int\), got str 'many'"),
        (["inner.lr=fast"], r"inner.lr must be a number \(float\), got str 'fast'"),
        (["inner.flag=1"], r"inner.flag must be true or false \(bool\), got int 1"),
        (["seed=true"], r"seed must be an integer \(int\), got bool True"),
        (["path=[a]"], r"path must be a string \(str\), got list \['a'\]"),
        (["inner.window=x"], r"inner.window must be int \| None, got str 'x'"),
        (["inner.mode=c"], r"inner.mode must be one of 'a', 'b', got 'c'"),
        (["inner.tags=x"], r"inner.tags must be a list \(list\[str\]\), got str 'x'"),
        (["inner.tags=[a, [b]]"], r"inner.tags\[1\] must be a string \(str\), got list \['b'\]"),
        (["inner.pair=[1]"], r"inner.pair must have 2 values \(tuple\[float, float\]\), got 1"),
        (["inner.sizes=[1, x]"], r"inner.sizes\[1\] must be an integer"),
        (["weights.shapes=big"], r"weights.shapes must be a number \(float\), got str 'big'"),
        (["weights=3"], r"weights must be a mapping \(dict\[str, float\]\), got int 3"),
        (["inner=3"], r"inner must be a mapping, got int 3"),
        (["extra.nope=1"], r"unknown config key 'extra.nope'"),
        (["method.name=fancyy"], r"unknown method.name 'fancyy'; expected one of fancy, plain; did you mean 'fancy'\?"),
        (["method.strength=2"], r"unknown config key 'method.strength'; .* \(for method.name 'plain'\)"),
        (["method.strenght=2", "method.name=fancy"], r"did you mean 'method.strength'\?"),
        (["inner.steps=0"], r"inner.steps must be >= 1, got 0"),
        (["seed"], r"override 'seed' must look like section.key=value"),
        (["=1"], r"override '=1' has an empty key"),
        (["inner..lr=1"], r"override 'inner..lr=1' has an empty key"),
        (["inner.tags=[a"], r"override 'inner.tags=\[a': value is not valid YAML"),
    ],
)
def test_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Outer, overrides=overrides)


def test_missing_required_key_and_non_mapping():
    assert from_dict(Needs, {"value": 2}) == Needs(2)
    with pytest.raises(ConfigError, match="missing required config key 'value'"):
        from_dict(Needs, {"other": 2})
    with pytest.raises(ConfigError, match="config must be a mapping, got list"):
        from_dict(Needs, [1])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(Outer, bad)
    bad.write_text("a: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(Outer, bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(Outer, empty) == Outer()


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(Outer, overrides=["method.name=fancy", "method.strength=0.5", "inner.tags=[q]",
                                        "inner.sizes=[1, 2]", "extra.mode=b", "weights.a=1"])
    plain = to_dict(cfg)
    assert plain["inner"]["pair"] == [0.9, 0.99] and plain["method"] == {"name": "fancy", "strength": 0.5}
    assert from_dict(Outer, plain) == cfg
    dump_yaml(cfg, tmp_path / "out.yaml")
    assert load_config(Outer, tmp_path / "out.yaml") == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["out.yaml"]  # atomic: no temporary file left


def test_every_shipped_recipe_parses():
    recipes = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))
    assert recipes
    for recipe in recipes:
        cfg = load_config(TrainConfig, recipe)
        assert cfg.algorithm.name in ALGORITHMS, recipe  # a registered method (unknown names fail in load_config)
        assert from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_train_config_validation_runs_post_init():
    with pytest.raises(ConfigError, match="sampling.group_size must be >= 2"):
        load_config(TrainConfig, overrides=["sampling.group_size=1"])
    with pytest.raises(ConfigError, match="algorithm.reweight must be one of"):
        load_config(TrainConfig, overrides=["algorithm.name=grpo_guard", "algorithm.reweight=x"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'\?"):
        load_config(TrainConfig, overrides=["optim.lrr=1e-4"])
    with pytest.raises(ConfigError, match="optim.old_policy must be one of auto, rollout, recompute, got 'old'"):
        load_config(TrainConfig, overrides=["optim.old_policy=old"])
    for overrides, match in (
            (["sampling.sde_window_size=0"], r"sde_window_size must lie in \[1, num_steps=10\], got 0"),
            (["sampling.sde_window_size=11"], r"sde_window_size must lie in \[1, num_steps=10\], got 11"),
            (["sampling.sde_window_range=[0, 3]"], "sde_window_range needs sampling.sde_window_size"),
            (["sampling.sde_window_size=4", "sampling.sde_window_range=[5, 9]"], r"high <= num_steps - .* = 6"),
            (["sampling.sde_window_size=4", "sampling.sde_window_range=[3, 0]"], r"0 <= low <= high"),
            (["sampling.num_steps=2", "sampling.sde_window_size=4"], r"\[1, num_steps=2\], got 4")):
        with pytest.raises(ConfigError, match=match):
            load_config(TrainConfig, overrides=overrides)
