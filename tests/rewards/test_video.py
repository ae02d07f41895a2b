import pytest
import torch

from flowalign.errors import ConfigError, FlowAlignError
from reward_models import build_reward
from reward_models.base import RewardModel, RewardOutput, RewardSpec
from reward_models.pickscore import PickScore
from reward_models.video import VideoReward, frame_indices

from reward_test_utils import tiny_clip_config


class MeanRed(RewardModel):
    spec = RewardSpec(name="mean_red", modality="image", needs_prompt=False, differentiable=True)

    def forward(self, images, prompts, metadata=None):
        self.check_inputs(images, prompts, metadata)
        return RewardOutput.from_scores(images[:, 0].mean(dim=(1, 2)), components={"twice": 2 * images[:, 0].mean(dim=(1, 2))})


def test_frame_indices_are_uniform_and_stated():
    assert frame_indices(16, 4) == [0, 5, 10, 15]
    assert frame_indices(9, 3) == [0, 4, 8]
    assert frame_indices(3, 8) == [0, 1, 2]
    assert frame_indices(7, 1) == [3]
    with pytest.raises(ConfigError):
        frame_indices(0, 2)


@pytest.mark.parametrize("aggregate", ["mean", "min", "max"])
def test_aggregation_equals_frame_by_frame(aggregate):
    torch.manual_seed(0)
    reward = PickScore.from_config(tiny_clip_config())
    video = VideoReward(reward, num_frames=3, aggregate=aggregate, frame_batch_size=4)
    videos = torch.rand(2, 7, 3, 32, 32)
    prompts = ["a cat", "a dog"]
    with torch.no_grad():
        out = video(videos, prompts)
        per_frame = torch.stack([
            torch.stack([reward(videos[b, t : t + 1], [prompts[b]]).scores[0] for t in frame_indices(7, 3)])
            for b in range(2)])
    expected = {"mean": per_frame.mean(1), "min": per_frame.min(1).values, "max": per_frame.max(1).values}[aggregate]
    assert torch.allclose(out.scores, expected, atol=1e-5)
    assert out.info["frame_indices"] == [0, 3, 6] and out.valid.all()


def test_video_components_gradient_and_modality():
    video = VideoReward(MeanRed(), num_frames=2, aggregate="max")
    videos = torch.rand(3, 5, 3, 8, 8, requires_grad=True)
    out = video(videos, None)
    assert torch.allclose(out.components["twice"], 2 * out.scores)
    out.scores.sum().backward()
    assert videos.grad.abs().sum() > 0 and video.spec.modality == "video" and video.spec.differentiable
    with pytest.raises(FlowAlignError, match="scores videos but got an image batch"):
        video(torch.rand(1, 3, 8, 8), None)
    built = build_reward({"name": "video", "kwargs": {"image_reward": "jpeg_compressibility", "num_frames": 2}})
    assert built(torch.rand(1, 4, 3, 16, 16), None).scores.shape == (1,)
    with pytest.raises(ConfigError, match="aggregate"):
        VideoReward(MeanRed(), aggregate="median")
