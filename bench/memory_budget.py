"""Peak RSS of bnwvad.runtime's Scorer against its memory budget, one long video per case.

    .venv/bin/python bench/memory_budget.py [--model xd.onnx] [--lengths 6000,9000] [--crops 1,5]
                                            [--budgets 2GiB,3GiB,auto@3GiB] [--old] [--cgroup] [--json out.json]

Every case (T, C, budget) runs in a fresh process, so its peak resident set (VmHWM, the
kernel's high-water mark of the whole process: imports, model, features, calls) is its own:
the process loads the model (ONNX Runtime CPU, arena on unless --no-arena), makes random
stand-in features (C, T, D) float32, builds `Scorer(runner, memory_budget=B)` and scores the
video. A case whose single crop needs more than the budget allows must end in a clean
MemoryBudgetError (reported in the table), never be killed. A budget `auto@3GiB` is not given
but derived (`Scorer(runner)`), inside a cgroup of 3 GiB with --cgroup.

--old adds, per case, the pre-#10 behaviour for comparison: the budget bounded each call's
estimate only (`Scorer(runner, call_budget=B)`: no baseline, no arena overshoot, no features
held), and the derived budget was half of the host's MemAvailable. --cgroup runs every case
inside a memory cgroup whose limit is the budget (or X for auto@X; root with a writable v1
/sys/fs/cgroup/memory or v2 subtree): a case over its limit is then killed (137), as in a
container.

Without --model the published weights (../shared/reference/official_state_dict.pkl) are
exported with preset xd in a subprocess (torch stays out of the measured processes); without
them, a seeded random BNWVAD(ModelConfig()) (paper sizes, D = 1024) is exported instead.
The table is markdown, printed at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("BNWVAD_SHARED", REPO.parent / "shared")) / "reference" / "official_state_dict.pkl"
MIB = 1 << 20
GIB = 1 << 30

_EXPORT = """
import sys, torch
from pathlib import Path
from bnwvad.export import export_onnx
src, out = sys.argv[1], sys.argv[2]
if src:
    export_onnx(src, out, preset="xd", verify=False)
else:
    from bnwvad import BNWVAD, ModelConfig
    torch.manual_seed(0)
    export_onnx(BNWVAD(ModelConfig()).eval(), out, verify=False)
