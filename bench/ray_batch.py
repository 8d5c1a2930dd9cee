"""Archive scoring through Ray (bnwvad-infer --ray) against the single-process runtime, same CPUs.

    .venv/bin/python bench/ray_batch.py              # full: 64 XD-Violence-length videos
    .venv/bin/python bench/ray_batch.py --quick      # 8 short videos, for the test (< 1 min with --model)

Writes <out>/report.json and report.md (default out: bench/results/ray_batch), atomically, and
prints the markdown.

What runs. The model of bench/serve.py (bnwbench.serve_plan: the published XD-Violence model exported once into
--cache; --model FILE any exported .onnx). Videos: stand-in random features with the lengths of a
spread sample of XD-Violence's test videos (bnwbench.serve_plan.lengths_for, as bench/serve.py), written as (T, C, D)
.npy files into a temporary folder, which every run reads by path.

- in-process Scorer: the runtime's Scorer over the files (FileVideo sources), ONNX Runtime on all
  the CPUs: the compute alone, the reference.
- bnwvad-infer (one process): the command as a subprocess, process start and model load included.
- bnwvad-infer --ray, 1 and 2 actors: the command as a subprocess joining a local Ray cluster this
  script started beforehand (so the cluster's own start, 15-30 s here, is not counted but the
  job's is: connecting, Ray Data's plan, the actors' start and model load, the batches' round
  trips, the per-video records). The CPUs are split among the actors (2 actors x 1 CPU, 1 ONNX
  Runtime thread each; 1 actor x all CPUs).
- the fixed cost of a Ray job: the same command on a single short video.

Overhead per video through Ray = (Ray 1-actor wall - one-process wall - fixed cost) / videos. Every
Ray run's results.npz is checked against the in-process scores (max abs difference reported).
Passes run in rounds, alternating, so drift in the machine's load hits all alike; each pass records the
share of the CPUs that processes outside this benchmark (and its Ray cluster) used meanwhile.
"""
from __future__ import annotations

import datetime as _dt
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bnwbench.cpu_share import CpuSplit  # noqa: E402
from bnwbench.measure import Stopwatch, say  # noqa: E402
from bnwbench.plan import BENCH, REPO  # noqa: E402
from bnwbench.report import fmt, table  # noqa: E402
from bnwbench.serve_plan import Workload, lengths_for, prepare_model  # noqa: E402 - bench/serve.py's model, lengths
from bnwbench.system import git_revision, library_versions, load_average, machine_info, usable_cpus  # noqa: E402
from bnwbench.workload import spread_sample  # noqa: E402

SCHEMA = "bnwvad-bench-ray-batch/1"
DEFAULT_OUT = BENCH / "results" / "ray_batch"
LIBRARIES = ("bnwvad", "ray", "onnxruntime", "numpy", "pyarrow")
LAUNCH = ("import sys; from bnwvad._extras import launch; "
          "sys.exit(launch('bnwvad-infer', 'bnwvad.runtime.cli'))")
PASSES = {"inproc": "in-process Scorer", "cli": "bnwvad-infer (one process)",
          "ray1": "bnwvad-infer --ray, 1 actor", "ray2": "bnwvad-infer --ray, 2 actors"}


class CpuSplitWithCommands(CpuSplit):
    """bnwbench.cpu_share.CpuSplit (bench/serve.py's), counting as the benchmark's own also the processes that end
    within the pass: the command runs (reaped by this script: its children's CPU times) and the
    Ray workers of their jobs (reaped by the raylet: polled while they live, every 0.2 s)."""

    def __enter__(self) -> "CpuSplitWithCommands":
        self._seen: dict[int, list[float]] = {}       # grandchild pid -> [CPU s at first sight, last]
        self._start = time.time()
        self._stop = threading.Event()
        self._poll_once()
        super().__enter__()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll_once(self) -> None:
        for p in self.me.children(recursive=True):
            try:
                if p.ppid() == self.me.pid:
                    continue                              # a direct child: its children_* times
                t = p.cpu_times()
                v = t.user + t.system
                born = p.create_time() >= self._start
            except psutil.Error:
                continue
            self._seen.setdefault(p.pid, [0.0 if born else v, v])[1] = v

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self._poll_once()

    def _sample(self) -> dict:
        out = super()._sample()
        t = self.me.cpu_times()
        out["bench"] = out.get("bench", 0.0) + t.children_user + t.children_system
        return out

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        live = {p.pid for p in self.me.children(recursive=True)}
        gone = sum(last - first for pid, (first, last) in self._seen.items() if pid not in live)
        super().__exit__(*exc)
        cap = self.wall * (psutil.cpu_count() or 1)
        if self.others_share is not None and cap > 0:
            self.others_share = max(0.0, self.others_share - gone / cap)
        self.seconds["ended"] = round(gone, 3)


