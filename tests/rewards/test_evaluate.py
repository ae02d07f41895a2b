"""Preference evaluation: accuracy by construction, random ≈ 50%, ties, cache, bad input, CLI."""

import argparse
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from flowalign.commands import reward as reward_cmd
from reward_models import CallableReward
from reward_models.base import RewardModel, RewardOutput, RewardSpec, register_reward
from reward_models.evaluate import evaluate_preferences, read_preference_manifest
from reward_models.io_utils import BadInputError


@register_reward("eval_brightness")
class EvalBrightness(RewardModel):
    """Mean pixel value; counts how many images it scored."""

    spec = RewardSpec(name="eval_brightness", modality="image", needs_prompt=False)
    calls = 0

    def forward(self, images, prompts, metadata=None):
        self.check_inputs(images, prompts, metadata)
        EvalBrightness.calls += images.shape[0]
        return RewardOutput.from_scores(images.mean(dim=(1, 2, 3)))


def random_reward(seed: int = 0) -> CallableReward:
    gen = torch.Generator().manual_seed(seed)
    return CallableReward(lambda images, prompts, meta: (torch.rand(images.shape[0], generator=gen), {}), name="random")


def make_dataset(folder, n_pairs=20, n_ties=5, fmt="jsonl", seed=0, tie_equal=True):
    """Pairs of flat gray images; the brighter one is preferred. Tie rows use equal-brightness images."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_pairs + n_ties):
        tie = i >= n_pairs
        a = int(rng.integers(0, 120))
        b = a if (tie and tie_equal) else int(rng.integers(130, 255))
        size = (8, 8) if i % 2 else (12, 10)  # two image sizes exercise the size grouping
        names = []
        for j, level in enumerate((a, b)):
            name = f"img_{i}_{j}.png"
            Image.fromarray(np.full((*size, 3), level, dtype=np.uint8)).save(folder / name)
            names.append(name)
        swap = bool(rng.integers(0, 2))
        image_0, image_1 = (names[1], names[0]) if swap else names
        preferred = "" if tie else (0 if swap else 1)
        rows.append({"prompt": f"prompt {i % 4}", "image_0": image_0, "image_1": image_1,
                     "preferred": preferred, "tie": tie})
    manifest = folder / f"pairs.{fmt}"
    if fmt == "jsonl":
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with manifest.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return manifest


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_agreeing_reward_scores_100_percent_and_ties(tmp_path, fmt):
    manifest = make_dataset(tmp_path / "data", fmt=fmt)
    report = evaluate_preferences({"bright": EvalBrightness()}, manifest, batch_size=4, progress=False)
    m = report.rewards["bright"]
    assert report.n_pairs == 25 and report.n_ties == 5 and m.n_ties == 5
    assert m.accuracy == 1.0  # ties dropped: 20/20
    assert m.accuracy_with_ties == 1.0  # equal images are predicted ties with margin 0
    assert set(m.per_prompt) == {f"prompt {k}" for k in range(4)}
    assert all(v["accuracy"] == 1.0 for v in m.per_prompt.values())
    assert m.distribution["count"] == 50 and sum(m.distribution["histogram"]["counts"]) == 50


def test_ties_counted_when_reward_cannot_predict_them(tmp_path):
    manifest = make_dataset(tmp_path / "data", tie_equal=False)  # tie rows show a clearly brighter image
    m = evaluate_preferences({"bright": EvalBrightness()}, manifest, progress=False).rewards["bright"]
    assert m.accuracy == 1.0 and m.accuracy_with_ties == pytest.approx(20 / 25)
    wide = evaluate_preferences({"bright": EvalBrightness()}, manifest, tie_margin=10.0, progress=False)
    assert wide.rewards["bright"].accuracy_with_ties == pytest.approx(5 / 25)  # everything predicted tie


def test_random_reward_is_near_chance(tmp_path):
    manifest = make_dataset(tmp_path / "data", n_pairs=400, n_ties=0, seed=1)
    report = evaluate_preferences({"random": random_reward(0), "bright": EvalBrightness()}, manifest,
                                  batch_size=64, progress=False)
    # binomial std over 400 pairs is 0.025: a 4-sigma band
    assert 0.40 <= report.rewards["random"].accuracy <= 0.60
    agreement = report.agreement["random vs bright"]
    assert agreement["pairs"] == 400 and 0.40 <= agreement["preference_agreement"] <= 0.60
    assert abs(agreement["spearman"]) < 0.3


def test_cache_resumes_without_rescoring(tmp_path):
    manifest = make_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    EvalBrightness.calls = 0
    first = evaluate_preferences({"bright": EvalBrightness()}, manifest, cache_dir=cache, progress=False)
    assert EvalBrightness.calls == 50
    data = json.loads((cache / "bright.json").read_text())
    dropped = sorted(data["scores"])[:7]
    for key in dropped:
        del data["scores"][key]
    (cache / "bright.json").write_text(json.dumps(data))
    EvalBrightness.calls = 0
    second = evaluate_preferences({"bright": EvalBrightness()}, manifest, cache_dir=cache, progress=False)
    assert EvalBrightness.calls == 7
    assert second.rewards["bright"].accuracy == first.rewards["bright"].accuracy


def test_bad_rows_error_or_skip(tmp_path):
    manifest = make_dataset(tmp_path / "data")
    lines = manifest.read_text().splitlines()
    row = json.loads(lines[2])
    row["image_1"] = "missing.png"
    lines[2] = json.dumps(row)
    (tmp_path / "data" / "img_3_0.png").write_bytes(b"not a png")  # row 4: unreadable image
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError) as err:
        read_preference_manifest(manifest)
    assert "pairs.jsonl:3" in str(err.value) and "missing.png" in str(err.value)
    pairs, bad = read_preference_manifest(manifest, skip_bad=True)
    assert len(pairs) == 24 and bad[0].source.endswith("pairs.jsonl:3")
    report = evaluate_preferences({"bright": EvalBrightness()}, manifest, skip_bad=True, progress=False)
    skipped = {s["source"].rsplit(":", 1)[1] for s in report.skipped}
    assert skipped == {"3", "4"} and report.n_pairs == 23
    assert any("img_3_0.png" in s["error"] for s in report.skipped)


def test_unreadable_image_error_names_file_and_row(tmp_path):
    manifest = make_dataset(tmp_path / "data")
    (tmp_path / "data" / "img_0_0.png").write_bytes(b"garbage")
    with pytest.raises(BadInputError) as err:
        evaluate_preferences({"bright": EvalBrightness()}, manifest, progress=False)
    assert "img_0_0.png" in str(err.value) and "pairs.jsonl:1" in str(err.value)


def test_wrong_columns_is_an_error_even_with_skip_bad(tmp_path):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("prompt,left,right,preferred\nx,a.png,b.png,0\n")
    with pytest.raises(BadInputError, match=r"missing columns \['image_0', 'image_1'\]"):
        read_preference_manifest(bad_csv, skip_bad=True)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text(json.dumps({"prompt": "x", "a": 1}) + "\n")
    with pytest.raises(BadInputError, match="bad.jsonl:1: missing columns"):
        read_preference_manifest(bad_jsonl, skip_bad=True)
    with pytest.raises(BadInputError, match="preferred' must be 0 or 1"):
        (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "x", "image_0": "a", "image_1": "b",
                                                       "preferred": 2}) + "\n")
        read_preference_manifest(tmp_path / "p.jsonl")


def _cli(argv):
    parser = argparse.ArgumentParser(prog="flowalign")
    reward_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_eval_writes_json_and_html(tmp_path, capsys):
    manifest = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    assert _cli(["reward", "eval", "--reward", "eval_brightness", "--reward", '{"name": "jpeg_compressibility"}',
                 "--manifest", str(manifest), "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["rewards"]["eval_brightness"]["accuracy"] == 1.0
    assert "eval_brightness vs jpeg_compressibility" in report["agreement"]
    html = (out / "report.html").read_text()
    assert "<svg" in html and "accuracy (ties dropped)" in html and "<script" not in html
    assert (out / "cache" / "eval_brightness.json").is_file()
    assert "eval_brightness: accuracy 1.000" in capsys.readouterr().out


def test_cli_score_folder_and_manifest_with_skip_bad(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, level in enumerate((10, 200)):
        Image.fromarray(np.full((8, 8, 3), level, dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "0.txt").write_text("a dark square")
    _cli(["reward", "score", "--reward", "eval_brightness", "--images", str(folder), "--out", str(tmp_path / "s.csv"),
          "--no-progress", "--device", "cpu"])
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["prompt"] for r in rows] == ["a dark square", ""]
    assert float(rows[0]["eval_brightness"]) == pytest.approx(10 / 255, abs=1e-6)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "imgs/1.png", "prompt": "p"}) + "\n"
                        + json.dumps({"image": "imgs/nope.png", "prompt": "p"}) + "\n")
    with pytest.raises(BadInputError, match=r"nope\.png.*m\.jsonl:2"):
        _cli(["reward", "score", "--reward", "eval_brightness", "--manifest", str(manifest),
              "--out", str(tmp_path / "s.json"), "--no-progress", "--device", "cpu"])
    _cli(["reward", "score", "--reward", "eval_brightness", "--manifest", str(manifest), "--skip-bad",
          "--out", str(tmp_path / "s.json"), "--no-progress", "--device", "cpu"])
    result = json.loads((tmp_path / "s.json").read_text())
    assert len(result["scores"]) == 1 and result["skipped"][0]["source"].endswith("m.jsonl:2")
    assert "skipped" in capsys.readouterr().err
    with pytest.raises(Exception, match="did you mean 'eval_brightness'"):
        _cli(["reward", "score", "--reward", "eval_brightnes", "--images", str(folder),
              "--out", str(tmp_path / "x.csv"), "--no-progress", "--device", "cpu"])


@register_reward("eval_scaled")
class EvalScaled(RewardModel):
    """``scale`` × mean pixel value (needs prompts, like PickScore); counts how many images it scored."""

    spec = RewardSpec(name="eval_scaled", modality="image", needs_prompt=True)
    calls = 0

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, images, prompts, metadata=None):
        self.check_inputs(images, prompts, metadata)
        EvalScaled.calls += images.shape[0]
        return RewardOutput.from_scores(self.scale * images.mean(dim=(1, 2, 3)))


def test_cli_score_folder_without_prompts_is_an_error_for_prompt_rewards(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 50 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "0.txt").write_text("a dark square")
    argv = ["reward", "score", "--reward", "eval_scaled", "--images", str(folder), "--no-progress", "--device", "cpu"]
    with pytest.raises(BadInputError, match=r"1\.png.*empty prompt.*'eval_scaled' needs one.*--prompt.*<stem>\.txt"):
        _cli(argv + ["--out", str(tmp_path / "a.csv")])
    _cli(argv + ["--out", str(tmp_path / "b.csv"), "--prompt", "a square"])
    assert len(list(csv.DictReader((tmp_path / "b.csv").open()))) == 2
    _cli(argv + ["--out", str(tmp_path / "c.csv"), "--skip-bad"])  # skips the image without a prompt
    assert [r["prompt"] for r in csv.DictReader((tmp_path / "c.csv").open())] == ["a dark square"]


def _scaled(scale) -> str:
    return json.dumps({"name": "eval_scaled", "kwargs": {"scale": scale}})


def test_cli_eval_caches_each_reward_configuration_separately(tmp_path, capsys):
    from reward_models.scoring import reward_label

    manifest = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    base = ["reward", "eval", "--manifest", str(manifest), "--out", str(out), "--no-progress", "--device", "cpu"]
    plus, minus = reward_label(json.loads(_scaled(1.0)))[0], reward_label(json.loads(_scaled(-1.0)))[0]
    assert plus.startswith("eval_scaled[") and plus != minus and reward_label("eval_scaled")[0] == "eval_scaled"
    assert reward_label({"name": "eval_scaled", "kwargs": {"a": 1, "b": 2}}) == \
        reward_label({"name": "eval_scaled", "kwargs": {"b": 2, "a": 1}})  # stable: sorted JSON
    _cli(base + ["--reward", _scaled(1.0)])
    assert json.loads((out / "report.json").read_text())["rewards"][plus]["accuracy"] == 1.0
    _cli(base + ["--reward", _scaled(-1.0)])  # same --out: must not reuse the scale=1 scores
    assert json.loads((out / "report.json").read_text())["rewards"][minus]["accuracy"] == 0.0
    _cli(base + ["--reward", _scaled(1.0), "--reward", _scaled(-1.0)])  # was "given twice"
    report = json.loads((out / "report.json").read_text())
    assert report["rewards"][plus]["accuracy"] == 1.0 and report["rewards"][minus]["accuracy"] == 0.0
    cached = json.loads((out / "cache" / f"{plus.replace('[', '_').rstrip(']')}.json").read_text())
    assert cached["spec"] == {"reward": "eval_scaled", "kwargs": {"scale": 1.0}} and len(cached["scores"]) == 50
    assert f"{plus} = eval_scaled with kwargs" in capsys.readouterr().out


def test_cache_written_for_another_spec_is_recomputed(tmp_path):
    manifest = make_dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    spec = {"reward": "eval_scaled", "kwargs": {"scale": 1.0}}
    evaluate_preferences({"r": EvalScaled(1.0)}, manifest, cache_dir=cache, specs={"r": spec}, progress=False)
    EvalScaled.calls = 0
    evaluate_preferences({"r": EvalScaled(1.0)}, manifest, cache_dir=cache, specs={"r": spec}, progress=False)
    assert EvalScaled.calls == 0  # same spec: everything from the cache
    other = {"reward": "eval_scaled", "kwargs": {"scale": -1.0}}
    with pytest.warns(UserWarning, match="written for reward .*'scale': 1.0.*recomputing"):
        report = evaluate_preferences({"r": EvalScaled(-1.0)}, manifest, cache_dir=cache, specs={"r": other},
                                      progress=False)
    assert EvalScaled.calls == 50 and report.rewards["r"].accuracy == 0.0
    assert json.loads((cache / "r.json").read_text())["spec"] == other
    data = json.loads((cache / "r.json").read_text())
    del data["spec"]  # a cache written before specs were stored is not trusted either
    (cache / "r.json").write_text(json.dumps(data))
    EvalScaled.calls = 0
    with pytest.warns(UserWarning, match="written for reward None"):
        evaluate_preferences({"r": EvalScaled(-1.0)}, manifest, cache_dir=cache, specs={"r": other}, progress=False)
    assert EvalScaled.calls == 50


def test_agreement_counts_ties_by_sign():
    from pathlib import Path

    from reward_models.evaluate import PreferencePair, compute_metrics

    def agreement(a, b):
        pairs = [PreferencePair(f"p{i}", Path(f"{i}_0.png"), Path(f"{i}_1.png"), 0, f"m:{i}") for i in range(len(a))]
        result = compute_metrics(pairs, {"a": a, "b": b}).agreement["a vs b"]
        assert result["pairs"] == len(a)
        return result["preference_agreement"]

    assert agreement([(1.0, 0.0)], [(3.0, 2.0)]) == 1.0  # same preference
    assert agreement([(1.0, 0.0)], [(2.0, 3.0)]) == 0.0  # opposite preferences
    assert agreement([(1.0, 1.0)], [(2.0, 2.0)]) == 1.0  # both tie
    assert agreement([(1.0, 1.0)], [(2.0, 3.0)]) == 0.5  # one tie vs image_1 (was counted as agreement)
    assert agreement([(1.0, 1.0)], [(3.0, 2.0)]) == 0.5  # one tie vs image_0 (was counted as disagreement)
    assert agreement([(1.0, 0.0), (1.0, 1.0), (5.0, 5.0), (0.0, 1.0)],
                     [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]) == pytest.approx(2.5 / 4)