"""


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def run_child(spec: dict) -> dict:
    """One case, in this (fresh) process."""
    import numpy as np

    from bnwvad.runtime import ArraySource, MemoryBudgetError, Scorer, estimate_bytes, load_runner
    from bnwvad.runtime.runners import SHRINK_ABOVE

    runner = load_runner(spec["model"], "ort-cpu", threads=spec["threads"], arena=spec["arena"])
    d = runner.meta.feature_dim or 1024
    t, c, b = spec["T"], spec["C"], spec["budget"]
    runner.run(np.zeros((1, c, 16, d), np.float32), np.array([16]), check=False)   # warm-up, small
    if spec["old"]:
        if b is None:                                   # the pre-#10 default: half of MemAvailable
            from bnwvad.runtime.memory import host_limit

            b = host_limit().available // 2
        scorer = Scorer(runner, call_budget=b, crops=None)
    else:
        scorer = Scorer(runner, memory_budget=b, crops=None)
    feats = np.random.default_rng(0).standard_normal((c, t, d), dtype=np.float32)
    plan = scorer.plan([t], [c])
    modes = sorted({("on, shrinks after" if call.bytes > SHRINK_ABOVE else "on") if call.arena and runner.arena
                    else ("off (arena-free session)" if runner.arena else "off (--no-arena)")
                    for call in plan.calls}) or ["-"]
    t0 = time.perf_counter()
    result, calls = "scored", 0
    for r in scorer.iter_results([ArraySource("v", feats)]):
        if hasattr(r, "anomaly"):
            calls = r.calls
        else:
            kind = type(r.error).__name__
            result = f"{kind}" if isinstance(r.error, MemoryBudgetError) else f"{kind}: {r.error}"
            spec["message"] = str(r.error)
    seconds = time.perf_counter() - t0
    return {**spec, "estimate": estimate_bytes(1, t, runner.meta), "baseline": scorer.baseline,
            "reserve": scorer.reserve, "call_budget": scorer.call_budget, "budget_used": scorer.memory_budget,
            "budget_text": scorer.budget.describe(),
            "planned": scorer.baseline + max((call.peak for call in plan.calls), default=0),
            "chunk": max((call.crops[1] - call.crops[0] for call in plan.calls), default=0),
            "peak_rss": _status("VmHWM:"), "arena_mode": ", ".join(modes), "calls": calls,
            "seconds": seconds, "result": result}


# -- a memory cgroup per case (--cgroup) ---------------------------------------------------------
def make_cgroup(limit: int) -> tuple[Path, Path]:
    """(folder, procs file) of a new memory cgroup limited to `limit` bytes: v1 or v2."""
    name = f"bnwvad-bench-{uuid.uuid4().hex[:8]}"
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        d = v1 / name
        d.mkdir()
        (d / "memory.limit_in_bytes").write_text(str(limit))
        return d, d / "cgroup.procs"
    v2 = Path("/sys/fs/cgroup")
    if "memory" in (v2 / "cgroup.subtree_control").read_text().split():
        d = v2 / name
        d.mkdir()
        (d / "memory.max").write_text(str(limit))
        (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
        return d, d / "cgroup.procs"
    raise click.UsageError("--cgroup: no writable memory cgroup (v1 /sys/fs/cgroup/memory or a v2 "
                           "root with the memory controller); run as root on such a machine")


def remove_cgroup(d: Path) -> None:
    for _ in range(50):
        try:
            d.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def run_case(spec: dict, cgroup: bool, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    folder = None
    if cgroup:
        folder, procs = make_cgroup(spec["limit"])
        cmd = ["bash", "-c", f'echo $$ > {procs} && exec "$@"', "bash", *cmd]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        if folder is not None:
            remove_cgroup(folder)
    if p.returncode != 0 or not p.stdout.strip():
        killed = p.returncode in (137, -9)
        return {**spec, "result": "KILLED (137)" if killed else f"exit {p.returncode}: {p.stderr.strip()[-300:]}",
                "peak_rss": None, "seconds": None, "estimate": None, "planned": None, "arena_mode": "?",
                "calls": 0, "chunk": 0}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _mib(x) -> str:
    return "–" if x is None else f"{x / MIB:,.0f}"


def _budget_cell(r: dict) -> str:
    if r["budget"] is not None:
        return f"{r['budget'] / GIB:g} GiB"
    where = f" in a {r['limit'] / GIB:g} GiB cgroup" if r.get("cgroup") else ""
    used = r.get("budget_used")
    what = "½ MemAvailable" if r["old"] else "derived"
    return f"{what}{where}" + (f": {used / GIB:.2f} GiB" if used else "")


def table(rows: list[dict]) -> str:
    head = ("| T | C | budget | semantics | estimate, 1 crop (MiB) | planned peak (MiB) | peak RSS (MiB) | "
            "peak / budget | arena mode | crops per call | seconds | result |")
    out = [head, "|---:|---:|---|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        budget = r["budget"] if r["budget"] is not None else r.get("budget_used")
        ratio = "–" if r.get("peak_rss") is None or not budget else f"{r['peak_rss'] / budget:.2f}"
        out.append(f"| {r['T']} | {r['C']} | {_budget_cell(r)} | {'pre-#10 (per call)' if r['old'] else 'process'} | "
                   f"{_mib(r.get('estimate'))} | {_mib(r.get('planned')) if r.get('calls') else '–'} | "
                   f"{_mib(r.get('peak_rss'))} | {ratio} | {r.get('arena_mode', '?')} | "
                   f"{r.get('chunk') if r.get('calls') else '–'} | "
                   f"{'–' if r.get('seconds') is None else format(r['seconds'], '.1f')} | {r['result']} |")
    return "\n".join(out)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An exported .onnx (default: export the published weights, or a seeded random paper-size model).")
@click.option("--lengths", default="6000,9000", show_default=True, help="Snippet counts T.")
@click.option("--crops", default="1,5", show_default=True, help="Crop counts C.")
@click.option("--budgets", default="2GiB,3GiB", show_default=True,
              help="Memory budgets (--memory-budget); auto@3GiB: derived, in a 3 GiB cgroup with --cgroup.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--arena/--no-arena", default=True, show_default=True, help="ONNX Runtime's CPU arena.")
@click.option("--old", is_flag=True, help="Also run each case with the pre-#10 budget (per call only).")
@click.option("--cgroup", is_flag=True, help="Run each case in a memory cgroup limited to its budget.")
@click.option("--timeout", type=float, default=1800, show_default=True, help="Seconds per case.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--child", hidden=True, default=None)
def main(model, lengths, crops, budgets, threads, arena, old, cgroup, timeout, json_out, child):
    """Peak RSS against the memory budget for long videos, a fresh process per case."""
    if child is not None:
        print(json.dumps(run_child(json.loads(child))))
        return
    from bnwvad.runtime.errors import parse_bytes

    label = f"{model}"
    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            label = "published XD-Violence weights" if REFERENCE.is_file() else "random paper-size BNWVAD"
            model = Path(tmp) / "model.onnx"
            src = str(REFERENCE) if REFERENCE.is_file() else ""
            what = "the published weights (preset xd)" if src else "a seeded random BNWVAD(ModelConfig())"
            click.echo(f"exporting {what} to {model}", err=True)
            subprocess.run([sys.executable, "-c", _EXPORT, src, str(model)], check=True)
        rows = []
        for text in budgets.split(","):
            auto = text.strip().lower().startswith("auto")
            limit = parse_bytes(text.split("@", 1)[1]) if auto and "@" in text else None
            b = None if auto else parse_bytes(text)
            if cgroup and b is None and limit is None:
                raise click.UsageError(f"--budgets {text}: with --cgroup a derived budget needs its cgroup's "
                                       f"limit, e.g. auto@3GiB")
            for t in [int(x) for x in lengths.split(",")]:
                for c in [int(x) for x in crops.split(",")]:
                    for o in ([False, True] if old else [False]):
                        spec = {"model": str(model), "T": t, "C": c, "budget": b, "limit": limit or b,
                                "threads": threads, "arena": arena, "old": o, "cgroup": cgroup}
                        r = run_case(spec, cgroup, timeout)
                        rows.append(r)
                        click.echo(f"T={t} C={c} budget {_budget_cell(r)} {'pre-#10' if o else 'process'}: "
                                   f"peak {_mib(r.get('peak_rss'))} MiB, {r['result']}", err=True)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=1))
    click.echo(f"\nModel: {label}, ONNX Runtime CPU, {threads} threads, arena {'on' if arena else 'off'}"
               f"{', each case in a memory cgroup limited to its budget' if cgroup else ''}.\n")
    click.echo(table(rows))


if __name__ == "__main__":
    main()
