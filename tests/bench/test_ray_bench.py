"""bench/ray_batch.py --quick as a user runs it, with the toy model (no export, no torch): the report
must be well-formed and every Ray run's scores equal to the in-process ones. Speed is never
asserted against a number (a shared CI machine proves nothing). A local Ray cluster and four
command runs: about a minute."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from _helpers import run_bench_quick
from _toy_onnx import build_toy_onnx

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "ray_batch.py"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None or importlib.util.find_spec("pandas") is None,
                                 reason='ray[data] is not installed (pip install "bnwvad[ray]")')]


def test_quick_report(tmp_path):
    model = build_toy_onnx(tmp_path / "toy.onnx")
    proc, out, rep = run_bench_quick(SCRIPT, tmp_path, "--model", model, timeout=600)
    md = (out / "report.md").read_text()
    assert proc.stdout.strip() == md.strip()
    assert rep["schema"] == "bnwvad-bench-ray-batch/1" and rep["mode"] == "quick"
    assert set(rep["passes"]) == {"inproc", "cli", "ray1", "ray2"}
    w = rep["workload"]
    assert w["videos"] >= 4 and w["length_p100"] <= 64 and w["crops"] == 3 and w["dim"] == 8
    for key, p in rep["passes"].items():
        assert p["seconds"] > 0 and p["videos_per_s"] == pytest.approx(w["videos"] / p["seconds"], rel=1e-3)
        assert p["snippet_crops_per_s"] == pytest.approx(w["snippets"] * w["crops"] / p["seconds"], rel=1e-3)
        assert 0.0 <= p["others_cpu_share"] <= 1.0
        if key != "inproc":
            assert p["max_abs_diff"] <= 1e-6          # same model, same runtime, batched differently
    assert rep["overhead"]["fixed_job_s"] > 0
    assert "| bnwvad-infer --ray, 2 actors |" in md and "Overhead per video through Ray" in md
