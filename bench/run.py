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
  (/proc/stat minus this process); the report flags a busy machine and gives the medians
  of the rounds without contention beside those of all rounds, since contention hurts
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
  input, every throughput video and every demo test video, under its entry of
  bnwvad/tolerances.py (the one tolerance table); AUC/AP change in percentage points on the
  demo test set under metric_fp16 / metric_int8 for reduced precisions. The run exits 1
  if any measured backend misses its tolerance.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from common import (GAP_S, MIB, ForeignCpu, PeakMemory, PoolVideo, QuietGate, Stopwatch, available_memory,
                    builtin_lengths, cuda_matmul_probe, fastest_probe, feature_pool, git_revision,
                    interleaved_rounds, library_versions, load_average, machine_info, matmul_probes, read_lengths,
                    rotated, say, spread_sample, summarize, usable_cpus)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BNWVAD_SHARED", REPO.parent / "shared"))
PUBLISHED = SHARED / "reference" / "official_state_dict.pkl"
XD_LENGTHS = SHARED / "datasets" / "xd-violence" / "test_snippets.csv"
DEFAULT_OUT = REPO / "bench" / "results"
SCHEMA = "bnwvad-bench/1"
OUTPUTS = ("score", "dfm", "anomaly")
HEADLINE_T = 200
# Other processes' share of the CPUs above which a run is flagged as measured on a busy machine.
BUSY_SHARE = 0.05
# Rounds (or throughput groups) under BUSY_SHARE needed before their own medians are reported.
MIN_CLEAN = 3
# --quick's demo model: 100 steps of the demo recipe reach an AUC clearly above chance (62% on
# demo set v2; the full recipe's 300 steps reach 84%) in seconds.
QUICK_DEMO_STEPS = 100
REFERENCE = "torch_eager"
PEAK = "peak:matmul"
PEAK_CUDA = "peak:matmul_cuda"
LIBRARIES = ("bnwvad", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy",
             "scikit-learn", "matplotlib", "click")


# --------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One backend: how it runs and which entry of bnwvad/tolerances.py judges it."""

    name: str
    kind: str                      # torch | ort | trt
    precision: str                 # fp32 | fp16 | int8 (the graph's, for ORT / TensorRT)
    device: str                    # cpu | cuda
    runtime_backend: str | None    # bnwvad.runtime backend name (ort-cpu, ort-cuda, ort-trt, tensorrt)
    tolerance: str | None          # None: the reference
    fallback_tolerance: str | None = None   # used while the table lacks `tolerance`
    metric_tolerance: str | None = None     # AUC/AP change limit (reduced precisions)
    builds_engine: bool = False    # minutes of TensorRT building: not in --quick by default


SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("torch_eager", "torch", "fp32", "cpu", None, None),
    Spec("ort_fp32", "ort", "fp32", "cpu", "ort-cpu", "onnx_fp32"),
    Spec("ort_fp16", "ort", "fp16", "cpu", "ort-cpu", "onnx_fp16", metric_tolerance="metric_fp16"),
    Spec("ort_int8", "ort", "int8", "cpu", "ort-cpu", "onnx_int8", metric_tolerance="metric_int8"),
    # TF32 is switched off for torch_cuda: fp32 means fp32, as for TensorRT's fp32 engines.
    Spec("torch_cuda", "torch", "fp32", "cuda", None, "torch_cuda", fallback_tolerance="onnx_fp32"),
    Spec("ort_cuda_fp32", "ort", "fp32", "cuda", "ort-cuda", "onnx_fp32"),
    Spec("ort_cuda_fp16", "ort", "fp16", "cuda", "ort-cuda", "onnx_fp16", metric_tolerance="metric_fp16"),
    Spec("ort_trt_fp32", "ort", "fp32", "cuda", "ort-trt", "tensorrt_fp32", builds_engine=True),
    Spec("ort_trt_fp16", "ort", "fp16", "cuda", "ort-trt", "tensorrt_fp16", metric_tolerance="metric_fp16",
         builds_engine=True),
    Spec("trt_fp32", "trt", "fp32", "cuda", "tensorrt", "tensorrt_fp32", builds_engine=True),
    Spec("trt_fp16", "trt", "fp16", "cuda", "tensorrt", "tensorrt_fp16", metric_tolerance="metric_fp16",
         builds_engine=True),
)}


def tolerance_of(spec: Spec) -> tuple[str | None, str | None]:
    """(entry of the tolerance table that judges `spec`, a note when a fallback is used)."""
    from bnwvad.tolerances import TOLERANCES

    if spec.tolerance is None or spec.tolerance in TOLERANCES:
        return spec.tolerance, None
    if spec.fallback_tolerance in TOLERANCES:
        return spec.fallback_tolerance, (f"bnwvad/tolerances.py has no {spec.tolerance!r} entry yet; judged by "
                                         f"{spec.fallback_tolerance!r}")
    raise click.ClickException(f"bnwvad/tolerances.py has no entry {spec.tolerance!r} for backend {spec.name}")


class TorchRunner:
    """The PyTorch model behind bnwvad.runtime's Runner interface (meta, limits, device,
    run), so the runtime's Scorer gives it exactly the padded calls it gives the exported
    graph. Host numpy in and out, like the runtime's runners."""

    fallback = None

    def __init__(self, model, meta, device: str = "cpu", name: str = REFERENCE):
        import torch

        from bnwvad.runtime import ShapeLimits

        self._torch = torch
        self.dev = torch.device(device)
        # A copy on the GPU: the CPU reference keeps its own model where it is.
        self.model = (model if self.dev.type == "cpu" else copy.deepcopy(model).to(self.dev)).eval()
        self.meta = meta
        self.limits = ShapeLimits()
        self.device = "cuda" if self.dev.type == "cuda" else "cpu"
        self.requested = self.backend = name
        self.path = Path(f"<{name}>")
        where = (f"CUDA {torch.cuda.get_device_name(self.dev)}" if self.device == "cuda"
                 else f"CPU, {torch.get_num_threads()} threads")
        self.providers = [f"PyTorch {torch.__version__} eager, {where}"]

    def run(self, features, lengths, *, check_crops: bool = True, check_finite: bool = True):
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.dev)
        lengths = np.asarray(lengths, dtype=np.int64)
        # Unpadded input: the model's plain path (what bnwvad.evaluate runs); padded: masks.
        lens = None if bool((lengths == x.shape[2]).all()) else torch.from_numpy(lengths).to(self.dev)
        with torch.inference_mode():
            out = self.model(x, lens)
        return {k: getattr(out, k).float().cpu().numpy() for k in OUTPUTS}

    def describe(self) -> str:
        return f"{self.backend} [{', '.join(self.providers)}]"

    def close(self) -> None:
        self.model = None


@dataclass
class Backend:
    spec: Spec
    runner: Any = None
    status: str = "measured"         # measured | skipped | failed
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    def info(self) -> dict:
        tol, note = tolerance_of(self.spec)
        r = self.runner
        return {"status": self.status, "reason": self.reason, "kind": self.spec.kind,
                "precision": self.spec.precision, "device": self.spec.device,
                "requested": self.spec.runtime_backend or self.spec.name,
                "ran_as": getattr(r, "backend", None), "providers": list(getattr(r, "providers", []) or []),
                "tolerance": tol, "metric_tolerance": self.spec.metric_tolerance,
                "notes": self.notes + ([note] if note else [])}


def gpu_info() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "memory_gib": round(p.total_memory / 2 ** 30, 1),
            "compute_capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
            "count": torch.cuda.device_count()}


