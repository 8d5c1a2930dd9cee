"""bench/stream.py's phase c: per-snippet latency of one stream, and the live streams one
StreamGroup sustains at 30 fps (in wall time and in CPU time of a 1-thread runner)."""
from __future__ import annotations

import time

import numpy as np

from bnwbench.measure import ForeignCpu, interleaved_rounds, say
from bnwbench.report import fmt
from bnwbench.stream_plan import LAT_L, LAT_W, PERIOD_MS, StreamPlan
from bnwbench.system import usable_cpus


def prefill(group, sid, pool: np.ndarray, phase: int = 0) -> None:
    """Put stream `sid` of `group` in the state of a stream that has been running: its ring
    buffer full of `pool` snippets (k, C, D), its next block `phase` snippets from due. Sets
    the StreamGroup's private state directly (a benchmark's shortcut: filling the buffer by
    pushing would score every earlier block), exactly as `_feed` would have left it."""
    st = group._get(sid)
    span, S, L = group.span, group.step, group.lookahead
    n = span + (S - 1 - phase % S)                        # snippets "arrived"
    c, d = pool.shape[1], pool.shape[2]
    st.crops, st.dim = c, d
    st.buf = np.empty((c, span, d), np.float32)
    idx = np.arange(n - span, n)
    st.buf[:, idx % span] = pool[idx % len(pool)].transpose(1, 0, 2)
    st.arrived = n
    st.next_block = (n - L) // S                          # blocks due so far count as scored
    assert st.next_block * S + S + L > n >= st.next_block * S + L


def phase_latency(plan: StreamPlan, models: dict, threads: int, clock) -> dict:
    from bnwvad.runtime import load_runner
    from bnwvad.runtime.stream import StreamScorer

    runner = load_runner(models["xd"]["path"], "ort-cpu", threads=threads)
    d = runner.meta.feature_dim
    pool = (np.random.default_rng(1).random((256, max(plan.lat_crops), d), dtype=np.float32) * 2).astype(np.float32)
    cases = {}
    for c in plan.lat_crops:
        for s in plan.lat_steps:
            sc = StreamScorer(runner, LAT_W, LAT_L, s, crops=c)
            prefill(sc.group, sc.name, pool[:, :c])
            cases[f"C={c} S={s}"] = {"C": c, "S": s, "scorer": sc, "pushes": 0, "records": [], "cpu_ms": []}

    def pusher(case):
        def push():
            sc = case["scorer"]
            k = case["pushes"]
            start = sc.snippets
            x = pool[(start + np.arange(1)) % len(pool), : case["C"]]
            c0 = time.process_time()
            r = sc.push(x)
            if len(r) and k >= plan.lat_rounds["warmup"]:
                case["cpu_ms"].append((time.process_time() - c0) * 1e3)
            for t, ms in zip(r["snippet"].tolist(), r["latency_ms"].tolist()):
                case["records"].append((t, start, ms, k))       # snippet, snippet pushed, compute ms, push
            case["pushes"] = k + 1
        return push

    say(f"c. latency: W = {LAT_W}, L = {LAT_L}, C in {plan.lat_crops} x S in {plan.lat_steps}, configurations "
        f"interleaved ({plan.lat_rounds['min_rounds']}+ rounds)", clock)
    with ForeignCpu() as fc:
        times, foreign = interleaved_rounds({k: pusher(v) for k, v in cases.items()}, **plan.lat_rounds)
    rows = []
    for name, case in cases.items():
        # Records of the warm-up rounds are dropped: only the timed pushes' snippets count.
        recs = [r for r in case["records"] if r[3] >= plan.lat_rounds["warmup"]]
        comp = np.array([r[2] for r in recs])
        # End to end at 30 fps: snippet t arrives at its push; its result comes with the push of
        # snippet `at` (the last pushed when it was returned), (at - t) periods later, plus compute.
        e2e = np.array([(at - t) * PERIOD_MS + ms for t, at, ms, _ in recs])
        rows.append({"C": case["C"], "S": case["S"], "delay_snippets": case["S"] - 1 + LAT_L,
                     "snippets": int(comp.size), "pushes": len(times[name]),
                     "compute_p50_ms": float(np.percentile(comp, 50)) if comp.size else None,
                     "compute_p99_ms": float(np.percentile(comp, 99)) if comp.size else None,
                     "e2e_p50_ms": float(np.percentile(e2e, 50)) if e2e.size else None,
                     "e2e_p99_ms": float(np.percentile(e2e, 99)) if e2e.size else None,
                     "cpu_per_scoring_push_p50_ms": float(np.median(case["cpu_ms"])) if case["cpu_ms"] else None,
                     "push_p50_ms": float(np.percentile(times[name], 50) * 1e3),
                     "push_p99_ms": float(np.percentile(times[name], 99) * 1e3),
                     "runner_calls_per_snippet": case["scorer"].stats["calls"] / max(1, case["pushes"])})
        say(f"  C={case['C']:<3} S={case['S']}: compute p50 {fmt(rows[-1]['compute_p50_ms'], '.1f')} ms, p99 "
            f"{fmt(rows[-1]['compute_p99_ms'], '.1f')} ms; end to end p99 {fmt(rows[-1]['e2e_p99_ms'], '.0f')} ms",
            clock)
    runner.close()
    return {"W": LAT_W, "L": LAT_L, "period_ms": PERIOD_MS, "cases": rows, "threads": threads,
            "foreign_cpu_share": fc.share, "foreign_cpu_share_rounds_max": max([f for f in foreign if f is not None],
                                                                              default=None)}


