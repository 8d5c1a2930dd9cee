"""Throughput: videos with a realistic spread of lengths through the runtime's Scorer (sort,
pad, batch, memory budget), interleaved per group of similar-length videos."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bnwvad.runtime.contract import OUTPUTS

from .accuracy import Errors
from .backends import Backend
from .measure import GAP_S, ForeignCpu, Probe, rotated, say
from .models import Models
from .plan import BUSY_SHARE, MIN_CLEAN, REFERENCE, BenchPlan
from .system import MIB, load_average
from .workload import PoolVideo, builtin_lengths, feature_pool, read_lengths, spread_sample

BUILTIN_SOURCE = "built-in log-normal spread (median 128, quartiles 74 / 240 snippets)"


def workload(plan: BenchPlan, csv_path: Path | None, feature_dim: int
             ) -> tuple[list[PoolVideo], np.ndarray, str]:
    """(stand-in videos with lengths spread like `csv_path`'s, their feature pool, where the
    lengths came from)."""
    if csv_path is not None and csv_path.is_file():
        rows, source = read_lengths(csv_path), str(csv_path)
    else:
        rows, source = builtin_lengths(), BUILTIN_SOURCE
    rows = spread_sample(rows, plan.workload_videos)
    c = plan.workload_crops
    pool = feature_pool(c, max(n for _, n in rows) + 64, feature_dim, seed=1)
    rng = np.random.default_rng(2)
    videos = [PoolVideo(f"v{i:04d}_{name}", n, c, pool, int(rng.integers(0, 65))) for i, (name, n) in enumerate(rows)]
    return videos, pool, source


def measure_throughput(backends: list[Backend], models: Models, plan: BenchPlan, errors: dict[str, Errors],
                       peaks: dict[str, Probe], csv_path: Path | None, clock) -> dict:
    """Seconds, videos/s, GFLOP/s, fraction of peak and speed-up against torch_eager per
    backend over the whole workload (and over the groups in which other processes left the
    CPUs idle); every video's outputs are compared with torch_eager's into `errors`."""
    from bnwvad.runtime import Scorer

    videos, pool, source = workload(plan, csv_path, models.meta.feature_dim)
    c = plan.workload_crops
    order = sorted(videos, key=lambda v: -v.length)
    groups = [order[i: i + plan.workload_group] for i in range(0, len(order), plan.workload_group)]
    live = [b for b in backends if b.measured]
    scorers = {b.name: Scorer(b.runner) for b in live}
    snippets = sum(v.length for v in videos)
    flops = sum(models.speed.num_flops(v.length, crops=c) for v in videos)
    say(f"throughput: {len(videos)} videos ({snippets} snippets, {c} crops, {flops / 1e12:.2f} TFLOP) "
        f"in {len(groups)} groups, lengths from {source}", clock)
    warm = [PoolVideo("warm", min(64, order[0].length), c, pool, 0)]
    for s in scorers.values():
        s.score(warm)
    for s in scorers.values():
        s.stats = dict.fromkeys(s.stats, 0)
    totals = {n: 0.0 for n in [*scorers, *peaks]}
    clean_totals = dict.fromkeys(totals, 0.0)
    clean_flops, clean_groups = 0.0, 0
    done = 0
    load_start = load_average()
    foreign_s = wall_s = 0.0
    for k, group in enumerate(groups):
        results = {}
        spent = dict.fromkeys(totals, 0.0)
        plan.gate.wait()
        t_group = time.perf_counter()
        with ForeignCpu() as fc:
            for name in rotated([*scorers, *peaks], k):
                time.sleep(GAP_S)      # let the previous contender's worker threads go idle
                t0 = time.perf_counter()
                if name in peaks:
                    peaks[name][0]()
                else:
                    results[name] = scorers[name].score(group)
                spent[name] = time.perf_counter() - t0
                totals[name] += spent[name]
        if fc.share is not None and fc.share <= BUSY_SHARE:
            clean_groups += 1
            clean_flops += sum(models.speed.num_flops(v.length, crops=c) for v in group)
            for name, v in spent.items():
                clean_totals[name] += v
        if fc.share is not None:
            foreign_s += fc.share * (time.perf_counter() - t_group)
            wall_s += time.perf_counter() - t_group
        ref = {r.name: r for r in results.get(REFERENCE, [])}
        for name, res in results.items():
            if name == REFERENCE or not ref:
                continue
            for r in res:
                errors[name].add({o: getattr(r, o) for o in OUTPUTS}, {o: getattr(ref[r.name], o) for o in OUTPUTS},
                                 f"workload video T={r.length}")
        done += len(group)
        say(f"  group {k + 1}/{len(groups)} ({done}/{len(videos)} videos, T {group[-1].length}-{group[0].length}): "
            + ", ".join(f"{n} {v:.1f} s" for n, v in totals.items() if n in scorers), clock)
    peak_rates = {p: fl * len(groups) / totals[p] for p, (_, fl) in peaks.items()}
    out = {"videos": len(videos), "snippets": snippets, "crops": c, "snippet_crops": snippets * c,
           "flops": flops, "groups": len(groups), "group_videos": plan.workload_group, "lengths_source": source,
           "length_percentiles": {str(q): float(np.percentile([v.length for v in videos], q))
                                  for q in (0, 10, 50, 90, 100)},
           "peak_gflops": {p: v / 1e9 for p, v in peak_rates.items()}, "load_average": load_start,
           "foreign_cpu_share": foreign_s / wall_s if wall_s else None, "groups_clean": clean_groups,
           "backends": {}}
    ref_s = totals.get(REFERENCE)
    for b in live:
        sec = totals[b.name]
        peak = peak_rates.get(b.spec.peak)
        st = scorers[b.name].stats
        out["backends"][b.name] = {
            "seconds": sec, "videos_per_s": len(videos) / sec, "snippet_crops_per_s": snippets * c / sec,
            "gflops": flops / sec / 1e9, "fraction_of_peak": (flops / sec / peak) if peak else None,
            "speedup_vs_torch": (ref_s / sec) if ref_s else None, "calls": st["calls"],
            "padding_overhead": st["padded_rows"] / max(1, st["real_rows"]) - 1,
            "memory_budget_mib": scorers[b.name].memory_budget / MIB}
        if clean_groups >= MIN_CLEAN and clean_totals.get(REFERENCE):
            probe = b.spec.peak
            cs = clean_totals[b.name]
            out["backends"][b.name].update(
                speedup_vs_torch_clean=clean_totals[REFERENCE] / cs,
                fraction_of_peak_clean=(clean_flops / cs / (peaks[probe][1] * clean_groups / clean_totals[probe]))
                if probe in peaks else None)
    return out


__all__ = ["measure_throughput", "workload"]