def unavailable_reason(spec: Spec) -> str | None:
    """Why `spec` cannot run on this machine, known before trying; None: try it."""
    if spec.device == "cuda" and spec.kind == "torch":
        import torch

        if not torch.cuda.is_available():
            build = " (a CPU-only build)" if "+cpu" in torch.__version__ or torch.version.cuda is None else ""
            return f"torch {torch.__version__}{build} sees no CUDA device"
    if spec.kind == "ort" and spec.device == "cuda":
        import onnxruntime as ort

        want = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}[spec.runtime_backend]
        have = ort.get_available_providers()
        if want not in have:
            return (f"onnxruntime {ort.__version__} offers {have}: no {want} "
                    f"(needs onnxruntime-gpu and an NVIDIA GPU)")
    if spec.kind == "trt":
        from bnwvad.export import TensorRTError
        from bnwvad.export.trt_engine import require_tensorrt

        try:
            require_tensorrt()
        except TensorRTError as e:
            return str(e).split("; install")[0]
    return None


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
@dataclass
class Models:
    speed: Any                      # BNWVAD, paper size
    speed_source: dict
    speed_checkpoint: Path          # what a memory child loads
    speed_preset: str | None
    speed_files: dict[str, Path]    # precision -> .onnx ; "engine_<precision>" -> engine
    meta: Any                       # runtime ModelMeta of the speed model
    demo: Any = None
    demo_source: dict = field(default_factory=dict)
    demo_files: dict[str, Path] = field(default_factory=dict)
    cache: Path = Path(".")
    trt_max: tuple[int, int, int] = (4, 10, 4096)


def load_speed_model(checkpoint: Path | None, preset: str | None, work: Path, seed: int):
    """(model, description, checkpoint path for children, preset)."""
    import torch

    from bnwvad.checkpoint import load_model, save_checkpoint
    from bnwvad.config import ModelConfig
    from bnwvad.model import BNWVAD

    if checkpoint is not None:
        return (load_model(checkpoint, preset=preset),
                {"kind": "checkpoint", "path": str(checkpoint), "preset": preset}, Path(checkpoint), preset)
    if PUBLISHED.is_file():
        return (load_model(PUBLISHED, preset="xd"),
                {"kind": "published XD-Violence weights", "path": str(PUBLISHED), "preset": "xd"}, PUBLISHED, "xd")
    torch.manual_seed(seed)
    model = BNWVAD(ModelConfig()).eval()
    path = work / "speed_random.pt"
    save_checkpoint(path, model)
    return (model, {"kind": f"paper-size architecture, random weights (seed {seed}); {PUBLISHED} not found",
                    "path": None, "preset": None}, path, None)


def export_graphs(model, precisions, cache: Path, prefix: str, preset: str | None, clock) -> dict[str, Path]:
    """The model exported once per precision, kept in `cache` under a key of everything the
    graph depends on (weights, precision, preset, the exporter's source files, bnwvad's
    version), so a rerun skips the seconds an export takes and a changed exporter re-exports.
    No export-time verification: this benchmark compares every backend with PyTorch itself,
    on more inputs."""
    import bnwvad.export as export_pkg
    from bnwvad._version import __version__
    from bnwvad.export import export_onnx
    from bnwvad.export.metadata import weights_digest

    src = hashlib.sha256()
    for f in sorted(Path(export_pkg.__file__).parent.glob("*.py")):
        src.update(f.name.encode() + f.read_bytes())
    base = json.dumps({"weights": weights_digest(model.state_dict()), "preset": preset, "exporter": src.hexdigest(),
                       "version": __version__}, sort_keys=True)
    out = {}
    for p in precisions:
        key = hashlib.sha256(f"{base}|{p}".encode()).hexdigest()[:16]
        path = cache / "graphs" / f"{prefix}_{p}_{key}.onnx"
        if not path.is_file():
            say(f"exporting the {prefix} model ({p})", clock)
            export_onnx(model, path, preset=preset, precision=p, verify=False)    # atomic: never half a file
            if prefix == "speed":     # one timed model at a time: older exports of it are dead weight
                for old in path.parent.glob(f"{prefix}_{p}_*.onnx"):
                    if old != path:
                        old.unlink(missing_ok=True)
        out[p] = path
    return out


def demo_cache_key(manifest: dict, steps: int) -> str:
    from bnwvad._version import __version__
    from bnwvad.demo import DEMO_MODEL, DEMO_TRAIN

    blob = json.dumps({"manifest": manifest, "model": DEMO_MODEL, "train": {**DEMO_TRAIN, "iterations": steps},
                       "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def demo_child(spec: dict) -> dict:
    """In a separate process, beside the exports: the demo set (generated when missing) and,
    without --checkpoint, the demo model (trained when not cached)."""
    from bnwvad.demo import generate_demo, read_manifest

    root = generate_demo(Path(spec["root"]))
    out = {"root": str(root)}
    if spec.get("steps"):
        cache, steps = Path(spec["cache"]), int(spec["steps"])
        # --quick trains briefly, but a model of the full recipe already in the cache is better.
        for s in [*spec.get("prefer_steps", []), steps]:
            ckpt = cache / f"demo-model-{demo_cache_key(read_manifest(root), s)}" / "last.pt"
            if ckpt.is_file():
                return {**out, "checkpoint": str(ckpt), "reused": True, "steps": s}
        ckpt, reused = train_demo_model(root, steps, cache, None)
        out.update(checkpoint=str(ckpt), reused=reused, steps=steps)
    return out


def start_demo_child(root: Path, steps: int | None, cache: Path, prefer_steps: list[int]) -> subprocess.Popen:
    spec = json.dumps({"root": str(Path(root).resolve()), "steps": steps, "cache": str(cache.resolve()),
                       "prefer_steps": prefer_steps})
    # stderr is inherited: its progress and any error appear in this run's log.
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--demo-child", spec],
                            stdout=subprocess.PIPE, text=True, cwd=str(REPO))


def finish_demo_child(proc: subprocess.Popen) -> dict:
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise click.ClickException(f"preparing the demo set / model failed (exit {proc.returncode}; its "
                                   f"message is above)")
    return json.loads(stdout.strip().splitlines()[-1])


def train_demo_model(root: Path, steps: int, cache: Path, clock) -> tuple[Path, bool]:
    """A deterministic short training with the demo recipe; (checkpoint, reused from cache).

    1 thread: reproducible bit for bit on any CPU count, and faster for this small model
    on a busy machine than 2 threads waiting on each other."""
    import torch

    from bnwvad.config import ModelConfig, TrainConfig
    from bnwvad.data import LoaderConfig
    from bnwvad.demo import DEMO_MODEL, DEMO_TRAIN, read_manifest
    from bnwvad.train import DataSpec, RunConfig, train

    manifest = read_manifest(root)
    if manifest is None:
        raise click.ClickException(f"{root}: no demo manifest; expected a demo set written by bnwvad.demo")
    final = cache / f"demo-model-{demo_cache_key(manifest, steps)}"
    if (final / "last.pt").is_file():
        return final / "last.pt", True
    say(f"demo model: training {steps} steps of the demo recipe on 1 thread, in a helper process (cached for "
        f"later runs)", clock)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=cache))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        dim = int(manifest["spec"]["feature_dim"])
        train(ModelConfig(feature_dim=dim, **DEMO_MODEL),
              TrainConfig(**{**DEMO_TRAIN, "iterations": steps, "eval_every": steps}),
              DataSpec("demo", root / "list" / "XD_Train.list", root=root),
              RunConfig(tmp / "run", device="cpu", progress=False, loader=LoaderConfig(workers=1)))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp / "run", final)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "last.pt", False


