"""bench/run.py --quick as a user runs it (about two minutes on 2 cores): the report's figures
must be consistent with each other and with the tolerance table.

Speed is never asserted against a number: timings on a shared CI machine prove nothing. What
is asserted: every measured backend matched PyTorch within its entry of the tolerance table,
rates and ratios are positive and finite and agree with each other, the headline line says
what report.json says, and a backend that did not run says why. The demo set and the run's
cache go to a temporary folder.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from _helpers import run_bench_quick
from bnwvad.runtime.contract import OUTPUTS, TOLERANCES, metric_tolerance_for, tolerance_for
from bnwbench.backends import SPECS

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "run.py"
HEADLINE = re.compile(r"^ort_fp32/torch_eager throughput ratio: (\d+\.\d\d); fraction of peak: (\d+\.\d\d)$")

pytestmark = pytest.mark.slow


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    return run_bench_quick(SCRIPT, tmp, "--demo-root", tmp / "demo_data", timeout=900)


@pytest.fixture(scope="module")
def measured(quick_run):
    _, _, report = quick_run
    return {n for n, b in report["backends"].items() if b["status"] == "measured"}


def test_headline_line_is_the_reports_figures(quick_run):
    proc, _, report = quick_run
    last = proc.stdout.rstrip("\n").splitlines()[-1]
    m = HEADLINE.match(last)
    assert m, f"last line {last!r}"
    h = report["headline"]
    assert h["line"] == last and report["ok"] is True and report["failures"] == []
    assert m.group(1) == f"{h['ratio']:.2f}" and m.group(2) == f"{h['fraction_of_peak']:.2f}"
    case = next(c for c in report["latency"]["cases"] if c["T"] == h["T"] == 200)
    assert h["ratio"] == case["backends"]["ort_fp32"]["speedup_vs_torch"]
    assert h["workload_ratio"] == report["throughput"]["backends"]["ort_fp32"]["speedup_vs_torch"]
    assert all(positive(h[k]) for k in ("ratio", "fraction_of_peak", "workload_ratio", "workload_fraction_of_peak"))


def test_files_are_written(quick_run):
    proc, out, report = quick_run
    md = (out / "report.md").read_text()
    assert md.startswith(f"## bnwvad benchmark (quick) — {report['machine']['cpu']}")
    assert md.strip() in proc.stdout                                      # the report is printed too
    assert report["files"] == {"json": str(out / "report.json"), "markdown": str(out / "report.md"),
                               "chart": str(out / "latency.png")}
    png = (out / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_backends_ran_as_asked_or_say_why_not(quick_run, measured):
    _, _, report = quick_run
    assert report["mode"] == "quick"
    assert {"torch_eager", "ort_fp32", "ort_fp16"} <= measured
    assert set(report["backends"]) == {n for n, s in SPECS.items() if not (s.builds_engine or s.precision == "int8")}
    for name, b in report["backends"].items():
        if b["status"] == "measured":
            assert b["providers"], name                  # what actually ran
            assert b["ran_as"] == b["requested"], name   # no silent fallback
        else:
            assert b["status"] == "skipped" and isinstance(b["reason"], str) and len(b["reason"]) > 10, (name, b)
        assert not any("TF32" in note and "does not set" in note for note in b["notes"]), b["notes"]


def test_latency_figures_agree(quick_run, measured):
    _, _, report = quick_run
    assert [c["T"] for c in report["latency"]["cases"]] == [64, 200] and report["latency"]["C"] == 10
    for case in report["latency"]["cases"]:
        assert set(case["backends"]) == measured
        peak = case["peak_gflops"]["peak:matmul"]
        ref = case["backends"]["torch_eager"]
        assert positive(peak) and case["foreign_cpu_share"] is not None and 0 <= case["foreign_cpu_share"] <= 1
        for name, row in case["backends"].items():
            assert row["rounds"] >= 5 and 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"], name
            assert row["gflops"] == pytest.approx(case["flops"] / row["median_ms"] / 1e6)
            assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / peak)
            assert row["speedup_vs_torch"] == pytest.approx(ref["median_ms"] / row["median_ms"])
            assert all(positive(row[k]) for k in ("speedup_vs_torch", "fraction_of_peak", "speedup_vs_torch_best",
                                                   "fraction_of_peak_best"))
        assert ref["speedup_vs_torch"] == 1.0


def test_throughput_figures_agree(quick_run, measured):
    _, _, report = quick_run
    thr = report["throughput"]
    assert set(thr["backends"]) == measured and thr["videos"] == 10 and thr["crops"] == 5
    assert thr["snippet_crops"] == thr["snippets"] * 5 and thr["groups"] == 3
    ref = thr["backends"]["torch_eager"]
    for name, row in thr["backends"].items():
        assert positive(row["seconds"]) and row["calls"] >= thr["groups"], name
        assert row["videos_per_s"] == pytest.approx(thr["videos"] / row["seconds"])
        assert row["speedup_vs_torch"] == pytest.approx(ref["seconds"] / row["seconds"])
        assert positive(row["fraction_of_peak"]) and positive(row["memory_budget_mib"])
        assert row["padding_overhead"] >= 0


def test_memory_of_every_backend_in_its_own_process(quick_run, measured):
    _, _, report = quick_run
    mem = report["memory"]["backends"]
    assert set(mem) == measured
    for name, row in mem.items():
        assert "error" not in row, row
        assert 0 < row["rss_start_mib"] <= row["rss_imports_mib"] and row["rss_model_mib"] > 0
        assert set(row["cases"]) == {"64", "200"}
        assert all(c["host_peak_delta_mib"] >= 0 and c["device_peak_delta_mib"] is None for c in row["cases"].values())
        assert row["torch_imported"] == (report["backends"][name]["kind"] == "torch"), name


def test_accuracy_within_the_tolerance_table(quick_run, measured):
    _, _, report = quick_run
    assert report["accuracy"]["torch_eager"]["tolerance"] is None
    assert all(w["error"] == 0 for w in report["accuracy"]["torch_eager"]["outputs"].values())
    for name in measured - {"torch_eager"}:
        spec, acc = SPECS[name], report["accuracy"][name]
        assert acc["tolerance"] == tolerance_for(spec.precision, spec.family), name
        limit = TOLERANCES[acc["tolerance"]].limit
        assert acc["ok"] and acc["limit"] == limit and acc["metric"] == "rel_to_max"
        # the latency inputs, every workload video and every demo video were compared
        assert acc["comparisons"] >= 2 + 10 + report["demo"]["videos"], acc["comparisons"]
        for out_name in OUTPUTS:
            w = acc["outputs"][out_name]
            assert w["finite"] and 0 <= w["error"] <= limit and w["where"], (name, out_name, w)


def test_demo_metrics_within_their_limits(quick_run, measured):
    _, _, report = quick_run
    demo = report["demo"]
    assert demo["videos"] >= 20 and 0 < demo["abnormal_videos"] < demo["videos"]
    assert 0.5 < demo["reference"]["auc"] <= 1 and 0 < demo["reference"]["ap"] <= 1     # the model learnt something
    assert set(demo["backends"]) == measured - {"torch_eager"}
    for name, row in demo["backends"].items():
        assert row["ok"] and row["metric_tolerance"] == metric_tolerance_for(SPECS[name].precision)
        assert row["delta_auc_points"] == pytest.approx(100 * (row["auc"] - demo["reference"]["auc"]))
        # fp32 is not judged by a metric entry; it must do no worse than fp16 may
        limit = TOLERANCES[row["metric_tolerance"] or "metric_fp16"].limit
        assert abs(row["delta_auc_points"]) <= limit and abs(row["delta_ap_points"]) <= limit, (name, row)
