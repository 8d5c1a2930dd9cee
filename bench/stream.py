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

The phases live in bnwbench.stream_* (plan and models, quality: a and b, live: c, cost: d,
report); this script is the command.

Contention: every phase records the share of the CPUs other processes used meanwhile
(bnwbench.measure.ForeignCpu) and the report lists the busiest other processes (psutil) at
the start and the end: on a shared machine timings are noisy and capacity is lower than on an
idle one.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

import click

from bnwbench.cli import parse_ints
from bnwbench.measure import Stopwatch, say
from bnwbench.plan import DEFAULT_OUT, LIBRARIES, REPO, BenchError
from bnwbench.stream_cost import cost_child, phase_cost
from bnwbench.stream_live import phase_capacity, phase_latency
from bnwbench.stream_plan import (FPS, PERIOD_MS, PHASES, SCHEMA, StreamPlan, busiest_processes, contention_text,
                                  prepare_models)
from bnwbench.stream_quality import phase_accuracy, phase_agreement
from bnwbench.stream_report import markdown, write_outputs
from bnwbench.system import git_revision, library_versions, load_average, machine_info, usable_cpus


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
    plan = StreamPlan(quick, windows=parse_ints(windows_text, "--windows", minimum=0),
                lookaheads=parse_ints(lookaheads_text, "--lookaheads", minimum=0), step=step, demo_videos=demo_videos,
                xd_videos=xd_videos, lengths=parse_ints(lengths_text, "--lengths", minimum=0), cost_step=cost_step)
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
