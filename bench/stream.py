"""Streaming (windowed) BN-WVAD: accuracy against offline scoring, latency, live capacity, cost growth.

    .venv/bin/python bench/stream.py            # full run (about 30 min on 2 busy CPU cores, 6 idle)
    .venv/bin/python bench/stream.py --quick    # 1-2 min once the models are cached: a tiny grid, for the test

Writes <out>/report.json, report.md, accuracy.png, capacity.png and cost.png (default out:
bench/results/stream; graphs and the demo model are cached in --cache, bench/run.py's cache by
default, so either script reuses what the other made) and prints the markdown report.

Phases (every figure is bnwvad.runtime.stream, ONNX Runtime CPU; see its docstring for W, L, S):

a. Accuracy on the demo test set: AUC / AP of windowed scores for W x L (`score_windowed`,
   step --step) beside whole-video scoring of the same graph, with the windowed scores'
   agreement with the whole-video ones. The demo model: the demo recipe's training, exported
   once (bnwbench.models, as bench/run.py).
b. Agreement with offline scoring for the paper-size model (the published XD-Violence weights,
   preset xd): max |windowed - whole| and Pearson r of the snippet scores, same grid, on
   stand-in videos (random features, one crop: the agreement is per crop, a crop mean can only
   average it) with the lengths of a spread sample of XD-Violence's test videos, and on the
   reference video `infer_xd_5crop_T137.npz` (its real 5-crop features). Also S in {1, 4, 8}
   at W = 64, L = 4 for a and b.
c. Latency and capacity (published weights, W = 64, L = 4): per-snippet compute latency
   (from the push that made a snippet final to its result) and end-to-end latency at 30 fps
   (a snippet every 16 / 30 s: the wait for its S - 1 + L successors plus compute), p50 / p99,
   for C = 5 and 10 and S = 1, 4, 8, the configurations interleaved in rounds
   (bnwbench.measure). Capacity: N five-crop streams in one StreamGroup, each pushing one
   snippet per period, measured faster than real time: every period's work (all N pushes,
   batched) is timed, and N passes when its p99 is under one period (533 ms). Streams start
   at staggered times (stream i at phase i mod S: independent cameras), and are put in a
   steady state first (their ring buffers filled directly, no scoring), so every timed period
   is a steady one; the aligned case (all phases equal: every S-th period carries every
   stream's block) is measured at the largest N too. Twice: in wall time on the machine as it
   is (other tenants included), and in CPU time of a 1-thread runner, which other tenants
   barely inflate: the streams one core sustains, times the cores for one such process per
   core with the streams sharded between them.
d. Cost growth: one video of T snippets (1 crop, to keep it short), windowed (W = 64, L = 4,
   S = 16) against whole-video, in a fresh torch-free process per point (time of the scoring
   call, peak RSS = VmHWM of the process); whole-video points whose estimated working set
   exceeds the 2 GiB budget are skipped (said so). The features are a memory-mapped .npy, so
   the windowed peak RSS includes the input pages it touched.

Contention: every phase records the share of the CPUs other processes used meanwhile
(bnwbench.measure.ForeignCpu) and the report lists the busiest other processes (psutil) at
the start and the end: on a shared machine timings are noisy and capacity is lower than on an
idle one.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import click
import numpy as np
import psutil

from bnwbench.measure import ForeignCpu, Stopwatch, interleaved_rounds, say
from bnwbench.plan import DEFAULT_OUT, LIBRARIES, PUBLISHED, QUICK_DEMO_STEPS, REPO, SHARED, XD_LENGTHS, BenchError
from bnwbench.report import fmt, table
from bnwbench.system import GIB, MIB, git_revision, library_versions, load_average, machine_info, reset_hwm, \
    usable_cpus, vm_hwm, vm_rss
from bnwbench.workload import builtin_lengths, read_lengths, spread_sample

SCHEMA = "bnwvad-bench-stream/1"
SCRIPT = Path(__file__).resolve()
REFERENCE_VIDEO = SHARED / "reference" / "infer_xd_5crop_T137.npz"
FPS = 30.0
FRAMES_PER_SNIPPET = 16
PERIOD_MS = 1e3 * FRAMES_PER_SNIPPET / FPS          # 533.3 ms: one snippet of a 30 fps source
COST_BUDGET = 2 * GIB
LAT_W, LAT_L = 64, 4


class Plan:
    """How much a mode measures. The full run's sizes fit about 30 minutes on 2 CPU cores that
    other processes keep busy (about 6 on an idle machine); --demo-videos, --xd-videos and the
    grid options scale it."""

    def __init__(self, quick: bool, *, windows=None, lookaheads=None, step=4, demo_videos=None, xd_videos=None,
                 lengths=None, cost_step=16):
        self.quick = quick
        self.windows = windows or ([16, 32] if quick else [16, 32, 64, 128, 256])
        self.lookaheads = lookaheads if lookaheads is not None else ([0, 4] if quick else [0, 4, 16])
        self.step = step
        # (W, L, S) compared beside the grid: the step at W = 64, L = 4, and one snippet of lookahead.
        self.sensitivity = [] if quick else [(LAT_W, LAT_L, 1), (LAT_W, LAT_L, 4), (LAT_W, LAT_L, 8), (LAT_W, 1, 4)]
        self.demo_videos = demo_videos or (8 if quick else 30)
        self.xd_videos = xd_videos or (2 if quick else 10)
        self.lat_crops = [5] if quick else [5, 10]
        self.lat_steps = [1, 4] if quick else [1, 4, 8]
        self.lat_rounds = dict(warmup=1, min_rounds=6, max_rounds=6, budget_s=0.0) if quick else \
            dict(warmup=8, min_rounds=120, max_rounds=400, budget_s=90.0)
        self.cap_crops = 5
        self.cap_steps = [4] if quick else [1, 4, 8]
        self.cap_periods = 4 if quick else 24
        self.cap_n = [1, 2] if quick else [1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 120, 140, 160, 180, 200]
        self.cost_lengths = lengths or ([300, 1200] if quick else [1000, 4000, 16000, 50000])
        self.cost_w, self.cost_l, self.cost_s = LAT_W, LAT_L, cost_step


# --------------------------------------------------------------------------------------
# The machine's other tenants
# --------------------------------------------------------------------------------------
def busiest_processes(seconds: float = 1.0, top: int = 6) -> list[dict]:
    """The processes (other than this one) that used the most CPU over `seconds`: name, the
    start of their command line, CPU % (100 = one core)."""
    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        if p.info["pid"] == me:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except (psutil.Error, OSError):
            pass
    time.sleep(seconds)
    rows = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
        except (psutil.Error, OSError):
            continue
        if cpu >= 5:
            args = list(p.info["cmdline"] or [])[:4]
            if "-c" in args:                               # an inline program: its text says little
                args = args[: args.index("-c") + 1] + ["…"]
            cmd = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(args))
            cmd = " ".join(cmd.replace("`", "'").split())[:70]
            rows.append({"name": p.info["name"], "cmd": cmd, "cpu_percent": round(cpu, 1)})
    return sorted(rows, key=lambda r: -r["cpu_percent"])[:top]


def contention_text(rows: list[dict]) -> str:
    if not rows:
        return "none above 5% of a core"
    return ", ".join(f"`{r['cmd'] or r['name']}` {r['cpu_percent']:.0f}%" for r in rows)


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
def prepare_models(plan: Plan, cache: Path, demo_root: Path, demo_steps: int | None, work: Path, clock) -> dict:
    """The published XD model and the demo model, exported once (cached in `cache`)."""
    import torch

    from bnwvad.checkpoint import load_model
    from bnwvad.demo import DEMO_TRAIN
    from bnwbench.models import export_graphs, finish_demo_child, load_speed_model, start_demo_child

    full_steps = int(DEMO_TRAIN["iterations"])
    steps = demo_steps or (QUICK_DEMO_STEPS if plan.quick else full_steps)
    child = start_demo_child(demo_root, steps, cache, [full_steps] if plan.quick and not demo_steps else [])
    try:
        torch.set_num_threads(max(1, usable_cpus() - 1))
        xd, xd_src, _, preset = load_speed_model(None, None, work, seed=0)
        if preset != "xd":
            raise BenchError(f"{PUBLISHED} not found: the published XD-Violence weights are needed (phases b-d)")
        xd_path = export_graphs(xd, ["fp32"], cache, "speed", preset, clock)["fp32"]
        prepared = finish_demo_child(child)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    demo = load_model(prepared["checkpoint"])
    demo_path = export_graphs(demo, ["fp32"], cache, "demo", None, clock)["fp32"]
    torch.set_num_threads(1)
    return {"xd": {"path": xd_path, "source": xd_src},
            "demo": {"path": demo_path, "root": prepared["root"], "checkpoint": prepared["checkpoint"],
                     "steps": prepared["steps"], "reused": prepared["reused"],
                     "config": demo.config.to_dict()}}


# --------------------------------------------------------------------------------------
# a. Accuracy on the demo test set
# --------------------------------------------------------------------------------------
def agreement(windowed: dict[str, np.ndarray], full: dict[str, np.ndarray]) -> dict:
    """max |windowed - full|, that over max |full|, Pearson r over all snippets pooled, and the
    median of the per-video r (videos whose scores vary)."""
    w = np.concatenate([windowed[k] for k in full]).astype(np.float64)
    f = np.concatenate([full[k] for k in full]).astype(np.float64)
    per = []
    for k in full:
        a, b = windowed[k].astype(np.float64), full[k].astype(np.float64)
        if a.size > 2 and a.std() > 0 and b.std() > 0:
            per.append(float(np.corrcoef(a, b)[0, 1]))
    diff = float(np.abs(w - f).max())
    return {"max_abs": diff, "max_rel": diff / max(float(np.abs(f).max()), 1e-30),
            "whole_range": [float(f.min()), float(f.max())],
            "pearson": float(np.corrcoef(w, f)[0, 1]) if w.std() > 0 and f.std() > 0 else None,
            "pearson_median_video": float(np.median(per)) if per else None}


def phase_accuracy(plan: Plan, models: dict, threads: int, clock) -> dict:
    from bnwvad.evaluate import dataset_files, load_test_set
    from bnwvad.features import load_video
    from bnwvad.metrics import evaluate_scores
    from bnwvad.runtime import ArraySource, Scorer, load_runner
    from bnwvad.runtime.stream import score_windowed

    test = load_test_set(dataset_files("demo", root=Path(models["demo"]["root"])))
    videos = test.videos
    if plan.demo_videos and plan.demo_videos < len(videos):
        videos = [videos[int(i)] for i in np.linspace(0, len(videos) - 1, plan.demo_videos).round()]
    snippets = {v.name: test.snippets[v.name] for v in videos} if test.snippets else None
    runner = load_runner(models["demo"]["path"], "ort-cpu", threads=threads)
    feats = {v.name: load_video(v, feature_dim=runner.meta.feature_dim) for v in videos}

    def metrics(anomaly):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*annotated videos are not in the test list")
            m = evaluate_scores(anomaly, videos, test.annotations, snippets=snippets, per_class=False)
        return {"auc": m["auc"], "ap": m["ap"]}

    # A 64-wide model: calls are bounded by the memory budget only (max_rows=None) so many
    # windows go into one call; batching changes no result.
    full = {r.name: r.anomaly for r in Scorer(runner, crops=None, max_rows=None).score(
        [ArraySource(k, v) for k, v in feats.items()])}
    ref = metrics(full)
    say(f"a. demo test set, {len(videos)} videos: whole-video AUC {100 * ref['auc']:.2f} AP {100 * ref['ap']:.2f}",
        clock)

    def windowed(w, l, s):
        t0 = time.perf_counter()
        sc = {k: score_windowed(runner, v, w, l, s, crops=None, max_rows=None)["anomaly"] for k, v in feats.items()}
        m = metrics(sc)
        row = {"W": w, "L": l, "S": s, **m, "d_auc_points": 100 * (m["auc"] - ref["auc"]),
               "d_ap_points": 100 * (m["ap"] - ref["ap"]), **agreement(sc, full),
               "seconds": time.perf_counter() - t0}
        say(f"  W={w:<4} L={l:<3} S={s}: AUC {100 * m['auc']:.2f} AP {100 * m['ap']:.2f}, r {row['pearson']:.4f}",
            clock)
        return row

    with ForeignCpu() as fc:
        grid = [windowed(w, l, plan.step) for w in plan.windows for l in plan.lookaheads]
        sens = [windowed(w, l, s) for w, l, s in plan.sensitivity]
    runner.close()
    return {"videos": len(videos), "abnormal_videos": sum(1 for v in videos if v.label == 1),
            "snippets": int(sum(v.shape[1] for v in feats.values())),
            "crops": sorted({int(v.shape[0]) for v in feats.values()}), "step": plan.step,
            "model": {k: models["demo"][k] for k in ("checkpoint", "steps", "reused")},
            "full": ref, "grid": grid, "step_sensitivity": sens, "foreign_cpu_share": fc.share}


# --------------------------------------------------------------------------------------
# b. Agreement with offline scores, published XD model
# --------------------------------------------------------------------------------------
def xd_standins(count: int, dim: int, seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """{name: (1, T, D)} random stand-ins with the lengths of a spread sample of XD-Violence's
    test videos (test_snippets.csv; else a built-in spread), and where the lengths came from."""
    try:
        rows, src = read_lengths(XD_LENGTHS), f"{XD_LENGTHS.name} (XD-Violence test set)"
    except ValueError:
        rows, src = builtin_lengths(), "a built-in log-normal spread (XD-Violence's median and quartiles)"
    sample = spread_sample(rows, count)
    rng = np.random.default_rng(seed)
    out = {}
    for i, (_, t) in enumerate(sample):
        out[f"standin_{i:02d}_T{t}"] = (rng.random((1, t, dim), dtype=np.float32) * 2).astype(np.float32)
    return out, src


def phase_agreement(plan: Plan, models: dict, threads: int, clock) -> dict:
    from bnwvad.runtime import ArraySource, Scorer, load_runner
    from bnwvad.runtime.stream import score_windowed

    runner = load_runner(models["xd"]["path"], "ort-cpu", threads=threads)
    d = runner.meta.feature_dim
    feats, src = xd_standins(plan.xd_videos, d)
    ref_video = None
    if REFERENCE_VIDEO.is_file():
        with np.load(REFERENCE_VIDEO, allow_pickle=False) as z:
            ref_video = {"features": z["features"].astype(np.float32), "anomaly": z["anomaly_crop_mean"]}
    scorer = Scorer(runner, crops=None)
    full = {r.name: r.anomaly for r in scorer.score([ArraySource(k, v) for k, v in feats.items()])}
    out = {"videos": len(feats), "lengths": [int(v.shape[1]) for v in feats.values()], "lengths_from": src,
           "crops": 1, "step": plan.step, "model": models["xd"]["source"], "grid": [], "step_sensitivity": []}
    if ref_video is not None:
        rf = scorer.score([ArraySource("T137", ref_video["features"])])[0].anomaly
        out["reference"] = {"video": REFERENCE_VIDEO.name, "T": int(rf.shape[0]), "crops": 5,
                            "whole_vs_published_max_abs": float(np.abs(rf - ref_video["anomaly"]).max())}
        ref_full = {"T137": rf}
    say(f"b. XD model, {len(feats)} stand-in videos (T {min(out['lengths'])}..{max(out['lengths'])}, 1 crop)"
        + (" + the reference video (T = 137, 5 crops)" if ref_video is not None else ""), clock)

    def windowed(w, l, s):
        t0 = time.perf_counter()
        sc = {k: score_windowed(runner, v, w, l, s, crops=None)["anomaly"] for k, v in feats.items()}
        row = {"W": w, "L": l, "S": s, **agreement(sc, full)}
        if ref_video is not None:
            r = score_windowed(runner, ref_video["features"], w, l, s, crops=None)["anomaly"]
            row["reference"] = agreement({"T137": r}, ref_full)
        row["seconds"] = time.perf_counter() - t0
        say(f"  W={w:<4} L={l:<3} S={s}: max |diff| {row['max_abs']:.4f} (rel {row['max_rel']:.2e}), "
            f"r {fmt(row['pearson'], '.4f')}" + (f"; T137 r {fmt(row['reference']['pearson'], '.4f')}"
                                                  if ref_video is not None else ""), clock)
        return row

    with ForeignCpu() as fc:
        out["grid"] = [windowed(w, l, plan.step) for w in plan.windows for l in plan.lookaheads]
        out["step_sensitivity"] = [windowed(w, l, s) for w, l, s in plan.sensitivity]
    out["foreign_cpu_share"] = fc.share
    runner.close()
    return out


# --------------------------------------------------------------------------------------
# c. Latency and capacity
# --------------------------------------------------------------------------------------
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


def phase_latency(plan: Plan, models: dict, threads: int, clock) -> dict:
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


def capacity_search(runner, plan: Plan, pool: np.ndarray, s: int, clock, label: str, say_clock) -> dict:
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


def phase_capacity(plan: Plan, models: dict, threads: int, clock) -> dict:
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


# --------------------------------------------------------------------------------------
# d. Cost growth, a fresh process per point
# --------------------------------------------------------------------------------------
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


def phase_cost(plan: Plan, models: dict, threads: int, work: Path, clock, timeout: float) -> dict:
    from bnwvad.runtime import load_runner
    from bnwvad.runtime.scoring import estimate_bytes

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


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def pct(v) -> str:
    return fmt(None if v is None else 100 * v, ".2f")


def markdown(rep: dict) -> str:
    m = rep["machine"]
    lines = [f"### bnwvad streaming benchmark ({rep['mode']}) — {m['cpu']}, {m['usable_cpus']} CPUs, "
             f"{m['ram_gib']} GiB RAM",
             "",
             f"{rep['created']}, bnwvad {rep['libraries'].get('bnwvad')} ({rep['git']}), onnxruntime "
             f"{rep['libraries'].get('onnxruntime')}, ONNX Runtime CPU, {rep['threads']} threads. "
             f"Command: `{rep['command']}` ({rep['elapsed_s'] / 60:.1f} min).",
             "",
             f"**Shared machine.** Load average at start {rep['load']['start']}, at end {rep['load']['end']}. "
             f"Other processes' share of the CPUs during the phases: "
             + ", ".join(f"{k} {fmt(v, '.0%')}" for k, v in rep["load"]["phases"].items())
             + f". Busiest other processes at the start: {contention_text(rep['load']['top_start'])}; at the end: "
             f"{contention_text(rep['load']['top_end'])}. Timings and capacity are those of a machine shared with "
             f"them: noisy, and lower than on an idle machine.", ""]
    a = rep.get("accuracy")
    if a:
        lines += [f"#### a. Detection quality on the demo test set ({a['videos']} videos, {a['abnormal_videos']} "
                  f"abnormal, {a['snippets']} snippets, {a['crops']} crops; demo model, {a['model']['steps']} "
                  f"training steps), windowed at S = {a['step']}",
                  "",
                  f"Whole-video scoring (the same graph): AUC {pct(a['full']['auc'])}, AP {pct(a['full']['ap'])}. "
                  f"r: Pearson correlation of the windowed with the whole-video snippet scores (pooled).", ""]
        lines += table(["W", *[f"L = {l}: AUC / AP (Δ AUC pts), r" for l in sorted({g['L'] for g in a['grid']})]],
                       "r" * (1 + len({g['L'] for g in a['grid']})),
                       [[w, *[(lambda g: f"{pct(g['auc'])} / {pct(g['ap'])} ({g['d_auc_points']:+.2f}), "
                                         f"{fmt(g['pearson'], '.3f')}")(g)
                              for g in sorted((g for g in a['grid'] if g['W'] == w), key=lambda g: g['L'])]]
                        for w in sorted({g['W'] for g in a['grid']})])
        if a["step_sensitivity"]:
            lines += ["", "Beside the grid (W, L, S): " + "; ".join(
                f"({g['W']}, {g['L']}, {g['S']}): AUC {pct(g['auc'])}, AP {pct(g['ap'])}, r {fmt(g['pearson'], '.3f')}"
                for g in a["step_sensitivity"]) + "."]
        lines += [""]
    b = rep.get("agreement")
    if b:
        ref = b.get("reference")
        lines += [f"#### b. Agreement with whole-video scoring, published XD-Violence weights, S = {b['step']}",
                  "",
                  f"{b['videos']} stand-in videos (random features, 1 crop) with the lengths of a spread sample of "
                  f"{b['lengths_from']}: T = {', '.join(map(str, sorted(b['lengths'])))}"
                  + (f"; and the reference video {ref['video']} (T = {ref['T']}, its 5 real crops; whole-video "
                     f"scores match the published outputs within {ref['whole_vs_published_max_abs']:.1e})"
                     if ref else "")
                  + ". max abs Δ: the largest difference of a snippet's anomaly score (whole-video scores span "
                    + (f"{b['grid'][0]['whole_range'][0]:.1f}..{b['grid'][0]['whole_range'][1]:.1f} on the stand-ins"
                       if b["grid"] else "?")
                    + ((lambda lo, hi: f", {lo:.1f}..{hi:.1f} on T137")(*b["grid"][0]["reference"]["whole_range"])
                       if ref and b["grid"] else "")
                    + "); r: Pearson, pooled over the stand-ins.", ""]
        hdr = ["W", "L", "max abs Δ", "max Δ / max score", "r (pooled)", "r (median per video)"]
        if ref:
            hdr += ["T137: max abs Δ", "T137: r"]
        rows = []
        for g in b["grid"] + [dict(x, _s=True) for x in b["step_sensitivity"]]:
            row = [g["W"], f"{g['L']}" + (f" (S = {g['S']})" if g.get("_s") else ""), fmt(g["max_abs"], ".3f"),
                   fmt(g["max_rel"], ".2e"), fmt(g["pearson"], ".4f"), fmt(g["pearson_median_video"], ".4f")]
            if ref:
                row += [fmt(g["reference"]["max_abs"], ".4f"), fmt(g["reference"]["pearson"], ".4f")]
            rows.append(row)
        lines += table(hdr, "r" * len(hdr), rows) + [""]
    c = rep.get("latency")
    if c:
        lines += [f"#### c. Latency per snippet, published weights, W = {c['W']}, L = {c['L']} (one stream; "
                  f"configurations interleaved; ms)",
                  "",
                  f"compute: wall time from the push that made a snippet final to its result. End to end at 30 fps: a "
                  f"snippet waits for its S - 1 + L successors ({c['period_ms']:.0f} ms each), then compute. CPU: this "
                  f"process's CPU time (all {c['threads']} threads, ONNX Runtime's spin-waiting included) of a push "
                  f"that scored a block: other tenants inflate it far less than wall time, and on an idle machine the "
                  f"wall time lies between CPU / threads and CPU.", ""]
        lines += table(["C", "S", "delay (snippets)", "compute p50", "compute p99", "end to end p50", "end to end p99",
                        "CPU / scoring push p50", "runner calls / snippet", "snippets"], "rrrrrrrrrr",
                       [[r["C"], r["S"], r["delay_snippets"], fmt(r["compute_p50_ms"], ".1f"),
                         fmt(r["compute_p99_ms"], ".1f"), fmt(r["e2e_p50_ms"], ".0f"), fmt(r["e2e_p99_ms"], ".0f"),
                         fmt(r.get("cpu_per_scoring_push_p50_ms"), ".1f"), fmt(r["runner_calls_per_snippet"], ".2f"),
                         r["snippets"]] for r in c["cases"]])
        lines += [""]
    k = rep.get("capacity")
    if k:
        lines += [f"#### c. Capacity: live {k['C']}-crop streams at 30 fps in one StreamGroup (W = {k['W']}, "
                  f"L = {k['L']}; {k['periods']} periods per trial; a period's work is every stream's push, batched; "
                  f"N passes when its p99 < {k['period_ms']:.0f} ms)", ""]

        def rows(steps, extra):
            out = []
            for s in steps:
                at = next((t for t in s["trials"] if t["N"] == s["max_streams"]), None)
                al = s["aligned_at_max"]
                out.append([s["S"], s["delay_snippets"],
                            f"{s['max_streams']}" + (" (search limit)" if s["searched_to_limit"] else ""),
                            *extra(s),
                            f"{at['p50_ms']:.0f} / {at['p99_ms']:.0f}" if at else "–",
                            (f"{al['p99_ms']:.0f}" + ("" if al["ok"] else " (over)")) if al else "–",
                            ", ".join(f"{t['N']}: {t['p99_ms']:.0f}" + ("" if t["ok"] else " ✗")
                                      for t in s["trials"])])
            return out
        lines += [f"Wall time on this machine as it was ({k['threads']} threads, other tenants included):", ""]
        lines += table(["S", "delay (snippets)", "max streams", "period p50 / p99 at max (ms)",
                        "aligned phases at max: p99", "trials (N: p99 ms)"], "rrrrrl", rows(k["by_step"], lambda s: []))
        if k.get("cpu_by_step"):
            lines += ["", f"CPU time of a 1-thread runner (what other tenants barely inflate): streams one core "
                          f"sustains, and {k['cores']} such processes with the streams sharded between them:", ""]
            lines += table(["S", "delay (snippets)", "streams per core", f"machine ({k['cores']} cores)",
                            "period CPU p50 / p99 at max (ms)", "aligned phases at max: p99",
                            "trials (N: p99 ms)"], "rrrrrrl",
                           rows(k["cpu_by_step"], lambda s: [s["machine_estimate"]]))
        lines += ["", "Streams start at staggered times (stream i at phase i mod S) and are in steady state. Aligned: "
                      "every stream's block falls due in the same period (streams started together).", ""]
    d = rep.get("cost")
    if d:
        lines += [f"#### d. Cost growth: one video, C = 1 crop (to keep it short), windowed W = {d['W']}, "
                  f"L = {d['L']}, "
                  f"S = {d['S']} vs whole video; fresh process per point; budget {d['budget_bytes'] / GIB:.0f} GiB", ""]
        ts = sorted({p["T"] for p in d["points"]})

        def cell(mode, t, key):
            p = next((p for p in d["points"] if p["T"] == t and p["mode"] == mode), None)
            if p is None:
                return "–"
            if "skipped" in p:
                return "skipped"
            if "error" in p:
                return "failed"
            if key == "seconds":
                return f"{p['seconds']:.2f}"
            if key == "rss":
                return f"{p['peak_rss'] / MIB:.0f}"
            return f"{(p['peak_rss'] - p.get('input_bytes', 0)) / MIB:.0f}"
        lines += table(["", *[f"T = {t}" for t in ts]], "l" + "r" * len(ts),
                       [["windowed: seconds", *[cell("windowed", t, "seconds") for t in ts]],
                        ["windowed: peak RSS (MiB)", *[cell("windowed", t, "rss") for t in ts]],
                        ["windowed: peak RSS less the input (MiB)", *[cell("windowed", t, "net") for t in ts]],
                        ["whole: seconds", *[cell("whole", t, "seconds") for t in ts]],
                        ["whole: peak RSS (MiB)", *[cell("whole", t, "rss") for t in ts]],
                        ["whole: peak RSS less the input (MiB)", *[cell("whole", t, "net") for t in ts]]])
        lw = d.get("longest_windowed")
        skipped = [p for p in d["points"] if "skipped" in p]
        lines += ["", f"Slope of log(time) against log(T): windowed {fmt(d['slope_windowed'], '.2f')} "
                      f"({'linear' if d['linear'] else 'NOT linear'}), whole video {fmt(d['slope_whole'], '.2f')}."
                  + (f" Windowed at T = {lw['T']}: {lw['seconds']:.1f} s, peak RSS {lw['peak_rss'] / MIB:.0f} MiB "
                     f"({'within' if lw['within_budget'] else 'OVER'} the {d['budget_bytes'] / GIB:.0f} GiB budget; it "
                     f"includes the memory-mapped input pages touched, {d['input_bytes_per_snippet']} bytes a snippet)."
                     if lw else "")
                  + "".join(f" Whole video at T = {p['T']} skipped: {p['skipped']}." for p in skipped), ""]
    return "\n".join(lines)


def plots(rep: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return buf.getvalue()

    a, b = rep.get("accuracy"), rep.get("agreement")
    if a or b:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        if a:
            ax = axes[0]
            for l in sorted({g["L"] for g in a["grid"]}):
                g = sorted((g for g in a["grid"] if g["L"] == l), key=lambda g: g["W"])
                ax.plot([x["W"] for x in g], [100 * x["auc"] for x in g], marker="o", label=f"AUC, L = {l}")
                ax.plot([x["W"] for x in g], [100 * x["ap"] for x in g], marker="s", linestyle=":",
                        label=f"AP, L = {l}")
            ax.axhline(100 * a["full"]["auc"], color="k", linestyle="--", linewidth=1, label="whole video AUC")
            ax.axhline(100 * a["full"]["ap"], color="grey", linestyle="--", linewidth=1, label="whole video AP")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("window W (snippets)")
            ax.set_ylabel("%")
            ax.set_title(f"a. demo test set, windowed (S = {a['step']}) vs whole video", fontsize=9)
            ax.legend(fontsize=7, ncol=2)
            ax.grid(True, alpha=0.3)
        if b:
            ax = axes[1]
            for l in sorted({g["L"] for g in b["grid"]}):
                g = sorted((g for g in b["grid"] if g["L"] == l), key=lambda g: g["W"])
                ax.plot([x["W"] for x in g], [x["pearson"] for x in g], marker="o", label=f"r, stand-ins, L = {l}")
                if g and g[0].get("reference"):
                    ax.plot([x["W"] for x in g], [x["reference"]["pearson"] for x in g], marker="x", linestyle=":",
                            label=f"r, T137 video, L = {l}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("window W (snippets)")
            ax.set_ylabel("Pearson r with whole-video scores")
            ax.set_title(f"b. published XD weights: agreement (S = {b['step']})", fontsize=9)
            ax.legend(fontsize=7)
            ax.grid(True, alpha=0.3)
        out["accuracy.png"] = png(fig)
    k = rep.get("capacity")
    if k:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for s in k["by_step"]:
            ax.plot([t["N"] for t in s["trials"]], [t["p99_ms"] for t in s["trials"]], marker="o",
                    label=f"wall, {k['threads']} threads, S = {s['S']} (delay {s['delay_snippets']})")
        for s in k.get("cpu_by_step", []):
            ax.plot([t["N"] for t in s["trials"]], [t["p99_ms"] for t in s["trials"]], marker="x", linestyle="--",
                    label=f"CPU time, 1 thread, S = {s['S']}")
        ax.axhline(k["period_ms"], color="k", linestyle="--", linewidth=1, label="one period (533 ms)")
        ax.set_xlabel(f"live {k['C']}-crop streams N")
        ax.set_ylabel("period work, p99 (ms)")
        ax.set_title(f"c. capacity, W = {k['W']}, L = {k['L']}, {k['threads']} threads", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        out["capacity.png"] = png(fig)
    d = rep.get("cost")
    if d:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for mode, style in (("windowed", "-o"), ("whole", "--s")):
            pts = sorted((p for p in d["points"] if p["mode"] == mode and "seconds" in p), key=lambda p: p["T"])
            if pts:
                axes[0].plot([p["T"] for p in pts], [p["seconds"] for p in pts], style, label=mode)
                axes[1].plot([p["T"] for p in pts], [p["peak_rss"] / MIB for p in pts], style, label=mode)
        axes[1].axhline(d["budget_bytes"] / MIB, color="r", linestyle=":", linewidth=1, label="2 GiB budget")
        for ax, yl in zip(axes, ("seconds", "peak RSS (MiB)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("T (snippets), 1 crop")
            ax.set_ylabel(yl)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        axes[0].set_title(f"d. time: windowed slope {fmt(d['slope_windowed'], '.2f')}, whole "
                          f"{fmt(d['slope_whole'], '.2f')}", fontsize=9)
        axes[1].set_title("d. peak RSS of the process", fontsize=9)
        out["cost.png"] = png(fig)
    return out


def write_outputs(out: Path, rep: dict, md: str) -> None:
    from bnwvad.atomic import atomic_write
    from bnwvad.runtime.io import save_json

    out.mkdir(parents=True, exist_ok=True)
    pics = plots(rep)
    rep["files"] = [str(out / n) for n in ("report.json", "report.md", *pics)]
    for name, data in pics.items():
        atomic_write(out / name, lambda f, data=data: f.write(data))
    atomic_write(out / "report.md", lambda f: f.write(md.encode("utf-8")))
    save_json(out / "report.json", rep)


def parse_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers", param_hint=what) from None
    if not vals or any(v < 0 for v in vals):
        raise click.BadParameter(f"{text!r}: expected integers >= 0", param_hint=what)
    return vals


PHASES = ("accuracy", "agreement", "latency", "capacity", "cost")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--quick", is_flag=True,
              help="A tiny grid (W 16, 32 x L 0, 4; 8 demo videos, 2 stand-ins; C = 5, S = 1, 4 latency; N 1, 2 at "
                   "S = 4; T 300, 1200): 1-2 minutes after the models are cached, for the test.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT / "stream",
              show_default=True, help="Where report.json, report.md and the plots go.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT / "cache",
              show_default=True, help="Exported graphs and the demo model (bench/run.py's cache).")
@click.option("--demo-root", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_data"),
              show_default=True, help="The demo dataset (generated there when missing).")
@click.option("--demo-steps", type=click.IntRange(1), default=None,
              help="Training steps of the demo model [300; --quick 100, or a cached 300-step model].")
@click.option("--windows", "windows_text", default=None, help="W values [16,32,64,128,256].")
@click.option("--lookaheads", "lookaheads_text", default=None, help="L values [0,4,16].")
@click.option("--step", type=click.IntRange(1), default=4, show_default=True,
              help="S of the accuracy and agreement grids (S = 1, 4, 8 are also compared at W = 64, L = 4).")
@click.option("--demo-videos", type=click.IntRange(2), default=None,
              help="Demo test videos of phase a, spread over the list [30; --quick 8; 100 is all].")
@click.option("--xd-videos", type=click.IntRange(1), default=None, help="Stand-in videos of phase b [10; --quick 2].")
@click.option("--lengths", "lengths_text", default=None, help="T values of phase d [1000,4000,16000,50000].")
@click.option("--cost-step", type=click.IntRange(1), default=16, show_default=True,
              help="S of phase d's windowed runs.")
@click.option("--threads", type=click.IntRange(1), default=None, help="ONNX Runtime threads [the usable CPUs].")
@click.option("--phases", "phases_text", default=",".join(PHASES), show_default=True,
              help="Comma-separated subset of the phases to run.")
@click.option("--cost-child", "cost_child_spec", hidden=True)
def main(quick, out, cache, demo_root, demo_steps, windows_text, lookaheads_text, step, demo_videos, xd_videos,
         lengths_text,
         cost_step, threads, phases_text, cost_child_spec):
    """Streaming BN-WVAD: accuracy against offline scoring, latency, live capacity and cost growth."""
    if cost_child_spec:
        print(json.dumps(cost_child(json.loads(cost_child_spec))))
        return
    phases = [p.strip() for p in phases_text.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise click.BadParameter(f"unknown phase(s) {unknown}; expected some of {', '.join(PHASES)}",
                                 param_hint="--phases")
    clock = Stopwatch()
    threads = threads or usable_cpus()
    plan = Plan(quick, windows=parse_ints(windows_text, "--windows"),
                lookaheads=parse_ints(lookaheads_text, "--lookaheads"), step=step, demo_videos=demo_videos,
                xd_videos=xd_videos, lengths=parse_ints(lengths_text, "--lengths"), cost_step=cost_step)
    if plan.windows and min(plan.windows) < 1:
        raise click.BadParameter("windows must be >= 1", param_hint="--windows")
    load_start = load_average()
    top_start = busiest_processes()
    say(f"bnwvad stream bench ({'quick' if quick else 'full'}): {threads} threads, load average {load_start}; "
        f"others now: {contention_text(top_start)}", clock)
    out = Path(out)
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".stream-work-", dir=out))
    rep: dict = {}
    try:
        try:
            models = prepare_models(plan, cache, demo_root, demo_steps, work, clock)
        except BenchError as e:
            raise click.ClickException(str(e)) from None
        if "accuracy" in phases:
            rep["accuracy"] = phase_accuracy(plan, models, threads, clock)
        if "agreement" in phases:
            rep["agreement"] = phase_agreement(plan, models, threads, clock)
        if "latency" in phases:
            rep["latency"] = phase_latency(plan, models, threads, clock)
        if "capacity" in phases:
            rep["capacity"] = phase_capacity(plan, models, threads, clock)
        if "cost" in phases:
            rep["cost"] = phase_cost(plan, models, threads, work, clock, timeout=600 if quick else 3600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import onnxruntime

    rep.update({
        "schema": SCHEMA, "mode": "quick" if quick else "full",
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/stream.py", *sys.argv[1:]]),
        "git": git_revision(REPO), "machine": machine_info(), "libraries": library_versions(LIBRARIES),
        "onnxruntime": onnxruntime.__version__, "threads": threads,
        "models": {"xd": {"onnx": str(models["xd"]["path"]), **models["xd"]["source"]},
                   "demo": {k: (str(v) if isinstance(v, Path) else v) for k, v in models["demo"].items()}},
        "load": {"start": load_start, "end": load_average(), "top_start": top_start, "top_end": busiest_processes(),
                 "phases": {k: rep[k].get("foreign_cpu_share") for k in PHASES if k in rep and k != "capacity"}
                 | ({"capacity": max((t["foreign_cpu_share"] or 0) for s in rep["capacity"]["by_step"]
                                     + rep["capacity"]["cpu_by_step"]
                                     for t in s["trials"])} if "capacity" in rep else {})},
        "settings": {"windows": plan.windows, "lookaheads": plan.lookaheads, "step": plan.step,
                     "sensitivity": plan.sensitivity, "demo_videos": plan.demo_videos, "xd_videos": plan.xd_videos,
                     "fps": FPS, "period_ms": PERIOD_MS},
    })
    rep["elapsed_s"] = clock()
    md = markdown(rep)
    write_outputs(out, rep, md)
    say(f"wrote {out / 'report.json'}, {out / 'report.md'} and the plots in {clock():.0f} s", clock)
    print(md)


if __name__ == "__main__":
    main()
