"""bench/stream.py's phase d: time and peak memory of one long video, windowed against whole,
in a fresh torch-free process per point (bench/stream.py --cost-child)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bnwbench.measure import ForeignCpu, say
from bnwbench.plan import REPO
from bnwbench.stream_plan import COST_BUDGET, StreamPlan
from bnwbench.system import GIB, MIB, reset_hwm, vm_hwm, vm_rss

SCRIPT = REPO / "bench" / "stream.py"              # the command whose --cost-child runs a point


def cost_child(spec: dict) -> dict:
    """In a fresh process (no torch): score the first T snippets of the memory-mapped features
    windowed or whole; time of the scoring call, peak RSS (VmHWM) of the process."""
    from bnwvad.runtime import load_runner
    from bnwvad.runtime.stream import score_windowed

    runner = load_runner(spec["model"], "ort-cpu", threads=spec["threads"])
    feats = np.load(spec["features"], mmap_mode="r", allow_pickle=False)
    t = int(spec["T"])
    x = feats[:t]                                        # (T, D) view of the file: nothing read yet
    w, l, s = spec["W"], spec["L"], spec["S"]
    warm = np.ascontiguousarray(feats[:16])
    # Unchecked calls (check=False): the runner would insist on the model's 5 crops; these
    # features are finite float32 by construction.
    runner.run(warm[None, None], np.array([16]), check=False)         # session warm-up
    base = vm_rss()
    hwm_ok = reset_hwm()
    t0 = time.perf_counter()
    if spec["mode"] == "windowed":
        out = score_windowed(runner, x, w, l, s, crops=None, memory_budget=spec["budget"])["anomaly"]
    else:
        a = np.ascontiguousarray(x)[None, None]          # (1, 1, T, D) in memory: the whole video
        out = runner.run(a, np.array([t]), check=False)["anomaly"][0]
    seconds = time.perf_counter() - t0
    peak = vm_hwm() if hwm_ok else max(vm_rss(), base)
    return {"T": t, "mode": spec["mode"], "seconds": seconds, "peak_rss": peak, "baseline_rss": base,
            "input_bytes": int(t * x.shape[-1] * 4),
            "peak_method": "VmHWM" if hwm_ok else "RSS after the call (VmHWM could not be reset)",
            "finite": bool(np.isfinite(out).all()), "torch_imported": "torch" in sys.modules}


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x)."""
    pts = [(x, y) for x, y in points if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def phase_cost(plan: StreamPlan, models: dict, threads: int, work: Path, clock, timeout: float) -> dict:
    from bnwvad.runtime import load_runner
    from bnwvad.runtime.planning import estimate_bytes

    with load_runner(models["xd"]["path"], "ort-cpu", threads=1) as r:
        meta = r.meta
    d = meta.feature_dim
    t_max = max(plan.cost_lengths)
    path = work / "cost_features.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(t_max, d))
    rng = np.random.default_rng(3)
    for i in range(0, t_max, 4096):
        k = min(4096, t_max - i)
        mm[i:i + k] = rng.random((k, d), dtype=np.float32) * 2
    mm.flush()
    del mm
    say(f"d. cost growth: T in {plan.cost_lengths}, 1 crop, windowed W = {plan.cost_w}, L = {plan.cost_l}, "
        f"S = {plan.cost_s} vs whole video; a fresh process per point, budget {COST_BUDGET / GIB:.0f} GiB", clock)
    points = []
    with ForeignCpu() as fc:
        for t in plan.cost_lengths:
            for mode in ("windowed", "whole"):
                row = {"T": t, "mode": mode}
                if mode == "whole":
                    est = estimate_bytes(1, t, meta) + t * d * 4
                    row["estimate_bytes"] = est
                    if est > COST_BUDGET:
                        row["skipped"] = (f"estimated working set {est / GIB:.1f} GiB > the "
                                          f"{COST_BUDGET / GIB:.0f} GiB budget")
                        points.append(row)
                        say(f"  T={t:<6} whole:    skipped ({row['skipped']})", clock)
                        continue
                spec = {"model": str(models["xd"]["path"]), "features": str(path), "T": t, "mode": mode,
                        "W": plan.cost_w, "L": plan.cost_l, "S": plan.cost_s, "threads": threads,
                        "budget": COST_BUDGET}
                try:
                    proc = subprocess.run([sys.executable, str(SCRIPT), "--cost-child", json.dumps(spec)],
                                          capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
                    if proc.returncode != 0:
                        row["error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                    else:
                        row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                except subprocess.TimeoutExpired:
                    row["error"] = f"did not finish in {timeout:.0f} s"
                points.append(row)
                if "error" in row:
                    say(f"  T={t:<6} {mode:<9} FAILED: {row['error']}", clock)
                else:
                    say(f"  T={t:<6} {mode:<9} {row['seconds']:8.2f} s, peak RSS {row['peak_rss'] / MIB:7.0f} MiB",
                        clock)
    path.unlink(missing_ok=True)
    win = [(p["T"], p.get("seconds")) for p in points if p["mode"] == "windowed" and "seconds" in p]
    whole = [(p["T"], p.get("seconds")) for p in points if p["mode"] == "whole" and "seconds" in p]
    s_win, s_whole = slope(win), slope(whole)
    longest = max((p for p in points if p["mode"] == "windowed" and "seconds" in p), key=lambda p: p["T"], default=None)
    return {"C": 1, "W": plan.cost_w, "L": plan.cost_l, "S": plan.cost_s, "budget_bytes": COST_BUDGET,
            "threads": threads, "input_bytes_per_snippet": d * 4, "points": points,
            "slope_windowed": s_win, "slope_whole": s_whole,
            "linear": s_win is not None and 0.8 <= s_win <= 1.25,
            "longest_windowed": None if longest is None else {
                "T": longest["T"], "seconds": longest["seconds"], "peak_rss": longest["peak_rss"],
                "within_budget": longest["peak_rss"] <= COST_BUDGET},
            "foreign_cpu_share": fc.share}
