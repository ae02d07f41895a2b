"""compare's runner with an injected launcher: finished runs are kept, unfinished ones resumed, a failed run is
reported without stopping the others; and bad command lines fail before anything runs."""

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fabricate import FakeLauncher, fabricate_run, write_recipe  # noqa: E402

from flowalign import cli  # noqa: E402
from flowalign.commands.compare import split_inputs  # noqa: E402
from flowalign.compare import outputs  # noqa: E402
from flowalign.compare.outputs import run_comparison  # noqa: E402
from flowalign.compare.plan import build_plan  # noqa: E402
from flowalign.compare.runner import execute  # noqa: E402
from flowalign.errors import ConfigError  # noqa: E402

BEFORE = {"eval/reward": 0.4, "eval/shapes_quality": 0.6}
AFTER = {"eval/reward": 0.5, "eval/shapes_quality": 0.6}
QUIET = lambda line: None  # noqa: E731


def test_finished_runs_are_kept_and_unfinished_ones_resumed(tmp_path):
    recipe = write_recipe(tmp_path, "a")
    plan = build_plan([str(recipe)], [0, 1, 2], str(tmp_path / "out"), threads=3)
    finished, unfinished, new = plan.runs
    fabricate_run(finished, BEFORE, AFTER)
    unfinished.run_dir.mkdir(parents=True)  # an interrupted run: its folder, no summary.json
    launcher = FakeLauncher(list(plan.runs), lambda seed, argv: (0, (BEFORE, AFTER)))
    records = execute(plan, launcher, QUIET)

    assert launcher.seeds() == [1, 2], "the finished run (seed 0) must not be launched"
    by_seed = {int(next(a for a in l.argv if a.startswith("seed=")).split("=")[1]): l for l in launcher.launches}
    assert by_seed[1].argv[-1] == "--resume" and "--resume" not in by_seed[2].argv
    assert by_seed[2].argv[3:7] == ["train", str(recipe), "seed=2", f"output_dir={new.run_dir}"]
    assert by_seed[2].env["OMP_NUM_THREADS"] == "3" and by_seed[2].env["MKL_NUM_THREADS"] == "3"
    assert by_seed[2].log_path == new.run_dir.parent / "seed-2.log"
    assert [r.action for r in records] == ["kept", "resumed", "fresh"]
    assert [r.status for r in records] == ["finished"] * 3
    saved = json.loads((new.run_dir.parent / "seed-2.compare_run.json").read_text())
    assert saved["recipe"] == str(recipe) and saved["seed"] == 2 and saved["status"] == "finished"
    assert saved["threads"] == 3 and saved["returncode"] == 0 and saved["wall_s"] >= 0
    assert "flowalign train" in saved["command"] and "git_commit" in saved

    again = FakeLauncher(list(plan.runs), lambda seed, argv: (0, (BEFORE, AFTER)))
    assert [r.action for r in execute(plan, again, QUIET)] == ["kept"] * 3 and again.launches == []


def test_a_failed_run_is_reported_and_the_others_still_run(tmp_path):
    recipe = write_recipe(tmp_path, "a")
    plan = build_plan([str(recipe)], [0, 1, 2], str(tmp_path / "out"), parallel=2)
    launcher = FakeLauncher(list(plan.runs), lambda seed, argv: (1, None) if seed == 1 else (0, (BEFORE, AFTER)))
    data = run_comparison(plan, launcher, QUIET)

    assert launcher.seeds() == [0, 1, 2]
    recipe_data = data["recipes"][0]
    assert data["failed_runs"] == 1 and recipe_data["failed"] == [1] and recipe_data["finished"] == [0, 2]
    assert recipe_data["metrics"]["eval/reward"]["change"]["n"] == 2
    md = (plan.out / "compare.md").read_text()
    assert "## Failed runs" in md and "a seed 1: exited with code 1" in md and "Traceback: boom" in md
    assert "Traceback: boom" in (plan.out / "compare.html").read_text()