def write_features(work: Workload, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (name, _) in enumerate(work.rows):
        stem = f"{i:04d}_{Path(name).stem}"
        np.save(folder / f"{stem}.npy", np.ascontiguousarray(work.features(i).transpose(1, 0, 2)))
        names.append(stem)
    return names


def inproc_pass(model: Path, feats: Path, threads: int) -> tuple[float, dict]:
    from bnwvad.runtime import Scorer, load_runner
    from bnwvad.runtime.inputs import collect_videos

    runner = load_runner(model, "ort-cpu", threads=threads)
    try:
        videos, bad = collect_videos([feats], feature_dim=runner.meta.feature_dim, crops_hint=runner.meta.crops)
        assert not bad, [f.message for f in bad]
        scorer = Scorer(runner)
        t0 = time.perf_counter()
        out = {r.name: r.anomaly for r in scorer.iter_results(videos)}
        return time.perf_counter() - t0, out
    finally:
        runner.close()


def cli_pass(model: Path, feats: Path, out: Path, args: list[str]) -> float:
    cmd = [sys.executable, "-c", LAUNCH, str(feats), "--model", str(model), "--out", str(out), "-q",
           "--backend", "ort-cpu", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return wall


def max_diff(out: Path, ref: dict) -> float:
    from bnwvad.runtime.io import load_results

    got = load_results(out / "results.npz")
    assert set(got) == set(ref), (sorted(got)[:3], sorted(ref)[:3])
    return max(float(np.abs(got[n]["anomaly"] - ref[n]).max()) for n in ref)


def markdown(rep: dict) -> str:
    w = rep["workload"]
    lines = [f"# bnwvad-infer --ray: archive scoring on Ray Data ({rep['mode']})", "",
             f"{w['videos']} videos of XD-Violence test lengths ({w['lengths_source']}; T {w['length_p0']}-"
             f"{w['length_p100']}, median {w['length_p50']}), {w['crops']} crops x D {w['dim']} stand-in features, "
             f"{w['snippets']} snippets; model {Path(rep['model']['file']).name}; {rep['cpus']} CPUs; "
             f"{rep['rounds']} round(s), mean wall time. The machine is shared: the last column is the share of "
             f"its CPUs that processes outside this benchmark (and its Ray cluster) used meanwhile.", ""]
    rows = []
    for key, label in PASSES.items():
        r = rep["passes"][key]
        rows.append([label, fmt(r["seconds"], ".2f"), fmt(r["videos_per_s"], ".2f"),
                     fmt(r["snippet_crops_per_s"], ".0f"), fmt(r["vs_inproc"], ".2f"),
                     "–" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}",
                     f"{100 * r['others_cpu_share']:.0f}%"])
    lines += table(["runtime", "seconds", "videos/s", "snippet-crops/s", "x in-process", "max |diff|",
                    "other processes' CPU"], "lrrrrrr", rows)
    o = rep["overhead"]
    lines += ["", f"Fixed cost of a Ray job (joining the running cluster, 1 short video): "
                  f"{o['fixed_job_s']:.1f} s. Overhead per video through Ray, beyond that and the one-process "
                  f"run: {1e3 * o['per_video_s']:.0f} ms "
                  f"((Ray 1-actor {o['ray1_s']:.1f} s - one process {o['cli_s']:.1f} s - fixed {o['fixed_job_s']:.1f} s)"
                  f" / {w['videos']} videos)" + ("; below zero: within the run-to-run noise of the passes"
                                                  if o["per_video_s"] < 0 else "") + ".", "",
              f"Command: `{rep['command']}`; git {rep['git']}; {rep['created']}.", ""]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--quick", is_flag=True, help="8 videos of at most 64 snippets, one round: for the test.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=BENCH / "results" / "serve" / "cache",
              show_default=True, help="Where the exported model is cached (shared with bench/serve.py).")
