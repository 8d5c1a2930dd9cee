"""bench/stream.py --quick as a user runs it: the report's figures must be well-formed and
consistent. Speed is never asserted against a number (a shared CI machine proves nothing);
what is asserted: metrics in range, agreement figures sane, at least one live stream, windowed
time linear in T within a generous band, files written. The demo set, the model cache and the
outputs go to a temporary folder (a 20-step demo model: AUC is only checked to be a fraction)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from _helpers import run_bench_quick

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "stream.py"

pytestmark = pytest.mark.slow


def fraction(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


def correlation(x) -> bool:
    return isinstance(x, (int, float)) and -1.0 - 1e-9 <= x <= 1.0 + 1e-9


@pytest.fixture(scope="module")
def quick(tmp_path_factory, reference_dir):
    tmp = tmp_path_factory.mktemp("stream_bench")
    return run_bench_quick(SCRIPT, tmp, "--cache", tmp / "cache", "--demo-root", tmp / "demo_data",
                           "--demo-steps", "20")


def test_files_and_markdown(quick):
    proc, out, rep = quick
    for name in ("report.json", "report.md", "accuracy.png", "capacity.png", "cost.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert proc.stdout.strip() == md.strip()
    for title in ("a. Detection quality", "b. Agreement", "c. Latency", "c. Capacity", "d. Cost growth",
                  "Shared machine"):
        assert title in md, title
    assert rep["schema"] == "bnwvad-bench-stream/1" and rep["mode"] == "quick"


def test_accuracy_figures(quick):
    _, _, rep = quick
    a = rep["accuracy"]
    assert fraction(a["full"]["auc"]) and fraction(a["full"]["ap"])
    assert {(g["W"], g["L"]) for g in a["grid"]} == {(w, l) for w in (16, 32) for l in (0, 4)}
    for g in a["grid"]:
        assert fraction(g["auc"]) and fraction(g["ap"]), g
        assert g["max_abs"] >= 0 and correlation(g["pearson"]), g
        assert math.isclose(g["d_auc_points"], 100 * (g["auc"] - a["full"]["auc"]), abs_tol=1e-9)


def test_agreement_figures(quick):
    _, _, rep = quick
    b = rep["agreement"]
    assert b["videos"] == 2 and all(t > 0 for t in b["lengths"])
    # The whole-video scores of the reference video are the published ones.
    assert b["reference"]["whole_vs_published_max_abs"] < 1e-2
    for g in b["grid"]:
        assert g["max_abs"] >= 0 and g["max_rel"] >= 0 and correlation(g["pearson"]), g
        assert g["reference"]["max_abs"] >= 0 and correlation(g["reference"]["pearson"]), g
    # With lookahead the windowed scores follow the whole-video ones closely.
    assert all(g["pearson"] > 0.9 for g in b["grid"] if g["L"] == 4)


def test_latency_and_capacity_figures(quick):
    _, _, rep = quick
    lat = rep["latency"]
    for c in lat["cases"]:
        assert c["snippets"] > 0 and 0 < c["compute_p50_ms"] <= c["compute_p99_ms"]
        # End to end adds the wait for the L (to S - 1 + L) later snippets at 30 fps to compute.
        assert c["e2e_p99_ms"] >= c["compute_p99_ms"]
        assert c["e2e_p50_ms"] >= lat["L"] * lat["period_ms"] and c["delay_snippets"] == c["S"] - 1 + lat["L"]
    cap = rep["capacity"]
    assert cap["by_step"] and all(s["max_streams"] > 0 for s in cap["by_step"] + cap["cpu_by_step"])
    for s in cap["cpu_by_step"]:
        assert s["machine_estimate"] == s["max_streams"] * cap["cores"]
    for s in cap["by_step"] + cap["cpu_by_step"]:
        assert all(t["p99_ms"] >= t["p50_ms"] >= 0 for t in s["trials"])


def test_cost_figures(quick):
    _, _, rep = quick
    d = rep["cost"]
    ran = [p for p in d["points"] if "seconds" in p]
    assert {(p["T"], p["mode"]) for p in ran} == {(t, m) for t in (300, 1200) for m in ("windowed", "whole")}
    assert all(p["seconds"] > 0 and p["peak_rss"] > 0 and p["finite"] and not p["torch_imported"] for p in ran)
    # Windowed time grows linearly with T (a generous band: the machine is shared).
    assert 0.5 <= d["slope_windowed"] <= 1.6, d["slope_windowed"]
    assert d["longest_windowed"]["within_budget"]