# --------------------------------------------------------------------------------------
# Accuracy bookkeeping
# --------------------------------------------------------------------------------------
class Errors:
    """Worst error per output of one backend against the reference, over many comparisons,
    under its tolerance entry (bnwvad.tolerances.check)."""

    def __init__(self, tolerance: str | None):
        self.tolerance = tolerance
        self.worst = {k: {"max_abs": 0.0, "error": 0.0, "ok": True, "finite": True, "where": None} for k in OUTPUTS}
        self.comparisons = 0

    def add(self, ours: dict, ref: dict, where: str, length: int | None = None) -> None:
        from bnwvad.tolerances import check

        self.comparisons += 1
        for k in OUTPUTS:
            a = np.asarray(ours[k], dtype=np.float64).reshape(-1)[: length]
            b = np.asarray(ref[k], dtype=np.float64).reshape(-1)[: length]
            finite = bool(np.isfinite(a).all())
            err, ok = check(self.tolerance, a, b) if self.tolerance else (0.0, True)
            w = self.worst[k]
            w["max_abs"] = max(w["max_abs"], float(np.abs(a - b).max()) if a.size else 0.0)
            if (not finite and w["finite"]) or err > w["error"] or w["where"] is None:
                w["where"] = where
            w["error"] = max(w["error"], err)
            w["ok"] = w["ok"] and ok and finite
            w["finite"] = w["finite"] and finite

    @property
    def ok(self) -> bool:
        return all(w["ok"] for w in self.worst.values())

    def to_dict(self) -> dict:
        from bnwvad.tolerances import TOLERANCES

        tol = TOLERANCES.get(self.tolerance) if self.tolerance else None
        return {"tolerance": self.tolerance, "limit": tol.limit if tol else None,
                "metric": tol.metric if tol else None, "comparisons": self.comparisons,
                "outputs": self.worst, "ok": self.ok}


# --------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------
@dataclass
class Plan:
    """How much of everything a mode measures."""

    lengths: list[int]
    crops: int
    rounds: Callable[[int], dict]        # T -> interleaved_rounds kwargs
    workload_videos: int
    workload_group: int
    workload_crops: int
    gate: QuietGate
    demo_steps: int
    demo_videos: int | None
    memory: bool


def quick_rounds(t: int) -> dict:
    return {"warmup": 0, "min_rounds": 5, "max_rounds": 9, "budget_s": 2.0 if t < HEADLINE_T else 4.0}


def full_rounds(t: int) -> dict:
    if t <= 256:
        return {"warmup": 1, "min_rounds": 10, "max_rounds": 30, "budget_s": 20.0}
    if t <= 1024:
        return {"warmup": 0, "min_rounds": 5, "max_rounds": 10, "budget_s": 30.0}
    # A call takes seconds here: the accuracy call is the warm-up, three rounds the sample.
    return {"warmup": 0, "min_rounds": 3, "max_rounds": 5, "budget_s": 60.0}


def ort_estimate(meta, rows: int, t: int) -> int:
    from bnwvad.runtime import estimate_bytes

    return estimate_bytes(rows, t, meta)


def measure_latency(backends: list[Backend], models: Models, plan: Plan, errors: dict[str, Errors],
                    peaks: dict[str, Callable], threads: int, clock) -> dict:
    """One video, C crops, each T: interleaved rounds over the backends and the peak probes."""
    from bnwvad.runtime import load_runner

    meta, d, c = models.meta, models.meta.feature_dim, plan.crops
    cases = []
    for t in plan.lengths:
        case = {"T": t, "C": c, "flops": models.speed.num_flops(t, crops=c), "backends": {}, "notes": [],
                "load_average": load_average()}
        cases.append(case)
        need = ort_estimate(meta, c, t)
        avail = available_memory() or 0
        if avail and need > 0.8 * avail:
            case["skipped"] = (f"one call needs about {need / 2 ** 30:.1f} GiB (runtime estimate), "
                               f"{avail / 2 ** 30:.1f} GiB available")
            say(f"latency T={t}: skipped, {case['skipped']}", clock)
            continue
        live = [b for b in backends if b.status == "measured"]
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
        if cpu_ort and avail and need * len(cpu_ort) > 0.5 * avail:
            for b in cpu_ort:
                r = load_runner(models.speed_files[b.spec.precision], "ort-cpu", strict=True, threads=threads,
                                arena=False)
                runners[b.name] = r
                temporary.append(r)
            case["notes"].append(f"ONNX Runtime arena off at T={t}: {len(cpu_ort)} arenas would keep "
                                 f"{len(cpu_ort) * need / 2 ** 30:.1f} GiB")
        x = (np.random.default_rng(t).random((1, c, t, d), dtype=np.float32) * 2).astype(np.float32)
        lengths = np.array([t], np.int64)
        say(f"latency T={t}, C={c}: {case['flops'] / 1e9:.1f} GFLOP per call, backends {', '.join(runners)}", clock)
        outs = {}
        for name, r in runners.items():          # the first call: warm-up and accuracy
            try:
                outs[name] = r.run(x, lengths, check_crops=False, check_finite=False)
            except Exception as e:              # noqa: BLE001 - a backend failing is a result
                b = next(b for b in live if b.name == name)
                b.status, b.reason = "failed", f"T={t}: {type(e).__name__}: {e}"
                say(f"  {name} failed: {b.reason}", clock)
        for name in list(runners):
            if name not in outs:
                runners.pop(name)
            elif name != REFERENCE and REFERENCE in outs:
                errors[name].add(outs[name], outs[REFERENCE], f"latency C={c} T={t}")
        calls: dict[str, Callable] = {name: (lambda r=r: r.run(x, lengths, check_crops=False, check_finite=False))
                                      for name, r in runners.items()}
        calls.update({p: fn for p, (fn, _) in peaks.items()})

        def progress(r, times):
            say(f"  round {r}: " + ", ".join(f"{n} {np.median(v) * 1e3:.0f} ms" for n, v in times.items()), clock)
        times, foreign = interleaved_rounds(calls, on_round=progress, before_round=plan.gate.wait,
                                            **plan.rounds(t))
        shares = [f for f in foreign if f is not None]
        case["foreign_cpu_share"] = float(np.median(shares)) if shares else None
        for r in temporary:
            r.close()
        # Medians against medians; and the best round against the best probe, which time stolen
        # by other processes inflates least (a companion figure for busy machines).
        peak_rates = {p: fl / np.median(times[p]) for p, (_, fl) in peaks.items()}
        peak_best = {p: fl / min(times[p]) for p, (_, fl) in peaks.items()}
        case["peak_gflops"] = {p: v / 1e9 for p, v in peak_rates.items()}
        case["peak_gflops_best"] = {p: v / 1e9 for p, v in peak_best.items()}
        ref = times.get(REFERENCE)
        for name in runners:
            s = summarize(times[name])
            b = next(b for b in live if b.name == name)
            probe = PEAK_CUDA if b.spec.device == "cuda" else PEAK
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
            for name in runners:
                med = float(np.median([times[name][i] for i in clean]))
                probe = PEAK_CUDA if next(b for b in live if b.name == name).spec.device == "cuda" else PEAK
                case["backends"][name].update(
                    clean_median_ms=med * 1e3, speedup_vs_torch_clean=ref_clean / med,
                    fraction_of_peak_clean=(case["flops"] / med / peak_clean[probe]) if probe in peaks else None)
        del x, outs
    return {"C": c, "cases": cases}


