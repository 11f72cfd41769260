import os
import stat

import pytest

from kfcn.fileio import atomic_write, default_mode


def test_atomic_write_replaces_whole_files_with_the_usual_mode(tmp_path):
    path = tmp_path / "sub" / "report.json"
    atomic_write(path, "first")
    atomic_write(path, b"second")
    assert path.read_text() == "second"
    assert stat.S_IMODE(path.stat().st_mode) == default_mode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    (target / "x").write_text("keep")
    with pytest.raises(OSError):
        atomic_write(target, b"data")  # cannot replace a non-empty directory
    assert sorted(os.listdir(tmp_path)) == ["dir-in-the-way"]
    assert (target / "x").read_text() == "keep"
