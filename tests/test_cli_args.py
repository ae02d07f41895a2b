"""Command-line parsing: dotted overrides may sit before or after options; anything else unknown is rejected."""

from pathlib import Path

import pytest

from flowalign.cli import main, parse_args

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_before_and_after_options():
    args = parse_args(["train", "r.yaml", "optim.lr=1e-3", "--overwrite", "iterations=5", "eval.every=2"])
    assert args.config == "r.yaml" and args.overwrite
    assert args.overrides == ["optim.lr=1e-3", "iterations=5", "eval.every=2"]
    assert parse_args(["demo", "--resume", "iterations=3"]).overrides == ["iterations=3"]


def test_an_override_after_resume_is_not_taken_for_a_checkpoint(tmp_path):
    from flowalign.commands.train import resume_override

    args = parse_args(["train", "r.yaml", "--resume", "optim.lr=1e-4"])
    resume_override(args)
    assert args.resume == "latest" and args.overrides == ["optim.lr=1e-4"]
    odd = tmp_path / "ckpt=1"
    odd.mkdir()
    args = parse_args(["train", "r.yaml", "--resume", str(odd), "iterations=2"])
    resume_override(args)
    assert args.resume == str(odd) and args.overrides == ["iterations=2"]


@pytest.mark.parametrize("argv", [["train", "r.yaml", "--overwrite", "stray"],
                                  ["train", "r.yaml", "--no-such-flag", "a=1"],
                                  ["reward", "score", "--images", "x", "--reward", "shapes", "--out", "o", "a=1"]])
def test_unknown_arguments_are_rejected(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_a_missing_checkpoint_to_resume_is_a_clear_error(tmp_path, capsys):
    argv = ["train", str(ROOT / "configs" / "toy_grpo.yaml"), f"output_dir={tmp_path / 'run'}",
            "--resume", str(tmp_path / "nope")]
    assert main(argv) == 2
    assert "checkpoint" in (err := capsys.readouterr().err) and "nope' does not exist" in err
