"""Where the CPU went during a pass: this process, the Ray cluster it started (by role), and
the machine's other tenants (bench/serve.py, bench/ray_batch.py)."""
from __future__ import annotations

import time

import psutil


class CpuSplit:
    """CPU seconds during a `with` block: this process, its descendants (the Ray cluster it
    started: replica, proxy, controller, raylet, GCS) by role, and everything else on the machine
    (other tenants), from psutil's system-wide busy time."""

    ROLES = (("ServeReplica", "replica"), ("ProxyActor", "proxy"), ("ServeController", "controller"),
             ("raylet", "ray-other"), ("gcs_server", "ray-other"), ("ray::", "ray-other"))

    def __init__(self):
        self.me = psutil.Process()

    def _role(self, p: psutil.Process) -> str:
        try:
            text = " ".join(p.cmdline()) or p.name()
        except psutil.Error:
            return "ray-other"
        return next((role for key, role in self.ROLES if key in text), "ray-other")

    def _sample(self) -> dict:
        out: dict[str, float] = {}
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            role = "bench" if p.pid == self.me.pid else self._role(p)
            out[role] = out.get(role, 0.0) + t.user + t.system
        c = psutil.cpu_times()
        out["_busy"] = sum(c) - c.idle - getattr(c, "iowait", 0.0) - getattr(c, "guest", 0.0) - getattr(
            c, "guest_nice", 0.0)
        return out

    def __enter__(self) -> "CpuSplit":
        self.t0, self.s0 = time.perf_counter(), self._sample()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        s1 = self._sample()
        ours = {k: max(0.0, s1.get(k, 0.0) - self.s0.get(k, 0.0)) for k in s1 if k != "_busy"}
        busy = s1["_busy"] - self.s0["_busy"]
        cap = wall * (psutil.cpu_count() or 1)
        self.seconds = {k: round(v, 3) for k, v in ours.items()}
        self.others_share = min(1.0, max(0.0, (busy - sum(ours.values())) / cap)) if cap > 0 else None
        self.wall = wall
