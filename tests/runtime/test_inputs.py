"""bnwvad-infer accounts for every FEATURES argument, run as the real command on real files:
links are videos of their own, special files inside a folder are failures by name (a FIFO is
never opened), a binary that is not a .npy is named and skipped, float64 values beyond
float32 are named without a numpy warning."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _toy_onnx import TOY_CROPS, TOY_D

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX file types")


def infer(*args, cwd=None, timeout=120):
    exe = Path(sys.executable).with_name("bnwvad-infer")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "bnwvad.runtime.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def stacked(t: int, seed: int = 0) -> np.ndarray:
    """(T, C, D) float32: one whole video in one file."""
    return np.random.default_rng(seed).normal(size=(t, TOY_CROPS, TOY_D)).astype(np.float32)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_differently_named_links_to_one_file_are_distinct_videos(toy_onnx, tmp_path):
    real = tmp_path / "store" / "clip.npy"
    real.parent.mkdir()
    np.save(real, stacked(7))
    links = tmp_path / "links"
    links.mkdir()
    for i in range(120):
        (links / f"cam{i:03d}.npy").symlink_to(real)
    out = tmp_path / "out"
    r = infer(links, "--model", toy_onnx, "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    assert "scored 120 video(s)" in r.stderr
    assert len(summary(out)["videos"]) == 120 and (out / "cam119.npy").is_file()
    # Given explicitly too, beside their target: 3 videos.
    r = infer(links / "cam000.npy", links / "cam001.npy", real, "--model", toy_onnx, "--out", tmp_path / "o2")
    assert r.returncode == 0 and "scored 3 video(s)" in r.stderr, r.stderr


def test_the_same_path_given_twice_is_one_video(toy_onnx, tmp_path):
    np.save(tmp_path / "v.npy", stacked(5))
    r = infer("v.npy", tmp_path / "v.npy", "./v.npy", tmp_path, "--model", toy_onnx, "--out", tmp_path / "out",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "scored 1 video(s)" in r.stderr


def test_special_files_in_a_folder_are_failures_by_name_and_a_fifo_is_never_opened(toy_onnx, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "good.npy", stacked(6))
    (src / "dangling.npy").symlink_to(tmp_path / "gone.npy")
    (src / "loop.npy").symlink_to(src / "loop.npy")               # unreadable even for root
    os.mkfifo(src / "pipe.npy")
    sock = socket.socket(socket.AF_UNIX)
    sock_path = src / "sock.npy"
    try:
        sock.bind(str(sock_path))
    except OSError:                                              # path too long for AF_UNIX
        sock_path = None
    try:
        out = tmp_path / "out"
        r = infer(src, "--model", toy_onnx, "--out", out, timeout=60)      # a FIFO read would hang here
    finally:
        sock.close()
    assert r.returncode == 1, r.stderr
    expect = {
        "dangling": f"{src / 'dangling.npy'}: dangling symbolic link (to '{tmp_path / 'gone.npy'}'",
        "loop": f"{src / 'loop.npy'}: cannot be read (Too many levels of symbolic links)",
        "pipe": f"{src / 'pipe.npy'}: is a FIFO (named pipe), never opened",
    }
    if sock_path is not None:
        expect["sock"] = f"{sock_path}: is a socket; expected a regular feature file"
    failures = summary(out)["failures"]
    assert set(failures) == set(expect)
    for name, message in expect.items():
        assert message in failures[name] and message in r.stderr, (name, r.stderr)
    assert list(summary(out)["videos"]) == ["good"]


def test_a_binary_file_that_is_not_a_npy_is_named_and_skipped(toy_onnx, tmp_path):
    np.save(tmp_path / "good.npy", stacked(6))
    np.savez(tmp_path / "feats.npz", x=stacked(6))
    onnx_copy = tmp_path / "model.onnx"
    onnx_copy.write_bytes(Path(toy_onnx).read_bytes())
    renamed = tmp_path / "video.feat"
    np.save(tmp_path / "tmp.npy", stacked(6))
    (tmp_path / "tmp.npy").rename(renamed)
    out = tmp_path / "out"
    r = infer(tmp_path / "feats.npz", onnx_copy, renamed, tmp_path / "good.npy", "--model", toy_onnx, "--out", out)
    assert r.returncode == 1, r.stderr
    assert "codec can't decode" not in r.stderr and "Traceback" not in r.stderr
    for p, why in ((tmp_path / "feats.npz", "it is a zip archive (an .npz?)"),
                   (onnx_copy, "binary data (starts with")):
        line = next(ln for ln in r.stderr.splitlines() if str(p) in ln)
        assert f"{p}: neither a .npy feature file nor a text list file: {why}" in line, line
    assert f"{renamed}: a .npy array whose name does not end in .npy" in r.stderr
    assert list(summary(out)["videos"]) == ["good"] and len(summary(out)["failures"]) == 3


def test_float64_values_beyond_float32_are_named_without_a_numpy_warning(toy_onnx, tmp_path):
    a = stacked(6).astype(np.float64)
    a[2, 1, 3] = 1e300
    a[4, 0, 0] = -5e38
    np.save(tmp_path / "huge.npy", a)
    np.save(tmp_path / "fine.npy", stacked(6).astype(np.float64) * 1e30)      # large, but fits float32
    out = tmp_path / "out"
    r = infer(tmp_path / "huge.npy", tmp_path / "fine.npy", "--model", toy_onnx, "--out", out)
    assert r.returncode == 1, r.stderr
    assert (f"{tmp_path / 'huge.npy'}: value 1e+300 at index (2, 1, 3) is outside float32's range "
            f"(±3.4e+38), 2 such value(s)") in r.stderr
    assert "NaN or inf" not in r.stderr and "Warning" not in r.stderr and "overflow" not in r.stderr
    assert list(summary(out)["videos"]) == ["fine"]
