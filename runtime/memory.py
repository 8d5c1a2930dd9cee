"""How much memory this process may use: the tightest of its container's limit, the host's
available memory and free GPU memory, and which one that was.

Inside a container the host's MemAvailable says nothing about what the process may use: a
cgroup limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) below it is what the kernel
enforces, with SIGKILL. The budget is derived from what is left under every limit that
applies, so a run stays inside its container instead of losing its work to the OOM killer.

    budget = memory_budget("cpu")
    budget.bytes, budget.limit.source  # e.g. 1.4 GiB, "cgroup v2 memory.max (/sys/fs/cgroup/...)"
    budget = memory_budget("cpu", include_process=True)   # the whole process: RSS now + that share
    given_budget(2 << 30, cap=memory_budget("cpu", fraction=1.0, include_process=True))

A budget that bounds the PROCESS (what `Scorer` holds) counts what the process already holds:
derived, it is the RSS now plus a share of what is free (`include_process=True`); given
(--memory-budget), it is taken as the whole process's bound, capped at what the tightest limit
allows, since beyond that the kernel kills. psutil reads the host's memory; cgroup files are
read directly (psutil does not read them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import human_bytes

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# v1 reports "no limit" as a huge page-aligned number; anything past this is no limit.
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Limit:
    """One memory limit that applies to this process and what is left under it, in bytes."""

    source: str          # e.g. "cgroup v2 memory.max (/sys/fs/cgroup/user.slice)", "MemAvailable"
    available: int
    total: int | None = None

    def describe(self) -> str:
        if self.total is not None:
            return f"{self.source}: {human_bytes(self.available)} free of {human_bytes(self.total)}"
        return f"{self.source}: {human_bytes(self.available)} free"


@dataclass(frozen=True)
class MemoryBudget:
    """The bytes a run may use and the limit that set them.

    in_use: bytes the process held when the budget was derived with include_process=True,
    counted inside `bytes` (bytes = in_use + fraction x what is free under `limit`).
    given: the bytes the user asked for (--memory-budget), when the budget was given;
    `bytes` is smaller when the tightest limit capped it.
    """

    bytes: int
    limit: Limit               # the tightest limit
    fraction: float            # of limit.available
    limits: tuple[Limit, ...]  # every limit read
    in_use: int = 0
    given: int | None = None

    @property
    def source(self) -> str:
        return self.limit.source

    @property
    def capped(self) -> bool:
        return self.given is not None and self.bytes < self.given

    def describe(self) -> str:
        if self.given is not None and not self.capped:
            return f"{human_bytes(self.bytes)} (given, --memory-budget)"
        share = f"{self.fraction:.0%} of what is free under the tightest limit, {self.limit.describe()}"
        if self.capped:
            return (f"{human_bytes(self.bytes)} (given {human_bytes(self.given)}, capped at "
                    f"{human_bytes(self.in_use)} in use + {share})")
        if self.in_use:
            return f"{human_bytes(self.bytes)} for the process ({human_bytes(self.in_use)} in use + {share})"
        return f"{human_bytes(self.bytes)} ({share})"


def _read_int(path: Path) -> int | None:
    """An integer cgroup file; None when missing, unreadable or "max"."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _inactive_file(stat: Path, key: str) -> int:
    """Page cache the kernel reclaims before it kills (memory.stat), counted as free."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory-controller path) of this process, from /proc/self/cgroup."""
    v2 = v1 = None
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, rel: str) -> list[Path]:
    """base/rel and every folder above it up to base, deepest first: a parent's limit binds
    its children too. Inside a container the process's own path is often not mounted
    (the container's cgroup IS the mount's root): then base alone."""
    rel = rel.strip("/")
    out = []
    if rel:
        p = base / rel
        while True:
            if p.is_dir():
                out.append(p)
            if p == base:
                break
            p = p.parent
    if base not in out:
        out.append(base)
    return out


