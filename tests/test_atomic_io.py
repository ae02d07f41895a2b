"""Atomic files and folders: the old contents survive a failure, the new ones appear whole, modes follow the
umask, and nothing temporary is left behind."""

import os

import pytest

from flowalign.utils.io import atomic_dir, atomic_path, write_text


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]


def test_a_folder_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "iter-000010"
    with atomic_dir(target) as tmp:
        (tmp / "a.pt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b.pt").write_text("2")
            raise RuntimeError("crash")
    assert sorted(os.listdir(target)) == ["a.pt"]
    with atomic_dir(target) as tmp:
        (tmp / "b.pt").write_text("2")
    assert sorted(os.listdir(target)) == ["b.pt"] and os.listdir(tmp_path) == ["iter-000010"]


def test_modes_follow_the_umask_not_the_temporaries_private_ones(tmp_path, umask_027):
    write_text(tmp_path / "out.txt", "x")
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.pt").write_text("w")
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "ckpt" / "sub").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "ckpt" / "sub" / "w.pt").stat().st_mode & 0o777 == 0o640
