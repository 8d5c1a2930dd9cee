"""Timing on a shared machine: interleaved rounds, other processes' CPU share, the GEMM peak.

Nothing here knows BN-WVAD; torch, onnx and onnxruntime are imported only by the matmul
probes. Principles:

- On a shared machine only ratios measured side by side mean anything, so timings are
  taken in rounds that run every contender once, in rotated order (`interleaved_rounds`):
  load that drifts during the run hits every contender alike.
- The "peak" of the machine is measured, not looked up: the fastest of torch's, numpy's
  and ONNX Runtime's large fp32 matrix multiply (`matmul_probes`, `fastest_probe`), timed
  inside the same rounds as the model.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import psutil

# Pause before each timed call: ONNX Runtime's idle pool spins for more than 10 ms after a
# call and slows whatever runs next (see interleaved_rounds).
GAP_S = 0.05
MATMUL_LIBRARIES = ("torch", "numpy", "onnxruntime")

Probe = tuple[Callable[[], object], float]        # (callable, flops of one call)


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
                       before_round: Callable[[], object] | None = None,
                       clock: Callable[[], float] = time.perf_counter,
                       ) -> tuple[dict[str, list[float]], list[float | None]]:
    """Time every callable once per round, rounds in rotated order.

    Returns (seconds per name, other processes' CPU share per round; see `ForeignCpu`).
    `warmup` untimed rounds first. Then rounds continue until at least `min_rounds` are done
    and `budget_s` seconds have passed, or `max_rounds` are done. A `gap_s` sleep between
    calls lets the previous contender's worker threads stop spinning before the next one
    starts, so no contender pays for its neighbour's idle threads: on 2 cores, a 2048³ GEMM
    started 10 ms after an ONNX Runtime call ran 20% slower than alone (its idle pool still
    spinning; 177 GFLOP/s with spinning off), and as fast as alone 50 ms after.
    `before_round` (e.g. `QuietGate.wait`) runs before each timed round, untimed. `clock`
    times each call (time.process_time: CPU time, which other tenants do not inflate); the
    budget is always wall time.
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
                t0 = clock()
                runs[name]()
                times[name].append(clock() - t0)
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
    contention there was: busy time of all CPUs (psutil.cpu_times) minus this process's CPU
    time (all threads), over wall time x CPUs. Clock-tick resolution (10 ms): a rough figure
    for blocks under a second. `share` is None where the system's CPU times cannot be read.
    """

    _self = psutil.Process()

    def __init__(self):
        self.share: float | None = None

    @staticmethod
    def _busy() -> float | None:
        try:
            t = psutil.cpu_times()
        except (OSError, psutil.Error):
            return None
        # iowait is idle time; guest time is inside user already (Linux counts it twice).
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def _own(self) -> float:
        t = self._self.cpu_times()
        return t.user + t.system

    def __enter__(self) -> "ForeignCpu":
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc) -> None:
        busy1 = self._busy()
        wall = time.perf_counter() - self._t0
        if busy1 is None or self._busy0 is None or wall <= 0:
            return
        foreign = (busy1 - self._busy0) - (self._own() - self._own0)
        self.share = min(1.0, max(0.0, foreign / (wall * (psutil.cpu_count() or 1))))


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
# The peak: large fp32 matrix multiplies
# --------------------------------------------------------------------------------------
def matmul_probes(size: int = 2048, threads: int | None = None, *, shape: tuple[int, int, int] | None = None,
                  libraries: Sequence[str] = MATMUL_LIBRARIES) -> dict[str, Probe]:
    """{library: (callable, flops)}: one (m x k) @ (k x n) fp32 GEMM each in torch, numpy
    (its BLAS) and ONNX Runtime (MLAS), all on `threads` threads; m = k = n = size unless
    `shape` gives (m, k, n).

    The machine's attainable fp32 peak is the fastest of them: libraries differ by CPU (MKL
    takes a slower path on AMD, MLAS has AVX-512 kernels), so one library alone can make a
    model look faster than "peak". A library that is not installed is left out.
    """
    m, k, n = shape or (size, size, size)
    flops = 2.0 * m * k * n
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    probes: dict[str, Probe] = {}
    if "torch" in libraries:
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
    if "numpy" in libraries:
        try:
            from threadpoolctl import threadpool_limits

            if threads is not None:
                threadpool_limits(limits=int(threads), user_api="blas")     # numpy's BLAS, for the process
            probes["numpy"] = (lambda: np.matmul(a, b), flops)
        except ImportError:
            pass
    if "onnxruntime" in libraries:
        try:
            sess = _ort_matmul(b, m, threads)
            probes["onnxruntime"] = (lambda: sess.run(None, {"a": a}), flops)
        except ImportError:
            pass
    return probes


def _ort_matmul(b: np.ndarray, m: int, threads: int | None):
    """An ONNX Runtime CPU session computing a @ b for a (m, k) input `a`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = b.shape
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                          [numpy_helper.from_array(b, "b")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def fastest_probe(probes: Mapping[str, Probe], trials: int = 2) -> tuple[str, dict[str, float]]:
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


def cuda_matmul_probe(size: int = 8192) -> Probe:
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


# --------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------
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


__all__ = ["GAP_S", "ForeignCpu", "QuietGate", "Stopwatch", "cuda_matmul_probe", "fastest_probe",
           "interleaved_rounds", "matmul_probes", "rotated", "say", "summarize"]
