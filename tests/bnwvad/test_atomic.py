"""bnwvad.atomic: single files and staged sets of files appear whole or not at all."""
from __future__ import annotations

import os

import pytest

from bnwvad.atomic import StagedFiles, atomic_write_bytes


def test_atomic_write_replaces_whole_files_with_the_umasks_permissions(tmp_path):
    p = atomic_write_bytes(tmp_path / "sub" / "a.bin", b"one")
    assert p.read_bytes() == b"one"
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError):
        from bnwvad.atomic import atomic_write

        def boom(f):
            f.write(b"partial")
            raise RuntimeError("interrupted")
        atomic_write(p, boom)
    assert p.read_bytes() == b"one" and sorted(x.name for x in p.parent.iterdir()) == ["a.bin"]


def test_staged_files_appear_together_on_commit_only(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"old")
    with StagedFiles(tmp_path, "m.onnx") as stage:
        stage.path("m.onnx").write_bytes(b"model")
        stage.path("m.onnx.data").write_bytes(b"weights")
        assert (tmp_path / "m.onnx").read_bytes() == b"old" and not (tmp_path / "m.onnx.data").exists()
        stage.commit({"m.onnx.data": tmp_path / "m.onnx.data", "m.onnx": tmp_path / "m.onnx"})
    assert (tmp_path / "m.onnx").read_bytes() == b"model" and (tmp_path / "m.onnx.data").read_bytes() == b"weights"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]    # stage folder gone


def test_staged_files_leave_nothing_without_a_commit(tmp_path):
    with pytest.raises(ValueError):
        with StagedFiles(tmp_path, "e.engine") as stage:
            stage.path("e.engine").write_bytes(b"engine")
            raise ValueError("verification failed")
    assert list(tmp_path.iterdir()) == []
