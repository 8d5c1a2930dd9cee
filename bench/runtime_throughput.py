"""Throughput of bnwvad.runtime's batching against scoring videos one by one, and peak memory.

    .venv/bin/python bench/runtime_throughput.py --model xd.onnx [--every 4] [--json out.json]

Videos have the lengths of XD-Violence's 800 test videos (test_snippets.csv), 5 crops,
random stand-in features of the model's D. Both modes score the same videos in the same
process, interleaved: every call of the batched plan is timed beside the same videos
scored one by one, the order alternating from call to call, so load from other processes
on a shared machine hits both modes alike. Ratios are also given by the length of a call's
longest video.

- batched: Scorer(runner) with its defaults (sorted by length, up to 32 videos per call,
  min_fill 0.75, default memory budget);
- one by one: Scorer(runner, max_batch=1), one call per video (N = 1, C = 5).

Memory: the peak resident set (VmHWM) of each mode, reset between phases through
/proc/self/clear_refs where the kernel allows, else sampled; ru_maxrss for the whole run; and
the Scorer's estimate of its largest call beside it. ONNX Runtime's CPU arena keeps the
largest call's buffers, so a mode's peak is reached once and held (--no-arena to compare).

Without --model the published weights are exported in a subprocess (torch stays out of this
process, so the memory figures are the runtime's).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bnwbench.plan import PUBLISHED, XD_LENGTHS
from bnwbench.system import PeakMemory, reset_hwm, vm_hwm, vm_rss
from bnwbench.workload import PoolVideo, read_lengths

BUCKETS = (64, 256, 1024, 1 << 30)          # report ratios by the longest video of a call


def probe_one(model: Path, n: int, t: int, crops: int) -> dict:
    """Peak RSS growth of one call (N, crops, T) with the arena off, beside the estimate.
    Run in a fresh process per shape (--probe), so earlier calls' freed memory is not reused."""
    from bnwvad.runtime import estimate_bytes, load_runner

    r = load_runner(model, "ort-cpu", arena=False)
    d = r.meta.feature_dim
    f = np.random.default_rng(0).standard_normal((n, crops, t, d), dtype=np.float32)
    r.run(f[:, :, :8], np.full(n, min(8, t)))              # session warm-up, small
    base = vm_rss()
    if not reset_hwm():
        raise SystemExit("--probe needs a writable /proc/self/clear_refs")
    r.run(f, np.full(n, t))
    return {"N": n, "T": t, "C": crops, "measured_mib": round((vm_hwm() - base) / 2**20, 1),
            "estimate_mib": round(estimate_bytes(n * crops, t, r.meta) / 2**20, 1)}