def measure_throughput(backends: list[Backend], models: Models, plan: Plan, errors: dict[str, Errors],
                       peaks: dict[str, Callable], csv_path: Path | None, clock) -> dict:
    """Videos with a realistic spread of lengths, `workload_crops` crops, through the runtime's
    Scorer; interleaved per group of similar-length videos."""
    from bnwvad.runtime import Scorer

    if csv_path is not None and csv_path.is_file():
        rows, source = read_lengths(csv_path), str(csv_path)
    else:
        rows, source = builtin_lengths(), "built-in log-normal spread (median 128, quartiles 74 / 240 snippets)"
    rows = spread_sample(rows, plan.workload_videos)
    c, d = plan.workload_crops, models.meta.feature_dim
    t_max = max(n for _, n in rows)
    pool = feature_pool(c, t_max + 64, d, seed=1)
    rng = np.random.default_rng(2)
    videos = [PoolVideo(f"v{i:04d}_{name}", n, c, pool, int(rng.integers(0, 65))) for i, (name, n) in enumerate(rows)]
    order = sorted(videos, key=lambda v: -v.length)
    groups = [order[i: i + plan.workload_group] for i in range(0, len(order), plan.workload_group)]
    live = [b for b in backends if b.status == "measured"]
    scorers = {b.name: Scorer(b.runner) for b in live}
    snippets = sum(v.length for v in videos)
    flops = sum(models.speed.num_flops(v.length, crops=c) for v in videos)
    say(f"throughput: {len(videos)} videos ({snippets} snippets, {c} crops, {flops / 1e12:.2f} TFLOP) "
        f"in {len(groups)} groups, lengths from {source}", clock)
    warm = [PoolVideo("warm", min(64, t_max), c, pool, 0)]
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
                errors[name].add({k2: getattr(r, k2) for k2 in OUTPUTS},
                                 {k2: getattr(ref[r.name], k2) for k2 in OUTPUTS}, f"workload video T={r.length}")
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
        peak = peak_rates.get(PEAK_CUDA if b.spec.device == "cuda" else PEAK)
        st = scorers[b.name].stats
        out["backends"][b.name] = {
            "seconds": sec, "videos_per_s": len(videos) / sec, "snippet_crops_per_s": snippets * c / sec,
            "gflops": flops / sec / 1e9, "fraction_of_peak": (flops / sec / peak) if peak else None,
            "speedup_vs_torch": (ref_s / sec) if ref_s else None, "calls": st["calls"],
            "padding_overhead": st["padded_rows"] / max(1, st["real_rows"]) - 1,
            "memory_budget_mib": scorers[b.name].memory_budget / MIB}
        if clean_groups >= MIN_CLEAN and clean_totals.get(REFERENCE):
            probe = PEAK_CUDA if b.spec.device == "cuda" else PEAK
            cs = clean_totals[b.name]
            out["backends"][b.name].update(
                speedup_vs_torch_clean=clean_totals[REFERENCE] / cs,
                fraction_of_peak_clean=(clean_flops / cs / (peaks[probe][1] * clean_groups / clean_totals[probe]))
                if probe in peaks else None)
    return out


# -- memory: a fresh process per backend ----------------------------------------------------
def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: load one backend, then one call per T, peak RSS over the
    baseline after loading (and a warm-up call). ONNX Runtime / TensorRT children never
    import torch, so their numbers are a deployment's."""
    from common import vm_rss

    out: dict[str, Any] = {"backend": spec["backend"], "rss_start_mib": vm_rss() / MIB, "cases": {}}
    kind, device = spec["kind"], spec["device"]
    device_free = None
    if kind == "torch":
        import torch

        from bnwvad.checkpoint import load_model

        torch.set_num_threads(spec["threads"])
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        out["rss_imports_mib"] = vm_rss() / MIB
        model = load_model(spec["checkpoint"], preset=spec["preset"], device=device).eval()

        def run(x, lengths):
            with torch.inference_mode():
                o = model(torch.from_numpy(x).to(device))
                return o.anomaly.cpu()
        if device == "cuda":
            device_free = lambda: torch.cuda.mem_get_info()[0]     # noqa: E731
    else:
        from bnwvad.runtime import load_runner

        out["rss_imports_mib"] = vm_rss() / MIB
        runner = load_runner(spec["model"], spec["runtime_backend"], strict=True, threads=spec["threads"],
                             **spec.get("ort_kwargs", {}))
        run = lambda x, lengths: runner.run(x, lengths, check_crops=False, check_finite=False)  # noqa: E731
        if device == "cuda":
            from bnwvad.runtime import _cuda     # the runtime's own libcudart binding: no torch here

            device_free = lambda: _cuda.mem_get_info()[0]            # noqa: E731
    out["torch_imported"] = "torch" in sys.modules
    out["rss_model_mib"] = vm_rss() / MIB
    c, d = spec["crops"], spec["feature_dim"]
    rng = np.random.default_rng(0)
    w = (rng.random((1, c, 8, d), dtype=np.float32) * 2).astype(np.float32)
    run(w, np.array([8]))                                   # session / allocator warm-up
    out["rss_warm_mib"] = vm_rss() / MIB
    for t in spec["lengths"]:
        x = (rng.random((1, c, t, d), dtype=np.float32) * 2).astype(np.float32)   # the caller's, not counted
        with PeakMemory(device_free=device_free) as pm:
            run(x, np.array([t]))
        out["cases"][str(t)] = {"host_peak_delta_mib": pm.host_delta / MIB,
                                "device_peak_delta_mib": None if pm.device_delta is None else pm.device_delta / MIB}
        out["method"] = pm.method
        del x
    return out


def measure_memory(backends: list[Backend], models: Models, plan: Plan, threads: int, skip: dict[int, str],
                   clock, timeout: float) -> dict:
    result = {"method": "fresh process per backend; peak RSS during one call over the RSS after loading the "
                        "model and a warm-up call", "C": plan.crops, "backends": {}}
    for b in backends:
        if b.status != "measured":
            continue
        spec = {"backend": b.name, "kind": b.spec.kind, "device": b.spec.device, "threads": threads,
                "runtime_backend": b.spec.runtime_backend, "crops": plan.crops,
                "feature_dim": models.meta.feature_dim,
                "lengths": [t for t in plan.lengths if t not in skip]}
        if b.spec.kind == "torch":
            spec.update(checkpoint=str(models.speed_checkpoint), preset=models.speed_preset)
        else:
            key = f"engine_{b.spec.precision}" if b.spec.kind == "trt" else b.spec.precision
            spec["model"] = str(models.speed_files[key])
            if b.spec.kind == "ort":      # the TensorRT provider's engine cache: no rebuild in the child
                spec["ort_kwargs"] = _ort_trt_kwargs(b.spec, models.cache, models.trt_max)
        say(f"memory: {b.name} in a fresh process (T = {spec['lengths']})", clock)
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec)],
                                  capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)}")
            result["backends"][b.name] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
            result["backends"][b.name] = {"error": f"{type(e).__name__}: {e}"}
            say(f"  {b.name}: memory measurement failed: {e}", clock)
    return result


