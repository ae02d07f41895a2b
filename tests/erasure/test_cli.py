"""``flowalign erase`` command line: export and input errors (no model loading)."""

import argparse

import pytest
import torch
from safetensors.torch import save_file

from flowalign.cli import main
from flowalign.commands import erase
from flowalign.erasure import SPMNetwork, save_spm
from flowalign.models.tiny import tiny_sd3_pipeline


def test_empty_concept_is_a_clear_error(tmp_path, capsys):
    rc = main(["erase", "train", "--model", str(tmp_path / "nowhere"), "--concept", "", "--out",
               str(tmp_path / "x.safetensors")])
    assert rc == 2 and "concept '' is empty" in capsys.readouterr().err
    rc = main(["erase", "train", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2 and "--concept" in capsys.readouterr().err


def test_export_via_cli(tmp_path, capsys):
    pipe = tiny_sd3_pipeline()
    path = save_spm(SPMNetwork.for_transformer(pipe.transformer, ["red"]), pipe.transformer, tmp_path / "r.safetensors")
    assert main(["erase", "export", "--spm", str(path), "--out", str(tmp_path / "lora")]) == 0
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    save_file({"a": torch.zeros(1)}, tmp_path / "plain.safetensors")
    assert main(["erase", "export", "--spm", str(tmp_path / "plain.safetensors"), "--out", str(tmp_path / "l2")]) == 2
    assert "plain.safetensors" in capsys.readouterr().err


def _erase_parser():
    parser = argparse.ArgumentParser()
    erase.add_parser(parser.add_subparsers())
    return parser


def test_alias_attaches_to_the_concept_before_it(capsys):
    args = _erase_parser().parse_args(["erase", "train", "--model", "m", "--concept", "triangle", "--alias", "trigon",
                                       "--concept", "dog", "--alias", "puppy", "--alias", "hound", "--out", "x"])
    assert args.concept == ["triangle", "dog"]
    assert args.alias == {"triangle": ["trigon"], "dog": ["puppy", "hound"]}
    assert not args.no_inflections and not args.no_empty_anchor and args.random_anchors == 1
    assert args.guidance_scale is None  # the pipeline's default guidance
    with pytest.raises(SystemExit):
        _erase_parser().parse_args(["erase", "train", "--model", "m", "--alias", "puppy", "--out", "x"])
    assert "--alias 'puppy' must follow the --concept" in capsys.readouterr().err
