"""The bench's helpers: tolerance lookup, timing statistics, interleaving, accuracy
bookkeeping, process and machine facts, workloads. Fast; no model is run."""
from __future__ import annotations

import time

import numpy as np
import pytest

from bnwvad.runtime.contract import OUTPUTS, TOLERANCES
from bnwbench.accuracy import Errors, metric_change
from bnwbench.backends import SPECS
from bnwbench.measure import ForeignCpu, interleaved_rounds, rotated, summarize
from bnwbench.system import MIB, PeakMemory, machine_info, usable_cpus, vm_rss
from bnwbench.workload import builtin_lengths, read_lengths, spread_sample


# -- which tolerance judges which backend ------------------------------------------------------
@pytest.mark.parametrize("name, tolerance, metric", [
    ("torch_eager", None, None),
    ("ort_fp32", "onnx_fp32", None), ("ort_fp16", "onnx_fp16", "metric_fp16"), ("ort_int8", "onnx_int8", "metric_int8"),
    ("torch_cuda", "torch_cuda", None),
    ("ort_cuda_fp32", "onnx_fp32", None), ("ort_cuda_fp16", "onnx_fp16", "metric_fp16"),
    ("ort_trt_fp32", "tensorrt_fp32", None), ("ort_trt_fp16", "tensorrt_fp16", "metric_fp16"),
    ("trt_fp32", "tensorrt_fp32", None), ("trt_fp16", "tensorrt_fp16", "metric_fp16"),
])
def test_every_backend_is_judged_by_its_entry_of_the_table(name, tolerance, metric):
    spec = SPECS[name]
    assert (spec.tolerance, spec.metric_tolerance) == (tolerance, metric)
    if tolerance:
        assert TOLERANCES[tolerance].metric == "rel_to_max"
    if metric:
        assert TOLERANCES[metric].metric == "points"


def test_the_spec_table_covers_every_backend_once():
    assert len(SPECS) == 11 and all(n == s.name for n, s in SPECS.items())
    assert {s.peak for s in SPECS.values() if s.device == "cuda"} == {"peak:matmul_cuda"}


# -- timing ---------------------------------------------------------------------------------------
def test_summarize_gives_milliseconds():
    s = summarize([0.003, 0.001, 0.002, 0.004])
    assert s["rounds"] == 4
    assert s["median_ms"] == pytest.approx(2.5) and s["min_ms"] == pytest.approx(1.0)
    assert s["mean_ms"] == pytest.approx(2.5) and s["p90_ms"] == pytest.approx(3.7)
    assert summarize([]) == {"rounds": 0, "median_ms": None, "p90_ms": None, "min_ms": None, "mean_ms": None}