def capacity_trial(runner, n: int, c: int, s: int, periods: int, pool: np.ndarray, *, aligned: bool = False,
                   clock=time.perf_counter) -> dict:
    """N streams of one StreamGroup pushing one snippet each per period, `periods` periods
    timed (one untimed first) by `clock` (wall time, or this process's CPU time). The period's
    work is one push_many of every stream."""
    from bnwvad.runtime.stream import StreamGroup

    group = StreamGroup(runner, LAT_W, LAT_L, s, crops=c)
    ids = [f"cam{i}" for i in range(n)]
    for i, sid in enumerate(ids):
        group.open(sid)
        prefill(group, sid, pool[:, :c], 0 if aligned else i)
    times = []
    with ForeignCpu() as fc:
        for p in range(periods + 1):
            x = pool[(p * 7 + np.arange(1)) % len(pool), :c]
            t0 = clock()
            group.push_many({sid: x for sid in ids})
            dt = (clock() - t0) * 1e3
            if p:
                times.append(dt)
            # Early stop: two periods over budget and the p99 of this trial cannot pass.
            if sum(t >= PERIOD_MS for t in times) >= 2:
                break
    a = np.array(times)
    p99 = float(np.percentile(a, 99))
    return {"N": n, "periods": len(times), "p50_ms": float(np.percentile(a, 50)), "p99_ms": p99,
            "max_ms": float(a.max()), "ok": p99 < PERIOD_MS and len(times) == periods,
            "calls_per_period": group.stats["calls"] / max(1, periods + 1), "foreign_cpu_share": fc.share}


def capacity_search(runner, plan: StreamPlan, pool: np.ndarray, s: int, clock, label: str, say_clock) -> dict:
    """The largest N of plan.cap_n whose period work passes (p99 < one period), searched in
    order until the first that does not; then the aligned case at that N."""
    c = plan.cap_crops
    trials, best = [], 0
    for n in plan.cap_n:
        r = capacity_trial(runner, n, c, s, plan.cap_periods, pool, clock=clock)
        trials.append(r)
        say(f"  {label} S={s} N={n:<4}: period p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms "
            f"{'ok' if r['ok'] else 'OVER'} (others used {fmt(r['foreign_cpu_share'], '.0%')} of the CPUs)", say_clock)
        if not r["ok"]:
            break
        best = n
    aligned = capacity_trial(runner, best, c, s, plan.cap_periods, pool, aligned=True, clock=clock) \
        if best and s > 1 else None
    if aligned:
        say(f"  {label} S={s} N={best} aligned phases: period p99 {aligned['p99_ms']:.0f} ms "
            f"{'ok' if aligned['ok'] else 'OVER'}", say_clock)
    return {"S": s, "delay_snippets": s - 1 + LAT_L, "max_streams": best,
            "searched_to_limit": bool(trials and trials[-1]["ok"]), "trials": trials, "aligned_at_max": aligned}


def phase_capacity(plan: StreamPlan, models: dict, threads: int, clock) -> dict:
    """Two measures. wall: the period's wall time, this process with `threads` threads, on the
    machine as it is (other tenants included). cpu: the period's CPU time of a 1-thread
    runner, which other tenants barely inflate: streams one core sustains; one such process
    per core (streams sharded between them) sustains cores x that."""
    from bnwvad.runtime import load_runner

    c = plan.cap_crops
    cores = usable_cpus()
    say(f"c. capacity: {c}-crop streams, W = {LAT_W}, L = {LAT_L}, S in {plan.cap_steps}, {plan.cap_periods} periods "
        f"per trial; N passes when the p99 of a period's work is under {PERIOD_MS:.0f} ms (wall: {threads} threads; "
        f"cpu: CPU time of 1 thread)", clock)
    out = {"C": c, "W": LAT_W, "L": LAT_L, "period_ms": PERIOD_MS, "periods": plan.cap_periods, "threads": threads,
           "cores": cores}
    for mode, n_threads, timer in (("wall", threads, time.perf_counter), ("cpu", 1, time.process_time)):
        runner = load_runner(models["xd"]["path"], "ort-cpu", threads=n_threads)
        pool = (np.random.default_rng(2).random((64, c, runner.meta.feature_dim), dtype=np.float32) * 2
                ).astype(np.float32)
        out["by_step" if mode == "wall" else "cpu_by_step"] = [
            capacity_search(runner, plan, pool, s, timer, mode, clock) for s in plan.cap_steps]
        runner.close()
    for s in out["cpu_by_step"]:
        s["machine_estimate"] = s["max_streams"] * cores
    return out
