"""bench/serve.py --quick as a user runs it: the load test's report must be well-formed and its
answers right. Speed is never asserted against a number (a shared CI machine proves nothing):
every request answered, every answer equal to the in-process result of its video, latencies
ordered, the files written. The exported model goes to a temporary cache (the published XD
model where ../shared has it, a seeded random paper-size one elsewhere), so this takes the
export, a local Ray cluster and the passes: a minute or two."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from _helpers import run_bench_quick

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "serve.py"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                 reason='ray[serve] is not installed (pip install "bnwvad[ray]")'),
              pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="the benchmark exports its model with torch (the export extra)")]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_bench")
    return run_bench_quick(SCRIPT, tmp, "--cache", tmp / "cache")


def test_files_and_markdown(quick):
    proc, out, rep = quick
    md = (out / "report.md").read_text()
    assert proc.stdout.strip() == md.strip()
    assert rep["schema"] == "bnwvad-bench-serve/1" and rep["mode"] == "quick"
    assert "| runtime | N clients | videos/s |" in md
    assert "in-process Scorer, all videos in one call" in md and "service, batching on" in md
    assert "service, batching off" in md and "0 request(s) failed" in md


def test_every_answer_right(quick):
    _, _, rep = quick
    videos = rep["workload"]["videos"]
    assert videos >= 4 and rep["workload"]["crops"] >= 1
    modes = {(r["batching"], r["clients"]) for r in rep["service"]}
    assert modes == {(b, n) for b in (True, False) for n in (1, 4)}
    for r in rep["service"]:
        assert r["errors"] == 0 and r["videos"] == videos
        assert r["max_rel_diff"] <= 1e-4                     # same model, same runtime, padded or not
        assert r["replica"]["videos_in_batches"] == videos
        assert r["replica"]["batches"] <= videos
        if not r["batching"]:
            assert r["replica"]["batches"] == videos


def test_figures_sane(quick):
    _, _, rep = quick
    rows = [*rep["in_process"].values(), *rep["service"]]
    for r in rows:
        assert r["videos_per_s"] > 0 and r["snippet_crops_per_s"] > 0 and r["seconds"] > 0
        assert r["others_cpu_share"] is None or 0.0 <= r["others_cpu_share"] <= 1.0
        if r["p50_ms"] is not None:
            assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert rep["in_process"]["all_at_once"]["p50_ms"] is None
    assert "goal" not in rep                                  # quick mode has no N = 16
