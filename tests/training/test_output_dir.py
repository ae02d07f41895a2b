"""Claiming an output folder: refuse another run's folder unless told, never delete what no run wrote."""

import pytest
from accelerate import Accelerator

from flowalign.errors import ConfigError
from flowalign.training.output_dir import RUN_MARKER, claim_output_dir


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


def test_a_model_folder_is_refused_even_with_overwrite_and_left_intact(tmp_path, accelerator):
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    (tmp_path / "model_index.json").write_text("{}")
    for resume, overwrite in ((None, False), (None, True), ("latest", False)):
        with pytest.raises(ConfigError, match=r"holds transformer that no flowalign run wrote.*another output_dir"):
            claim_output_dir(tmp_path, resume, overwrite, accelerator)
    assert weights.read_bytes() == b"weights"


def test_a_claimed_folder_is_another_runs_until_overwritten(tmp_path, accelerator):
    assert claim_output_dir(tmp_path, None, False, accelerator) is None
    assert (tmp_path / RUN_MARKER).is_file()
    (tmp_path / "config.yaml").write_text("seed: 0\n")  # a run that stopped before its first metrics
    with pytest.raises(ConfigError, match=r"already holds a run \(config.yaml\).*--resume.*--overwrite"):
        claim_output_dir(tmp_path, None, False, accelerator)
    assert claim_output_dir(tmp_path, "latest", False, accelerator) is None  # no checkpoint: starts over
    assert not (tmp_path / "config.yaml").exists() and (tmp_path / RUN_MARKER).is_file()
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert claim_output_dir(tmp_path, None, True, accelerator) is None
    assert not (tmp_path / "config.yaml").exists()


def test_unrelated_files_do_not_block_a_run(tmp_path, accelerator):
    (tmp_path / "notes.txt").write_text("mine")
    assert claim_output_dir(tmp_path, None, False, accelerator) is None
    assert (tmp_path / "notes.txt").read_text() == "mine"