def export_published(out: Path) -> Path:
    code = ("import sys; from bnwvad.export import export_onnx; "
            "export_onnx(sys.argv[1], sys.argv[2], preset='xd', precision='fp32')")
    subprocess.run([sys.executable, "-c", code, str(PUBLISHED), str(out)], check=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="exported .onnx (default: export the published weights)")
    ap.add_argument("--csv", type=Path, default=XD_LENGTHS)
    ap.add_argument("--crops", type=int, default=5)
    ap.add_argument("--every", type=int, default=1,
                    help="keep every k-th video of the length-sorted list (deterministic subsample)")
    ap.add_argument("--max-length", type=int, default=None,
                    help="keep only videos of at most this many snippets (e.g. 128: the shorter half)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-rows", default="auto", help="Scorer max_rows: auto, none or an integer")
    ap.add_argument("--min-fill", type=float, default=0.75)
    ap.add_argument("--no-arena", action="store_true", help="disable ONNX Runtime's CPU memory arena")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--probe", action="append", default=[], metavar="NxT",
                    help="also measure one call's peak memory against the estimate (repeatable)")
    ap.add_argument("--probe-one", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe_one:
        print(json.dumps(probe_one(args.model, *args.probe_one, args.crops)))
        return 0

    from bnwvad.runtime import Scorer, load_runner, plan_calls
    from bnwvad.runtime.io import save_json

    tmp = None
    if args.model is None:
        tmp = tempfile.TemporaryDirectory()
        args.model = export_published(Path(tmp.name) / "xd.onnx")
    rss_start = vm_rss()
    runner = load_runner(args.model, "ort-cpu", threads=args.threads, arena=not args.no_arena)
    d = runner.meta.feature_dim
    videos = read_lengths(args.csv)
    order = sorted((i for i in range(len(videos)) if args.max_length is None or videos[i][1] <= args.max_length),
                   key=lambda i: (videos[i][1], i))
    kept = sorted(order[:: args.every])                              # back to CSV order
    t_max = max(videos[i][1] for i in kept)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((args.crops, t_max + 256, d), dtype=np.float32)
    sources = [PoolVideo(videos[i][0], videos[i][1], args.crops, pool, int(rng.integers(0, 257)))
               for i in kept]
    max_rows = None if args.max_rows == "none" else args.max_rows if args.max_rows == "auto" else int(args.max_rows)
    batched = Scorer(runner, max_batch=args.batch_size, max_rows=max_rows, min_fill=args.min_fill)
    single = Scorer(runner, max_batch=1)
    warm = [PoolVideo("warm", 64, args.crops, pool, 0)]
    for s in (batched, single):
        list(s.iter_results(warm))
    for s in (batched, single):
        s.stats = dict.fromkeys(s.stats, 0)

    # The batched mode's own plan gives the groups: each group is one batched call, timed
    # beside its videos scored one by one, the order alternating from group to group, so
    # load drifting on a shared machine hits both modes alike (paired, fine-grained).
    plan = plan_calls([v.length for v in sources], [v.crops for v in sources], runner.meta,
                      budget=batched.memory_budget, max_batch=args.batch_size,
                      max_rows=batched.max_rows, min_fill=args.min_fill)
    groups: list[list[int]] = []
    for call in plan.calls:                  # a video split in crop chunks stays one group
        if groups and set(call.videos) & set(groups[-1]):
            continue
        groups.append(list(call.videos))
    can_reset = reset_hwm()
    totals = {"batched": 0.0, "one_by_one": 0.0}
    peaks = {"batched": 0, "one_by_one": 0}
    buckets: dict[str, dict] = {}
    t_start = time.perf_counter()
    for k, idx in enumerate(groups):
        group = [sources[i] for i in idx]
        modes = [("batched", batched), ("one_by_one", single)]
        if k % 2:
            modes.reverse()
        longest = max(v.length for v in group)
        label = next(f"T<={hi}" for hi in BUCKETS if longest <= hi)
        row = buckets.setdefault(label, {"videos": 0, "snippets": 0, "batched_calls": 0,
                                         "batched_s": 0.0, "one_by_one_s": 0.0})
        row["videos"] += len(group)
        row["snippets"] += sum(v.length for v in group)
        row["batched_calls"] += 1
        for mode, scorer in modes:
            with PeakMemory() as pm:        # VmHWM reset per phase where allowed, else RSS sampled
                t0 = time.perf_counter()
                n = sum(1 for out in scorer.iter_results(group) if hasattr(out, "anomaly"))
                dt = time.perf_counter() - t0
            assert n == len(group), f"{mode}: only {n} of {len(group)} videos scored"
            peaks[mode] = max(peaks[mode], pm.peak)
            totals[mode] += dt
            row[mode + "_s"] += dt
        if (k + 1) % 20 == 0:
            print(f"{k + 1}/{len(groups)} groups, {time.perf_counter() - t_start:.0f} s, ratio so far "
                  f"{totals['one_by_one'] / totals['batched']:.3f}", flush=True)
    for label in sorted(buckets, key=lambda s: int(s[3:])):
        row = buckets[label]
        row["ratio"] = round(row["one_by_one_s"] / row["batched_s"], 3)
        row["batched_s"], row["one_by_one_s"] = round(row["batched_s"], 3), round(row["one_by_one_s"], 3)
        print(f"{label:>8}: {row['videos']:4d} videos {row['snippets']:7d} snippets in {row['batched_calls']:4d} "
              f"calls: batched {row['batched_s']:8.2f} s, one by one {row['one_by_one_s']:8.2f} s, "
              f"ratio {row['ratio']:.3f}", flush=True)
    snippets = sum(v.length for v in sources)
    largest = max(c.bytes for c in plan.calls)
    result = {
        "model": str(args.model), "backend": runner.describe(), "threads": args.threads,
        "arena": not args.no_arena, "max_rows": batched.max_rows, "min_fill": args.min_fill,
        "max_batch": args.batch_size, "videos": len(sources), "every": args.every, "max_length": args.max_length,
        "crops": args.crops, "feature_dim": d, "snippets": snippets,
        "by_length": {k: buckets[k] for k in sorted(buckets, key=lambda s: int(s[3:]))},
        "batched_s": round(totals["batched"], 3), "one_by_one_s": round(totals["one_by_one"], 3),
        "ratio": round(totals["one_by_one"] / totals["batched"], 3),
        "batched_videos_per_s": round(len(sources) / totals["batched"], 2),
        "one_by_one_videos_per_s": round(len(sources) / totals["one_by_one"], 2),
        "batched_snippet_crops_per_s": round(snippets * args.crops / totals["batched"], 1),
        "one_by_one_snippet_crops_per_s": round(snippets * args.crops / totals["one_by_one"], 1),
        "batched_calls": batched.stats["calls"], "one_by_one_calls": single.stats["calls"],
        "padding_overhead": round(batched.stats["padded_rows"] / max(1, batched.stats["real_rows"]) - 1, 4),
        "peak_rss_batched_mib": round(peaks["batched"] / 2**20, 1),
        "peak_rss_one_by_one_mib": round(peaks["one_by_one"] / 2**20, 1),
        "peak_method": "VmHWM reset per phase" if can_reset else "VmRSS sampled every 2 ms",
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_model_mib": round(rss_start / 2**20, 1),
        "feature_pool_mib": round(pool.nbytes / 2**20, 1),
        "largest_call_estimate_mib": round(largest / 2**20, 1),
        "memory_budget_mib": round(batched.memory_budget / 2**20, 1),
        "cpu_count": os.cpu_count(),
    }
    probes = []
    for spec in args.probe:
        n, t = (int(x) for x in spec.lower().split("x"))
        out = subprocess.run([sys.executable, __file__, "--model", str(args.model), "--crops", str(args.crops),
                              "--probe-one", str(n), str(t)], capture_output=True, text=True, check=True)
        probes.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"probe N={n} T={t}: measured {probes[-1]['measured_mib']} MiB, "
              f"estimated {probes[-1]['estimate_mib']} MiB", flush=True)
    result["memory_probes"] = probes
    print(json.dumps({k: v for k, v in result.items() if k != "by_length"}, indent=2))
    if args.json:
        save_json(args.json, result)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
