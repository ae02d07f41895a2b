import pytest
import torch

import reward_models
from flowalign.errors import ConfigError, FlowAlignError
from reward_models import CallableReward, CompositeReward
from reward_models.base import RewardModel, RewardOutput, RewardSpec, build_reward, register_reward


@register_reward("test_brightness")
class Brightness(RewardModel):
    spec = RewardSpec(name="test_brightness", modality="image", needs_prompt=False, differentiable=True,
                      nominal_range=(0.0, 1.0))

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, images, prompts, metadata=None):
        self.check_inputs(images, prompts, metadata)
        return RewardOutput.from_scores(self.scale * images.mean(dim=(1, 2, 3)))


def brightness_fn(images, prompts, metadata):
    return images.mean(dim=(1, 2, 3)).tolist(), {"called": True}


USER_MODULE = """
import torch
from reward_models.base import RewardModel, RewardOutput, RewardSpec

class Darkness(RewardModel):
    spec = RewardSpec(name="darkness", modality="image", needs_prompt=False)

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, images, prompts, metadata=None):
        self.check_inputs(images, prompts, metadata)
        return RewardOutput.from_scores(-self.scale * images.mean(dim=(1, 2, 3)))

def brightness_fn(images, prompts, metadata):
    return images.mean(dim=(1, 2, 3)).tolist(), {"called": True}
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_rewards_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_rewards_mod"


def test_build_by_name_path_and_config(user_module):
    assert isinstance(build_reward("test_brightness"), Brightness)
    assert build_reward({"name": "test_brightness", "kwargs": {"scale": 3.0}}).scale == 3.0
    assert build_reward(f"{user_module}:Darkness", scale=2.0).scale == 2.0
    assert build_reward({"target": f"{user_module}:Darkness"}).scale == 1.0
    reward = Brightness()
    assert build_reward(reward) is reward
    assert "jpeg_compressibility" in reward_models.registered_rewards()


def test_unknown_name_lists_known_and_suggests():
    with pytest.raises(ConfigError) as err:
        build_reward("pickscor")
    message = str(err.value)
    assert "'pickscor'" in message and "did you mean 'pickscore'" in message and "jpeg_compressibility" in message
    with pytest.raises(ConfigError, match="no attribute 'Nope'"):
        build_reward("reward_models.jpeg:Nope")
    with pytest.raises(ConfigError, match="exactly one of 'name' or 'target'"):
        build_reward({"kwargs": {}})
    with pytest.raises(ConfigError, match="unknown keys"):
        build_reward({"name": "test_brightness", "weight": 2})


def test_duplicate_registration_is_an_error():
    with pytest.raises(ConfigError, match="already registered"):
        register_reward("test_brightness")(CallableReward)


class NoForward(RewardModel):
    spec = RewardSpec(name="no_forward", modality="image", needs_prompt=False)


def test_reward_model_is_abstract():
    with pytest.raises(TypeError, match="forward"):
        RewardModel()
    with pytest.raises(TypeError, match="forward"):
        NoForward()
    with pytest.raises(ConfigError, match="abstract class .*NoForward.* does not implement forward"):
        build_reward(f"{__name__}:NoForward")
    assert isinstance(Brightness(), RewardModel)


def test_check_inputs_errors():
    reward = Brightness()
    with pytest.raises(FlowAlignError, match=r"lie in \[0, 1\]"):
        reward(torch.full((1, 3, 4, 4), 2.0), None)
    with pytest.raises(FlowAlignError, match="VideoReward"):
        reward(torch.rand(1, 2, 3, 4, 4), None)
    with pytest.raises(FlowAlignError, match="3 channels"):
        reward(torch.rand(1, 4, 4, 4), None)
    with pytest.raises(FlowAlignError, match="list of 2 strings"):
        reward(torch.rand(2, 3, 4, 4), ["only one"])


def test_reward_output_validation_and_nonfinite_invalid():
    out = RewardOutput.from_scores(torch.tensor([1.0, float("nan")]))
    assert out.valid.tolist() == [True, False] and out.scores.dtype == torch.float32
    with pytest.raises(FlowAlignError, match="components\\['x'\\]"):
        RewardOutput(scores=torch.zeros(2), valid=torch.ones(2, dtype=torch.bool), components={"x": torch.zeros(3)})


def test_callable_reward_and_path(user_module):
    images = torch.rand(3, 3, 8, 8)
    reward = CallableReward(brightness_fn)
    out = reward(images, None)
    assert torch.allclose(out.scores, images.mean(dim=(1, 2, 3)))
    assert out.info == {"called": True}
    built = build_reward({"name": "callable", "kwargs": {"fn": f"{user_module}:brightness_fn"}})
    assert torch.allclose(built(images, None).scores, out.scores)
    bad = CallableReward(lambda i, p, m: ([1.0], {}))
    with pytest.raises(FlowAlignError, match=r"shape \(1,\), expected \(3,\)"):
        bad(images, None)


def test_composite_weighted_sum_and_components():
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    composite = CompositeReward.create([
        {"name": "test_brightness", "weight": 2.0, "alias": "a"},
        {"name": "test_brightness", "kwargs": {"scale": 3.0}, "weight": -0.5, "alias": "b"},
    ])
    out = composite(images, None)
    mean = images.mean(dim=(1, 2, 3))
    assert torch.allclose(out.scores, 2.0 * mean - 0.5 * 3.0 * mean)
    assert torch.allclose(out.components["a"], mean) and torch.allclose(out.components["b"], 3 * mean)
    assert composite.spec.differentiable
    out.scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    built = build_reward({"name": "composite", "kwargs": {"components": [{"name": "jpeg_compressibility"},
                                                                         {"name": "test_brightness"}]}})
    assert not built.spec.differentiable and set(built(images.detach(), None).components) >= {
        "jpeg_compressibility", "test_brightness", "jpeg_compressibility/size_kb"}
    with pytest.raises(ConfigError, match="duplicate alias"):
        CompositeReward.create([{"name": "test_brightness"}, {"name": "test_brightness"}])


def test_composite_invalid_part_marks_invalid():
    nan_reward = CallableReward(lambda i, p, m: (torch.tensor([1.0, float("nan")]), {}))
    composite = CompositeReward({"nan": nan_reward, "b": Brightness()}, {"nan": 1.0, "b": 1.0})
    out = composite(torch.rand(2, 3, 4, 4), None)
    assert out.valid.tolist() == [True, False] and torch.isfinite(out.scores).all()


@register_reward("test_prompt_length")
class PromptLength(RewardModel):
    spec = RewardSpec(name="test_prompt_length", modality="image", needs_prompt=True)

    def forward(self, images, prompts, metadata=None):
        self.check_inputs(images, prompts, metadata)
        return RewardOutput.from_scores(torch.tensor([float(len(p)) for p in prompts]))


def test_prompt_rewards_reject_empty_or_whitespace_prompts():
    images = torch.rand(3, 3, 4, 4)
    with pytest.raises(FlowAlignError, match=r"'test_prompt_length' needs a non-empty prompt.*prompts\[1\] is ' \\t'"):
        PromptLength()(images, ["a cat", " \t", ""])
    with pytest.raises(FlowAlignError, match=r"prompts\[0\] is ''"):
        PromptLength()(images[:1], [""])
    assert PromptLength()(images, ["a", "bb", "ccc"]).scores.tolist() == [1.0, 2.0, 3.0]
    assert Brightness()(images, ["", " ", "x"]).valid.all()  # prompt-free rewards ignore prompts


def test_composite_accepts_dotted_target_paths_as_names():
    target = "reward_models.jpeg:JpegCompressibility"
    composite = CompositeReward.create([{"target": target}, {"name": "test_brightness", "weight": 2.0}])
    images = torch.rand(2, 3, 8, 8)
    out = composite(images, None)
    assert composite.names == [target, "test_brightness"]
    assert composite.spec.name == f"composite({target},test_brightness)"
    assert set(out.components) == {target, f"{target}/size_kb", "test_brightness"}
    assert torch.allclose(out.scores, out.components[target] + 2.0 * images.mean(dim=(1, 2, 3)))
    direct = CompositeReward({"a.b": Brightness(), "c.d:E": Brightness(scale=3.0)}, {"c.d:E": 1.0, "a.b": -1.0})
    assert torch.allclose(direct(images, None).scores, 2.0 * images.mean(dim=(1, 2, 3)))


def test_training_build_rewards_with_module_path_key():
    from flowalign.training.config import RewardConfig
    from flowalign.training.rewarding import build_rewards

    target = "reward_models.jpeg:JpegCompressibility"
    reward = build_rewards(RewardConfig(weights={target: 1.0, "test_brightness": 0.5},
                                        kwargs={"test_brightness": {"scale": 2.0}}))
    images = torch.rand(2, 3, 8, 8)
    out = reward(images, None)
    assert {target, "test_brightness"} <= set(out.components)
    assert torch.allclose(out.components["test_brightness"], 2.0 * images.mean(dim=(1, 2, 3)))
    assert torch.allclose(out.scores, out.components[target] + 0.5 * out.components["test_brightness"])