def cgroup_limits(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> list[Limit]:
    """Every cgroup memory limit over this process (v2 and v1), with what is free under it:
    limit - usage + inactive page cache."""
    v2, v1 = _own_cgroups(proc_cgroup)
    # (version, base folder, own path, limit file, usage file, reclaimable key in memory.stat)
    hierarchies = []
    if v2 is not None and (root / "cgroup.controllers").exists():
        hierarchies.append(("v2", root, v2, "memory.max", "memory.current", "inactive_file"))
    if v1 is not None:
        hierarchies.append(("v1", root / "memory", v1, "memory.limit_in_bytes", "memory.usage_in_bytes",
                            "total_inactive_file"))
    limits: list[Limit] = []
    for version, base, own, limit_file, usage_file, cache_key in hierarchies:
        for d in _ancestors(base, own):
            top = _read_int(d / limit_file)
            if top is None or top >= _UNLIMITED:
                continue
            free = top - (_read_int(d / usage_file) or 0) + _inactive_file(d / "memory.stat", cache_key)
            limits.append(Limit(f"cgroup {version} {limit_file} ({d})", max(0, min(free, top)), top))
    return limits


def host_limit() -> Limit | None:
    """MemAvailable of the host (psutil), or None where it cannot be read."""
    try:
        import psutil
    except ImportError:
        return None
    vm = psutil.virtual_memory()
    return Limit("MemAvailable (host)", int(vm.available), int(vm.total))


def gpu_limit(device_id: int = 0) -> Limit | None:
    """Free memory of the CUDA device (cudaMemGetInfo through libcudart), or None."""
    try:
        from . import _cuda

        _cuda.set_device(device_id)
        free, total = _cuda.mem_get_info()
    except Exception:      # no libcudart, no GPU: the host's limits are the only ones
        return None
    return Limit(f"free GPU memory (device {device_id})", int(free), int(total))


DEFAULT_FRACTION = 0.5
FALLBACK_BYTES = 4 << 30


def memory_budget(device: str = "cpu", *, fraction: float = DEFAULT_FRACTION, device_id: int = 0,
                  root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP,
                  include_process: bool = False) -> MemoryBudget:
    """`fraction` of what is free under the tightest limit that applies: the cgroup limits
    over this process, the host's MemAvailable, and on CUDA the device's free memory.
    4 GiB, said so, when none can be read.

    include_process: on "cpu", add what this process holds now (its RSS, already not free),
    so that `bytes` bounds the whole process's RSS rather than its growth from here. On
    CUDA the budget is device memory and the process's host RSS is not added."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction = {fraction}; expected a share in (0, 1]")
    limits = list(cgroup_limits(root, proc_cgroup))
    host = host_limit()
    if host is not None:
        limits.append(host)
    if device == "cuda":
        gpu = gpu_limit(device_id)
        if gpu is not None:
            limits.append(gpu)
    if not limits:
        fallback = Limit("nothing readable (no cgroup files, psutil or libcudart); a fixed 4 GiB",
                         FALLBACK_BYTES)
        return MemoryBudget(FALLBACK_BYTES, fallback, 1.0, (fallback,))
    tightest = min(limits, key=lambda lim: lim.available)
    in_use = process_rss() if include_process and device != "cuda" else 0
    return MemoryBudget(in_use + int(tightest.available * fraction), tightest, fraction, tuple(limits),
                        in_use=in_use)


def given_budget(nbytes: int, cap: MemoryBudget | None = None) -> MemoryBudget:
    """A budget the user set (--memory-budget / memory_budget=), for the whole process.

    cap: what the tightest limit allows (memory_budget(device, fraction=1.0,
    include_process=True)); a given budget above it is lowered to it and says so, because
    past it the kernel kills the process whatever the user asked for."""
    n = int(nbytes)
    if cap is not None and cap.bytes < n:
        return MemoryBudget(cap.bytes, cap.limit, cap.fraction, cap.limits, in_use=cap.in_use, given=n)
    lim = Limit("given (--memory-budget)", n)
    return MemoryBudget(n, lim, 1.0, (lim,), given=n)


def process_rss() -> int:
    """Resident set size of this process now, bytes (0 where psutil is missing)."""
    try:
        import psutil
    except ImportError:
        return 0
    return int(psutil.Process(os.getpid()).memory_info().rss)


__all__ = ["Limit", "MemoryBudget", "cgroup_limits", "given_budget", "gpu_limit", "host_limit",
           "memory_budget", "process_rss"]