# -- accuracy on the demo test set -------------------------------------------------------------
def demo_accuracy(backends: list[Backend], models: Models, test, videos, errors: dict[str, Errors],
                  clock) -> dict:
    """Each backend scores the demo test videos (ORT / TensorRT through the runtime's Scorer);
    AUC / AP against PyTorch eager's, and per-video output errors."""
    import torch

    from bnwvad.evaluate import score_videos
    from bnwvad.features import load_video
    from bnwvad.metrics import evaluate_scores
    from bnwvad.runtime import ArraySource, Scorer, load_runner
    from bnwvad.tolerances import check

    snippets = {v.name: test.snippets[v.name] for v in videos} if test.snippets else None
    feats = {v.name: load_video(v, feature_dim=models.demo.config.feature_dim) for v in videos}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)        # a 64-wide model: 1 thread is faster and not timed here
    try:
        ref_scores = score_videos(models.demo, videos, progress=False)
        ref = {k: {o: getattr(v, o) for o in OUTPUTS} for k, v in ref_scores.items()}

        def metrics(anomaly):
            with warnings.catch_warnings():
                # A subset of the test list (--demo-videos) leaves annotated videos out: expected.
                warnings.filterwarnings("ignore", message=r".*annotated videos are not in the test list")
                m = evaluate_scores(anomaly, videos, test.annotations, snippets=snippets, per_class=False)
            return {"auc": m["auc"], "ap": m["ap"]}
        out = {"videos": len(videos), "abnormal_videos": sum(1 for v in videos if v.label == 1),
               "model": models.demo_source, "reference": metrics({k: v["anomaly"] for k, v in ref.items()}),
               "backends": {}}
        say(f"demo accuracy: {len(videos)} test videos; torch_eager AUC {100 * out['reference']['auc']:.2f} "
            f"AP {100 * out['reference']['ap']:.2f}", clock)
        for b in backends:
            if b.status != "measured" or b.name == REFERENCE:
                continue
            s = b.spec
            try:
                if s.kind == "torch":
                    runner = TorchRunner(models.demo, None, s.device, s.name)
                    runner.meta = _meta_like(models, runner)
                elif s.kind == "ort":
                    runner = load_runner(models.demo_files[s.precision], s.runtime_backend, strict=True,
                                         threads=1, **_ort_trt_kwargs(s, models.demo_files[s.precision].parent,
                                                                      (8, 5, 512)))
                else:
                    runner = load_runner(models.demo_files[f"engine_{s.precision}"], "tensorrt", strict=True)
                results = Scorer(runner, crops=None).score([ArraySource(k, v) for k, v in feats.items()])
            except Exception as e:          # noqa: BLE001 - reported per backend
                out["backends"][b.name] = {"error": f"{type(e).__name__}: {e}"}
                b.status, b.reason = "failed", f"demo accuracy: {type(e).__name__}: {e}"
                continue
            ours = {r.name: {o: getattr(r, o) for o in OUTPUTS} for r in results}
            for name, o in ours.items():
                errors[b.name].add(o, ref[name], f"demo video {name}")
            m = metrics({k: v["anomaly"] for k, v in ours.items()})
            row = {"auc": m["auc"], "ap": m["ap"],
                   "delta_auc_points": 100 * (m["auc"] - out["reference"]["auc"]),
                   "delta_ap_points": 100 * (m["ap"] - out["reference"]["ap"]),
                   "metric_tolerance": s.metric_tolerance, "ok": True}
            if s.metric_tolerance:
                ok_auc = check(s.metric_tolerance, 100 * m["auc"], 100 * out["reference"]["auc"])[1]
                ok_ap = check(s.metric_tolerance, 100 * m["ap"], 100 * out["reference"]["ap"])[1]
                row["ok"] = bool(ok_auc and ok_ap)
            out["backends"][b.name] = row
            if hasattr(runner, "close"):
                runner.close()
    finally:
        torch.set_num_threads(old_threads)
    return out


def _meta_like(models: Models, runner) -> Any:
    """A runtime ModelMeta for the demo model (crops any), for the Scorer's memory estimate."""
    from bnwvad.runtime import meta_from_props

    cfg = models.demo.config.to_dict()
    return meta_from_props({"feature_dim": cfg["feature_dim"], "model_config": cfg}, str(runner.path))


def _ort_trt_kwargs(spec: Spec, where: Path, max_shape: tuple[int, int, int]) -> dict:
    if spec.runtime_backend != "ort-trt":
        return {}
    return {"trt_options": {"trt_engine_cache_path": str(where / ".trt_cache")}, "trt_max_shape": max_shape}


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def fmt(v, spec=".2f", none="–") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def headline(report: dict) -> tuple[str, bool]:
    case = next((c for c in report["latency"]["cases"] if c["T"] == HEADLINE_T), None)
    row = case["backends"].get("ort_fp32") if case else None
    ok = bool(row and case["backends"].get(REFERENCE) and row.get("speedup_vs_torch") is not None)
    ratio = fmt(row["speedup_vs_torch"]) if ok else "n/a"
    frac = fmt(row["fraction_of_peak"]) if ok and row.get("fraction_of_peak") is not None else "n/a"
    return f"ort_fp32/torch_eager throughput ratio: {ratio}; fraction of peak: {frac}", ok


