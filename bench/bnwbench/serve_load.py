"""bench/serve.py's passes: the in-process Scorer over the workload, and N client threads
(bnwvad.client) against the service; the service's deployment on a local Ray cluster."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from bnwbench.cpu_share import CpuSplit
from bnwbench.measure import say
from bnwbench.serve_plan import IN_PROCESS, Workload


def pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


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


def run_rounds(rounds: int, ns: list[int], runner, nospin, work: Workload, path: Path, cpus: int, threads: int,
               max_batch: int, batch_wait_ms: float, port: int, spin: bool, clock) -> tuple[dict, dict]:
    """Every pass, `rounds` times: the in-process ones first (their order alternating), then
    the service with batching on and off (alternating) at every N. ({in-process name: [figures
    per round]}, {(batching, N): [figures per round]})."""
    inproc: dict[str, list] = {k: [] for k in IN_PROCESS}
    service: dict[tuple, list] = {}
    ref: dict = {}
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
    return inproc, service
