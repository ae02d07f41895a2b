"""Checkpoint folders: ordered by iteration, pruned to the newest, and a resumed run's abandoned future removed."""

import pytest

from flowalign.errors import ConfigError
from flowalign.training.checkpoint import checkpoint_dir, list_checkpoints, resolve_resume, save_checkpoint
from flowalign.training.config import CheckpointConfig


def save(folder, iteration, keep_last=2):
    return save_checkpoint(folder, iteration, lambda tmp: (tmp / "payload.txt").write_text(str(iteration)), {},
                           keep_last)


def iterations(folder):
    return [int(p.name.split("-")[1]) for p in list_checkpoints(folder)]


def test_order_is_by_iteration_and_other_folders_are_ignored(tmp_path):
    for it in (999_999, 1_000_000):
        save(tmp_path, it, keep_last=5)
    (checkpoint_dir(tmp_path) / "iter-000010-backup").mkdir()
    assert iterations(tmp_path) == [999_999, 1_000_000]
    assert resolve_resume(tmp_path, "latest").name == "iter-1000000"


def test_keep_last_keeps_the_newest(tmp_path):
    for it in (10, 20, 30):
        save(tmp_path, it)
    assert iterations(tmp_path) == [20, 30]
    with pytest.raises(ValueError, match="keep_last must be >= 1, got 0"):
        save(tmp_path, 40, keep_last=0)
    with pytest.raises(ConfigError, match="checkpoint.every and checkpoint.keep_last must be >= 1"):
        CheckpointConfig(keep_last=0)


def test_a_run_resumed_from_an_older_checkpoint_drops_its_abandoned_future(tmp_path):
    for it in (10, 20, 30):
        save(tmp_path, it, keep_last=3)
    save(tmp_path, 20, keep_last=1)  # resumed from 10, now writing 20 again: the old 30 would shadow it
    assert iterations(tmp_path) == [20]
    assert (resolve_resume(tmp_path, "latest") / "payload.txt").read_text() == "20"
