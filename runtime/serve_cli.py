"""bnwvad-serve: score videos over HTTP with an exported BN-WVAD model (Ray Serve, no torch).

    bnwvad-serve --model model.onnx [--port 8000] [--replicas 2] [--threshold X | --calibrate NORMAL...]

Starts a local Ray cluster (or joins one, --address), deploys the service of
bnwvad.runtime.serve (routes: POST /v1/score, GET /v1/model, GET /v1/stats, GET /healthz, and
with --streams the streaming sessions under /v1/streams), prints its URL and serves until
SIGINT or SIGTERM, then shuts Serve and its local cluster down.

The model is loaded here first, before any cluster starts: a model that cannot be loaded (or a
calibration that scores nothing) exits 2 with the error and nothing is served. A replica that
then fails to load it (another machine of the cluster, another backend) fails the deployment,
which is reported the same way, after the cluster is shut down.

Exit status: 0 never (it serves until stopped); 2 nothing could run (usage, model, backend,
calibration, Ray or the deployment failed, a missing extra); 130 stopped by SIGINT / SIGTERM.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import click

from .options import (EXIT_INTERRUPTED, EXIT_NOTHING_RAN, PATH, backend_options, calibrate_on, crops_options,
                      error, memory_budget_option, model_option, threshold_options)

_EPILOG = """\b
Requests:
  curl -s -X POST --data-binary @video.npy -H 'Content-Type: application/octet-stream' URL/v1/score
  python -c 'from bnwvad.client import Client; print(Client("URL").score(feats)["anomaly"])'
\b
Exit status:
  2    nothing could run: usage, model or backend, calibration, Ray, the deployment
  130  stopped (Ctrl-C, SIGTERM): Serve and the local cluster were shut down"""


class Stop(KeyboardInterrupt):
    """SIGINT or SIGTERM while starting or serving."""

    def __init__(self, name: str):
        super().__init__(name)
        self.signal = name


def _on_signal(signum, frame):
    raise Stop(signal.Signals(signum).name)


def _install_handlers() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _info(msg: str, quiet: bool) -> None:
    if not quiet:
        click.echo(msg, err=True)


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:          # not Linux
        return max(1, os.cpu_count() or 1)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def deployment_error(exc: BaseException) -> str:
    """Ray's deployment failure, shortened to what says why: the replica's own error line
    (bnwvad's messages name the file and the fix) when it is in there."""
    text = str(exc)
    for marker in ("ModelLoadError: ", "BackendError: ", "InputError: ", "MemoryBudgetError: "):
        if marker in text:
            line = text.rsplit(marker, 1)[1].strip().splitlines()[0]
            return f"a replica could not start: {line}"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "the deployment failed: " + (" | ".join(lines[-3:]) if lines else type(exc).__name__)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=_EPILOG)
@model_option()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; mind who can reach it).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: a free one, printed).")
@click.option("--address", default=None, metavar="ADDR",
              help="Join this Ray cluster (e.g. auto, or host:6379) instead of starting a local one.")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the local cluster [the CPUs this process may use].")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Scoring replicas, each with its own model session.")
@click.option("--replica-cpus", type=click.FloatRange(min=0.0), default=None,
              help="CPUs reserved per replica [the local cluster's CPUs / replicas; 1 with --address].")
@click.option("--replica-gpus", type=click.FloatRange(min=0.0), default=None,
              help="GPUs per replica [GPU backends: one GPU shared by all replicas; CPU: 0].")
@backend_options(
    threads_min=1, threads_help="ONNX Runtime intra-op threads per replica [its reserved CPUs, at least 1].",
    after_threads=[click.option(
        "--spin/--no-spin", default=False, show_default=True,
        help="Let ONNX Runtime's threads spin-wait between calls (fastest when they have the CPUs to themselves; "
             "off leaves them to the HTTP proxy and request handling).")],
    arena_help=None, device_help="CUDA device for the GPU backends.")
@crops_options()
@memory_budget_option("Memory each replica's process may use, e.g. 2GiB (default: half of what is free).")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most videos per server-side batch (1: no batching). On CPU a batch also holds at most "
                   "what one runner call takes (N*C*T <= 1024 rows).")
@click.option("--no-batching", is_flag=True, help="Score each request alone (--max-batch 1).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0.0), default=5.0, show_default=True,
              help="How long a batch waits for more videos of its length bucket.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.0, min_open=True), default=64.0, show_default=True,
              help="Largest request body, MiB (413 above it). 5 crops x 2074 snippets x 1024 float32: 42 MB.")
