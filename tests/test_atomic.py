"""Outputs appear whole or not at all."""

import pytest

from semlayout.atomic import atomic_dir, atomic_write_text


def test_atomic_dir_success_and_replace(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not dest.exists()
    assert (dest / "a.txt").read_text() == "1"
    with atomic_dir(dest) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_failure_leaves_nothing_and_keeps_old(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(dest) as tmp:
        (tmp / "good.txt").write_text("ok")
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        raise RuntimeError("boom")
    assert (dest / "good.txt").read_text() == "ok"


def test_atomic_write_text(tmp_path):
    f = tmp_path / "sub" / "x.json"
    atomic_write_text(f, "{}")
    assert f.read_text() == "{}"
    assert [p.name for p in f.parent.iterdir()] == ["x.json"]


def test_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
        atomic_write_text(tmp_path / "x.txt", "y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o644
