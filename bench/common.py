"""Measurement helpers shared by the bench scripts: timing, memory, machine, workload.

Nothing here knows BN-WVAD; torch, onnx and onnxruntime are imported only by the matmul
probes. Principles:

- On a shared machine only ratios measured side by side mean anything, so timings are
  taken in rounds that run every contender once, in rotated order (`interleaved_rounds`):
  load that drifts during the run hits every contender alike.
- The "peak" of the machine is measured, not looked up: the fastest of torch's, numpy's
  and ONNX Runtime's large fp32 matrix multiply (`matmul_probes`, `fastest_probe`), timed
  inside the same rounds as the model.
- Peak memory of a contender is read from the kernel's high-water mark (VmHWM), reset
  just before the measured call through /proc/self/clear_refs; where that file is not
  writable a sampling thread stands in (`PeakMemory`). Only a fresh process per
  contender gives an honest number: in a shared process, allocator caches and ONNX
  Runtime's arenas of the others hide or inflate it.
"""
from __future__ import annotations

import csv
import importlib.metadata
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from bnwvad.runtime.scoring import available_memory  # one reader of /proc/meminfo

MIB = 2 ** 20
# Pause before each timed call: ONNX Runtime's idle pool spins for more than 10 ms after a
# call and slows whatever runs next (see interleaved_rounds).
GAP_S = 0.05


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------
def summarize(seconds: Sequence[float]) -> dict:
    """median, p90, min and mean in milliseconds of a list of timings in seconds."""
    if not seconds:
        return {"rounds": 0, "median_ms": None, "p90_ms": None, "min_ms": None, "mean_ms": None}
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"rounds": int(a.size), "median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "min_ms": float(a.min()), "mean_ms": float(a.mean())}


def rotated(names: Sequence[str], k: int) -> list[str]:
    """names rotated left by k: round k starts with a different contender, so none always
    runs right after the same neighbour (caches, thread pools still spinning)."""
    k %= max(1, len(names))
    return list(names[k:]) + list(names[:k])


def interleaved_rounds(runs: Mapping[str, Callable[[], object]], *, warmup: int, min_rounds: int,
                       max_rounds: int, budget_s: float, gap_s: float = GAP_S,
                       on_round: Callable[[int, dict], None] | None = None,
                       before_round: Callable[[], object] | None = None
                       ) -> tuple[dict[str, list[float]], list[float | None]]:
    """Time every callable once per round, rounds in rotated order.

    Returns (seconds per name, other processes' CPU share per round; see `ForeignCpu`).
    `warmup` untimed rounds first. Then rounds continue until at least `min_rounds` are done
    and `budget_s` seconds have passed, or `max_rounds` are done. A `gap_s` sleep between
    calls lets the previous contender's worker threads stop spinning before the next one
    starts, so no contender pays for its neighbour's idle threads: on 2 cores, a 2048³ GEMM
    started 10 ms after an ONNX Runtime call ran 20% slower than alone (its idle pool still
    spinning; 177 GFLOP/s with spinning off), and as fast as alone 50 ms after.
    `before_round` (e.g. `QuietGate.wait`) runs before each timed round, untimed.
    """
    names = list(runs)
    for r in range(warmup):
        for name in rotated(names, r):
            runs[name]()
            time.sleep(gap_s)
    times: dict[str, list[float]] = {n: [] for n in names}
    foreign: list[float | None] = []
    t_start = time.perf_counter()
    r = 0
    while r < max_rounds and (r < min_rounds or time.perf_counter() - t_start < budget_s):
        if before_round is not None:
            waited = time.perf_counter()
            before_round()
            t_start += time.perf_counter() - waited       # waiting is not part of the time budget
        with ForeignCpu() as fc:
            for name in rotated(names, r):
                time.sleep(gap_s)
                t0 = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t0)
        foreign.append(fc.share)
        r += 1
        if on_round is not None:
            on_round(r, times)
    return times, foreign


class ForeignCpu:
    """The share of the machine's CPU capacity that OTHER processes used during a `with` block.

    Interleaving spreads drift over all contenders, but it cannot undo contention that hurts
    one library more than another (PyTorch's OpenMP barriers wait for a preempted thread;
    ONNX Runtime's pool hands its work to the threads still running). This says how much
    contention there was: busy time of all CPUs (/proc/stat) minus this process's CPU time
    (os.times, all threads), over wall time x CPUs. Clock-tick resolution (10 ms): a rough
    figure for blocks under a second. `share` is None where /proc/stat is missing.
    """

    def __init__(self):
        self.share: float | None = None

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                vals = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        idle = vals[3] + vals[4]                 # idle + iowait; guest time is inside user already
        return (sum(vals) - idle) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "ForeignCpu":
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy(), sum(os.times()[:2])
        return self

    def __exit__(self, *exc) -> None:
        busy1 = self._busy()
        wall = time.perf_counter() - self._t0
        if busy1 is None or self._busy0 is None or wall <= 0:
            return
        foreign = (busy1 - self._busy0) - (sum(os.times()[:2]) - self._own0)
        self.share = min(1.0, max(0.0, foreign / (wall * (os.cpu_count() or 1))))


