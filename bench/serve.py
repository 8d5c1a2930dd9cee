"""Load test of bnwvad-serve: N concurrent HTTP clients against the in-process runtime, same CPUs.

    .venv/bin/python bench/serve.py              # full: N = 1, 4, 16, 64, batching on and off
    .venv/bin/python bench/serve.py --quick      # a minute or two once the model is cached: for the test

Writes <out>/report.json and report.md (default out: bench/results/serve) and prints the markdown.

What runs. The published XD-Violence model (../shared/reference/official_state_dict.pkl, preset xd)
exported once by bnwvad.export into --cache (a seeded random paper-size model where ../shared is
absent; --model FILE uses any exported .onnx instead). Videos: stand-in random features (the
model's crops, 5, and D, 1024) with the lengths of a spread sample of XD-Violence's test videos
(../shared/datasets/xd-violence/test_snippets.csv; a fixed log-normal spread where it is absent).

- In-process: the runtime's Scorer over all the videos in one `score()` call (sorted by
  length, batched, padded with `lengths`): the reference throughput. Also one video per call,
  one after the other: the reference latency.
- Service: this process starts a local Ray cluster (all the usable CPUs), deploys the service
  of bnwvad.runtime.serve (one replica holding those CPUs, ONNX Runtime on as many threads as
  the in-process runner) and N client threads (bnwvad.client: urllib, the .npy bytes of a
  video per request) take the videos from a shared queue until all are scored; throughput =
  videos / wall time of the pass, latency = per request (body sent to answer parsed). Every
  answer is checked against the in-process result of the same video. Server-side batching on
  (--max-batch, --batch-wait-ms) and off (one video per runner call).

The clients, the HTTP proxy, Serve's controller and the replica all share the same CPUs as the
in-process runs had to themselves: the goal is the service at N = 16 reaching 80% of the
in-process throughput. Passes run in rounds (in-process, then every service configuration,
modes alternating), so drift in the machine's load hits all alike; each pass records the share
of the CPUs that processes outside this benchmark (and outside its Ray cluster) used meanwhile.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bnwbench.measure import Stopwatch, say  # noqa: E402
from bnwbench.plan import BENCH, REPO, XD_LENGTHS  # noqa: E402
from bnwbench.report import fmt, table  # noqa: E402
from bnwbench.system import git_revision, library_versions, load_average, machine_info, usable_cpus  # noqa: E402
from bnwbench.workload import builtin_lengths, feature_pool, read_lengths, spread_sample  # noqa: E402

SCHEMA = "bnwvad-bench-serve/1"
DEFAULT_OUT = BENCH / "results" / "serve"
GOAL_N, GOAL_SHARE = 16, 0.80
LIBRARIES = ("bnwvad", "ray", "onnxruntime", "numpy", "starlette", "uvicorn")


# -- CPU accounting -----------------------------------------------------------------------------
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


# -- workload -----------------------------------------------------------------------------------
class Workload:
    """Videos (name, T) cut from one random pool (C, T_max, D): (C, T, D) float32 views."""

    def __init__(self, rows: list[tuple[str, int]], crops: int, dim: int, seed: int = 0):
        self.rows = rows
        self.crops, self.dim = crops, dim
        self.pool = feature_pool(crops, max(t for _, t in rows) + 64, dim, seed)
        rng = np.random.default_rng(seed)
        self.offsets = [int(rng.integers(0, 64)) for _ in rows]

    def features(self, i: int) -> np.ndarray:
        t, o = self.rows[i][1], self.offsets[i]
        return self.pool[:, o:o + t]

    def body(self, i: int) -> bytes:
        from bnwvad.client import npy_bytes

        return npy_bytes(self.features(i))

    @property
    def snippets(self) -> int:
        return sum(t for _, t in self.rows)


def lengths_for(count: int) -> tuple[list[tuple[str, int]], str]:
    if XD_LENGTHS.is_file():
        rows, src = read_lengths(XD_LENGTHS), str(XD_LENGTHS)
    else:
        rows, src = builtin_lengths(), "builtin log-normal spread (XD-Violence's quartiles)"
    return spread_sample(rows, count), src


def prepare_model(model: Path | None, cache: Path, clock) -> tuple[Path, dict]:
    if model is not None:
        return model, {"kind": "given", "path": str(model)}
    import torch

    from bnwbench.models import export_graphs, load_speed_model

    torch.set_num_threads(max(1, usable_cpus()))
    with tempfile.TemporaryDirectory() as work:
        m, src, _, preset = load_speed_model(None, None, Path(work), seed=0)
        path = export_graphs(m, ["fp32"], cache, "speed", preset, clock)["fp32"]
    torch.set_num_threads(1)
    return path, src


# -- passes -------------------------------------------------------------------------------------
def pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


IN_PROCESS = {"all_at_once": "in-process Scorer, all videos in one call",
              "all_at_once_nospin": "the same, ONNX Runtime threads not spinning (as the replica)",
              "one_by_one": "in-process Scorer, one video per call"}


def in_process_pass(runner, work: Workload, one_by_one: bool) -> tuple[dict, dict]:
    """(figures, {video index: anomaly}) of the Scorer over the workload."""
    from bnwvad.runtime import Scorer

    scorer = Scorer(runner)
    lat = []
    out = {}
    with CpuSplit() as cpu:
        t0 = time.perf_counter()
        if one_by_one:
            for i in range(len(work.rows)):
                s = time.perf_counter()
                out[i] = scorer.score([np.ascontiguousarray(work.features(i))])[0].anomaly
                lat.append(time.perf_counter() - s)
        else:
            res = scorer.score([np.ascontiguousarray(work.features(i)) for i in range(len(work.rows))])
            out = {i: r.anomaly for i, r in enumerate(res)}
        wall = time.perf_counter() - t0
    return figures(work, wall, lat, cpu, calls=scorer.stats["calls"]), out


def service_pass(url: str, work: Workload, n: int, ref: dict) -> dict:
    """N client threads over the workload, each video once (a shared queue)."""
    from bnwvad.client import Client

    nxt = iter(range(len(work.rows)))
    lock = threading.Lock()
    lat: list[float] = []
    errors: list[str] = []
    worst = [0.0]

    def client_loop():
        c = Client(url, timeout=600)
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            body_src = work.features(i)
            s = time.perf_counter()
            try:
                r = c.score(body_src, layout="CTD")
            except Exception as e:          # noqa: BLE001 - counted and reported
                errors.append(f"{work.rows[i][0]}: {e}")
                continue
            dt = time.perf_counter() - s
            diff = float(np.abs(r["anomaly"].astype(np.float64) - ref[i]).max() / max(np.abs(ref[i]).max(), 1e-30))
            with lock:
                lat.append(dt)
                worst[0] = max(worst[0], diff)

    with CpuSplit() as cpu:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client_loop) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    f = figures(work, wall, lat, cpu)
    f.update(clients=n, errors=len(errors), error_examples=errors[:3], max_rel_diff=worst[0])
    return f


def figures(work: Workload, wall: float, lat: list[float], cpu: CpuSplit, **extra) -> dict:
    done = len(lat) if lat else len(work.rows)
    share = cpu.others_share or 0.0
    return {"seconds": round(wall, 3), "videos": done, "videos_per_s": done / wall,
            "videos_per_s_adjusted": done / wall / max(0.05, 1.0 - share),
            "snippet_crops_per_s": work.snippets * work.crops / wall,
            "p50_ms": None if not lat else 1e3 * pct(lat, 50), "p99_ms": None if not lat else 1e3 * pct(lat, 99),
            "cpu_s": cpu.seconds, "others_cpu_share": cpu.others_share, "_latencies": list(lat), **extra}


# -- the service --------------------------------------------------------------------------------
def start_cluster(cpus: int) -> None:
    import logging

    import ray
    import ray.serve  # noqa: F401 - configures its logger on import: quieten it after

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, object_store_memory=512 << 20)


def deploy_service(model: Path, cpus: int, threads: int, batching: bool, max_batch: int, wait_ms: float,
                   port: int, spin: bool = False) -> tuple[str, float]:
    from bnwvad.runtime.serve import ServeConfig, deploy

    cfg = ServeConfig(model=str(model), backend="ort-cpu", threads=threads, replica_cpus=float(cpus),
                      max_batch=max_batch if batching else 1, batch_wait_s=wait_ms / 1e3,
                      max_body=128 << 20, max_snippets=8192, spin=spin)
    t0 = time.perf_counter()
    url = deploy(cfg, host="127.0.0.1", port=port)
    return url, time.perf_counter() - t0


def warm(url: str, work: Workload) -> None:
    """A few requests before the timed passes (the replica's first calls, connections)."""
    from bnwvad.client import Client

    c = Client(url, timeout=600)
    for i in sorted(range(len(work.rows)), key=lambda i: work.rows[i][1])[:3]:
        c.score(work.features(i), layout="CTD")


def replica_stats(url: str) -> dict:
    from bnwvad.client import Client

    s = Client(url).stats()
    out = {k: s[k] for k in ("batches", "videos_in_batches", "runner_calls", "compute_busy_s")}
    out["batch_sizes"] = {int(k): v for k, v in s["batch_sizes"].items()}
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- report -------------------------------------------------------------------------------------
def markdown(rep: dict) -> str:
    ref = rep["in_process"][rep["reference"]]["videos_per_s"]
    ref_adj = rep["in_process"][rep["reference"]]["videos_per_s_adjusted"]
    rows = []
    for name, label in IN_PROCESS.items():
        r = rep["in_process"].get(name)
        if r is None:
            continue
        rows.append([label + (" **(reference)**" if name == rep["reference"] else ""), "–", fmt(r["videos_per_s"]),
                     fmt(r["snippet_crops_per_s"], ".0f"), fmt(r["videos_per_s"] / ref, ".0%"),
                     fmt(r["videos_per_s_adjusted"] / ref_adj, ".0%"), fmt(r["p50_ms"], ".0f"),
                     fmt(r["p99_ms"], ".0f"), "–", fmt(r["others_cpu_share"], ".0%")])
    for r in rep["service"]:
        b = r.get("replica") or {}
        per = f"{b['videos_in_batches'] / b['batches']:.2f} ({b['max_batch_seen']})" if b.get("batches") else "–"
        rows.append([f"service, batching {'on' if r['batching'] else 'off'}", r["clients"], fmt(r["videos_per_s"]),
                     fmt(r["snippet_crops_per_s"], ".0f"), fmt(r["videos_per_s"] / ref, ".0%"),
                     fmt(r["videos_per_s_adjusted"] / ref_adj, ".0%"), fmt(r["p50_ms"], ".0f"), fmt(r["p99_ms"], ".0f"),
                     per, fmt(r["others_cpu_share"], ".0%")])
    w = rep["workload"]
    lines = [f"## bnwvad-serve load test ({rep['mode']}) — {rep['machine']['cpu']}, {rep['cpus']} CPUs", "",
             f"{rep['created']}, bnwvad {rep['libraries'].get('bnwvad')} ({rep.get('git') or 'no git'}), "
             f"ray {rep['libraries'].get('ray')}, onnxruntime {rep['libraries'].get('onnxruntime')}. Model: "
             f"{rep['model']['kind']} (C = {w['crops']}, D = {w['dim']}). Workload: {w['videos']} videos, "
             f"{w['snippets']} snippets (lengths p0/p50/p100 {w['length_p0']}/{w['length_p50']}/{w['length_p100']}, "
             f"a spread sample of {Path(w['lengths_source']).name}), random features. One replica with "
             f"{rep['cpus']} CPUs and {rep['threads']} ONNX Runtime threads; the in-process runner has the same "
             f"threads. Server-side batching: up to {rep['max_batch']} videos per T bucket, "
             f"{rep['batch_wait_ms']:g} ms wait. Load average at start {rep['load_average']['start']}, at end "
             f"{rep['load_average']['end']}.", "",
             *table(["runtime", "N clients", "videos/s", "snippet-crops/s", "of in-process", "adjusted",
                     "p50 ms", "p99 ms", "videos per batch (max)", "other processes' CPU"], "lrrrrrrrrr", rows), "",
             f"Each row: the mean of its {rep['rounds']} passes (one per round; rounds run every configuration, "
             "in-process first, the service's modes alternating). The reference is the faster of the two "
             "all-at-once in-process runs. *adjusted*: each pass's videos/s divided by the share of the CPUs that "
             "other processes (outside this benchmark and its Ray cluster) left it, against the reference "
             "adjusted alike: roughly the comparison on a machine of one's own. Latency: per request, from "
             "sending its body to its answer parsed (in-process: one `score()` call). p50 / p99 over all the "
             "rounds' requests.", ""]
    g = rep.get("goal")
    if g:
        lines.append(f"Goal: at N = {GOAL_N} (batching on) the service reaches {g['share']:.0%} of the in-process "
                     f"throughput, {g['share_adjusted']:.0%} adjusted for other processes "
                     f"({'met' if g['met'] else 'NOT met'}; goal {GOAL_SHARE:.0%}).")
    worst = max((r["max_rel_diff"] for r in rep["service"]), default=0.0)
    errs = sum(r["errors"] for r in rep["service"])
    lines.append(f"Every answer checked against the in-process result of its video: max |service − in-process| / "
                 f"max |in-process| = {worst:.1e}; {errs} request(s) failed.")
    cpu = rep.get("cpu_note")
    if cpu:
        lines.append(cpu)
    if rep.get("note"):
        lines.append(rep["note"])
    return "\n".join(lines) + "\n"


def cpu_note(rep: dict) -> str | None:
    """Where the CPU went in the goal passes: replica (the model) vs the HTTP path."""
    g = next((r for r in rep["service"] if r["batching"] and r["clients"] == GOAL_N), None)
    if not g:
        return None
    c = g["cpu_s"]
    total = sum(c.values()) or 1.0
    parts = ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))
    return (f"CPU time of the N = {GOAL_N} passes (batching on, all rounds), by process: {parts}; "
            f"mean wall {g['seconds']:.1f} s per pass.")