@click.option("--max-snippets", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Longest video, snippets (413 above it).")
@click.option("--max-ongoing", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests a replica takes in at once (the rest wait in the proxy).")
@threshold_options(calibrate_help="Normal videos' features (bnwvad-infer's FEATURES forms; repeat the option): "
                                   "the threshold becomes the quantile giving --false-alarm-rate on them.")
@click.option("--layout", type=click.Choice(["auto", "TD", "TCD", "CTD"]), default="auto", show_default=True,
              help="Axes of the --calibrate files (as bnwvad-infer's --layout).")
@click.option("--root", type=click.Path(file_okay=False, **PATH), default=None, metavar="DIR",
              help="Directory the paths of --calibrate list files are relative to.")
@click.option("--fps", type=click.FloatRange(min=0.0, min_open=True), default=30.0, show_default=True,
              help="Frame rate for event times in seconds (a request may give its own).")
@click.option("--min-event-snippets", type=click.IntRange(min=1), default=1, show_default=True,
              help="Shortest event reported, in snippets.")
@click.option("--streams/--no-streams", default=False, show_default=True,
              help="Also serve streaming sessions under /v1/streams (one replica holds them all).")
@click.option("--max-streams", type=click.IntRange(min=1), default=64, show_default=True,
              help="Streaming sessions open at once (429 above).")
@click.option("--stream-idle-s", type=click.FloatRange(min=1.0), default=300.0, show_default=True,
              help="A session untouched this long is closed.")
@click.option("--check-model/--no-check-model", default=True, show_default=True,
              help="Load the model here before starting (a model that fails exits 2 at once). Off: only the "
                   "replicas load it (--address, where the path exists on the cluster's nodes only).")
@click.option("--verbose", "-v", is_flag=True, help="Ray's and the replicas' logs on stderr.")
@click.option("--quiet", "-q", is_flag=True, help="Only the URL and errors.")
@click.pass_context
def main(ctx, model, host, port, address, num_cpus, replicas, replica_cpus, replica_gpus, backend, strict, threads,
         spin, device_id, sidecar, crops, any_crops, memory_budget, max_batch, no_batching, batch_wait_ms, max_body_mb,
         max_snippets, max_ongoing, threshold, calibrate, false_alarm_rate, layout, root, fps, min_event_snippets,
         streams, max_streams, stream_idle_s, check_model, verbose, quiet):
    """Serve an exported BN-WVAD model over HTTP (Ray Serve; ONNX Runtime or TensorRT, no torch)."""
    opts = {k: v for k, v in locals().items() if k != "ctx"}
    if threshold is not None and calibrate:
        raise click.UsageError("give --threshold or --calibrate, not both")
    if crops is not None and any_crops:
        raise click.UsageError("give --crops N or --any-crops, not both")
    if calibrate and not check_model:
        raise click.UsageError("--calibrate scores videos here: it needs the model here (--check-model)")
    _install_handlers()
    try:
        code = _serve(**opts)
    except Stop as e:
        click.echo(f"stopped ({e.signal}) before the service was up", err=True)
        code = EXIT_INTERRUPTED
    ctx.exit(code)


def _prepare(model, backend, strict, threads, device_id, sidecar, crops, any_crops, memory_budget, calibrate,
             false_alarm_rate, layout, root, quiet):
    """Load the model here (and calibrate): (meta, device, weights digest, calibration) or None
    after printing the error."""
    from .cli import open_model
    from .inputs import collect_videos
    from .scoring import Scorer

    opened = open_model(model, backend, strict=strict, threads=threads, device_id=device_id, sidecar=sidecar)
    if opened is None:
        return None
    runner, identity = opened
    try:
        meta = runner.meta
        _info(f"model {model} ({meta.describe()}); backend {runner.describe()}", quiet)
        calibration = None
        if calibrate:
            want = None if any_crops else (crops or meta.crops)
            try:
                videos, bad = collect_videos(calibrate, root=root, layout=layout, feature_dim=meta.feature_dim,
                                             crops_hint=want or meta.crops)
            except ValueError as e:
                error(str(e))
                return None
            calibration = calibrate_on(Scorer(runner, memory_budget=memory_budget, crops=want), videos, bad,
                                       false_alarm_rate, quiet=quiet)
            if calibration is None:
                return None
        return meta, runner.device, identity.digest, calibration
    finally:
        runner.close()


def _serve(model, host, port, address, num_cpus, replicas, replica_cpus, replica_gpus, backend, strict, threads,
           spin, device_id, sidecar, crops, any_crops, memory_budget, max_batch, no_batching, batch_wait_ms,
           max_body_mb, max_snippets, max_ongoing, threshold, calibrate, false_alarm_rate, layout, root, fps,
           min_event_snippets, streams, max_streams, stream_idle_s, check_model, verbose, quiet) -> int:
    from .serve import GPU_BACKENDS, ServeConfig

    if check_model:
        prepared = _prepare(model, backend, strict, threads, device_id, sidecar, crops, any_crops, memory_budget,
                            calibrate, false_alarm_rate, layout, root, quiet)
        if prepared is None:
            return EXIT_NOTHING_RAN
        _, device, digest, calibration = prepared
    else:
        device, digest, calibration = ("cuda" if backend in GPU_BACKENDS else "cpu"), None, None
    try:
        import ray
        from ray import serve
    except ModuleNotFoundError as e:
        from .._extras import MissingExtra

        raise MissingExtra("ray", "ray", "bnwvad-serve") from e

    local = address is None
    cpus = num_cpus or usable_cpus()
    if replica_cpus is None:
        replica_cpus = cpus / replicas if local else 1.0
    if threads is None:
        threads = max(1, int(round(replica_cpus)) or 1)
    if port == 0:
        port = free_port(host)
    cfg = ServeConfig(
        model=str(Path(model).resolve()), backend=backend, strict=strict, threads=threads, spin=spin,
        device_id=device_id,
        sidecar=None if sidecar is None else str(Path(sidecar).resolve()),
        crops=None if any_crops else (crops or "model"), memory_budget=memory_budget,
        max_body=int(max_body_mb * (1 << 20)), max_snippets=max_snippets, max_batch=1 if no_batching else max_batch,
        batch_wait_s=batch_wait_ms / 1e3, max_ongoing=max_ongoing,
        threshold=calibration.threshold if calibration else threshold,
        threshold_source="calibrated" if calibration else ("given" if threshold is not None else None),
        calibration=calibration.to_dict() if calibration else None, fps=fps, min_event_snippets=min_event_snippets,
        weights_digest=digest, replicas=replicas, replica_cpus=replica_cpus, replica_gpus=replica_gpus,
        streams=streams, max_streams=max_streams, stream_idle_s=stream_idle_s)

    t0 = time.perf_counter()
    out = sys.stdout
    # Ray prints its cluster's error messages (e.g. a task retried while Serve shuts down) to
    # sys.stdout from a thread of its own; stdout carries the URL line only, so they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        return _run_cluster(cfg, out, ray, serve, local, address, cpus, replicas, replica_cpus, threads, host, port,
                            device, batch_wait_ms, streams, verbose, quiet, t0)


def _run_cluster(cfg, out, ray, serve, local, address, cpus, replicas, replica_cpus, threads, host, port, device,
                 batch_wait_ms, streams, verbose, quiet, t0) -> int:
    try:
        _info(f"starting {'a local Ray cluster (' + str(cpus) + ' CPUs)' if local else 'on Ray cluster ' + address}"
              f"; {replicas} replica(s) x {replica_cpus:g} CPU, {threads} thread(s) each", quiet)
        if not verbose:
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
        kw = dict(include_dashboard=False, log_to_driver=verbose,
                  logging_level=logging.INFO if verbose else logging.WARNING)
        if local:
            store = max(256 << 20, 8 * cfg.max_body)
            ray.init(address="local", num_cpus=cpus, object_store_memory=store, **kw)
        else:
            ray.init(address=address, **kw)
        _install_handlers()                      # ray.init put its own SIGTERM handler in place
        from .serve import deploy

        try:
            url = deploy(cfg, host=host, port=port, device=device)
        except Stop:
            raise
        except Exception as e:                   # noqa: BLE001 - Ray's errors are many
            error(deployment_error(e))
            return EXIT_NOTHING_RAN
        _info(f"up in {time.perf_counter() - t0:.1f} s; batching "
              f"{'off' if cfg.max_batch == 1 else f'up to {cfg.max_batch} videos, {batch_wait_ms:g} ms wait'}; "
              f"threshold {cfg.threshold if cfg.threshold is not None else 'none'}"
              f"{'; streams at ' + url + '/v1/streams' if streams else ''}", quiet)
        click.echo(f"serving at {url}  (POST {url}/v1/score; Ctrl-C to stop)", file=out)
        out.flush()
        while True:
            time.sleep(3600)
    except Stop as e:
        _ignore_signals()
        click.echo(f"stopping ({e.signal}): shutting down the service"
                   f"{' and the local Ray cluster' if local else ''}", err=True)
        return EXIT_INTERRUPTED
    finally:
        _ignore_signals()
        if ray.is_initialized():
            try:
                if local:
                    serve.shutdown()
                else:                            # a shared cluster: remove only what we deployed
                    from .serve import APP_NAME, STREAMS_APP_NAME

                    for name in (APP_NAME, STREAMS_APP_NAME):
                        if name in serve.status().applications:
                            serve.delete(name)
            except Exception as e:               # noqa: BLE001 - shutting down anyway
                _info(f"warning: serve.shutdown: {e}", quiet)
        ray.shutdown()


__all__ = ["main"]