@click.option("--model", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Any exported .onnx instead of the published model.")
@click.option("--videos", type=click.IntRange(min=2), default=None, help="Videos [64; quick 8].")
@click.option("--max-length", type=click.IntRange(min=1), default=None, help="Longest video [none; quick 64].")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Rounds of every pass [2; quick 1].")
@click.option("--cpus", type=click.IntRange(min=2), default=None, help="CPUs of the cluster [usable CPUs].")
def main(quick, out, cache, model, videos, max_length, rounds, cpus):
    """Videos/s and snippet-crops/s of bnwvad-infer --ray with 1 and 2 actors against the runtime in one process."""
    from bnwvad.atomic import atomic_write_bytes, atomic_write_json

    clock = Stopwatch()
    count = videos or (8 if quick else 64)
    max_length = max_length or (64 if quick else None)
    rounds = rounds or (1 if quick else 2)
    cpus = cpus or usable_cpus()
    load0 = load_average()
    cache.mkdir(parents=True, exist_ok=True)
    path, src = prepare_model(model, cache, clock)
    from bnwvad.runtime import load_runner

    r0 = load_runner(path, "ort-cpu")
    meta = r0.meta
    r0.close()
    rows, lsrc = lengths_for(count if max_length is None else 4 * count)
    if max_length is not None:
        rows = spread_sample([r for r in rows if r[1] <= max_length], count)
    work = Workload(rows, meta.crops or 1, meta.feature_dim or 1024)
    say(f"model {path.name} ({meta.describe()}); {len(rows)} videos, {work.snippets} snippets; {cpus} CPUs", clock)

    import ray

    from bnwvad.runtime.ray_batch import start_ray

    with tempfile.TemporaryDirectory(prefix="bnwvad-ray-bench.") as tmp:
        tmp = Path(tmp)
        feats, one = tmp / "feats", tmp / "one"
        write_features(work, feats)
        one.mkdir()
        shortest = min(feats.iterdir(), key=lambda p: np.load(p, mmap_mode="r").shape[0])
        (one / shortest.name).write_bytes(shortest.read_bytes())
        say("starting a local Ray cluster", clock)
        start_ray(None, cpus, quiet=True)
        address = ray.get_runtime_context().gcs_address
        args = {"cli": ["--threads", str(cpus)],
                "ray1": ["--actors", "1", "--cpus-per-actor", str(cpus), f"--ray={address}"],
                "ray2": ["--actors", "2", "--cpus-per-actor", str(cpus / 2), f"--ray={address}"]}
        walls: dict[str, list[float]] = {k: [] for k in PASSES}
        others: dict[str, list[float]] = {k: [] for k in PASSES}   # CPU share of processes not ours
        diffs: dict[str, float] = {}
        fixed: list[float] = []
        ref: dict = {}
        try:
            for rnd in range(rounds):
                order = list(PASSES) if rnd % 2 == 0 else list(reversed(PASSES))
                for key in order:
                    with CpuSplitWithCommands() as cpu:
                        if key == "inproc":
                            wall, ref = inproc_pass(path, feats, cpus)
                        else:
                            dest = tmp / f"out_{key}_{rnd}"
                            wall = cli_pass(path, feats, dest, args[key])
                    walls[key].append(wall)
                    others[key].append(cpu.others_share or 0.0)
                    say(f"round {rnd + 1}: {PASSES[key]}: {wall:.2f} s (other processes: "
                        f"{100 * others[key][-1]:.0f}% of the CPUs)", clock)
                fixed.append(cli_pass(path, one, tmp / f"out_one_{rnd}", args["ray1"]))
                say(f"round {rnd + 1}: a Ray job of 1 short video: {fixed[-1]:.2f} s", clock)
            for key in ("ray1", "ray2", "cli"):          # every run's scores against the in-process ones
                diffs[key] = max(max_diff(tmp / f"out_{key}_{r}", ref) for r in range(rounds))
        finally:
            ray.shutdown()
    mean = {k: statistics.mean(v) for k, v in walls.items()}
    crops_snippets = work.snippets * work.crops
    passes = {k: {"seconds": round(mean[k], 6), "rounds_s": [round(x, 6) for x in walls[k]],
                  "videos_per_s": len(rows) / mean[k], "snippet_crops_per_s": crops_snippets / mean[k],
                  "vs_inproc": mean["inproc"] / mean[k], "max_abs_diff": diffs.get(k),
                  "others_cpu_share": statistics.mean(others[k])} for k in PASSES}
    fixed_s = statistics.mean(fixed)
    rep = {"schema": SCHEMA, "mode": "quick" if quick else "full",
           "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "git": git_revision(REPO),
           "machine": machine_info(), "libraries": library_versions(LIBRARIES), "cpus": cpus, "rounds": rounds,
           "model": {**src, "file": str(path)},
           "workload": {"videos": len(rows), "snippets": work.snippets, "crops": work.crops, "dim": work.dim,
                        "lengths_source": lsrc, "length_p0": min(t for _, t in rows),
                        "length_p50": int(statistics.median(t for _, t in rows)),
                        "length_p100": max(t for _, t in rows)},
           "passes": passes,
           "overhead": {"fixed_job_s": round(fixed_s, 3), "ray1_s": round(mean["ray1"], 3),
                        "cli_s": round(mean["cli"], 3),
                        "per_video_s": (mean["ray1"] - mean["cli"] - fixed_s) / len(rows)},
           "load_average": {"start": load0, "end": load_average()}, "seconds": round(clock(), 1)}
    md = markdown(rep)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", rep, indent=1, default=str)
    atomic_write_bytes(out / "report.md", md.encode())
    say(f"done in {clock():.0f} s; {out / 'report.md'}", clock)
    click.echo(md, nl=False)


if __name__ == "__main__":
    main()
