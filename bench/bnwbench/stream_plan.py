"""bench/stream.py's plan: its constants, how much a mode measures, the models it runs, and the
machine's other tenants (psutil)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from bnwbench.plan import PUBLISHED, QUICK_DEMO_STEPS, SHARED, BenchError
from bnwbench.system import GIB, usable_cpus

SCHEMA = "bnwvad-bench-stream/1"
REFERENCE_VIDEO = SHARED / "reference" / "infer_xd_5crop_T137.npz"
FPS = 30.0
FRAMES_PER_SNIPPET = 16
PERIOD_MS = 1e3 * FRAMES_PER_SNIPPET / FPS          # 533.3 ms: one snippet of a 30 fps source
COST_BUDGET = 2 * GIB
LAT_W, LAT_L = 64, 4
PHASES = ("accuracy", "agreement", "latency", "capacity", "cost")


class StreamPlan:
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


# -- the machine's other tenants -----------------------------------------------------------
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


# -- models --------------------------------------------------------------------------------
def prepare_models(plan: StreamPlan, cache: Path, demo_root: Path, demo_steps: int | None, work: Path, clock) -> dict:
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
