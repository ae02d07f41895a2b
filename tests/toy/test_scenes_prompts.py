import pytest
import torch

from flowalign.toy.prompts import PromptParseError, all_prompts, heldout_prompts, is_heldout, parse_prompt, train_prompts
from flowalign.toy.scenes import generate_scenes


def test_scenes_reproducible_by_seed():
    a, pa, _ = generate_scenes(8, 3)
    b, pb, _ = generate_scenes(8, 3)
    c, pc, _ = generate_scenes(8, 4)
    assert torch.equal(a, b) and pa == pb  # exact by construction: the same seeded draws and rendering, same process
    assert not torch.equal(a, c)
    assert a.shape == (8, 3, 32, 32) and a.min() >= 0 and a.max() <= 1


def test_splits_disjoint_and_heldout_never_in_train():
    train, held = set(train_prompts()), set(heldout_prompts())
    assert train and held and not (train & held)
    assert all(is_heldout(parse_prompt(p)) for p in held)
    assert not any(is_heldout(parse_prompt(p)) for p in train)
    assert {parse_prompt(p).kind for p in held} == {"count", "pair", "relation"}


def test_split_files_match_code():
    from flowalign.toy.prompts import PROMPTS_DIR
    assert (PROMPTS_DIR / "train.txt").read_text().split("\n")[:-1] == list(train_prompts())
    assert (PROMPTS_DIR / "heldout.txt").read_text().split("\n")[:-1] == list(heldout_prompts())


def test_parse_roundtrip_and_errors():
    for p in all_prompts()[::37]:
        assert parse_prompt(p.text) == p
    parsed = parse_prompt("a green triangle above a red circle")
    assert parsed.relation.relation == "above" and parsed.objects[1].shape == "circle"
    assert parsed.names("red") and parsed.names("triangle") and not parsed.names("blue")
    assert not parse_prompt("two red circles").names("circles")  # words of the grammar, not substrings
    for bad in ("a purple circle", "two red circle", "five red circles", "a red circle near a blue square", ""):
        with pytest.raises(PromptParseError, match="prompt"):
            parse_prompt(bad)


def test_every_prompt_lays_out_with_sizes_in_range():
    import numpy as np

    from flowalign.toy.scenes import SceneConfig, scene_for_prompt
    cfg, rng = SceneConfig(), np.random.default_rng(0)
    crowded = [p for p in all_prompts() if sum(o.count for o in p.objects) >= 3]
    assert crowded
    for p in crowded[::3]:
        scene = scene_for_prompt(p, rng, cfg)
        assert len(scene.shapes) == sum(o.count for o in p.objects)
        assert all(cfg.min_size <= s.size <= cfg.max_size for s in scene.shapes)


def test_scene_config_rejects_bad_sizes():
    from flowalign.errors import FlowAlignError
    from flowalign.toy.scenes import SceneConfig
    with pytest.raises(FlowAlignError, match="min_size"):
        SceneConfig(min_size=12, max_size=10)
    with pytest.raises(FlowAlignError, match="max_size"):
        SceneConfig(max_size=31)
