"""bench/serve.py's report: the passes of each configuration over the rounds, the goal, and
report.md."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bnwbench.report import fmt, table
from bnwbench.serve_load import pct
from bnwbench.serve_plan import GOAL_N, GOAL_SHARE, IN_PROCESS


def markdown(rep: dict) -> str:
    ref = rep["in_process"][rep["reference"]]["videos_per_s"]
    ref_adj = rep["in_process"][rep["reference"]]["videos_per_s_adjusted"]
    rows = []
    for name, label in IN_PROCESS.items():
        r = rep["in_process"].get(name)
        if r is None:
            continue
        rows.append([label + (" **(reference)**" if name == rep["reference"] else ""), "–", fmt(r["videos_per_s"]),
                     fmt(r["snippet_crops_per_s"], ".0f"), fmt(r["videos_per_s"] / ref, ".0%"),
                     fmt(r["videos_per_s_adjusted"] / ref_adj, ".0%"), fmt(r["p50_ms"], ".0f"),
                     fmt(r["p99_ms"], ".0f"), "–", fmt(r["others_cpu_share"], ".0%")])
    for r in rep["service"]:
        b = r.get("replica") or {}
        per = f"{b['videos_in_batches'] / b['batches']:.2f} ({b['max_batch_seen']})" if b.get("batches") else "–"
        rows.append([f"service, batching {'on' if r['batching'] else 'off'}", r["clients"], fmt(r["videos_per_s"]),
                     fmt(r["snippet_crops_per_s"], ".0f"), fmt(r["videos_per_s"] / ref, ".0%"),
                     fmt(r["videos_per_s_adjusted"] / ref_adj, ".0%"), fmt(r["p50_ms"], ".0f"), fmt(r["p99_ms"], ".0f"),
                     per, fmt(r["others_cpu_share"], ".0%")])
    w = rep["workload"]
    lines = [f"## bnwvad-serve load test ({rep['mode']}) — {rep['machine']['cpu']}, {rep['cpus']} CPUs", "",
             f"{rep['created']}, bnwvad {rep['libraries'].get('bnwvad')} ({rep.get('git') or 'no git'}), "
             f"ray {rep['libraries'].get('ray')}, onnxruntime {rep['libraries'].get('onnxruntime')}. Model: "
             f"{rep['model']['kind']} (C = {w['crops']}, D = {w['dim']}). Workload: {w['videos']} videos, "
             f"{w['snippets']} snippets (lengths p0/p50/p100 {w['length_p0']}/{w['length_p50']}/{w['length_p100']}, "
             f"a spread sample of {Path(w['lengths_source']).name}), random features. One replica with "
             f"{rep['cpus']} CPUs and {rep['threads']} ONNX Runtime threads; the in-process runner has the same "
             f"threads. Server-side batching: up to {rep['max_batch']} videos per T bucket, "
             f"{rep['batch_wait_ms']:g} ms wait. Load average at start {rep['load_average']['start']}, at end "
             f"{rep['load_average']['end']}.", "",
             *table(["runtime", "N clients", "videos/s", "snippet-crops/s", "of in-process", "adjusted",
                     "p50 ms", "p99 ms", "videos per batch (max)", "other processes' CPU"], "lrrrrrrrrr", rows), "",
             f"Each row: the mean of its {rep['rounds']} passes (one per round; rounds run every configuration, "
             "in-process first, the service's modes alternating). The reference is the faster of the two "
             "all-at-once in-process runs. *adjusted*: each pass's videos/s divided by the share of the CPUs that "
             "other processes (outside this benchmark and its Ray cluster) left it, against the reference "
             "adjusted alike: roughly the comparison on a machine of one's own. Latency: per request, from "
             "sending its body to its answer parsed (in-process: one `score()` call). p50 / p99 over all the "
             "rounds' requests.", ""]
    g = rep.get("goal")
    if g:
        lines.append(f"Goal: at N = {GOAL_N} (batching on) the service reaches {g['share']:.0%} of the in-process "
                     f"throughput, {g['share_adjusted']:.0%} adjusted for other processes "
                     f"({'met' if g['met'] else 'NOT met'}; goal {GOAL_SHARE:.0%}).")
    worst = max((r["max_rel_diff"] for r in rep["service"]), default=0.0)
    errs = sum(r["errors"] for r in rep["service"])
    lines.append(f"Every answer checked against the in-process result of its video: max |service − in-process| / "
                 f"max |in-process| = {worst:.1e}; {errs} request(s) failed.")
    cpu = rep.get("cpu_note")
    if cpu:
        lines.append(cpu)
    if rep.get("note"):
        lines.append(rep["note"])
    return "\n".join(lines) + "\n"


def cpu_note(rep: dict) -> str | None:
    """Where the CPU went in the goal passes: replica (the model) vs the HTTP path."""
    g = next((r for r in rep["service"] if r["batching"] and r["clients"] == GOAL_N), None)
    if not g:
        return None
    c = g["cpu_s"]
    total = sum(c.values()) or 1.0
    parts = ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))
    return (f"CPU time of the N = {GOAL_N} passes (batching on, all rounds), by process: {parts}; "
            f"mean wall {g['seconds']:.1f} s per pass.")


def mean_of_rounds(passes: list[dict]) -> dict:
    """The passes of one configuration over the rounds: mean throughput, latency percentiles
    over all their requests, CPU seconds summed."""
    out = dict(passes[-1])
    for k in ("videos_per_s", "videos_per_s_adjusted", "snippet_crops_per_s", "seconds"):
        out[k] = float(np.mean([f[k] for f in passes]))
    shares = [f["others_cpu_share"] for f in passes if f["others_cpu_share"] is not None]
    out["others_cpu_share"] = float(np.mean(shares)) if shares else None
    lat = [x for f in passes for x in f.pop("_latencies", [])]
    out.pop("_latencies", None)
    out["p50_ms"], out["p99_ms"] = (1e3 * pct(lat, 50), 1e3 * pct(lat, 99)) if lat else (None, None)
    out["rounds_videos_per_s"] = [round(f["videos_per_s"], 3) for f in passes]
    if "errors" in out:
        out["errors"] = sum(f["errors"] for f in passes)
        out["max_rel_diff"] = max(f["max_rel_diff"] for f in passes)
    if "replica" in out:
        rs = [f["replica"] for f in passes]
        out["replica"] = {k: (max(r[k] for r in rs) if k == "max_batch_seen" else
                              round(sum(r[k] for r in rs), 3)) for k in rs[0]}
    out["cpu_s"] = {k: round(sum(f["cpu_s"].get(k, 0.0) for f in passes), 3)
                    for k in {k for f in passes for k in f["cpu_s"]}}
    return out


def summarize(rep: dict, inproc: dict[str, list], service: dict[tuple, list], ns: list[int]) -> None:
    """Into `rep`: each configuration's mean over the rounds, the reference (the faster
    all-at-once in-process run), the goal's share and where the CPU went."""
    rep["in_process"] = {k: mean_of_rounds(v) for k, v in inproc.items()}
    rep["reference"] = max(("all_at_once", "all_at_once_nospin"), key=lambda k: rep["in_process"][k]["videos_per_s"])
    rep["service"] = [mean_of_rounds(service[(b, n)]) for b in (True, False) for n in ns if (b, n) in service]
    ref_tp = rep["in_process"][rep["reference"]]["videos_per_s"]
    goal = next((r for r in rep["service"] if r["batching"] and r["clients"] == GOAL_N), None)
    if goal:
        share = goal["videos_per_s"] / ref_tp
        adj = goal["videos_per_s_adjusted"] / rep["in_process"][rep["reference"]]["videos_per_s_adjusted"]
        rep["goal"] = {"share": share, "share_adjusted": adj, "met": share >= GOAL_SHARE}
    rep["cpu_note"] = cpu_note(rep)
