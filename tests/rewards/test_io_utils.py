"""Atomic writes: the written file gets the usual permissions (0o666 & ~umask) and is fsynced."""

import os
import stat

import pytest

from reward_models.io_utils import atomic_write_json, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_write_mode_follows_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        target = tmp_path / "sub" / "out.json"
        atomic_write_json(target, {"a": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask == stat.S_IMODE(plain.stat().st_mode)
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temp file left behind


def test_atomic_write_fsyncs_before_replace(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and events.index("fsync") < events.index("replace")
