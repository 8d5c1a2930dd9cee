"""Latency: one video, C crops, each T; interleaved rounds over the backends and the peak probes."""
from __future__ import annotations

from typing import Callable

import numpy as np

from .accuracy import Errors
from .backends import Backend
from .measure import Probe, interleaved_rounds, say, summarize
from .models import Models
from .plan import BUSY_SHARE, MIN_CLEAN, REFERENCE, BenchPlan
from .system import GIB, available_memory, load_average

# A T is skipped when one call would need more than this share of the available memory, and
# ONNX Runtime's arenas are turned off when all CPU sessions' arenas together would.
SKIP_SHARE = 0.8
ARENA_SHARE = 0.5


def measure_latency(backends: list[Backend], models: Models, plan: BenchPlan, errors: dict[str, Errors],
                    peaks: dict[str, Probe], threads: int, clock) -> dict:
    """{"C", "cases": one per T}: per backend its timings (`summarize`), GFLOP/s, fraction of
    peak and speed-up against torch_eager, over all rounds, the best round, and the rounds
    in which other processes left the CPUs idle. The first call of each backend (warm-up) is
    compared with torch_eager's into `errors`; a backend that fails is marked failed."""
    from bnwvad.runtime import estimate_bytes

    meta, d, c = models.meta, models.meta.feature_dim, plan.crops
    cases = []
    for t in plan.lengths:
        case = {"T": t, "C": c, "flops": models.speed.num_flops(t, crops=c), "backends": {}, "notes": [],
                "load_average": load_average()}
        cases.append(case)
        need = estimate_bytes(c, t, meta)
        avail = available_memory()
        if need > SKIP_SHARE * avail:
            case["skipped"] = (f"one call needs about {need / GIB:.1f} GiB (runtime estimate), "
                               f"{avail / GIB:.1f} GiB available")
            say(f"latency T={t}: skipped, {case['skipped']}", clock)
            continue
        live = [b for b in backends if b.measured]
        runners, temporary = _runners_for(live, models, case, need, avail, threads)
        x = (np.random.default_rng(t).random((1, c, t, d), dtype=np.float32) * 2).astype(np.float32)
        lengths = np.array([t], np.int64)
        say(f"latency T={t}, C={c}: {case['flops'] / 1e9:.1f} GFLOP per call, backends {', '.join(runners)}", clock)
        outs = {}
        for name, r in runners.items():          # the first call: warm-up and accuracy
            try:
                outs[name] = r.run(x, lengths, check=False)
            except Exception as e:              # noqa: BLE001 - a backend failing is a result
                b = next(b for b in live if b.name == name)
                b.fail(f"T={t}: {type(e).__name__}: {e}")
                say(f"  {name} failed: {b.reason}", clock)
        for name in list(runners):
            if name not in outs:
                runners.pop(name)
            elif name != REFERENCE and REFERENCE in outs:
                errors[name].add(outs[name], outs[REFERENCE], f"latency C={c} T={t}", lengths)
        calls: dict[str, Callable] = {name: (lambda r=r: r.run(x, lengths, check=False))
                                      for name, r in runners.items()}
        calls.update({p: fn for p, (fn, _) in peaks.items()})

        def progress(r, times):
            say(f"  round {r}: " + ", ".join(f"{n} {np.median(v) * 1e3:.0f} ms" for n, v in times.items()), clock)
        times, foreign = interleaved_rounds(calls, on_round=progress, before_round=plan.gate.wait,
                                            **plan.rounds(t))
        for r in temporary:
            r.close()
        specs = {b.name: b.spec for b in live if b.name in runners}
        _rates(case, times, foreign, peaks, specs)
        del x, outs
    return {"C": c, "cases": cases}


def _runners_for(live: list[Backend], models: Models, case: dict, need: int, avail: int, threads: int):
    """({name: runner} to time at this case's T, the runners opened for it alone)."""
    from bnwvad.runtime import load_runner

    t, c = case["T"], case["C"]
    runners = {}
    for b in live:
        lim = b.runner.limits
        if (lim.max_t and t > lim.max_t) or (lim.max_c and c > lim.max_c):
            case["notes"].append(f"{b.name} not run at T={t}: its engine profile ends at C={lim.max_c}, "
                                 f"T={lim.max_t} (--trt-max)")
        else:
            runners[b.name] = b.runner
    # ONNX Runtime's CPU arena keeps each session's largest working set for good; at long T
    # several sessions' arenas would hold many GiB at once: use arena-off sessions there.
    cpu_ort = [b for b in live if b.spec.kind == "ort" and b.spec.device == "cpu"]
    temporary = []
    if cpu_ort and need * len(cpu_ort) > ARENA_SHARE * avail:
        for b in cpu_ort:
            r = load_runner(models.speed_files[b.spec.precision], "ort-cpu", strict=True, threads=threads,
                            arena=False)
            runners[b.name] = r
            temporary.append(r)
        case["notes"].append(f"ONNX Runtime arena off at T={t}: {len(cpu_ort)} arenas would keep "
                             f"{len(cpu_ort) * need / GIB:.1f} GiB")
    return runners, temporary


def _rates(case: dict, times: dict[str, list[float]], foreign: list[float | None], peaks: dict[str, Probe],
           specs: dict) -> None:
    """Fill `case` from the rounds' timings: statistics, rates and ratios per backend."""
    shares = [f for f in foreign if f is not None]
    case["foreign_cpu_share"] = float(np.median(shares)) if shares else None
    # Medians against medians; and the best round against the best probe, which time stolen
    # by other processes inflates least (a companion figure for busy machines).
    peak_rates = {p: fl / np.median(times[p]) for p, (_, fl) in peaks.items()}
    peak_best = {p: fl / min(times[p]) for p, (_, fl) in peaks.items()}
    case["peak_gflops"] = {p: v / 1e9 for p, v in peak_rates.items()}
    case["peak_gflops_best"] = {p: v / 1e9 for p, v in peak_best.items()}
    ref = times.get(REFERENCE)
    for name, spec in specs.items():
        s = summarize(times[name])
        probe = spec.peak
        rate = case["flops"] / (s["median_ms"] / 1e3)
        best = case["flops"] / (s["min_ms"] / 1e3)
        s.update(gflops=rate / 1e9, fraction_of_peak=(rate / peak_rates[probe]) if probe in peaks else None,
                 speedup_vs_torch=(np.median(ref) * 1e3 / s["median_ms"]) if ref else None,
                 fraction_of_peak_best=(best / peak_best[probe]) if probe in peaks else None,
                 speedup_vs_torch_best=(min(ref) * 1e3 / s["min_ms"]) if ref else None)
        case["backends"][name] = s
    # Rounds in which other processes used (almost) no CPU: the machine as if it were ours.
    clean = [i for i, f in enumerate(foreign) if f is not None and f <= BUSY_SHARE]
    case["rounds_clean"] = len(clean)
    if len(clean) >= MIN_CLEAN and ref:
        peak_clean = {p: fl / np.median([times[p][i] for i in clean]) for p, (_, fl) in peaks.items()}
        ref_clean = np.median([ref[i] for i in clean])
        for name, spec in specs.items():
            med = float(np.median([times[name][i] for i in clean]))
            case["backends"][name].update(
                clean_median_ms=med * 1e3, speedup_vs_torch_clean=ref_clean / med,
                fraction_of_peak_clean=(case["flops"] / med / peak_clean[spec.peak]) if spec.peak in peaks else None)


__all__ = ["measure_latency"]