# -- CLI ----------------------------------------------------------------------------------------
def parse_ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers") from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"{text!r}: expected positive integers")
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--quick", is_flag=True, help="12 short videos, N = 1 and 4, one round: for the test.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT / "cache",
              show_default=True, help="The exported model (kept between runs).")
@click.option("--model", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="An exported .onnx to serve instead of the published XD model.")
@click.option("--clients", default=None, help="N concurrent clients, comma-separated [1,4,16,64; quick 1,4].")
@click.option("--videos", type=click.IntRange(min=1), default=None,
              help="Videos (a spread sample of the XD test lengths) [96; quick 12].")
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Leave out longer videos [none; quick 256].")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Rounds of every pass [2; quick 1].")
@click.option("--max-batch", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--batch-wait-ms", type=click.FloatRange(min=0.0), default=5.0, show_default=True)
@click.option("--spin/--no-spin", default=False, show_default=True,
              help="ONNX Runtime's threads spin-wait in the replica (bnwvad-serve --spin).")
@click.option("--cpus", type=click.IntRange(min=1), default=None, help="CPUs of the cluster [usable CPUs].")
def main(quick, out, cache, model, clients, videos, max_length, rounds, max_batch, batch_wait_ms, spin, cpus):
    """Throughput and latency of bnwvad-serve under N concurrent clients, against the in-process runtime."""
    clock = Stopwatch()
    ns = parse_ints(clients) if clients else ([1, 4] if quick else [1, 4, 16, 64])
    count = videos or (12 if quick else 96)
    max_length = max_length or (256 if quick else None)
    rounds = rounds or (1 if quick else 2)
    cpus = cpus or usable_cpus()
    threads = cpus
    load0 = load_average()
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    path, src = prepare_model(model, cache, clock)
    from bnwvad.runtime import load_runner

    runner = load_runner(path, "ort-cpu", threads=threads)
    nospin = load_runner(path, "ort-cpu", threads=threads, session_config={
        "session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"})
    meta = runner.meta
    rows, lsrc = lengths_for(count if max_length is None else 4 * count)
    if max_length is not None:
        rows = spread_sample([r for r in rows if r[1] <= max_length], count)
    work = Workload(rows, meta.crops or 1, meta.feature_dim or 1024)
    say(f"model {path.name} ({meta.describe()}); {len(rows)} videos, {work.snippets} snippets; "
        f"N = {ns}; {rounds} round(s); {cpus} CPUs", clock)

    say("starting a local Ray cluster", clock)
    # Ray prints its cluster's error messages to sys.stdout from a thread: stdout is the report's.
    redirect = contextlib.redirect_stdout(sys.stderr)
    redirect.__enter__()
    start_cluster(cpus)
    import ray
    from ray import serve

    port = free_port()
    rep: dict = {"schema": SCHEMA, "mode": "quick" if quick else "full",
                 "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "git": git_revision(REPO),
                 "machine": machine_info(), "libraries": library_versions(LIBRARIES), "cpus": cpus,
                 "threads": threads, "spin": spin, "max_batch": max_batch, "batch_wait_ms": batch_wait_ms,
                 "model": {"path": str(path), **src},
                 "workload": {"videos": len(rows), "snippets": work.snippets, "crops": work.crops, "dim": work.dim,
                              "lengths_source": lsrc, "length_p0": min(t for _, t in rows),
                              "length_p50": int(statistics.median(t for _, t in rows)),
                              "length_p100": max(t for _, t in rows)},
                 "clients": ns, "rounds": rounds}
    inproc: dict[str, list] = {k: [] for k in IN_PROCESS}
    service: dict[tuple, list] = {}
    ref: dict = {}
    try:
        for rnd in range(rounds):
            for name in IN_PROCESS if rnd % 2 == 0 else reversed(IN_PROCESS):
                f, res = in_process_pass(nospin if name.endswith("nospin") else runner, work,
                                         one_by_one=name == "one_by_one")
                ref = ref or res
                inproc[name].append(f)
                say(f"round {rnd + 1}: in-process {name}: {f['videos_per_s']:.2f} videos/s", clock)
            modes = (True, False) if rnd % 2 == 0 else (False, True)
            for batching in modes:
                url, dt = deploy_service(path, cpus, threads, batching, max_batch, batch_wait_ms, port, spin)
                say(f"round {rnd + 1}: deployed, batching {'on' if batching else 'off'} ({dt:.1f} s)", clock)
                warm(url, work)
                for n in ns:
                    s0 = replica_stats(url)
                    f = service_pass(url, work, n, ref)
                    s1 = replica_stats(url)
                    f["replica"] = {k: round(s1[k] - s0[k], 3) for k in s1 if k != "batch_sizes"}
                    f["replica"]["max_batch_seen"] = max((b for b, c in s1["batch_sizes"].items()
                                                          if c > s0["batch_sizes"].get(b, 0)), default=0)
                    f["batching"] = batching
                    service.setdefault((batching, n), []).append(f)
                    say(f"round {rnd + 1}: batching {'on' if batching else 'off'}, N = {n}: "
                        f"{f['videos_per_s']:.2f} videos/s, p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms, "
                        f"{f['errors']} error(s)", clock)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            runner.close()
            nospin.close()
            time.sleep(0.5)
            redirect.__exit__(None, None, None)

    def mean(passes: list[dict]) -> dict:
        """The passes of one configuration over the rounds: mean throughput, latency percentiles
        over all their requests, CPU seconds summed."""
        out = dict(passes[-1])
        for k in ("videos_per_s", "videos_per_s_adjusted", "snippet_crops_per_s", "seconds"):
            out[k] = float(np.mean([f[k] for f in passes]))
        shares = [f["others_cpu_share"] for f in passes if f["others_cpu_share"] is not None]
        out["others_cpu_share"] = float(np.mean(shares)) if shares else None
        lat = [x for f in passes for x in f.pop("_latencies", [])]
        out.pop("_latencies", None)
        out["p50_ms"], out["p99_ms"] = (1e3 * pct(lat, 50), 1e3 * pct(lat, 99)) if lat else (None, None)
        out["rounds_videos_per_s"] = [round(f["videos_per_s"], 3) for f in passes]
        if "errors" in out:
            out["errors"] = sum(f["errors"] for f in passes)
            out["max_rel_diff"] = max(f["max_rel_diff"] for f in passes)
        if "replica" in out:
            rs = [f["replica"] for f in passes]
            out["replica"] = {k: (max(r[k] for r in rs) if k == "max_batch_seen" else
                                  round(sum(r[k] for r in rs), 3)) for k in rs[0]}
        out["cpu_s"] = {k: round(sum(f["cpu_s"].get(k, 0.0) for f in passes), 3)
                        for k in {k for f in passes for k in f["cpu_s"]}}
        return out

    rep["in_process"] = {k: mean(v) for k, v in inproc.items()}
    rep["reference"] = max(("all_at_once", "all_at_once_nospin"), key=lambda k: rep["in_process"][k]["videos_per_s"])
    rep["service"] = [mean(service[(b, n)]) for b in (True, False) for n in ns if (b, n) in service]
    ref_tp = rep["in_process"][rep["reference"]]["videos_per_s"]
    goal = next((r for r in rep["service"] if r["batching"] and r["clients"] == GOAL_N), None)
    if goal:
        share = goal["videos_per_s"] / ref_tp
        adj = goal["videos_per_s_adjusted"] / rep["in_process"][rep["reference"]]["videos_per_s_adjusted"]
        rep["goal"] = {"share": share, "share_adjusted": adj, "met": share >= GOAL_SHARE}
    rep["cpu_note"] = cpu_note(rep)
    rep["load_average"] = {"start": load0, "end": load_average()}
    rep["seconds"] = round(clock(), 1)
    md = markdown(rep)
    (out / "report.json").write_text(json.dumps(rep, indent=1, default=str))
    (out / "report.md").write_text(md)
    say(f"done in {clock():.0f} s; {out / 'report.md'}", clock)
    click.echo(md, nl=False)
    errors = sum(r["errors"] for r in rep["service"])
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
