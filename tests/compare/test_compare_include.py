"""`flowalign compare --include`: recipes reused from an earlier compare.json, and the verifier as the shared
accuracy when one recipe trains on it and another only logs it."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fabricate import FakeLauncher, fabricate_run, write_recipe  # noqa: E402

from flowalign import cli  # noqa: E402
from flowalign.compare.outputs import run_comparison  # noqa: E402
from flowalign.compare.plan import build_plan  # noqa: E402
from flowalign.errors import ConfigError  # noqa: E402

# per seed (before, middle, after) of the baseline "a", trained on the verifier alone: it logs eval/reward only
BASELINE = {0: ({"eval/reward": 0.40, "eval/shapes_quality": 0.60}, {"eval/reward": 0.45},
                {"eval/reward": 0.50, "eval/shapes_quality": 0.55}),
            1: ({"eval/reward": 0.40, "eval/shapes_quality": 0.60}, {"eval/reward": 0.41},
                {"eval/reward": 0.44, "eval/shapes_quality": 0.57})}
# the new method "soft" trains on another reward and logs the verifier as eval/shapes
SOFT = {0: ({"eval/reward": 0.70, "eval/shapes": 0.40}, {"eval/reward": 0.80, "eval/shapes": 0.41},
            {"eval/reward": 0.90, "eval/shapes": 0.42}),
        1: ({"eval/reward": 0.70, "eval/shapes": 0.40}, {"eval/reward": 0.75, "eval/shapes": 0.43},
            {"eval/reward": 0.85, "eval/shapes": 0.46})}
NO_ECHO = {"echo": lambda line: None}


def soft_recipe(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "soft.yaml"
    path.write_text("iterations: 2\nsampling: {prompts_per_iteration: 3, group_size: 4}\n"
                    "reward: {weights: {shapes_soft: 1.0}}\neval: {every: 1, metrics: [shapes, shapes_quality]}\n")
    return path


def compare_fabricated(recipes: list[Path], seeds_values: dict[str, dict], out: Path, includes=(),
                       seeds=(0, 1), reach=None) -> dict:
    plan = build_plan([str(r) for r in recipes], list(seeds), str(out), includes=list(includes), reach=reach)
    for run in plan.runs:
        before, middle, after = seeds_values[run.name][run.seed]
        fabricate_run(run, before, after, middle, samples=[0, 10, 20])
    launcher = FakeLauncher(list(plan.runs), lambda seed, argv: (0, None))
    data = run_comparison(plan, launcher, **NO_ECHO)
    assert launcher.launches == []
    return data


@pytest.fixture()
def earlier(tmp_path):
    """An earlier comparison of the baseline "a" alone, as the docs keep one."""
    recipe = write_recipe(tmp_path / "recipes", "a")
    data = compare_fabricated([recipe], {"a": BASELINE}, tmp_path / "earlier")
    return tmp_path / "earlier" / "compare.json", data


def test_a_reused_recipe_aggregates_as_it_did_and_is_marked(tmp_path, earlier):
    source, before = earlier
    assert before["accuracy_key"] == "eval/reward"
    recipe = write_recipe(tmp_path / "recipes", "b")
    data = compare_fabricated([recipe], {"b": BASELINE}, tmp_path / "now", includes=[f"{source}:a"])
    b, a = data["recipes"]
    assert (b["name"], a["name"], a["included_from"]) == ("b", "a", str(source)) and "included_from" not in b
    # the same per-seed numbers give the same statistics (same arithmetic, same order of the same floats)
    assert a["metrics"] == before["recipes"][0]["metrics"]
    assert a["curves"] == before["recipes"][0]["curves"] and a["runs"] == before["recipes"][0]["runs"]
    assert f"--include {source}:a" in data["command"]
    md = (tmp_path / "now" / "compare.md").read_text()
    assert "| a (reused) |" in md and f"Reused from `{source}`" in md
    assert "Reused from" in (tmp_path / "now" / "compare.html").read_text()


def test_the_verifier_is_the_accuracy_when_the_baseline_trained_on_it_alone(tmp_path, earlier):
    source, _ = earlier
    data = compare_fabricated([soft_recipe(tmp_path / "recipes")], {"soft": SOFT}, tmp_path / "now",
                              includes=[str(source)])
    assert data["accuracy_key"] == "eval/shapes"
    soft, a = data["recipes"]
    assert soft["metrics"]["eval/shapes"]["change"]["mean"] == pytest.approx((0.02 + 0.06) / 2)
    # the baseline's eval/reward is the verifier's score: it appears under eval/shapes with the same values
    shapes, reward = a["metrics"]["eval/shapes"], a["metrics"]["eval/reward"]
    assert (shapes["role"], reward["role"]) == ("accuracy", "other")
    assert all(shapes[k] == reward[k] for k in ("before", "after", "change"))
    assert a["metrics"]["eval/shapes"]["after"]["mean"] == pytest.approx(0.47)
    assert a["curves"]["eval/shapes"] == json.loads(source.read_text())["recipes"][0]["curves"]["eval/reward"]


def test_a_reused_run_keeps_the_reward_it_was_trained_on_when_its_recipe_file_changes(tmp_path, earlier):
    source, _ = earlier
    recipe = tmp_path / "recipes" / "a.yaml"  # edited after the earlier comparison: another reward now
    recipe.write_text(recipe.read_text() + "reward: {weights: {shapes_soft: 1.0}}\n")
    data = compare_fabricated([soft_recipe(tmp_path / "recipes")], {"soft": SOFT}, tmp_path / "now",
                              includes=[str(source)])
    assert data["accuracy_key"] == "eval/shapes"
    assert data["recipes"][1]["metrics"]["eval/shapes"]["after"]["mean"] == pytest.approx(0.47)


def test_a_reward_that_is_not_the_verifier_is_never_renamed(tmp_path):
    """Without eval/shapes in every run, the accuracy falls back to eval/reward and nothing is aliased."""
    recipes = [soft_recipe(tmp_path / "recipes"), write_recipe(tmp_path / "recipes", "a")]
    no_shapes = {s: tuple({k: v for k, v in row.items() if k != "eval/shapes"} for row in rows)
                 for s, rows in SOFT.items()}
    data = compare_fabricated(recipes, {"soft": no_shapes, "a": BASELINE}, tmp_path / "out")
    assert data["accuracy_key"] == "eval/reward"
    assert all("eval/shapes" not in r["metrics"] for r in data["recipes"])


def test_trained_runs_alias_the_verifier_too(tmp_path):
    recipes = [soft_recipe(tmp_path / "recipes"), write_recipe(tmp_path / "recipes", "a")]
    data = compare_fabricated(recipes, {"soft": SOFT, "a": BASELINE}, tmp_path / "out")
    assert data["accuracy_key"] == "eval/shapes"
    curve = data["recipes"][1]["curves"]["eval/shapes"]  # the baseline's eval/reward rows, under the verifier
    assert [p["samples"] for p in curve] == [0, 10, 20] and curve[1]["mean"] == pytest.approx((0.45 + 0.41) / 2)


def test_only_reused_recipes_merge_earlier_reports(tmp_path, earlier):
    source, before = earlier
    out = tmp_path / "merged"
    assert cli.main(["compare", "--seeds", "0", "1", "--include", str(source), "--out", str(out)]) == 0
    merged = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in merged["recipes"]] == ["a"]
    assert merged["recipes"][0]["metrics"] == before["recipes"][0]["metrics"]


@pytest.mark.parametrize("spec, message", [
    ("{tmp}/nope.json", "is not a file"),
    ("{source}:zzz", "has no recipe named 'zzz'; it has 'a'"),
    ("{bad}", "is not a compare.json"),
    ("{source}:a", "recipe 'a' is also trained in this comparison"),
])
def test_bad_includes_fail_before_anything_runs(tmp_path, earlier, spec, message):
    source, _ = earlier
    bad = tmp_path / "bad.json"
    bad.write_text('{"no": "recipes"}')
    recipe = write_recipe(tmp_path / "recipes", "a")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_plan([str(recipe)], [0], str(tmp_path / "out"),
                   includes=[spec.format(tmp=tmp_path, source=source, bad=bad)])
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="included twice"):
        build_plan([], [0], str(tmp_path / "out"), includes=[str(source), str(source)])


def one_seed_report(tmp_path, recipe: Path, seed: int, keep_curves: bool = True) -> Path:
    """An earlier comparison of ``recipe`` with one seed; without ``keep_curves`` its runs lack per-seed curves (a
    report written before they were kept)."""
    out = tmp_path / f"seed-{seed}-report"
    compare_fabricated([recipe], {"a": BASELINE}, out, seeds=[seed])
    data = json.loads((out / "compare.json").read_text())
    if not keep_curves:
        for run in data["recipes"][0]["runs"]:
            del run["curve"]
        (out / "compare.json").write_text(json.dumps(data))
    return out / "compare.json"


@pytest.mark.parametrize("keep_curves", [True, False])
def test_one_recipe_pooled_from_reports_with_other_seeds_aggregates_as_if_trained_together(
        tmp_path, earlier, keep_curves):
    """Seed 0 from one report and seed 1 from another: the same statistics, curve bands and per-run entries as the
    report that trained both (a one-seed band stands for its seed's curve when the report did not keep curves)."""
    _, together = earlier
    recipe = tmp_path / "recipes" / "a.yaml"
    parts = [one_seed_report(tmp_path, recipe, seed, keep_curves) for seed in (1, 0)]
    data = compare_fabricated([], {}, tmp_path / "pooled", includes=[str(p) for p in parts])
    (a,) = data["recipes"]
    expected = together["recipes"][0]
    assert a["seeds"] == [0, 1] and a["included_from"] == f"{parts[0]} + {parts[1]}"
    assert a["metrics"] == expected["metrics"]
    for key, band in expected["curves"].items():
        assert [p["samples"] for p in a["curves"][key]] == [p["samples"] for p in band]
        for got, want in zip(a["curves"][key], band):
            assert got["n"] == want["n"] and got["mean"] == pytest.approx(want["mean"], rel=1e-12)
            assert (got["min"], got["max"]) == (want["min"], want["max"])
    if keep_curves:  # everything but the folders they were trained in
        assert [{**r, "run_dir": None} for r in a["runs"]] == [{**r, "run_dir": None} for r in expected["runs"]]


def test_per_seed_reach_for_reused_runs_with_curves(tmp_path, earlier):
    source, _ = earlier
    data = compare_fabricated([soft_recipe(tmp_path / "recipes")], {"soft": SOFT}, tmp_path / "now",
                              includes=[str(source)], reach="a")
    assert data["reach"]["target"] == pytest.approx(0.47)  # the baseline's final mean
    soft, a = data["recipes"]
    # the baseline's mean (0.45 + 0.41) / 2 = 0.43 at 10 and 0.47 at 20; seed 0 reaches at 20, seed 1 never
    assert a["reach"] == {"samples": 20.0, "seeds": {"0": 20.0, "1": None}}
    assert soft["reach"]["samples"] is None


def test_pooled_bands_equal_the_band_over_all_seeds():
    from flowalign.compare.aggregate import curve_band
    from flowalign.compare.collect import RunResult
    from flowalign.compare.include import pool_bands

    runs = [RunResult("a", "a.yaml", seed, "finished", "", curve=[{"samples": 0.0, "k": 0.1 * seed},
                                                                  {"samples": 10.0, "k": 0.3 + seed}])
            for seed in range(3)]
    runs[2].curve.append({"samples": 20.0, "k": 0.9})  # evaluated once more than the others
    pooled = pool_bands(curve_band(runs[:2], "k"), curve_band(runs[2:], "k"))
    whole = curve_band(runs, "k")
    assert [(p["samples"], p["n"], p["min"], p["max"]) for p in pooled] == [
        (p["samples"], p["n"], p["min"], p["max"]) for p in whole]
    assert [p["mean"] for p in pooled] == pytest.approx([p["mean"] for p in whole], rel=1e-12)


def test_pooling_refuses_a_seed_given_twice_or_two_recipe_files(tmp_path, earlier):
    source, _ = earlier
    recipe = tmp_path / "recipes" / "a.yaml"
    with pytest.raises(ConfigError, match=r"recipe 'a' is included twice with seed\(s\) 1"):
        build_plan([], [0], str(tmp_path / "out"), includes=[str(source), str(one_seed_report(tmp_path, recipe, 1))])
    other = json.loads(one_seed_report(tmp_path, recipe, 0).read_text())
    other["recipes"][0]["recipe"] = str(tmp_path / "elsewhere" / "a.yaml")
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="comes from different recipe files"):
        build_plan([], [0], str(tmp_path / "out"), includes=[str(one_seed_report(tmp_path, recipe, 1)), str(moved)])
