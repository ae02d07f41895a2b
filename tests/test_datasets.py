"""Offline image datasets: JSONL manifests (loading, fitting to the model's size, sampling, errors naming the file and
line) and the built-in toy:sft set (verifier-perfect scenes of training prompts only)."""

import json

import pytest
import torch
from PIL import Image

from flowalign.data import ImageDataset, fit_image, load_image_dataset
from flowalign.errors import ConfigError, FlowAlignError
from flowalign.toy.prompts import heldout_prompts, parse_prompt, split_prompts
from flowalign.toy.sft_data import ToySFTDataset
from reward_models.io_utils import BadInputError, load_image
from reward_models.shapes import ShapesQuality, ShapesReward


def write_manifest(folder, lines):
    path = folder / "data.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture
def images(tmp_path):
    """Two PNGs (one in a sub-folder) and a JPEG; returns their paths."""
    (tmp_path / "img").mkdir()
    a, b, c = tmp_path / "img" / "a.png", tmp_path / "b.png", tmp_path / "c.jpg"
    Image.new("RGB", (6, 4), (255, 0, 0)).save(a)
    Image.fromarray(torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8).numpy()).save(b)
    Image.new("RGB", (8, 8), (0, 0, 255)).save(c, format="JPEG")
    return a, b, c


def test_manifest_dataset(tmp_path, images):
    a, b, c = images
    path = write_manifest(tmp_path, [{"prompt": "red", "image": "img/a.png", "metadata": {"kind": "flat"}}, "",
                                     {"prompt": "noise", "image": "b.png", "extra": 1},
                                     {"prompt": "blue", "image": str(c)}])
    data = load_image_dataset(str(path))
    assert isinstance(data, ImageDataset) and len(data) == 3
    assert data.prompts == ["red", "noise", "blue"] and data.image_paths == [a, b, c]
    assert data.metadata == [{"kind": "flat"}, {}, {}]
    assert data.sources == [f"{path}:1", f"{path}:3", f"{path}:4"]  # 1-based lines, the blank one skipped
    batch = data.images([1, 1], (8, 8))
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == torch.float32
    assert torch.equal(batch[0], load_image(b)) and torch.equal(batch[1], batch[0])  # same size: untouched
    red = data.images([0], 4)  # 4×6 → covers 4×4: scaled by 1, centre crop
    assert red.shape == (1, 3, 4, 4) and torch.equal(red[0], load_image(a)[:, :, 1:5])
    with pytest.raises(FlowAlignError, match=r"indices \[3\] out of range for 3 samples"):
        data.images([0, 3], 8)


def test_fit_image_keeps_the_centre_and_the_aspect():
    image = torch.zeros(3, 8, 24)
    image[0, :, :8], image[1, :, 8:16], image[2, :, 16:] = 1, 1, 1  # red | green | blue thirds
    fitted = fit_image(image, (4, 4))  # scaled by 1/2 to 4×12, centre 4 columns kept: green, not squashed
    assert fitted.shape == (3, 4, 4)
    # columns 1-2 come from source pixels 8.5..14.5 only (the antialiasing filter spans ±2 source pixels): pure
    # green up to float rounding of the filter weights
    torch.testing.assert_close(fitted[:, :, 1:3], torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 4, 2),
                               atol=1e-6, rtol=0)
    assert fitted.min() >= 0 and fitted.max() <= 1
    upscaled = fit_image(torch.rand(3, 4, 4), (8, 12))
    assert upscaled.shape == (3, 8, 12)


def test_sample_is_reproducible_and_covers_the_dataset(tmp_path, images):
    path = write_manifest(tmp_path, [{"prompt": f"p{i}", "image": "b.png"} for i in range(5)])
    data = load_image_dataset(str(path))
    first = data.sample(3, torch.Generator().manual_seed(1))
    assert first == data.sample(3, torch.Generator().manual_seed(1)) and len(set(first)) == 3
    many = data.sample(12, torch.Generator().manual_seed(2))
    assert len(many) == 12 and sorted(many[:5]) == list(range(5)) and sorted(many[5:10]) == list(range(5))
    assert data.sample(0, torch.Generator()) == []


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x", "image": "b.png"', r"data.jsonl: line 2 is not a JSON object"),
    ('["a list"]', r"data.jsonl: line 2 is not a JSON object"),
    ({"image": "b.png"}, r"data.jsonl:2: 'prompt' must be a string, got None"),
    ({"prompt": "  ", "image": "b.png"}, r"data.jsonl:2: the prompt is empty"),
    ({"prompt": "x"}, r"data.jsonl:2: 'image' must be an image path"),
    ({"prompt": "x", "image": "gone.png"}, r"data.jsonl:2: 'image': image '.*gone.png' does not exist"),
    ({"prompt": "x", "image": "notes.png"}, r"data.jsonl:2: 'image': cannot read image '.*notes.png'"),
    ({"prompt": "x", "image": "b.png", "metadata": [1]}, r"data.jsonl:2: 'metadata' must be an object"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, images, line, message):
    (tmp_path / "notes.png").write_text("not an image")
    path = write_manifest(tmp_path, [{"prompt": "fine", "image": "b.png"}, line])
    with pytest.raises(BadInputError, match=message):
        load_image_dataset(str(path))