def markdown(report: dict) -> str:
    m, lat, thr = report["machine"], report["latency"], report.get("throughput")
    gpu = f"; GPU {m['gpu']['name']} ({m['gpu']['memory_gib']} GiB)" if m.get("gpu") else "; no GPU"
    load = report["load_average"]
    lines = [
        f"## bnwvad benchmark ({report['mode']}) — {m['cpu']}, {m['usable_cpus']} CPUs, {m['ram_gib']} GiB RAM{gpu}",
        "",
        f"{report['created']}, bnwvad {report['libraries'].get('bnwvad')} ({report.get('git') or 'no git'}), "
        f"torch {report['libraries'].get('torch')}, onnxruntime {report['runtime_library']}, "
        f"{report['settings']['threads']} threads. Load average at start {load['start']}, at end {load['end']}"
        + (f" (**busy machine**: other processes used up to {fmt(load.get('foreign_cpu_share_max'), '.0%')} of "
           f"the CPUs during the timed rounds. Ratios are side by side, but PyTorch's OpenMP threads were seen to "
           f"lose far more to contention than ONNX Runtime's pool, so ratios against torch_eager come out "
           f"inflated and absolute numbers low)" if load.get("busy") else "") + ".",
        f"Timed model: {report['models']['speed']['kind']} (D = {report['models']['speed']['feature_dim']}, "
        f"E = {report['models']['speed']['embed_dim']}); {report['models']['speed']['mflop_per_snippet_crop_T200']:.1f}"
        f" MFLOP per snippet-crop at T = 200. Command: `{report['command']}`",
        "",
        f"### Latency, one video, C = {lat['C']} (median / p90 ms; speed-up vs torch_eager; GFLOP/s and fraction "
        f"of the fp32 matmul peak at T = {HEADLINE_T})",
        "",
    ]
    ts = [c["T"] for c in lat["cases"]]
    names = [n for n, b in report["backends"].items() if b["status"] == "measured"]
    lines.append("| backend | provider | " + " | ".join(f"T = {t}" for t in ts)
                 + f" | × torch @{HEADLINE_T} | GFLOP/s @{HEADLINE_T} | of peak @{HEADLINE_T} |")
    lines.append("|---|---|" + "---:|" * (len(ts) + 3))
    head = next((c for c in lat["cases"] if c["T"] == HEADLINE_T), None)
    for n in names:
        cells = []
        for c in lat["cases"]:
            s = c["backends"].get(n)
            cells.append(f"{fmt(s['median_ms'], '.1f')} / {fmt(s['p90_ms'], '.1f')}" if s else "–")
        h = head["backends"].get(n) if head else None
        prov = ", ".join(report["backends"][n]["providers"])
        lines.append(f"| {n} | {prov} | " + " | ".join(cells)
                     + f" | {fmt(h and h['speedup_vs_torch'])} | {fmt(h and h['gflops'], '.1f')} "
                       f"| {fmt(h and h['fraction_of_peak'])} |")
    lines.append("| *other processes' CPU share* | | " + " | ".join(fmt(c.get("foreign_cpu_share"), ".0%")
                                                             for c in lat["cases"]) + " | | | |")
    peaks = ", ".join(f"T = {c['T']}: " + "/".join(fmt(v, '.0f') for v in c.get("peak_gflops", {}).values())
                      for c in lat["cases"] if c.get("peak_gflops"))
    pk = report["peak"]
    lines += ["", "GFLOP/s count the published model's operations (`BNWVAD.num_flops`); the exported graph folds "
                  "the temporal branch's output projection into its input projection (export/fold.py) and so "
                  "computes a little less, which lets its fraction of peak pass 1. Every backend is compared "
                  "with the fp32 GEMM peak, so int8 and fp16 graphs pass 1 where their narrow types pay."]
    lines += [f"Peak: fp32 GEMM {pk['size']}³ in {pk['library']} (the fastest at setup of "
                  f"{', '.join(f'{k} {v:.0f}' for k, v in pk['setup_gflops'].items())} GFLOP/s), "
                  f"{report['settings']['threads']} threads, timed in the same rounds, GFLOP/s: {peaks}."]
    hc = head["backends"].get("ort_fp32", {}) if head else {}
    if hc.get("speedup_vs_torch_clean") is not None:
        lines.append(f"At T = {HEADLINE_T}, {head['rounds_clean']} rounds had other processes under "
                     f"{BUSY_SHARE:.0%} of the CPUs; on those: ort_fp32/torch_eager "
                     f"{hc['speedup_vs_torch_clean']:.2f}, "
                     f"fraction of peak {hc['fraction_of_peak_clean']:.2f}.")
    elif head:
        lines.append(f"At T = {HEADLINE_T}, {head.get('rounds_clean', 0)} rounds had other processes under "
                     f"{BUSY_SHARE:.0%} of the CPUs (fewer than {MIN_CLEAN}: no figures of their own).")
    if head and head["backends"].get("ort_fp32", {}).get("speedup_vs_torch_best") is not None:
        hb = head["backends"]["ort_fp32"]
        lines.append(f"Best rounds at T = {HEADLINE_T} (the least disturbed; robust to other processes): "
                     f"ort_fp32/torch_eager {hb['speedup_vs_torch_best']:.2f}, fraction of peak "
                     f"{hb['fraction_of_peak_best']:.2f}.")
    for c in lat["cases"]:
        if c.get("skipped"):
            lines.append(f"T = {c['T']} not measured: {c['skipped']}.")
        for note in c.get("notes", []):
            lines.append(f"Note: {note}.")
    if thr:
        src = thr["lengths_source"]
        src = Path(src).name if src.endswith(".csv") else src
        lines += ["", f"### Throughput: {thr['videos']} videos, {thr['crops']} crops, {thr['snippets']} snippets "
                      f"(lengths p0/p10/p50/p90/p100 "
                      f"{'/'.join(fmt(v, '.0f') for v in thr['length_percentiles'].values())}, from {src}),"
                      f" runtime batching, {thr['groups']} interleaved group(s)", "",
                  "| backend | seconds | videos/s | snippet-crops/s | GFLOP/s | of peak | × torch | calls |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for n in names:
            r = thr["backends"].get(n)
            if r:
                lines.append(f"| {n} | {r['seconds']:.2f} | {r['videos_per_s']:.2f} | {r['snippet_crops_per_s']:.0f} "
                             f"| {r['gflops']:.1f} | {fmt(r['fraction_of_peak'])} | {fmt(r['speedup_vs_torch'])} "
                             f"| {r['calls']} |")
        lines.append(f"\nPeak GEMM over the same groups: "
                     f"{', '.join(fmt(v, '.0f') for v in thr['peak_gflops'].values())} GFLOP/s. Other processes "
                     f"used {fmt(thr.get('foreign_cpu_share'), '.0%')} of the CPUs meanwhile"
                     + (f"; in the {thr['groups_clean']} groups where they used under {BUSY_SHARE:.0%}: "
                        f"ort_fp32/torch_eager {thr['backends']['ort_fp32']['speedup_vs_torch_clean']:.2f}, fraction "
                        f"of peak {fmt(thr['backends']['ort_fp32']['fraction_of_peak_clean'])}."
                        if thr["backends"].get("ort_fp32", {}).get("speedup_vs_torch_clean") is not None else "."))
    mem = report.get("memory")
    if mem and mem.get("backends"):
        lts = [t for t in ts if any(str(t) in (r.get("cases") or {}) for r in mem["backends"].values())]
        lines += ["", f"### Peak memory, one video, C = {mem['C']} ({mem['method']}), MiB", "",
                  "| backend | RSS after imports | + model loaded | " + " | ".join(f"+ call at T = {t}" for t in lts)
                  + f" | process peak at T = {lts[-1] if lts else '–'} | torch imported |",
                  "|---|---:|---:|" + "---:|" * len(lts) + "---:|---|"]
        for n, r in mem["backends"].items():
            if "error" in r:
                lines.append(f"| {n} | failed: {r['error']} |")
                continue
            cells = []
            for t in lts:
                cse = r["cases"].get(str(t))
                dev = cse and cse.get("device_peak_delta_mib")
                cells.append("–" if not cse else f"{cse['host_peak_delta_mib']:.0f}"
                             + (f" (+{dev:.0f} device)" if dev is not None else ""))
            last = r["cases"].get(str(lts[-1])) if lts else None
            total = f"{r['rss_warm_mib'] + last['host_peak_delta_mib']:.0f}" if last else "–"
            lines.append(f"| {n} | {r['rss_imports_mib']:.0f} | {r['rss_model_mib'] - r['rss_imports_mib']:.0f} | "
                         + " | ".join(cells) + f" | {total} | {'yes' if r.get('torch_imported') else 'no'} |")
    acc, demo = report["accuracy"], report.get("demo")
    lines += ["", "### Accuracy against torch_eager (worst over every latency input, workload video and demo video)",
              "", "| backend | tolerance (limit) | score | dfm | anomaly | max abs (anomaly) | ok | AUC | Δ AUC pts "
                  "| AP | Δ AP pts |",
              "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for n in names:
        a = acc.get(n)
        d = (demo or {}).get("backends", {}).get(n, {}) if n != REFERENCE else (demo or {}).get("reference", {})
        if a is None:
            continue
        o = a["outputs"]
        tol = (f"{a['tolerance']} ({a['limit']:g} {a['metric']})" if a["tolerance"]
               else "reference")
        lines.append(f"| {n} | {tol} | {o['score']['error']:.1e} | {o['dfm']['error']:.1e} | "
                     f"{o['anomaly']['error']:.1e} | {o['anomaly']['max_abs']:.1e} | "
                     f"{'yes' if a['ok'] and d.get('ok', True) else '**NO**'} | "
                     f"{fmt(d.get('auc') and 100 * d['auc'])} | "
                     f"{fmt(d.get('delta_auc_points'), '+.3f')} | {fmt(d.get('ap') and 100 * d['ap'])} | "
                     f"{fmt(d.get('delta_ap_points'), '+.3f')} |")
    if demo:
        lines.append(f"\nDemo test set: {demo['videos']} videos ({demo['abnormal_videos']} abnormal), model: "
                     f"{demo['model'].get('kind')}. Errors are max |ours − ref| / max |ref| per output "
                     f"(rel_to_max).")
    skipped = {n: b for n, b in report["backends"].items() if b["status"] != "measured"}
    if skipped:
        lines += ["", "### Not measured", ""]
        lines += [f"- {n} ({b['status']}): {b['reason']}" for n, b in skipped.items()]
    notes = [f"- {n}: {note}" for n, b in report["backends"].items() for note in b.get("notes", [])]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def chart(report: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")       # files only, never a window
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 5))
    names = [n for n, b in report["backends"].items() if b["status"] == "measured"]
    for n in names:
        pts = [(c["T"], c["backends"][n]) for c in report["latency"]["cases"] if n in c["backends"]]
        if not pts:
            continue
        t = [p[0] for p in pts]
        med = np.array([p[1]["median_ms"] for p in pts])
        p90 = np.array([p[1]["p90_ms"] for p in pts])
        ax.errorbar(t, med, yerr=[np.zeros_like(med), p90 - med], marker="o", capsize=3, label=n,
                    linestyle="--" if n == REFERENCE else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ts = [c["T"] for c in report["latency"]["cases"]]
    ax.set_xticks(ts)
    ax.set_xticklabels([str(t) for t in ts])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("T (snippets per crop)")
    ax.set_ylabel("latency per video, ms (median; bar to p90)")
    m = report["machine"]
    ax.set_title(f"BN-WVAD, one video, C = {report['latency']['C']}: {m['cpu']}, "
                 f"{report['settings']['threads']} threads" + (f", {m['gpu']['name']}" if m.get("gpu") else ""),
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out: Path, report: dict, md: str) -> dict[str, str]:
    """report.json, report.md and latency.png, each written atomically (temp file + rename)."""
    from bnwvad.runtime.io import atomic_write, save_json

    out.mkdir(parents=True, exist_ok=True)
    png = chart(report)
    files = {"json": out / "report.json", "markdown": out / "report.md", "chart": out / "latency.png"}
    report["files"] = {k: str(v) for k, v in files.items()}
    atomic_write(files["chart"], lambda f: f.write(png))
    atomic_write(files["markdown"], lambda f: f.write(md.encode("utf-8")))
    save_json(files["json"], report)
    return report["files"]


# --------------------------------------------------------------------------------------
# Setup of the backends
# --------------------------------------------------------------------------------------
def open_backends(selected: list[str], models: Models, threads: int, trt_max: tuple[int, int, int],
                  cache: Path, clock) -> list[Backend]:
    from bnwvad.runtime import load_runner

    backends = []
    for name in selected:
        spec = SPECS[name]
        b = Backend(spec)
        backends.append(b)
        reason = unavailable_reason(spec)
        if reason:
            b.status, b.reason = "skipped", reason
            say(f"{name}: skipped: {reason}", clock)
            continue
        try:
            if spec.kind == "torch":
                if spec.device == "cuda":
                    import torch

                    torch.backends.cuda.matmul.allow_tf32 = False
                    torch.backends.cudnn.allow_tf32 = False
                    b.notes.append("TF32 disabled (torch.backends.cuda.matmul / cudnn.allow_tf32 = False)")
                b.runner = TorchRunner(models.speed, models.meta, spec.device, name)
            elif spec.kind == "ort":
                path = models.speed_files[spec.precision]
                b.runner = load_runner(path, spec.runtime_backend, strict=True, threads=threads,
                                       **_ort_trt_kwargs(spec, models.cache, models.trt_max))
                if spec.runtime_backend == "ort-trt":
                    say(f"{name}: building the TensorRT provider's engine (first call; minutes)", clock)
                    _warm(b.runner, models.meta.feature_dim)
                if spec.runtime_backend == "ort-cuda" and spec.precision == "fp32":
                    b.notes.append("ONNX Runtime's CUDA provider runs fp32 MatMul in TF32 unless its use_tf32 "
                                   "option is 0 (on by default); bnwvad.runtime does not set it")
            else:
                engine = engine_for(models.speed_files[spec.precision], ((1, 1, 1), (1, 10, HEADLINE_T), trt_max),
                                    cache, clock)
                models.speed_files[f"engine_{spec.precision}"] = engine
                b.runner = load_runner(engine, "tensorrt", strict=True)
        except Exception as e:          # noqa: BLE001 - reported as the backend's result
            b.status, b.reason = "skipped", f"{type(e).__name__}: {e}"
            say(f"{name}: skipped: {b.reason}", clock)
            continue
        say(f"{name}: {b.runner.describe()}", clock)
    return backends


def _warm(runner, d: int) -> None:
    x = np.zeros((1, 1, 8, d), np.float32)
    runner.run(x, np.array([8]), check_crops=False)


def prepare_demo_files(models: Models, backends: list[Backend], cache: Path, clock) -> None:
    precisions = sorted({b.spec.precision for b in backends if b.status == "measured" and b.spec.kind != "torch"})
    models.demo_files = export_graphs(models.demo, precisions, cache, "demo", None, clock)
    for b in backends:
        if b.status == "measured" and b.spec.kind == "trt" and f"engine_{b.spec.precision}" not in models.demo_files:
            models.demo_files[f"engine_{b.spec.precision}"] = engine_for(
                models.demo_files[b.spec.precision], ((1, 1, 1), (4, 5, 256), (8, 5, 512)), cache, clock)


def engine_for(onnx_path: Path, profile: tuple, cache: Path, clock) -> Path:
    """A TensorRT engine of `onnx_path` for the (N, C, T) profile (min, opt, max), built once
    per graph, profile, TensorRT version and GPU and kept in `cache` with its sidecar: builds
    take minutes, and a GPU is lent for minutes. The timing cache is shared by all builds."""
    import tensorrt as trt
    import torch

    from bnwvad.export import Profile, build_engine

    gpu = torch.cuda.get_device_name(0)
    key = hashlib.sha256(json.dumps([onnx_path.name, profile, trt.__version__, gpu]).encode()).hexdigest()[:16]
    engine = cache / "engines" / f"{onnx_path.stem}_{key}.engine"
    if engine.is_file() and engine.with_name(engine.name + ".json").is_file():
        return engine
    say(f"building a TensorRT engine of {onnx_path.name}, profile N,C,T min/opt/max {profile} (minutes)", clock)
    build_engine(onnx_path, engine, profile=Profile(*profile), timing_cache=cache / "trt.timing.cache",
                 verify=False, log=lambda m: say(m, clock))     # verified below against PyTorch, on more inputs
    return engine


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def user_error_types() -> tuple[type[BaseException], ...]:
    """The project's errors about bad input (files, checkpoints, data): reported as one line
    naming the file, not as a traceback. Imported when needed (they pull in torch)."""
    from bnwvad.checkpoint import CheckpointError
    from bnwvad.demo import DemoError
    from bnwvad.export import ExportError, MetadataError, TensorRTError
    from bnwvad.features import FeatureFileError
    from bnwvad.metrics import AnnotationError, EvaluationError
    from bnwvad.runtime import RuntimeFailure

    return (CheckpointError, DemoError, ExportError, MetadataError, TensorRTError, FeatureFileError,
            AnnotationError, EvaluationError, RuntimeFailure)


@contextlib.contextmanager
def user_errors():
    try:
        yield
    except user_error_types() as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None


def parse_ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers", param_hint=what) from None
    if not vals or any(v < 1 for v in vals):
        raise click.BadParameter(f"{text!r}: expected positive integers", param_hint=what)
    return vals


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
    if backend_list:
        selected = [n.strip() for n in backend_list.split(",") if n.strip()]
        unknown = [n for n in selected if n not in SPECS]
        if unknown:
            raise click.BadParameter(f"unknown backend(s) {unknown}; expected some of {', '.join(SPECS)}",
                                     param_hint="--backends")
        if REFERENCE not in selected:
            selected.insert(0, REFERENCE)     # everything is measured against it
    else:
        selected = [n for n, s in SPECS.items() if not quick or not (s.builds_engine or s.precision == "int8")]
    gate = QuietGate(quiet_wait, BUSY_SHARE, on_wait=lambda share: say(
        f"  other processes use {share:.0%} of the CPUs: waiting for them before the next timed round "
        f"(--quiet-wait, {quiet_wait:.0f} s in all)", clock))
    plan = Plan(lengths=lengths, crops=crops, rounds=quick_rounds if quick else full_rounds,
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
        import torch

        from bnwvad.checkpoint import load_model
        from bnwvad.evaluate import dataset_files, load_test_set
        from bnwvad.features import load_video
        from bnwvad.runtime import load_runner

        torch.set_num_threads(threads)
        # -- models -------------------------------------------------------------------------
        speed, speed_src, speed_ckpt, speed_preset = load_speed_model(speed_checkpoint, preset, work, seed)
        precisions = sorted({SPECS[n].precision for n in selected if SPECS[n].kind != "torch"} | {"fp32"})
        say(f"timed model: {speed_src['kind']} ({', '.join(precisions)} graphs)", clock)
        files = export_graphs(speed, precisions, cache, "speed", speed_preset, clock)
        with load_runner(files["fp32"], "ort-cpu", threads=1) as r:
            meta = r.meta
        models = Models(speed, speed_src, speed_ckpt, speed_preset, files, meta, cache=cache, trt_max=trt_max_shape)
        backends = open_backends(selected, models, threads, trt_max_shape, cache, clock)
        if next(b for b in backends if b.name == REFERENCE).status != "measured":
            raise click.ClickException(f"torch_eager, the reference, could not run: "
                                       f"{next(b for b in backends if b.name == REFERENCE).reason}")
        errors = {b.name: Errors(tolerance_of(b.spec)[0]) for b in backends}

        prepared = finish_demo_child(child)
        root = Path(prepared["root"])
        test = load_test_set(dataset_files("demo", root=root))
        if checkpoint is not None:
            from bnwvad.checkpoint import CheckpointError

            try:
                models.demo = load_model(checkpoint)
            except CheckpointError as e:
                raise click.ClickException(f"--checkpoint: {e}. It must be a bnwvad checkpoint trained on the demo "
                                           f"set (e.g. the best.pt of a bnwvad-train run on demo_data)") from None
            models.demo_source = {"kind": f"checkpoint {checkpoint}", "path": str(checkpoint)}
        else:
            models.demo = load_model(prepared["checkpoint"])
            models.demo_source = {"kind": f"demo recipe, {prepared['steps']} training steps, seed 0 (last.pt)",
                                  "path": prepared["checkpoint"], "reused_from_cache": prepared["reused"]}
        have = load_video(test.videos[0]).shape[-1]
        if have != models.demo.config.feature_dim:
            raise click.ClickException(f"{checkpoint}: the model takes D = {models.demo.config.feature_dim} "
                                       f"features but the demo set at {root} has D = {have}; --checkpoint must "
                                       f"be a model trained on the demo features (e.g. bnwvad-train's best.pt)")
        videos = test.videos
        if plan.demo_videos and plan.demo_videos < len(videos):
            videos = videos[:: math.ceil(len(videos) / plan.demo_videos)]

        # -- the peak: the fastest GEMM library here, then timed inside every round -------------
        probes = matmul_probes(2048, threads)
        chosen, setup_rates = fastest_probe(probes)
        peaks = {PEAK: probes[chosen]}
        peak_info = {"library": chosen, "size": 2048, "setup_gflops": setup_rates}
        say(f"fp32 GEMM 2048³ at setup, GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in setup_rates.items())
            + f"; {chosen} is the peak probe", clock)
        if any(b.spec.device == "cuda" and b.status == "measured" for b in backends) and torch.cuda.is_available():
            peaks[PEAK_CUDA] = cuda_matmul_probe(8192)
            peak_info["cuda"] = {"library": "torch", "size": 8192, "tf32": False}

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
        for b in backends:
            if b.runner is not None and hasattr(b.runner, "close"):
                b.runner.close()

        # -- report ---------------------------------------------------------------------------------
        report = build_report(quick=quick, backends=backends, models=models, plan=plan, threads=threads,
                              lengths=lengths, crops=crops, trt_max=trt_max_shape, videos=videos, errors=errors,
                              latency=latency, throughput=throughput, memory=memory_box or None, demo=demo,
                              peak=peak_info, load_start=load_start, clock=clock)
        md = markdown(report)
        write_outputs(out, report, md)
    except user_error_types() as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
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


def build_report(*, quick, backends, models, plan, threads, lengths, crops, trt_max, videos, errors, latency,
                 throughput, memory, demo, peak, load_start, clock) -> dict:
    import onnxruntime

    load_end = load_average()
    cpus = usable_cpus()
    shares = [x for x in [*(c.get("foreign_cpu_share") for c in latency["cases"]),
                          throughput.get("foreign_cpu_share")] if x is not None]
    speed = models.speed
    report = {
        "schema": SCHEMA, "mode": "quick" if quick else "full",
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
        "git": git_revision(REPO), "machine": machine_info(gpu_info()),
        "libraries": library_versions(LIBRARIES), "runtime_library": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "load_average": {"start": load_start, "end": load_end,
                         "foreign_cpu_share_max": max(shares) if shares else None,
                         # measured contention when there is a figure; the load average (which lags,
                         # and counts this run's own threads) only where /proc/stat is missing
                         "busy": bool(max(shares) > BUSY_SHARE if shares else
                                      (load_start and load_end and max(load_start[0], load_end[0]) > cpus))},
        "settings": {"threads": threads, "lengths": lengths, "crops": crops,
                     "rounds": {str(t): plan.rounds(t) for t in lengths}, "workload_videos": plan.workload_videos,
                     "workload_crops": plan.workload_crops, "demo_videos": len(videos), "trt_max": list(trt_max),
                     "gap_s": GAP_S, "quiet_wait_s": plan.gate.budget_s, "quiet_waited_s": plan.gate.waited_s,
                     "quiet_wait_gave_up": plan.gate.gave_up},
        "peak": peak,
        "models": {"speed": {**models.speed_source, "feature_dim": speed.config.feature_dim,
                             "embed_dim": speed.config.embed_dim, "config": speed.config.to_dict(),
                             "mflop_per_snippet_crop_T200": speed.num_flops(HEADLINE_T) / HEADLINE_T / 1e6},
                   "demo": {**models.demo_source, "config": models.demo.config.to_dict()}},
        "backends": {b.name: b.info() for b in backends},
        "latency": latency, "throughput": throughput, "memory": memory,
        "accuracy": {b.name: errors[b.name].to_dict() for b in backends if b.status == "measured"},
        "demo": demo,
    }
    line, have_headline = headline(report)
    bad = [n for n, a in report["accuracy"].items() if not a["ok"]]
    bad += [n for n, d in demo["backends"].items() if not d.get("ok", False) and n not in bad]
    bad += [b.name for b in backends if b.status == "failed" and b.name not in bad]   # ran, then broke
    h = next((c for c in latency["cases"] if c["T"] == HEADLINE_T), {}).get("backends", {})
    ort = h.get("ort_fp32") or {}
    ort_w = (throughput["backends"].get("ort_fp32") or {})
    report["headline"] = {"line": line, "T": HEADLINE_T, "C": crops, "ratio": ort.get("speedup_vs_torch"),
                          "fraction_of_peak": ort.get("fraction_of_peak"),
                          "workload_ratio": ort_w.get("speedup_vs_torch"),
                          "workload_fraction_of_peak": ort_w.get("fraction_of_peak"),
                          # the same from rounds / groups in which other processes were (nearly) idle
                          "ratio_clean": ort.get("speedup_vs_torch_clean"),
                          "fraction_of_peak_clean": ort.get("fraction_of_peak_clean"),
                          "workload_ratio_clean": ort_w.get("speedup_vs_torch_clean"),
                          "workload_fraction_of_peak_clean": ort_w.get("fraction_of_peak_clean")}
    report["failures"] = bad
    report["ok"] = not bad and have_headline
    report["elapsed_s"] = clock()
    return report



if __name__ == "__main__":
    main()
