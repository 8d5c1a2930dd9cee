"""Smoke test of bench/run.py --quick: runs it as a user would and checks the report's shape.

It asserts structure and correctness (every measured backend matched PyTorch within its
tolerance), never speed: timings on a shared CI machine prove nothing, and ratios are
whatever they are. The demo set and the run's cache go to a temporary folder.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "run.py"
HEADLINE = re.compile(r"^ort_fp32/torch_eager throughput ratio: (\d+\.\d\d); fraction of peak: (\d+\.\d\d)$")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--demo-root",
                           str(tmp / "demo_data")], capture_output=True, text=True, timeout=600, cwd=str(tmp),
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return proc, out


def test_quick_exits_cleanly_and_ends_with_the_headline(quick_run):
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.rstrip("\n").splitlines()[-1]
    m = HEADLINE.match(last)
    assert m, f"last line {last!r}"
    assert float(m.group(1)) > 0 and float(m.group(2)) > 0


def test_report_structure(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for key in ("schema", "mode", "machine", "libraries", "backends", "latency", "throughput", "memory", "accuracy",
                "demo", "peak", "headline", "settings", "models", "load_average", "ok"):
        assert key in report, key
    assert report["mode"] == "quick" and report["ok"] is True
    for key in ("cpu", "usable_cpus", "ram_gib", "gpu"):
        assert key in report["machine"]
    assert report["libraries"]["torch"]
    assert report["libraries"]["onnxruntime"] or report["libraries"]["onnxruntime-gpu"]
    assert (out / "report.md").read_text().startswith("## bnwvad benchmark")
    png = (out / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    measured = {n for n, b in report["backends"].items() if b["status"] == "measured"}
    assert {"torch_eager", "ort_fp32", "ort_fp16"} <= measured
    for name, b in report["backends"].items():
        if b["status"] == "measured":
            assert b["providers"], name                  # what actually ran
            assert b["ran_as"] == b["requested"], name   # no silent fallback
        else:
            assert b["reason"], name                     # every skip says why
    # Latency: every backend at every T of the run, with its statistics.
    ts = [c["T"] for c in report["latency"]["cases"]]
    assert 200 in ts and report["latency"]["C"] == 10
    for case in report["latency"]["cases"]:
        assert set(case["backends"]) == measured
        for row in case["backends"].values():
            assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] and row["gflops"] > 0
        assert case["peak_gflops"] and "foreign_cpu_share" in case       # contention is measured, not guessed
    # Throughput and memory: every backend.
    thr = report["throughput"]
    assert set(thr["backends"]) == measured and thr["videos"] >= 2 and thr["crops"] == 5
    assert "foreign_cpu_share" in thr and thr["peak_gflops"]
    for row in thr["backends"].values():
        assert row["videos_per_s"] > 0 and row["snippet_crops_per_s"] > 0
    mem = report["memory"]["backends"]
    assert set(mem) == measured
    for name, row in mem.items():
        assert "error" not in row, row
        assert all(str(t) in row["cases"] for t in ts)
        assert row["torch_imported"] == (report["backends"][name]["kind"] == "torch")
    # Accuracy: every measured backend within its tolerance-table entry, demo metrics present.
    from bnwvad.tolerances import TOLERANCES

    for name in measured - {"torch_eager"}:
        acc = report["accuracy"][name]
        assert acc["tolerance"] in TOLERANCES and acc["ok"], (name, acc)
        for out_name in ("score", "dfm", "anomaly"):
            assert acc["outputs"][out_name]["error"] <= TOLERANCES[acc["tolerance"]].limit
        demo = report["demo"]["backends"][name]
        assert demo["ok"] and 0 <= demo["auc"] <= 1 and abs(demo["delta_auc_points"]) <= 0.1
    h = report["headline"]
    assert h["line"] == proc.stdout.rstrip("\n").splitlines()[-1]
    assert h["ratio"] > 0 and h["workload_ratio"] > 0
