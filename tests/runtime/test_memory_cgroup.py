"""A real run in a memory cgroup (issue #10): bnwvad-infer, moved into a cgroup limited to
1.5 GiB, scores the short videos and fails the one whose single crop cannot fit, cleanly
(exit 1, named in summary.json), instead of being SIGKILLed (137) with every video lost.

Needs root and a writable memory cgroup (v1: /sys/fs/cgroup/memory; v2: a root whose
cgroup.subtree_control enables memory); skipped elsewhere, saying which. The cgroup is
removed afterwards. The model is a seeded random BNWVAD at the paper's sizes (D = 1024,
E = 512) exported by bnwvad.export (needs torch and onnx).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

LIMIT = 3 << 29                     # 1.5 GiB
GOOD = {"short_a": 64, "short_b": 300, "short_c": 700}
LONG = 9000                         # one crop needs ~3.1 GiB of working memory: cannot fit
D = 1024
V1 = Path("/sys/fs/cgroup/memory")
V2 = Path("/sys/fs/cgroup")


def _memory_cgroup_parent() -> tuple[str, Path]:
    """("v1" | "v2", the folder to make a child cgroup in), or pytest.skip saying why not."""
    if not sys.platform.startswith("linux"):
        pytest.skip("memory cgroups are Linux only")
    if os.geteuid() != 0:
        pytest.skip("making a memory cgroup needs root (this test runs as uid %d)" % os.geteuid())
    if (V1 / "memory.limit_in_bytes").exists():
        if not os.access(V1, os.W_OK):
            pytest.skip(f"{V1} (cgroup v1 memory controller) is not writable here")
        return "v1", V1
    controllers = V2 / "cgroup.subtree_control"
    if controllers.exists():
        if "memory" not in controllers.read_text().split():
            pytest.skip(f"cgroup v2 at {V2}: the memory controller is not enabled for children "
                        f"({controllers})")
        if not os.access(V2, os.W_OK):
            pytest.skip(f"{V2} (cgroup v2) is not writable here")
        return "v2", V2
    pytest.skip("no cgroup filesystem with a memory controller (/sys/fs/cgroup/memory or cgroup v2)")


@pytest.fixture
def memory_cgroup():
    """A fresh memory cgroup limited to LIMIT: (version, folder). Removed afterwards."""
    version, parent = _memory_cgroup_parent()
    d = parent / f"bnwvad-test-{uuid.uuid4().hex[:8]}"
    try:
        d.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a cgroup under {parent}: {e}")
    try:
        if version == "v1":
            (d / "memory.limit_in_bytes").write_text(str(LIMIT))
        else:
            (d / "memory.max").write_text(str(LIMIT))
            if (d / "memory.swap.max").exists():
                (d / "memory.swap.max").write_text("0")
        yield version, d
    finally:
        for _ in range(100):                        # its processes have exited; the kernel may lag
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


@pytest.fixture(scope="module")
def paper_size_onnx(tmp_path_factory) -> Path:
    """A seeded random BNWVAD(ModelConfig()) (D = 1024, E = 512, 4 heads), exported once."""
    export = pytest.importorskip("bnwvad.export")       # torch + onnx (the export extra)
    import torch

    from bnwvad import BNWVAD, ModelConfig

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("paper") / "paper.onnx"
    export.export_onnx(BNWVAD(ModelConfig()).eval(), out, verify=False)
    return out


def _bnwvad_infer() -> list[str]:
    exe = Path(sys.executable).with_name("bnwvad-infer")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "bnwvad.runtime.cli"]


def _run_in(cgroup: Path, args: list[str]) -> subprocess.CompletedProcess:
    """bnwvad-infer ARGS as a process moved into the cgroup before it starts (exec keeps the pid)."""
    script = f'echo $$ > "{cgroup / "cgroup.procs"}" && exec "$@"'
    return subprocess.run(["bash", "-c", script, "bash", *_bnwvad_infer(), *args],
                          capture_output=True, text=True, timeout=600)


def test_a_video_too_long_for_the_container_fails_cleanly_and_the_others_are_written(
        memory_cgroup, paper_size_onnx, tmp_path):
    version, cg = memory_cgroup
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, t in {**GOOD, "long": LONG}.items():
        np.save(inputs / f"{name}.npy", rng.standard_normal((t, D), dtype=np.float32))

    source = (f"cgroup v1 memory.limit_in_bytes ({cg})" if version == "v1" else f"cgroup v2 memory.max ({cg})")
    for extra in ([], ["--memory-budget", "16GiB"]):      # derived; given above the limit (capped)
        out = tmp_path / ("out" + "".join(extra).replace(" ", ""))
        p = _run_in(cg, [str(inputs), "--model", str(paper_size_onnx), "--out", str(out), "--any-crops",
                         *extra])
        assert p.returncode not in (137, -9), f"killed by the kernel (exit {p.returncode}): {p.stderr[-2000:]}"
        assert p.returncode == 1, p.stderr[-3000:]
        # The budget came from the cgroup, and the run says so.
        assert source in p.stderr, p.stderr[-3000:]
        for name in GOOD:
            assert np.load(out / f"{name}.npy").shape == (GOOD[name],)
        assert not (out / "long.npy").exists()
        summary = json.loads((out / "summary.json").read_text())
        message = summary["failures"]["long"]
        assert f"T = {LONG} snippets" in message and "memory budget" in message and source in message, message
        assert "raise the budget" in message and "split the video" in message
        if extra:
            assert "capped" in message, message
    # The kernel never had to step in.
    events = (cg / ("memory.oom_control" if version == "v1" else "memory.events")).read_text()
    kills = [int(line.split()[1]) for line in events.splitlines() if line.startswith("oom_kill ")]
    assert kills in ([], [0]), events
