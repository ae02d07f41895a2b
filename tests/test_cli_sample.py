"""``flowalign sample`` end to end on a tiny saved pipeline."""

import json

import pytest
from PIL import Image

from flowalign.cli import main


@pytest.fixture(scope="module")
def saved_sd3(tmp_path_factory):
    from flowalign.models.tiny import tiny_sd3_pipeline

    path = tmp_path_factory.mktemp("pipe") / "tiny-sd3"
    tiny_sd3_pipeline(seed=0).save_pretrained(path)
    return path


def test_sample_writes_pngs_grid_and_manifest(saved_sd3, tmp_path):
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("a red circle\n\ntwo blue squares\n")
    out = tmp_path / "out"
    rc = main(["sample", "--model", str(saved_sd3), "--prompt-file", str(prompt_file), "--num-per-prompt", "2",
               "--steps", "3", "--dynamics", "flow_sde", "--guidance-scale", "2.0", "--batch-size", "3",
               "--device", "cpu", "--out", str(out)])
    assert rc == 0
    manifest = json.loads((out / "samples.json").read_text())
    assert [s["prompt"] for s in manifest["samples"]] == ["a red circle"] * 2 + ["two blue squares"] * 2
    assert [s["seed"] for s in manifest["samples"]] == [0, 1, 2, 3]
    for sample in manifest["samples"]:
        assert Image.open(out / sample["files"][0]).size == (32, 32)
    assert Image.open(out / "grid.png").size[0] > 64
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert rows == [{"image": s["files"][0], "prompt": s["prompt"], "seed": s["seed"]} for s in manifest["samples"]]


def test_same_seed_same_image(saved_sd3, tmp_path):
    args = ["sample", "--model", str(saved_sd3), "--prompt", "a red circle", "--steps", "2", "--dynamics",
            "dance_sde", "--seed", "5", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    # exact by construction: both runs load the same files the same way (the same memory layout) and sample the
    # same seed with the same threads in one process; both images come from one machine, so CPU types never mix
    assert (tmp_path / "a" / "00000.png").read_bytes() == (tmp_path / "b" / "00000.png").read_bytes()


def test_missing_model_folder_is_reported(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "nope"), "--prompt", "x", "--device", "cpu"]) == 2
    assert "nope' does not exist" in capsys.readouterr().err


def test_no_prompts_is_reported(saved_sd3, capsys):
    assert main(["sample", "--model", str(saved_sd3), "--device", "cpu"]) == 2
    assert "no prompts" in capsys.readouterr().err


def test_unknown_dynamics_is_rejected(saved_sd3, capsys):
    assert main(["sample", "--model", str(saved_sd3), "--prompt", "x", "--dynamics", "ddim"]) == 2
    assert "unknown dynamics 'ddim'; expected one of ode, flow_sde, dance_sde, cps" in capsys.readouterr().err


def test_negative_noise_level_is_reported(saved_sd3, capsys):
    assert main(["sample", "--model", str(saved_sd3), "--prompt", "x", "--dynamics", "flow_sde",
                 "--noise-level", "-1", "--device", "cpu"]) == 2
    assert "noise_level must be a finite number >= 0" in capsys.readouterr().err


def test_outputs_are_readable_by_others(saved_sd3, tmp_path):
    assert main(["sample", "--model", str(saved_sd3), "--prompt", "x", "--steps", "1", "--device", "cpu",
                 "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "00000.png").stat().st_mode & 0o777 == 0o644