def test_exit_zero_without_a_summary_is_a_failure_and_resumes_add_up_wall_time(tmp_path):
    """wall_s sums the launches of a resumed run, and starts over when its folder was deleted to retrain it."""
    recipe = write_recipe(tmp_path, "a")
    plan = build_plan([str(recipe)], [0], str(tmp_path / "out"))
    (run,) = plan.runs

    def crash(seed, argv):  # the trainer claimed its folder, then stopped without a summary
        run.run_dir.mkdir(parents=True, exist_ok=True)
        time.sleep(0.5)
        return 0, None

    def succeed(seed, argv):
        return 0, (BEFORE, AFTER)

    (first,) = execute(plan, FakeLauncher([run], crash), QUIET)
    assert first.status == "failed" and "wrote no" in first.error and first.wall_s >= 0.5
    (second,) = execute(plan, FakeLauncher([run], succeed), QUIET)
    assert second.action == "resumed" and second.status == "finished"
    assert second.wall_s >= first.wall_s  # both launches counted (the second alone takes far less than 0.5 s)
    shutil.rmtree(run.run_dir)
    (third,) = execute(plan, FakeLauncher([run], succeed), QUIET)
    assert third.action == "fresh" and third.wall_s < 0.5


def test_the_command_exits_nonzero_when_a_run_failed(tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tmp_path, "a")
    out = tmp_path / "out"
    monkeypatch.setattr(outputs, "subprocess_launcher", lambda launch: 3)
    code = cli.main(["compare", str(recipe), "--seeds", "0", "--out", str(out)])
    assert code == 1 and "1 run(s) failed" in capsys.readouterr().out
    assert (out / "compare.md").is_file()


def test_overrides_may_follow_the_seeds(tmp_path):
    args = cli.parse_args(["compare", "a.yaml", "b.yaml", "--seeds", "0", "1", "optim.lr=0.001", "--out", "x",
                           "sampling.group_size=4"])
    assert split_inputs(args) == (["a.yaml", "b.yaml"], [0, 1], ["optim.lr=0.001", "sampling.group_size=4"])


@pytest.mark.parametrize("argv, message", [
    (["{missing}", "--seeds", "0"], "not found: '{missing}'"),
    (["{a}", "--seeds", "0", "1", "1"], "repeats seed(s) 1"),
    (["--seeds", "0"], "no recipe given"),
    (["{a}", "--seeds", "0", "--parallel", "0"], "--parallel must be at least 1"),
    (["{a}", "--seeds", "0", "x"], "'x' is not an integer seed"),
    (["{a}", "--seeds", "0", "seed=4"], "compare sets seed for each run"),
    (["{a}", "--seeds", "0", "optim.lrr=1"], "optim.lrr"),
    (["{a}", "{other_a}", "--seeds", "0"], "would share the run folder 'a'"),
])
def test_bad_input_fails_before_anything_runs(tmp_path, capsys, argv, message):
    paths = {"a": write_recipe(tmp_path, "a"), "other_a": write_recipe(tmp_path / "other", "a"),
             "missing": tmp_path / "nope.yaml"}
    out = tmp_path / "out"
    code = cli.main(["compare", *(w.format(**paths) for w in argv), "--out", str(out)])
    assert code == 2 and message.format(**paths) in capsys.readouterr().err
    assert not out.exists()


def test_a_kept_run_must_have_been_trained_with_the_same_config(tmp_path):
    recipe = write_recipe(tmp_path, "a")
    (run,) = build_plan([str(recipe)], [0], str(tmp_path / "out")).runs
    fabricate_run(run, BEFORE, AFTER)
    expected = r"config.yaml was trained with another config.*optim\.lr: 0\.0001 there, 0\.5"
    with pytest.raises(ConfigError, match=expected):
        build_plan([str(recipe)], [0], str(tmp_path / "out"), ["optim.lr=0.5"])