def matmul_probes(size: int = 2048, threads: int | None = None) -> dict[str, tuple[Callable[[], object], float]]:
    """{library: (callable, flops)}: one (size x size) @ (size x size) fp32 GEMM each in torch,
    numpy (its BLAS) and ONNX Runtime (MLAS), all on `threads` threads.

    The machine's attainable fp32 peak is the fastest of them: libraries differ by CPU (MKL
    takes a slower path on AMD, MLAS has AVX-512 kernels), so one library alone can make a
    model look faster than "peak". A library that is not installed is left out.
    """
    flops = 2.0 * size ** 3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    probes: dict[str, tuple[Callable[[], object], float]] = {}
    try:
        import torch

        if threads is not None:
            torch.set_num_threads(int(threads))
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)

        def torch_mm():
            with torch.inference_mode():
                torch.matmul(ta, tb)
        probes["torch"] = (torch_mm, flops)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        if threads is not None:
            threadpool_limits(limits=int(threads), user_api="blas")     # numpy's BLAS, for the process
        probes["numpy"] = (lambda: np.matmul(a, b), flops)
    except ImportError:
        pass
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
                              [numpy_helper.from_array(b, "b")])
        proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        probes["onnxruntime"] = (lambda: sess.run(None, {"a": a}), flops)
    except ImportError:
        pass
    return probes


def fastest_probe(probes: Mapping[str, tuple[Callable[[], object], float]], trials: int = 2
                  ) -> tuple[str, dict[str, float]]:
    """(name of the fastest probe, {name: GFLOP/s}) from a warm-up and `trials` best-of runs."""
    rates = {}
    for name, (fn, flops) in probes.items():
        fn()
        best = min(_timed(fn) for _ in range(trials))
        rates[name] = flops / best / 1e9
    return max(rates, key=rates.get), rates


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cuda_matmul_probe(size: int = 8192) -> tuple[Callable[[], object], float]:
    """(callable, flops): one fp32 GEMM on the GPU in torch, TF32 off (fp32 means fp32),
    synchronised so the time is the device's."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).cuda()
    b = torch.randn(size, size, generator=g).cuda()

    def run():
        with torch.inference_mode():
            torch.matmul(a, b)
        torch.cuda.synchronize()
    run()
    return run, 2.0 * size ** 3


class QuietGate:
    """Waits, before a timed round, until other processes leave the CPUs (nearly) idle.

    On a shared machine, other tenants' jobs come and go; measuring only while they are idle
    gives the figures of a machine of one's own. `wait()` samples `ForeignCpu` over
    `window_s` until the share is at most `threshold`, spending at most `budget_s` seconds
    waiting over the whole run (then it measures anyway; `waited_s` and `gave_up` tell).
    """

    def __init__(self, budget_s: float, threshold: float = 0.05, window_s: float = 0.5,
                 on_wait: Callable[[float], None] | None = None):
        self.budget_s, self.threshold, self.window_s = float(budget_s), threshold, window_s
        self.on_wait = on_wait
        self.waited_s = 0.0
        self.gave_up = False

    def wait(self) -> None:
        announced = False
        while self.waited_s < self.budget_s:
            t0 = time.perf_counter()
            with ForeignCpu() as fc:
                time.sleep(self.window_s)
            if fc.share is None or fc.share <= self.threshold:
                return
            self.waited_s += time.perf_counter() - t0
            if not announced and self.on_wait is not None:
                self.on_wait(fc.share)
                announced = True
        self.gave_up = self.budget_s > 0


# --------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def vm_rss() -> int:
    """Resident set size of this process now, bytes (0 where /proc is missing)."""
    try:
        return _status_kib("VmRSS:") * 1024
    except OSError:
        return 0


def vm_hwm() -> int:
    """Peak resident set size (high-water mark) of this process, bytes."""
    try:
        return _status_kib("VmHWM:") * 1024
    except OSError:
        return 0


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, clear_refs value 5); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak host RSS (and optionally device memory in use) over a `with` block, in bytes.

        with PeakMemory(device_free=fn) as pm:
            run()
        pm.host_delta, pm.device_delta

    host: VmHWM after the block minus RSS before it, VmHWM reset on entry; where the reset
    is not allowed, VmRSS sampled every `interval_s` (can miss a short spike: `method` says
    which). device_free: a function giving free device bytes (cudaMemGetInfo); sampled the
    same way, the delta is the largest drop of free memory below its value on entry.
    """

    def __init__(self, device_free: Callable[[], int] | None = None, interval_s: float = 0.002):
        self.device_free = device_free
        self.interval_s = interval_s
        self.host_delta = 0
        self.device_delta: int | None = None
        self.method = ""
        self._stop = threading.Event()
        self._peak_rss = 0
        self._min_free: int | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak_rss = max(self._peak_rss, vm_rss())
            if self.device_free is not None:
                free = self.device_free()
                self._min_free = free if self._min_free is None else min(self._min_free, free)
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self._rss0 = vm_rss()
        self._free0 = self.device_free() if self.device_free is not None else None
        self._hwm = reset_hwm()
        self.method = ("VmHWM reset through /proc/self/clear_refs" if self._hwm
                       else f"VmRSS sampled every {self.interval_s * 1e3:g} ms")
        self._peak_rss = self._rss0
        self._thread = None
        if not self._hwm or self.device_free is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = vm_hwm() if self._hwm else max(self._peak_rss, vm_rss())
        self.host_delta = max(0, peak - self._rss0)
        if self.device_free is not None:
            self._min_free = min(self._min_free if self._min_free is not None else self._free0,
                                 self.device_free())
            self.device_delta = max(0, self._free0 - self._min_free)


