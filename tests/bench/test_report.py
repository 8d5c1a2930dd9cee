"""The report's pieces on a small hand-made report: table formatter, headline, markdown."""
from __future__ import annotations

import copy
import math

import pytest

from bnwbench.report import fmt, headline, markdown, table


def small_report(*, busy: bool = False) -> dict:
    """The least a report holds for markdown(): two measured backends, one skipped, T = 64 and 200."""
    def lat(median, p90, speedup, gflops, frac):
        return {"median_ms": median, "p90_ms": p90, "speedup_vs_torch": speedup, "gflops": gflops,
                "fraction_of_peak": frac, "speedup_vs_torch_best": speedup * 1.1, "fraction_of_peak_best": frac * 1.1}

    outputs = {k: {"error": 0.0, "max_abs": 0.0} for k in ("score", "dfm", "anomaly")}
    return {
        "mode": "quick", "created": "2026-01-01 00:00 UTC", "git": "abc1234", "command": ".venv/bin/python bench/run.py",
        "machine": {"cpu": "Test CPU", "usable_cpus": 2, "ram_gib": 8.0, "gpu": None},
        "libraries": {"bnwvad": "0.1.0", "torch": "2.0"}, "runtime_library": "1.20",
        "settings": {"threads": 2},
        "load_average": {"start": [1.0], "end": [1.5], "busy": busy, "foreign_cpu_share_max": 0.25 if busy else 0.0},
        "models": {"speed": {"kind": "random", "feature_dim": 1024, "embed_dim": 512,
                             "mflop_per_snippet_crop_T200": 12.8}},
        "peak": {"size": 2048, "library": "numpy", "setup_gflops": {"numpy": 200.0, "torch": 190.0}},
        "backends": {
            "torch_eager": {"status": "measured", "providers": ["PyTorch eager"], "notes": []},
            "ort_fp32": {"status": "measured", "providers": ["CPUExecutionProvider"], "notes": ["a note"]},
            "torch_cuda": {"status": "skipped", "reason": "no CUDA device", "providers": [], "notes": []},
        },
        "latency": {"C": 10, "cases": [
            {"T": 64, "foreign_cpu_share": 0.0, "peak_gflops": {"peak:matmul": 195.0}, "notes": [],
             "backends": {"torch_eager": lat(20.0, 22.0, 1.0, 50.0, 0.25), "ort_fp32": lat(10.0, 12.0, 2.0, 100.0, 0.5)}},
            {"T": 200, "foreign_cpu_share": 0.01, "peak_gflops": {"peak:matmul": 200.0}, "rounds_clean": 1,
             "notes": ["ONNX Runtime arena off"],
             "backends": {"torch_eager": lat(60.0, 66.0, 1.0, 50.0, 0.25), "ort_fp32": lat(30.0, 33.0, 2.0, 100.0, 0.5)}},
        ]},
        "throughput": {"videos": 10, "crops": 5, "snippets": 1000, "groups": 3, "groups_clean": 0,
                       "lengths_source": "/data/test_snippets.csv",
                       "length_percentiles": {"0": 10.0, "10": 20.0, "50": 100.0, "90": 300.0, "100": 500.0},
                       "peak_gflops": {"peak:matmul": 190.0}, "foreign_cpu_share": 0.02,
                       "backends": {n: {"seconds": s, "videos_per_s": 10 / s, "snippet_crops_per_s": 5000 / s,
                                        "gflops": g, "fraction_of_peak": g / 190, "speedup_vs_torch": 8.0 / s,
                                        "calls": 3}
                                    for n, s, g in (("torch_eager", 8.0, 60.0), ("ort_fp32", 4.0, 120.0))}},
        "memory": {"C": 10, "method": "fresh process", "backends": {
            "torch_eager": {"rss_imports_mib": 200.0, "rss_model_mib": 230.0, "rss_warm_mib": 250.0,
                            "torch_imported": True,
                            "cases": {"64": {"host_peak_delta_mib": 20.0}, "200": {"host_peak_delta_mib": 70.0}}},
            "ort_fp32": {"error": "RuntimeError: exit 1"}}},
        "accuracy": {
            "torch_eager": {"tolerance": None, "limit": None, "metric": None, "ok": True, "outputs": outputs},
            "ort_fp32": {"tolerance": "onnx_fp32", "limit": 1e-4, "metric": "rel_to_max", "ok": True,
                         "outputs": {k: {"error": 2e-6, "max_abs": 1e-4} for k in ("score", "dfm", "anomaly")}}},
        "demo": {"videos": 30, "abnormal_videos": 18, "model": {"kind": "demo recipe"},
                 "reference": {"auc": 0.8, "ap": 0.7},
                 "backends": {"ort_fp32": {"auc": 0.8, "ap": 0.7, "delta_auc_points": 0.0, "delta_ap_points": 0.0,
                                           "ok": True}}},
    }


# -- fmt and table ------------------------------------------------------------------------
def test_fmt_formats_numbers_and_marks_missing_ones():
    assert fmt(1.23456) == "1.23"
    assert fmt(0.256, ".0%") == "26%"
    assert fmt(None) == "–" and fmt(math.nan) == "–" and fmt(math.inf, ".1f") == "–"
    assert fmt(0) == "0.00"            # zero is a value, not a missing one


def test_table_aligns_columns_and_keeps_empty_cells():
    lines = table(["a", "b", "c"], "lrr", [["x", 1, ""], ["y", 2.5, "z"]])
    assert lines == ["| a | b | c |", "|---|---:|---:|", "| x | 1 | |", "| y | 2.5 | z |"]


