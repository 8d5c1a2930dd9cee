"""Facts about this process and this machine: memory in use, peak memory, CPU, software.

Process and machine facts come from psutil. Two things it does not offer are read from /proc
here: the kernel's peak-RSS mark of this process (VmHWM) with its reset, and the CPU's model
name and instruction-set flags.

Peak memory of a contender is read from VmHWM, reset just before the measured call through
/proc/self/clear_refs; where that file is not writable a sampling thread stands in
(`PeakMemory`). Only a fresh process per contender gives an honest number: in a shared
process, allocator caches and ONNX Runtime's arenas of the others hide or inflate it.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

import psutil

MIB = 2 ** 20
GIB = 2 ** 30
# Instruction-set extensions that decide which kernels a library can use (fp16, int8, AMX).
CPU_FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
             "amx_int8", "f16c"}

_PROCESS = psutil.Process()


# --------------------------------------------------------------------------------------
# Memory of this process
# --------------------------------------------------------------------------------------
def vm_rss() -> int:
    """Resident set size of this process now, bytes."""
    return _PROCESS.memory_info().rss


def vm_hwm() -> int:
    """Peak resident set size (high-water mark) of this process, bytes; 0 where /proc is missing.

    psutil has no reader of VmHWM (and none of its reset below), so /proc/self/status it is."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, clear_refs value 5); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def available_memory() -> int:
    """Memory this process may still use, bytes: what is free under the tightest of its
    cgroup limits and the host's MemAvailable (the runtime's own reading)."""
    from bnwvad.runtime.memory import memory_budget

    return memory_budget("cpu", fraction=1.0).bytes


class PeakMemory:
    """Peak host RSS (and optionally device memory in use) over a `with` block, in bytes.

        with PeakMemory(device_free=fn) as pm:
            run()
        pm.host_delta, pm.peak, pm.device_delta

    host: VmHWM after the block (`peak`) minus RSS before it, VmHWM reset on entry; where the
    reset is not allowed, RSS sampled every `interval_s` (can miss a short spike: `method`
    says which). device_free: a function giving free device bytes (cudaMemGetInfo); sampled
    the same way, the delta is the largest drop of free memory below its value on entry.
    """

    def __init__(self, device_free: Callable[[], int] | None = None, interval_s: float = 0.002):
        self.device_free = device_free
        self.interval_s = interval_s
        self.host_delta = 0
        self.peak = 0
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
        self.peak = vm_hwm() if self._hwm else max(self._peak_rss, vm_rss())
        self.host_delta = max(0, self.peak - self._rss0)
        if self.device_free is not None:
            self._min_free = min(self._min_free if self._min_free is not None else self._free0,
                                 self.device_free())
            self.device_delta = max(0, self._free0 - self._min_free)


# --------------------------------------------------------------------------------------
# The machine and the software
# --------------------------------------------------------------------------------------
def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and its CPU_FLAGS. psutil offers neither, so /proc/cpuinfo."""
    model, flags = None, []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags":
                    flags = sorted(set(value.split()) & CPU_FLAGS)
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return psutil.cpu_count() or 1


def machine_info(gpu: Mapping | None = None) -> dict:
    cpu, flags = cpu_model_and_flags()
    mem = psutil.virtual_memory()
    return {
        "cpu": cpu,
        "logical_cpus": psutil.cpu_count(),
        "usable_cpus": usable_cpus(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_flags": flags,
        "ram_gib": round(mem.total / GIB, 1),
        "ram_available_gib": round(mem.available / GIB, 1) or None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": dict(gpu) if gpu else None,
    }


def gpu_info() -> dict | None:
    """The first CUDA device as torch sees it; None without torch or a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "memory_gib": round(p.total_memory / GIB, 1),
            "compute_capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
            "count": torch.cuda.device_count()}


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
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


__all__ = ["GIB", "MIB", "PeakMemory", "available_memory", "cpu_model_and_flags", "git_revision", "gpu_info",
           "library_versions", "load_average", "machine_info", "reset_hwm", "usable_cpus", "vm_hwm", "vm_rss"]
