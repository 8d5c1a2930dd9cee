"""bnwvad benchmark: latency, throughput, memory and accuracy of every backend against PyTorch.

    .venv/bin/python bench/run.py            # full run (minutes on 2 CPU cores)
    .venv/bin/python bench/run.py --quick    # < 1 min on 2 CPU cores, for CI and the demo

One report (markdown on stdout, `<out>/report.json`, `<out>/report.md`, `<out>/latency.png`)
whose last stdout line is

    ort_fp32/torch_eager throughput ratio: 1.23; fraction of peak: 0.81

(ONNX Runtime fp32 over PyTorch eager at C = 10, T = 200; the fraction is ONNX Runtime's
GFLOP/s over the machine's fp32 matrix-multiply rate measured in the same rounds).

Backends: torch_eager (the reference), ort_fp32 / ort_fp16 / ort_int8 (ONNX Runtime CPU),
and where a GPU is present torch_cuda, ort_cuda_fp32 / ort_cuda_fp16, ort_trt_fp32 /
ort_trt_fp16 (ONNX Runtime's TensorRT provider) and trt_fp32 / trt_fp16 (native TensorRT).
A backend that cannot run here is listed with the reason; one that runs on something else
than asked (ONNX Runtime's silent CPU fallback) is refused (strict runners), never timed.

Method (why each choice):
- Two models. Speed is measured on the paper-sized model (D = 1024, E = 512): the published
  XD-Violence weights when ../shared/reference is present, else the same architecture with
  seeded random weights (speed does not depend on the weights' values). Detection quality
  (AUC/AP on the demo test set) needs a model that has learnt the demo's 128-d features:
  `--checkpoint`, or by default a deterministic training with the demo recipe
  (`bnwvad.train`, 1 thread, in a helper process while the graphs are exported; cached
  under <out>/cache): its 300 steps in a full run (AUC 84% on the demo test set), 100 in
  --quick (clearly above chance in seconds; a cached 300-step model is used when there is
  one). A random model with calibrated BN statistics was tried first: its AUC is near
  chance (52-58%), so a change of AUC would measure noise in a ranking that means nothing.
- Interleaving. Every measurement is a round that runs every backend once, plus a large
  fp32 matrix multiply (the machine's attainable peak), in rotated order; latency per T
  and throughput per group of videos. On a shared machine drift then hits all alike, and
  ratios and fractions of peak come from the same minutes.
- Same work. Latency: one video, C = 10, the same (1, 10, T, D) input for every backend,
  host arrays in and out (device copies included on GPUs). Throughput: videos whose
  lengths follow XD-Violence's test set (test_snippets.csv, else a fixed log-normal
  spread), 5 crops, through bnwvad.runtime's Scorer (sort, pad, batch, memory budget). The
  PyTorch model is wrapped as a runtime Runner, so it gets exactly the same padded calls.
- Contention: each round records the share of the CPUs other processes used meanwhile
  (system CPU times minus this process's); the report flags a busy machine and gives the
  medians of the rounds without contention beside those of all rounds, since contention hurts
  PyTorch's OpenMP threads more than ONNX Runtime's pool and interleaving cannot undo that.
  On a shared machine, `--quiet-wait SECONDS` holds each round until the others are idle.
  Calls are 50 ms apart: ONNX Runtime's idle pool spins for more than 10 ms after a call.
- GFLOP/s counts the model's nominal work (`BNWVAD.num_flops` of each video's real
  length), whatever a graph skips or padding adds.
- Memory: a fresh process per backend (only that is honest: allocator caches and ONNX
  Runtime's arenas of other backends would hide or inflate it) runs one call per T and
  reads the peak RSS over its model-loaded baseline (VmHWM reset per call), and the largest
  drop of free device memory on GPUs. ONNX Runtime processes never import torch.
- Accuracy: every backend's score, dfm and anomaly against torch_eager on every latency
  input, every throughput video and every demo test video, under its entry of the one
  tolerance table (bnwvad.runtime.contract); AUC/AP change in percentage points on the
  demo test set under metric_fp16 / metric_int8 for reduced precisions. The run exits 1
  if any measured backend misses its tolerance.

The phases live in bench/bnwbench/ (see its __init__); this file is the command.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import click

from bnwbench.accuracy import Errors, demo_accuracy
from bnwbench.backends import SPECS, close_all, open_backends
from bnwbench.cli import parse_ints
from bnwbench.latency import measure_latency
from bnwbench.measure import QuietGate, Stopwatch, cuda_matmul_probe, fastest_probe, matmul_probes, say
from bnwbench.memory import measure_memory, memory_child
from bnwbench.models import (Models, demo_child, export_graphs, finish_demo_child, load_demo_model,
                             load_speed_model, prepare_demo_files, start_demo_child)
from bnwbench.plan import (BUSY_SHARE, DEFAULT_OUT, HEADLINE_T, PEAK, PEAK_CUDA, PUBLISHED, QUICK_DEMO_STEPS,
                           REFERENCE, XD_LENGTHS, BenchError, BenchPlan, full_rounds, quick_rounds)
from bnwbench.report import build_report, markdown, write_outputs
from bnwbench.system import load_average, usable_cpus
from bnwbench.throughput import measure_throughput

PEAK_SIZE, PEAK_CUDA_SIZE = 2048, 8192


def user_error_types() -> tuple[type[BaseException], ...]:
    """The errors about bad input (files, checkpoints, data) and the bench's own: reported as
    one line naming the file, not as a traceback. Imported when needed (they pull in torch)."""
    from bnwvad.checkpoint import CheckpointError
    from bnwvad.demo import DemoError
    from bnwvad.export import ExportError, MetadataError, TensorRTError
    from bnwvad.features import FeatureFileError
    from bnwvad.metrics import AnnotationError, EvaluationError
    from bnwvad.runtime import RuntimeFailure

    return (BenchError, CheckpointError, DemoError, ExportError, MetadataError, TensorRTError, FeatureFileError,
            AnnotationError, EvaluationError, RuntimeFailure)


@contextlib.contextmanager
def user_errors():
    try:
        yield
    except user_error_types() as e:
        raise click.ClickException(str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}") from None


def select_backends(backend_list: str | None, quick: bool) -> list[str]:
    if not backend_list:
        return [n for n, s in SPECS.items() if not quick or not (s.builds_engine or s.precision == "int8")]
    selected = [n.strip() for n in backend_list.split(",") if n.strip()]
    unknown = [n for n in selected if n not in SPECS]
    if unknown:
        raise click.BadParameter(f"unknown backend(s) {unknown}; expected some of {', '.join(SPECS)}",
                                 param_hint="--backends")
    if REFERENCE not in selected:
        selected.insert(0, REFERENCE)     # everything is measured against it
    return selected


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--quick", is_flag=True, help="< 1 min on 2 CPU cores: T in {64, 200}, few rounds, 10 videos, "
              "a 100-step demo model and 30 demo test videos; no int8 and no TensorRT builds.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Where report.json, report.md and latency.png go (and cache/ for the demo model).")
@click.option("--backends", "backend_list", default=None,
              help=f"Comma-separated subset of {', '.join(SPECS)} [all that apply; --quick: no int8, no TensorRT].")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Model whose AUC/AP on the demo test set each backend must keep (a checkpoint trained on the "
                   "demo features, e.g. bnwvad-train's best.pt) [a short deterministic training].")
@click.option("--speed-checkpoint", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help=f"Model to time [the published weights {PUBLISHED.name} if present, else the paper-size "
                   f"architecture with random weights].")
@click.option("--preset", type=click.Choice(["ucf", "xd", "shanghaitech"]),
              help="Dataset preset of a bare (published) --speed-checkpoint.")
@click.option("--lengths", "lengths_text", help=f"T values of the latency runs [64,200,1000,4000; --quick 64,200]; "
                                                f"{HEADLINE_T} is always added (the headline).")
@click.option("--crops", type=click.IntRange(1), default=10, show_default=True, help="C of the latency runs.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads of torch and ONNX Runtime "
              "[the CPUs this process may use].")
@click.option("--workload-videos", type=click.IntRange(1), default=None,
              help="Videos in the throughput workload, spread over the length distribution [200; --quick 10].")
@click.option("--workload-csv", type=click.Path(dir_okay=False, path_type=Path), default=XD_LENGTHS,
              show_default=True, help="test_snippets.csv the workload's lengths follow (absent: a built-in spread).")
@click.option("--demo-root", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_data"),
              show_default=True, help="The demo dataset (generated there when missing).")
@click.option("--demo-steps", type=click.IntRange(1), default=None,
              help="Training steps of the default demo model [the demo recipe's 300; --quick 100, or a cached 300-step "
                   "model].")
@click.option("--demo-videos", type=click.IntRange(2), default=None,
              help="Demo test videos evaluated, spread over the list [all; --quick 30].")
@click.option("--no-memory", is_flag=True, help="Skip the per-backend memory processes.")
@click.option("--trt-max", default="4,10,4096", show_default=True,
              help="N,C,T maximum of the TensorRT profiles (engines and the ONNX Runtime provider).")
@click.option("--quiet-wait", type=click.FloatRange(0), default=0, show_default=True,
              help="On a shared machine: before each timed round, wait until other processes use under 5% of "
                   "the CPUs, up to this many seconds over the whole run.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random speed model.")
@click.option("--memory-child", "memory_child_spec", hidden=True)
@click.option("--demo-child", "demo_child_spec", hidden=True)
def main(quick, out, backend_list, checkpoint, speed_checkpoint, preset, lengths_text, crops, threads,
         workload_videos, workload_csv, demo_root, demo_steps, demo_videos, no_memory, trt_max, quiet_wait,
         seed, memory_child_spec, demo_child_spec):
    """Latency, throughput, memory and accuracy of every backend against PyTorch, in one report."""
    if memory_child_spec or demo_child_spec:       # this file run as a helper process of a bench run
        try:
            spec = json.loads(memory_child_spec or demo_child_spec)
        except ValueError as e:
            raise click.BadParameter(f"not JSON: {e}") from None
        with user_errors():
            print(json.dumps(memory_child(spec) if memory_child_spec else demo_child(spec)))
        return
    clock = Stopwatch()
    threads = threads or usable_cpus()
    trt_max_shape = tuple(parse_ints(trt_max, "--trt-max") or ())
    if len(trt_max_shape) != 3:
        raise click.BadParameter(f"{trt_max!r}: expected N,C,T", param_hint="--trt-max")
    lengths = parse_ints(lengths_text, "--lengths") or ([64, HEADLINE_T] if quick else [64, HEADLINE_T, 1000, 4000])
    lengths = sorted(set(lengths) | {HEADLINE_T})
    selected = select_backends(backend_list, quick)
    gate = QuietGate(quiet_wait, BUSY_SHARE, on_wait=lambda share: say(
        f"  other processes use {share:.0%} of the CPUs: waiting for them before the next timed round "
        f"(--quiet-wait, {quiet_wait:.0f} s in all)", clock))
    plan = BenchPlan(lengths=lengths, crops=crops, rounds=quick_rounds if quick else full_rounds,
                     workload_videos=workload_videos or (10 if quick else 200), workload_group=4 if quick else 8,
                     workload_crops=5, gate=gate, demo_steps=demo_steps or (QUICK_DEMO_STEPS if quick else None),
                     demo_videos=demo_videos or (30 if quick else None), memory=not no_memory)
    load_start = load_average()
    say(f"bnwvad bench ({'quick' if quick else 'full'}): {threads} threads, load average {load_start}, "
        f"T = {lengths}, C = {crops}", clock)
    out = Path(out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)

    from bnwvad.demo import DEMO_TRAIN

    steps = None if checkpoint is not None else (plan.demo_steps or int(DEMO_TRAIN["iterations"]))
    # The demo set and model are made in another process while this one exports and opens
    # the backends: both are setup, nothing is timed until the child has finished.
    full_steps = int(DEMO_TRAIN["iterations"])
    child = start_demo_child(demo_root, steps, cache, [full_steps] if quick and not demo_steps else [])
    work = Path(tempfile.mkdtemp(prefix=".bench-work-", dir=out))
    try:
        with user_errors():
            report = run_phases(quick=quick, plan=plan, selected=selected, threads=threads, seed=seed,
                                speed_checkpoint=speed_checkpoint, preset=preset, checkpoint=checkpoint,
                                trt_max=trt_max_shape, workload_csv=workload_csv, child=child, cache=cache,
                                work=work, load_start=load_start, clock=clock)
            md = markdown(report)
            write_outputs(out, report, md)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'latency.png'} in {clock():.0f} s", clock)
    print(md)
    if report["failures"]:
        say(f"FAILED: {', '.join(report['failures'])} outside their tolerance (see the accuracy table)")
    print(report["headline"]["line"], flush=True)
    if not report["ok"]:
        sys.exit(1)


def run_phases(*, quick, plan, selected, threads, seed, speed_checkpoint, preset, checkpoint, trt_max, workload_csv,
               child, cache, work, load_start, clock) -> dict:
    """Setup, the timed phases, the untimed ones; the report."""
    import torch

    from bnwvad.evaluate import dataset_files, load_test_set
    from bnwvad.runtime import load_runner

    torch.set_num_threads(threads)
    # -- models -------------------------------------------------------------------------
    speed, speed_src, speed_ckpt, speed_preset = load_speed_model(speed_checkpoint, preset, work, seed)
    precisions = sorted({SPECS[n].precision for n in selected if SPECS[n].kind != "torch"} | {"fp32"})
    say(f"timed model: {speed_src['kind']} ({', '.join(precisions)} graphs)", clock)
    files = export_graphs(speed, precisions, cache, "speed", speed_preset, clock)
    with load_runner(files["fp32"], "ort-cpu", threads=1) as r:
        meta = r.meta
    models = Models(speed, speed_src, speed_ckpt, speed_preset, files, meta, cache=cache, trt_max=trt_max)
    backends = open_backends(selected, models, threads, clock)
    reference = next(b for b in backends if b.name == REFERENCE)
    if not reference.measured:
        raise BenchError(f"torch_eager, the reference, could not run: {reference.reason}")
    errors = {b.name: Errors(b.spec.tolerance) for b in backends}

    prepared = finish_demo_child(child)
    test = load_test_set(dataset_files("demo", root=Path(prepared["root"])))
    load_demo_model(models, checkpoint, prepared, test)
    videos = test.videos
    if plan.demo_videos and plan.demo_videos < len(videos):
        videos = videos[:: math.ceil(len(videos) / plan.demo_videos)]

    # -- the peak: the fastest GEMM library here, then timed inside every round -------------
    probes = matmul_probes(PEAK_SIZE, threads)
    chosen, setup_rates = fastest_probe(probes)
    peaks = {PEAK: probes[chosen]}
    peak_info: dict[str, Any] = {"library": chosen, "size": PEAK_SIZE, "setup_gflops": setup_rates}
    say(f"fp32 GEMM {PEAK_SIZE}³ at setup, GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in setup_rates.items())
        + f"; {chosen} is the peak probe", clock)
    if any(b.spec.device == "cuda" and b.measured for b in backends) and torch.cuda.is_available():
        peaks[PEAK_CUDA] = cuda_matmul_probe(PEAK_CUDA_SIZE)
        peak_info["cuda"] = {"library": "torch", "size": PEAK_CUDA_SIZE, "tf32": False}

    # -- timed phases: nothing else runs in this process meanwhile ---------------------------
    latency = measure_latency(backends, models, plan, errors, peaks, threads, clock)
    throughput = measure_throughput(backends, models, plan, errors, peaks, workload_csv, clock)

    # -- untimed phases: memory processes run while this one scores the demo set ---------------
    skip = {c["T"]: c["skipped"] for c in latency["cases"] if c.get("skipped")}
    memory_box: dict[str, Any] = {}
    mem_thread = None
    if plan.memory:
        mem_thread = threading.Thread(target=lambda: memory_box.update(measure_memory(
            backends, models, plan, threads, skip, clock, timeout=300 if quick else 3600)), daemon=True)
        mem_thread.start()
    prepare_demo_files(models, backends, cache, clock)
    demo = demo_accuracy(backends, models, test, videos, errors, clock)
    if mem_thread is not None:
        mem_thread.join()
    close_all(backends)
    return build_report(quick=quick, backends=backends, models=models, plan=plan, threads=threads,
                        lengths=plan.lengths, crops=plan.crops, trt_max=trt_max, videos=videos, errors=errors,
                        latency=latency, throughput=throughput, memory=memory_box or None, demo=demo,
                        peak=peak_info, load_start=load_start, clock=clock)


if __name__ == "__main__":
    main()