def test_image_corrupted_after_loading_names_its_line(tmp_path, images):
    path = write_manifest(tmp_path, [{"prompt": "a", "image": "b.png"}, {"prompt": "b", "image": "img/a.png"}])
    data = load_image_dataset(str(path))
    images[0].write_bytes(images[0].read_bytes()[:40])  # truncated after the manifest was read
    with pytest.raises(BadInputError, match=rf"{path}:2: cannot read image"):
        data.images([0, 1], 4)


def test_bad_specs(tmp_path):
    with pytest.raises(ConfigError, match="'missing.jsonl' is not a file .* built-in dataset \\(toy:sft\\)"):
        load_image_dataset("missing.jsonl")
    with pytest.raises(ConfigError, match="unknown built-in dataset 'toy:nope'; built-in: toy:sft"):
        load_image_dataset("toy:nope")
    (tmp_path / "data.csv").write_text("prompt,image\n")
    with pytest.raises(BadInputError, match="must be a JSONL file"):
        load_image_dataset(str(tmp_path / "data.csv"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(BadInputError, match="holds no samples"):
        load_image_dataset(str(tmp_path / "empty.jsonl"))
    with pytest.raises(ConfigError, match="images_per_prompt must be >= 1"):
        load_image_dataset("toy:sft", images_per_prompt=0)


def test_toy_sft_is_verifier_perfect_on_training_prompts_only():
    data = load_image_dataset("toy:sft")
    train = split_prompts("train")
    assert len(data) == 4 * len(train) and data.prompts == [p for p in train for _ in range(4)]
    assert not set(data.prompts) & set(heldout_prompts())
    # the verifier costs ~5 ms an image here, so a seeded draw of 240; all 3992 images of seeds 0-2 were measured at 1.0
    # (shapes and quality) once, see flowalign/toy/sft_data.py
    chosen = data.sample(240, torch.Generator().manual_seed(0))
    pixels = data.images(chosen, 32)
    assert pixels.shape == (240, 3, 32, 32)
    assert {parse_prompt(data.prompts[i]).kind for i in chosen} == {"count", "pair", "relation"}
    scores = ShapesReward()(pixels, [data.prompts[i] for i in chosen]).scores
    assert scores.min().item() == 1.0  # every clause of every prompt holds
    assert ShapesQuality()(pixels).scores.min().item() == 1.0


def test_toy_sft_is_deterministic_and_lazy():
    a, b = ToySFTDataset(seed=3, images_per_prompt=2), ToySFTDataset(seed=3, images_per_prompt=2)
    late = a.images([7, 0, 7], 32)
    assert len(a._cache) == 2  # only the two prompts asked for were rendered
    assert torch.equal(b.images([0, 7], 32), late[[1, 0]])  # exact: the same rendering from the same key
    assert not torch.equal(a.images([6], 32)[0], late[0])  # the prompt's other image is another layout
    assert not torch.equal(ToySFTDataset(seed=4, images_per_prompt=2).images([7], 32)[0], late[0])


def test_skip_bad_leaves_bad_lines_out_and_lists_them(tmp_path, images):
    path = tmp_path / "data.jsonl"
    first, second = str(images[0]), str(images[1])
    lines = [{"prompt": "a red circle", "image": first}, {"prompt": "", "image": first},
             {"prompt": "a blue square", "image": "nope.png"}, {"prompt": "two circles", "image": second}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(BadInputError, match=r"data.jsonl:2: the prompt is empty"):
        load_image_dataset(str(path))
    data = load_image_dataset(str(path), skip_bad=True)
    assert data.prompts == ["a red circle", "two circles"] and data.sources == [f"{path}:1", f"{path}:4"]
    assert [s for s, _ in data.skipped] == [f"{path}:2", f"{path}:3"] and "does not exist" in data.skipped[1][1]
    path.write_text(json.dumps(lines[1]) + "\n")
    with pytest.raises(BadInputError, match=r"every line was skipped as bad \(1 lines; the first: .*prompt is empty"):
        load_image_dataset(str(path), skip_bad=True)