def test_rotated_starts_each_round_with_another_contender():
    assert [rotated("abc", k) for k in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert rotated([], 3) == []


def test_interleaved_rounds_rotates_and_respects_min_and_max_rounds():
    order = []
    runs = {n: (lambda n=n: order.append(n)) for n in "abc"}
    times, foreign = interleaved_rounds(runs, warmup=1, min_rounds=2, max_rounds=4, budget_s=0.0, gap_s=0.0)
    assert {n: len(v) for n, v in times.items()} == {"a": 2, "b": 2, "c": 2}     # budget spent: min_rounds
    assert "".join(order) == "abc" + "abc" + "bca"                               # warm-up, then rotated rounds
    assert len(foreign) == 2 and all(f is None or 0.0 <= f <= 1.0 for f in foreign)
    times, _ = interleaved_rounds(runs, warmup=0, min_rounds=1, max_rounds=4, budget_s=60.0, gap_s=0.0)
    assert all(len(v) == 4 for v in times.values())                              # budget left: max_rounds
    assert all(t >= 0 for v in times.values() for t in v)


def test_interleaved_rounds_times_with_the_given_clock():
    ticks = iter(range(100))
    times, _ = interleaved_rounds({"a": lambda: None}, warmup=0, min_rounds=3, max_rounds=3, budget_s=0.0,
                                  gap_s=0.0, clock=lambda: float(next(ticks)))
    assert times == {"a": [1.0, 1.0, 1.0]}


def test_foreign_cpu_share_is_a_fraction():
    with ForeignCpu() as fc:
        time.sleep(0.2)
    assert fc.share is not None and 0.0 <= fc.share <= 1.0


# -- accuracy bookkeeping ----------------------------------------------------------------------------
def outputs(rng, n=2, t=16):
    return {k: rng.random((n, t)).astype(np.float32) + 0.5 for k in OUTPUTS}


def test_errors_within_the_tolerance():
    rng = np.random.default_rng(0)
    ref = outputs(rng)
    errors = Errors("onnx_fp32")
    errors.add(ref, ref, "same")
    errors.add({k: v * (1 + 1e-6) for k, v in ref.items()}, ref, "close")
    d = errors.to_dict()
    assert d["ok"] and d["comparisons"] == 2 and d["limit"] == TOLERANCES["onnx_fp32"].limit
    for w in d["outputs"].values():
        assert 0 < w["error"] < 1e-5 and w["finite"] and w["where"] == "close"


def test_errors_outside_the_tolerance_name_where():
    rng = np.random.default_rng(1)
    ref = outputs(rng)
    errors = Errors("onnx_fp16")
    errors.add(ref, ref, "same")
    bad = {k: v.copy() for k, v in ref.items()}
    bad["dfm"][1, 3] += 0.5 * np.abs(ref["dfm"]).max()
    errors.add(bad, ref, "bad call")
    assert not errors.ok
    assert errors.worst["dfm"]["where"] == "bad call" and errors.worst["dfm"]["error"] == pytest.approx(0.5, rel=1e-3)
    assert errors.worst["score"]["ok"] and errors.worst["score"]["error"] == 0.0


def test_errors_ignore_padding_and_catch_non_finite_values():
    rng = np.random.default_rng(2)
    ref = outputs(rng, n=1, t=8)
    padded = {k: v.copy() for k, v in ref.items()}
    padded["anomaly"][0, 5:] = 1e9                          # past the video's length: not defined
    errors = Errors("onnx_fp32")
    errors.add(padded, ref, "padded", lengths=[5])
    assert errors.ok and errors.worst["anomaly"]["error"] == 0.0
    padded["anomaly"][0, 2] = np.nan
    errors.add(padded, ref, "nan", lengths=[5])
    w = errors.worst["anomaly"]
    assert not errors.ok and not w["finite"] and w["where"] == "nan"


def test_errors_take_one_videos_1d_outputs():
    rng = np.random.default_rng(3)
    ref = {k: v[0] for k, v in outputs(rng).items()}       # (T,) per output, as a VideoResult holds them
    errors = Errors("onnx_int8")
    errors.add({k: v + 0.01 for k, v in ref.items()}, ref, "video")
    assert errors.ok and errors.worst["score"]["max_abs"] == pytest.approx(0.01, rel=1e-3)


def test_errors_refuse_a_tolerance_of_another_metric():
    with pytest.raises(ValueError, match="points"):
        Errors("metric_fp16")


def test_metric_change_in_points_against_its_limit():
    row = metric_change({"auc": 0.8005, "ap": 0.7}, {"auc": 0.8, "ap": 0.7}, "metric_fp16")
    assert row["delta_auc_points"] == pytest.approx(0.05) and row["delta_ap_points"] == 0.0 and row["ok"]
    assert not metric_change({"auc": 0.8, "ap": 0.698}, {"auc": 0.8, "ap": 0.7}, "metric_int8")["ok"]
    assert metric_change({"auc": 0.5, "ap": 0.5}, {"auc": 0.8, "ap": 0.7}, None)["ok"]    # fp32: not judged


# -- process and machine ----------------------------------------------------------------------------
def test_peak_memory_sees_a_short_allocation():
    with PeakMemory() as pm:
        block = np.ones(64 * MIB // 8)                     # 64 MiB, touched
        time.sleep(0.05)
        del block
    assert pm.host_delta >= 48 * MIB and pm.peak >= pm.host_delta and pm.method
    assert vm_rss() < pm.peak


def test_machine_info_reads_the_machine():
    m = machine_info()
    assert m["cpu"] and m["ram_gib"] > 0 and m["logical_cpus"] >= m["usable_cpus"] == usable_cpus() >= 1
    assert m["physical_cores"] is None or 1 <= m["physical_cores"] <= m["logical_cpus"]
    assert 0 < m["ram_available_gib"] <= m["ram_gib"] and m["gpu"] is None


# -- workloads -------------------------------------------------------------------------------------
def test_builtin_lengths_follow_the_median_and_spread():
    lengths = np.array([n for _, n in builtin_lengths()])
    assert len(lengths) == 800 and lengths.min() >= 5 and lengths.max() <= 2074
    assert np.median(lengths) == pytest.approx(128, abs=2)
    # a log-normal around the median: the quartiles' ratio is XD-Violence's (240 / 74)
    q1, q3 = np.percentile(lengths, [25, 75])
    assert q3 / q1 == pytest.approx(240 / 74, rel=0.02) and q1 * q3 == pytest.approx(128 ** 2, rel=0.03)
    assert builtin_lengths() == builtin_lengths()                # no randomness


def test_spread_sample_keeps_the_distribution_and_the_order():
    rows = [(f"v{i}", n) for i, n in enumerate(range(100, 0, -1))]
    picked = spread_sample(rows, 10)
    assert len(picked) == 10 and picked == sorted(picked, key=rows.index)
    assert sorted(n for _, n in picked) == [6, 16, 26, 36, 46, 56, 66, 76, 86, 96]
    assert spread_sample(rows[:5], 10) == rows[:5]


def test_read_lengths_names_a_bad_file(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("video,snippets,frames\na,12,192\nb,3,48\n")
    assert read_lengths(good) == [("a", 12), ("b", 3)]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,count\na,12\n")
    with pytest.raises(ValueError, match="bad.csv.*expected video, snippets"):
        read_lengths(bad)
    with pytest.raises(ValueError, match="missing.csv"):
        read_lengths(tmp_path / "missing.csv")


def test_parse_ints_names_the_option_and_its_minimum():
    import click

    from bnwbench.cli import parse_ints

    assert parse_ints(None, "--lengths") is None
    assert parse_ints("64, 200,1000,", "--lengths") == [64, 200, 1000]
    assert parse_ints("0,4", "--lookaheads", minimum=0) == [0, 4]
    with pytest.raises(click.BadParameter, match="expected positive integers"):
        parse_ints("0,4", "--lengths")
    with pytest.raises(click.BadParameter, match="expected integers >= 0"):
        parse_ints("-1", "--lookaheads", minimum=0)
    with pytest.raises(click.BadParameter, match="expected comma-separated integers"):
        parse_ints("a,b", "--windows")
