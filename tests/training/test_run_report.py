"""The run report for a person: readable held-out grids (upscaled, captioned), before/after paired by seed, and
the headline of held-out metrics."""

import base64
import io
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from flowalign.errors import FlowAlignError
from flowalign.training.eval_images import (CELL_GAP, MAX_SAMPLES, PAD, save_eval_images, upscale_factor,
                                            write_before_after)
from flowalign.training.run_report import headline, headline_lines, write_run_report

COLOURS = [(0.9, 0.1, 0.1), (0.1, 0.75, 0.15), (0.1, 0.2, 0.9), (0.95, 0.85, 0.1), (0.6, 0.2, 0.7), (0.2, 0.7, 0.7)]


def solid(colours, height, width):
    """(N, 3, H, W) images, each one flat colour."""
    return torch.tensor(colours, dtype=torch.float32)[:, :, None, None].expand(-1, -1, height, width).clone()


def crop(sheet, box):
    x, y, w, h = box
    return np.asarray(sheet)[y : y + h, x : x + w]


def ink(region):
    """Pixels dark enough to be text (tiles here are never this dark)."""
    return int((region.max(axis=-1) < 100).sum())


def rgb8(colour):
    return np.round(np.asarray(colour) * 255).astype(np.uint8)


def test_grid_is_upscaled_and_captioned(tmp_path):
    prompts = ["a red circle", "two green squares and a blue triangle " * 4, "x", "a yellow square", "p", "q"]
    seeds = [7, 8, 9, 10, 11, 12]
    png = save_eval_images(tmp_path, "before", solid(COLOURS, 8, 12), prompts, seeds)
    meta = json.loads((tmp_path / "eval_before.json").read_text())
    sheet = Image.open(png).convert("RGB")
    assert png == tmp_path / "eval_before.png"
    assert meta["prompts"] == prompts and meta["seeds"] == seeds and meta["upscale"] == 32 == upscale_factor(8)
    for box, caption, colour in zip(meta["tiles"], meta["captions"], COLOURS):
        assert box[2:] == [12 * 32, 8 * 32]  # nearest-neighbour upscaled by an integer factor to >= 256 px high
        assert (crop(sheet, box) == rgb8(colour)).all()
        assert ink(crop(sheet, caption)) > 20  # the prompt is written under the image
    # the long prompt wraps within its cell: text over >= 3 lines, nothing in the gap to the next cell
    long_caption = crop(sheet, meta["captions"][1])
    rows_with_ink = np.nonzero((long_caption.max(axis=-1) < 100).any(axis=1))[0]
    assert rows_with_ink.max() - rows_with_ink.min() > 3 * 14
    x, y, w, h = meta["captions"][1]
    assert ink(np.asarray(sheet)[y : y + h, x + w : x + w + CELL_GAP]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_before.json", "eval_before.png"]  # atomic writes


def test_grid_keeps_the_first_samples_and_checks_lengths(tmp_path):
    n = MAX_SAMPLES + 3
    save_eval_images(tmp_path, "after", torch.rand(n, 3, 300, 300), [f"p{i}" for i in range(n)], list(range(n)))
    meta = json.loads((tmp_path / "eval_after.json").read_text())
    assert meta["seeds"] == list(range(MAX_SAMPLES)) and meta["upscale"] == 1  # 300 px: already readable
    assert all(box[2:] == [300, 300] for box in meta["tiles"])
    with pytest.raises(FlowAlignError, match="2 samples, 1 prompts, 2 seeds"):
        save_eval_images(tmp_path, "x", torch.rand(2, 3, 8, 8), ["a"], [0, 1])
    with pytest.raises(FlowAlignError, match=r"\(N, 3, H, W\)"):
        save_eval_images(tmp_path, "x", torch.rand(2, 8, 8), ["a", "b"], [0, 1])


def test_video_shows_frames_in_a_row(tmp_path):
    frames = torch.linspace(0.2, 0.8, 7)  # frame f is grey level frames[f]
    video = frames[None, :, None, None, None].expand(2, 7, 3, 8, 8).clone()
    save_eval_images(tmp_path, "before", video, ["a", "b"], [0, 1])
    meta = json.loads((tmp_path / "eval_before.json").read_text())
    sheet = Image.open(tmp_path / "eval_before.png").convert("RGB")
    side = 8 * 32
    assert meta["frames"] == 4 and meta["tiles"][0][2:] == [4 * side + 3 * PAD, side]
    assert meta["tiles"][1][1] > meta["tiles"][0][1]  # one video per row
    tile = crop(sheet, meta["tiles"][0])
    shown = [int(tile[side // 2, k * (side + PAD) + side // 2, 0]) for k in range(4)]
    assert shown == [round(float(frames[f]) * 255) for f in (0, 2, 4, 6)]  # evenly spaced, first and last


def test_before_after_pairs_samples_by_seed(tmp_path):
    before_colours, after_colours = COLOURS[:3], COLOURS[3:]
    save_eval_images(tmp_path, "before", solid(before_colours, 16, 16), ["p10", "p11", "p12"], [10, 11, 12])
    # the after grid lists the seeds in another order and has one seed more: pairing goes by seed
    after = solid([after_colours[2], after_colours[0], after_colours[1], (0.5, 0.5, 0.5)], 16, 16)
    save_eval_images(tmp_path, "after", after, ["p12", "p10", "p11", "p13"], [12, 10, 11, 13])
    path = write_before_after(tmp_path)
    sheet = Image.open(path).convert("RGB")
    pairs = json.loads((tmp_path / "eval_before_after.json").read_text())["pairs"]
    assert [(p["seed"], p["prompt"]) for p in pairs] == [(10, "p10"), (11, "p11"), (12, "p12")]
    for pair, b, a in zip(pairs, before_colours, after_colours):
        assert pair["before"][2:] == pair["after"][2:] == [256, 256]
        assert pair["before"][1] == pair["after"][1] and pair["before"][0] < pair["after"][0]  # side by side
        assert (crop(sheet, pair["before"]) == rgb8(b)).all() and (crop(sheet, pair["after"]) == rgb8(a)).all()
        assert ink(crop(sheet, pair["caption"])) > 10
        assert pair["caption"][2] >= pair["after"][0] + 256 - pair["before"][0]  # the caption spans the pair
    for column in ("before", "after"):  # the labels above the first row
        x, y, w, _ = pairs[0][column]
        assert ink(np.asarray(sheet)[PAD:y, x : x + w]) > 10


def test_before_after_needs_both_and_the_same_prompts(tmp_path):
    save_eval_images(tmp_path, "before", torch.rand(2, 3, 8, 8), ["a", "b"], [0, 1])
    assert write_before_after(tmp_path) is None
    save_eval_images(tmp_path, "after", torch.rand(2, 3, 8, 8), ["a", "c"], [0, 1])
    with pytest.raises(FlowAlignError, match="seed 1 has prompt 'b' before training and 'c' after"):
        write_before_after(tmp_path)
    save_eval_images(tmp_path, "after", torch.rand(2, 3, 8, 8), ["a", "b"], [5, 6])
    with pytest.raises(FlowAlignError, match="share no seed"):
        write_before_after(tmp_path)


SUMMARY = {"iterations": 3,
           "eval_before": {"eval/reward": 0.5, "eval/shapes_quality": 0.8, "eval/position": math.nan,
                           "eval/accuracy": 0.25},
           "eval_after": {"eval/reward": 0.625, "eval/shapes_quality": 0.75, "eval/position": math.nan,
                          "eval/accuracy": 0.5}}


def test_headline_before_after_change():
    rows = headline(SUMMARY)
    assert [r["metric"] for r in rows] == ["accuracy", "reward", "shapes_quality", "position"]
    # changes by hand: 0.5 - 0.25, 0.625 - 0.5, 0.75 - 0.8; position is NaN on both sides
    assert [r["change"] for r in rows[:2]] == [0.25, 0.125] and rows[2]["change"] == pytest.approx(-0.05)
    assert rows[3] == {"metric": "position", "before": None, "after": None, "change": None}
    assert headline_lines(SUMMARY) == ["accuracy: 0.2500 → 0.5000 (+0.2500)", "reward: 0.5000 → 0.6250 (+0.1250)",
                                       "shapes_quality: 0.8000 → 0.7500 (-0.0500)", "position: n/a → n/a (n/a)"]
    assert headline({"iterations": 0}) == []


def test_report_opens_with_headline_and_before_after(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "reward/mean": 0.1 * s, "eval/reward": 0.5 + s / 24}) + "\n" for s in (0, 3)))
    save_eval_images(tmp_path, "before", solid(COLOURS[:2], 8, 8), ["a", "b"], [0, 1])
    save_eval_images(tmp_path, "after", solid(COLOURS[2:4], 8, 8), ["a", "b"], [0, 1])
    text = write_run_report(tmp_path, SUMMARY).read_text()
    assert text.index("accuracy: 0.2500 → 0.5000 (+0.2500)") < text.index("reward: 0.5000 → 0.6250 (+0.1250)")
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(uris) == 1  # the before/after sheet stands for both grids
    assert text.index(uris[0]) < text.index("<h2>Summary</h2>")
    embedded = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert embedded.size == Image.open(tmp_path / "eval_before_after.png").size