# --------------------------------------------------------------------------------------
# The machine and the software
# --------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo, or None."""
    try:
        cores, phys = set(), "0"
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    cores.add((phys, value.strip()))
        return len(cores) or None
    except OSError:
        return None


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return sorted(have & {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                                          "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "f16c"})
    except OSError:
        pass
    return []


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info(gpu: Mapping | None = None) -> dict:
    mem_total = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "physical_cores": _physical_cores(),
        "cpu_flags": _cpu_flags(),
        "ram_gib": round(mem_total / 2 ** 30, 1) if mem_total else None,
        "ram_available_gib": round((available_memory() or 0) / 2 ** 30, 1) or None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": dict(gpu) if gpu else None,
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def library_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed distribution versions (None: not installed). Importing is not needed."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(repo: Path) -> str | None:
    """HEAD's commit, with '+dirty' when tracked files differ; None outside a checkout."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------
def read_lengths(csv_path: str | os.PathLike) -> list[tuple[str, int]]:
    """(video, snippets) rows of a test_snippets.csv (columns video, snippets, ...)."""
    path = Path(csv_path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"video", "snippets"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: columns {reader.fieldnames}; expected video, snippets, ...")
            rows = [(r["video"], int(r["snippets"])) for r in reader]
    except (OSError, KeyError) as e:
        raise ValueError(f"{path}: cannot read snippet counts ({e})") from None
    if not rows or any(n < 1 for _, n in rows):
        raise ValueError(f"{path}: expected at least one row, every snippets value >= 1")
    return rows


def builtin_lengths(count: int = 800, median: float = 128.0, q1: float = 74.0, q3: float = 240.0,
                    lo: int = 5, hi: int = 2074) -> list[tuple[str, int]]:
    """A fixed log-normal spread of video lengths (snippets) for machines without the
    dataset metadata: the median and quartiles default to XD-Violence's test set; lengths
    are the distribution's quantiles at (i + 0.5) / count, so no randomness."""
    sigma = np.log(q3 / q1) / (2 * statistics.NormalDist().inv_cdf(0.75))
    nd = statistics.NormalDist(np.log(median), sigma)
    return [(f"builtin_{i:04d}", int(np.clip(round(np.exp(nd.inv_cdf((i + 0.5) / count))), lo, hi)))
            for i in range(count)]


def spread_sample(rows: Sequence[tuple[str, int]], count: int) -> list[tuple[str, int]]:
    """`count` rows at the (i + 0.5) / count quantiles of length, in their original order:
    the length distribution in miniature (a rare extreme is in only when count is large
    enough to represent it); all rows if count >= len(rows)."""
    if count >= len(rows):
        return list(rows)
    order = sorted(range(len(rows)), key=lambda i: (rows[i][1], i))
    picks = ((np.arange(count) + 0.5) * len(rows) / count).astype(int)
    keep = sorted({order[p] for p in picks})
    return [rows[i] for i in keep]


class PoolVideo:
    """A stand-in video for throughput runs: a (C, T, D) window of one shared random pool.

    Loading costs a copy, the same for every backend; the features are non-negative and
    mostly in [0, 2), like I3D's pooled activations.
    """

    def __init__(self, name: str, length: int, crops: int, pool: np.ndarray, offset: int):
        self.name, self.length, self.crops = name, int(length), int(crops)
        self._pool, self._offset = pool, int(offset)

    def load(self) -> np.ndarray:
        return np.ascontiguousarray(self._pool[: self.crops, self._offset: self._offset + self.length])


def feature_pool(crops: int, length: int, dim: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((crops, length, dim), dtype=np.float32) * 2).astype(np.float32)


@dataclass
class Stopwatch:
    """Elapsed seconds since creation, for progress lines."""

    t0: float = 0.0

    def __post_init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


def say(msg: str, clock: Stopwatch | None = None) -> None:
    """A progress line on stderr (stdout carries the report)."""
    prefix = f"[{clock():6.1f}s] " if clock is not None else ""
    print(prefix + msg, file=sys.stderr, flush=True)


__all__ = ["GAP_S", "MIB", "ForeignCpu", "PeakMemory", "PoolVideo", "QuietGate", "Stopwatch", "available_memory",
           "builtin_lengths", "cuda_matmul_probe", "fastest_probe", "feature_pool", "git_revision",
           "interleaved_rounds", "library_versions", "load_average", "machine_info", "matmul_probes",
           "read_lengths", "reset_hwm", "rotated", "say", "spread_sample", "summarize", "usable_cpus", "vm_hwm",
           "vm_rss"]
