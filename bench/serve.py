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

The pieces live in bnwbench.serve_* (plan: the workload and model, load: the passes and the
service, report) and bnwbench.cpu_share; this script is the command.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import statistics
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bnwbench.cli import parse_ints  # noqa: E402
from bnwbench.measure import Stopwatch, say  # noqa: E402
from bnwbench.plan import REPO  # noqa: E402
from bnwbench.serve_load import free_port, run_rounds, start_cluster  # noqa: E402
from bnwbench.serve_plan import DEFAULT_OUT, LIBRARIES, SCHEMA, Workload, lengths_for, prepare_model  # noqa: E402
from bnwbench.serve_report import markdown, summarize  # noqa: E402
from bnwbench.system import git_revision, library_versions, load_average, machine_info, usable_cpus  # noqa: E402
from bnwbench.workload import spread_sample  # noqa: E402


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
    ns = parse_ints(clients, "--clients") if clients else ([1, 4] if quick else [1, 4, 16, 64])
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
    try:
        inproc, service = run_rounds(rounds, ns, runner, nospin, work, path, cpus, threads, max_batch,
                                     batch_wait_ms, port, spin, clock)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            runner.close()
            nospin.close()
            time.sleep(0.5)
            redirect.__exit__(None, None, None)

    summarize(rep, inproc, service, ns)
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