def test_table_accepts_a_short_row_for_one_message():
    assert table(["a", "b", "c"], "lll", [["x", "failed: it broke"]])[-1] == "| x | failed: it broke |"


@pytest.mark.parametrize("align", ["lr", "lrrr", "lxr"])
def test_table_refuses_an_alignment_that_does_not_fit(align):
    with pytest.raises(ValueError, match="align"):
        table(["a", "b", "c"], align, [])


# -- headline -------------------------------------------------------------------------------
def test_headline_is_ort_fp32_over_torch_at_t200():
    line, ok = headline(small_report())
    assert (line, ok) == ("ort_fp32/torch_eager throughput ratio: 2.00; fraction of peak: 0.50", True)


def test_headline_without_ort_fp32_at_t200_says_na():
    report = small_report()
    del report["latency"]["cases"][1]["backends"]["ort_fp32"]
    assert headline(report) == ("ort_fp32/torch_eager throughput ratio: n/a; fraction of peak: n/a", False)
    report["latency"]["cases"].pop(1)
    assert headline(report)[1] is False


def test_headline_without_a_peak_keeps_the_ratio():
    report = small_report()
    report["latency"]["cases"][1]["backends"]["ort_fp32"]["fraction_of_peak"] = None
    assert headline(report) == ("ort_fp32/torch_eager throughput ratio: 2.00; fraction of peak: n/a", True)


# -- markdown --------------------------------------------------------------------------------
def test_markdown_latency_table():
    lines = markdown(small_report()).splitlines()
    assert lines[0] == "## bnwvad benchmark (quick) — Test CPU, 2 CPUs, 8.0 GiB RAM; no GPU"
    i = lines.index("| backend | provider | T = 64 | T = 200 | × torch @200 | GFLOP/s @200 | of peak @200 |")
    assert lines[i + 1] == "|---|---|---:|---:|---:|---:|---:|"
    assert lines[i + 2] == "| torch_eager | PyTorch eager | 20.0 / 22.0 | 60.0 / 66.0 | 1.00 | 50.0 | 0.25 |"
    assert lines[i + 3] == "| ort_fp32 | CPUExecutionProvider | 10.0 / 12.0 | 30.0 / 33.0 | 2.00 | 100.0 | 0.50 |"
    assert lines[i + 4] == "| *other processes' CPU share* | | 0% | 1% | | | |"
    assert "Best rounds at T = 200 (the least disturbed; robust to other processes): ort_fp32/torch_eager 2.20, " \
           "fraction of peak 0.55." in lines
    assert "At T = 200, 1 rounds had other processes under 5% of the CPUs (fewer than 3: no figures of their own)." \
           in lines
    assert "Note: ONNX Runtime arena off." in lines


def test_markdown_throughput_memory_and_accuracy_tables():
    md = markdown(small_report())
    assert ("### Throughput: 10 videos, 5 crops, 1000 snippets (lengths p0/p10/p50/p90/p100 10/20/100/300/500, "
            "from test_snippets.csv), runtime batching, 3 interleaved group(s)") in md
    assert "| ort_fp32 | 4.00 | 2.50 | 1250 | 120.0 | 0.63 | 2.00 | 3 |" in md
    assert "Peak GEMM over the same groups: 190 GFLOP/s. Other processes used 2% of the CPUs meanwhile." in md
    assert ("| backend | RSS after imports | + model loaded | + call at T = 64 | + call at T = 200 | "
            "process peak at T = 200 | torch imported |") in md
    assert "| torch_eager | 200 | 30 | 20 | 70 | 320 | yes |" in md
    assert "| ort_fp32 | failed: RuntimeError: exit 1 |" in md
    assert ("| ort_fp32 | onnx_fp32 (0.0001 rel_to_max) | 2.0e-06 | 2.0e-06 | 2.0e-06 | 1.0e-04 | yes | 80.00 | "
            "+0.000 | 70.00 | +0.000 |") in md
    assert "| torch_eager | reference | 0.0e+00 | 0.0e+00 | 0.0e+00 | 0.0e+00 | yes | 80.00 | – | 70.00 | – |" in md


def test_markdown_flags_a_backend_outside_its_tolerance():
    report = small_report()
    report["demo"]["backends"]["ort_fp32"]["ok"] = False
    row = next(line for line in markdown(report).splitlines() if line.startswith("| ort_fp32 | onnx_fp32"))
    assert "| **NO** |" in row


def test_markdown_lists_skipped_backends_with_their_reason_and_notes():
    md = markdown(small_report())
    assert "### Not measured\n\n- torch_cuda (skipped): no CUDA device\n" in md
    assert md.endswith("Notes:\n- ort_fp32: a note\n")


def test_markdown_says_busy_only_on_a_busy_machine():
    assert "busy machine" not in markdown(small_report())
    assert "(**busy machine**: other processes used up to 25% of the CPUs" in markdown(small_report(busy=True))


def test_markdown_reports_clean_round_figures_when_there_are_enough():
    report = copy.deepcopy(small_report())
    case = report["latency"]["cases"][1]
    case["rounds_clean"] = 7
    case["backends"]["ort_fp32"].update(speedup_vs_torch_clean=1.9, fraction_of_peak_clean=0.48)
    assert ("At T = 200, 7 rounds had other processes under 5% of the CPUs; on those: ort_fp32/torch_eager 1.90, "
            "fraction of peak 0.48.") in markdown(report)
