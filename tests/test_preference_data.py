"""Preference data: the Pick-a-Pic converter and the toy preference set."""

import base64
import io
import json
import runpy
from pathlib import Path

import pytest
import torch
from PIL import Image

from flowalign.data.pickapic import convert_pickapic
from flowalign.data.preference import PreferenceDataset
from flowalign.toy.preference_data import ToyPreferenceConfig, generate_toy_preferences
from flowalign.toy.verify import verify
from reward_models.evaluate import read_preference_manifest
from reward_models.io_utils import BadInputError, load_image

ROOT = Path(__file__).resolve().parents[1]


def jpeg_b64(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def export(tmp_path, rows):
    path = tmp_path / "export.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_converter_puts_the_labelled_winner_first_drops_ties_and_keeps_bytes(tmp_path):
    Image.new("RGB", (16, 16), "white").save(tmp_path / "white.png")
    rows = [
        {"caption": "a red fox", "jpg_0": jpeg_b64("red"), "jpg_1": jpeg_b64("blue"), "label_0": 0, "label_1": 1},
        {"caption": "a tie", "jpg_0": jpeg_b64("red"), "jpg_1": jpeg_b64("blue"), "label_0": 0.5, "label_1": 0.5},
        {"caption": "a white cat", "image_0": "white.png", "jpg_1": jpeg_b64("black"), "label_0": 1, "label_1": 0},
    ]
    summary = convert_pickapic(export(tmp_path, rows), tmp_path / "out")
    assert (summary["pairs"], summary["ties"], summary["skipped"]) == (2, 1, [])
    data = PreferenceDataset(tmp_path / "out" / "pairs.jsonl")
    assert data.prompts == ["a red fox", "a white cat"] and data.pair_indices() == [0, 1]
    winners, losers = data.images([0, 1], 16), data.losers([0, 1], 16)
    assert winners[0, 2].mean() > 0.8 and losers[0, 0].mean() > 0.8  # fox: blue (label_1) won over red
    assert winners[1].min() == 1.0 and losers[1].max() < 0.1  # cat: the white PNG path won, read unchanged
    assert (tmp_path / "out" / "images" / "000003_w.png").read_bytes() == (tmp_path / "white.png").read_bytes()


def test_converter_names_a_bad_row_and_skip_bad_reports_it(tmp_path, capsys):
    rows = [{"caption": "ok", "jpg_0": jpeg_b64("red"), "jpg_1": jpeg_b64("blue"), "label_0": 1, "label_1": 0},
            {"caption": "broken", "jpg_0": base64.b64encode(b"not an image").decode(), "jpg_1": jpeg_b64("blue"),
             "label_0": 1, "label_1": 0},
            {"caption": "no labels", "jpg_0": jpeg_b64("red"), "jpg_1": jpeg_b64("blue")}]
    source = export(tmp_path, rows)
    with pytest.raises(BadInputError, match=r"export.jsonl:2: 'jpg_0' cannot be read as an image"):
        convert_pickapic(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    script = runpy.run_path(str(ROOT / "scripts" / "convert_pickapic.py"))  # the script's own main, in-process
    assert script["main"]([str(source), "--out", str(tmp_path / "out")]) == 1
    assert "export.jsonl:2" in capsys.readouterr().err
    assert script["main"]([str(source), "--out", str(tmp_path / "out"), "--skip-bad"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 1 and [s["source"] for s in summary["skipped"]] == [f"{source}:2", f"{source}:3"]
    assert "label_0" in summary["skipped"][1]["why"]


def test_toy_preference_set_pairs_verifier_correct_winners_with_failing_model_samples(tmp_path, sd3_model):
    cfg = ToyPreferenceConfig(seed=0, tries=2, steps=2, batch=8, max_prompts=4)
    summary = generate_toy_preferences(sd3_model, tmp_path / "toy", cfg, size=32)
    data = PreferenceDataset(tmp_path / "toy" / "train.jsonl")
    assert len(data) == 4 == summary["train"]["prompts"]
    winners = data.images(range(4), 32)
    assert bool((verify(winners, data.prompts)[0] == 1.0).all())  # rendered scenes, read back from PNG
    pairs = data.pair_indices()
    assert len(pairs) == summary["train"]["pairs"] >= 1  # the untrained tiny model fails these prompts
    assert bool((verify(data.losers(pairs, 32), [data.prompts[i] for i in pairs])[0] < 1.0).all())
    heldout, skipped = read_preference_manifest(tmp_path / "toy" / "heldout_pairs.jsonl")
    assert len(heldout) == summary["heldout"]["pairs"] and not skipped
    for pair in heldout:  # the preferred image is the winner, wherever it sits
        preferred = load_image(pair.image_0 if pair.preferred == 0 else pair.image_1)
        assert float(verify(preferred[None], [pair.prompt])[0][0]) == 1.0
        assert "winners" in str(pair.image_0 if pair.preferred == 0 else pair.image_1)
    again = generate_toy_preferences(sd3_model, tmp_path / "toy2", cfg, size=32)
    assert again == summary
    assert (tmp_path / "toy" / "train.jsonl").read_text() == (tmp_path / "toy2" / "train.jsonl").read_text()
    assert torch.equal(winners, PreferenceDataset(tmp_path / "toy2" / "train.jsonl").images(range(4), 32))


def test_a_parquet_export_converts_with_pyarrow_or_says_what_it_needs(tmp_path):
    row = {"caption": "a red fox", "jpg_0": base64.b64decode(jpeg_b64("red")),
           "jpg_1": base64.b64decode(jpeg_b64("blue")), "label_0": 1.0, "label_1": 0.0}
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        (tmp_path / "export.parquet").write_bytes(b"PAR1")
        with pytest.raises(BadInputError, match="reading parquet needs pyarrow"):
            convert_pickapic(tmp_path / "export.parquet", tmp_path / "out")
        return
    pq.write_table(pyarrow.Table.from_pylist([row]), tmp_path / "export.parquet")
    summary = convert_pickapic(tmp_path / "export.parquet", tmp_path / "out")
    assert summary["pairs"] == 1
    data = PreferenceDataset(tmp_path / "out" / "pairs.jsonl")
    assert data.images([0], 16)[0, 0].mean() > 0.8  # label_0 = 1: the red image won
