"""bnwvad-infer: score feature files with an exported BN-WVAD model, without torch.

    bnwvad-infer FEATURES... --model model.onnx --out DIR [--threshold X | --calibrate NORMAL]

Outputs in DIR (each written atomically: temp file, then rename):
  <video>.npy    snippet anomaly scores (T,) float32, the format `bnwvad-eval --scores DIR` reads
  results.npz    score, dfm and anomaly of every video (layout: bnwvad.runtime.io)
  summary.json   model, backend, per-video summary, failures
  events.json    with --threshold / --calibrate: events per video, threshold, calibration
  plots/<video>.png  with --plot

Exit status: 0 all scored; 1 some inputs failed (each reported by name, the rest written);
2 nothing could run (bad options, model or backend errors, failed calibration).
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import click

from .errors import RuntimeFailure, parse_bytes, human_bytes

_HELP_FEATURES = """FEATURES: .npy files ((T, D) one crop; (T, C, D) stacked crops), per-crop sets
<video>__<k>.npy (grouped by name), directories of them, or list files (datasets' format)."""


def _budget(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _warn(msg: str) -> None:
    click.secho(f"WARNING: {msg}", fg="yellow", err=True)


def _fail(msg: str) -> None:
    click.secho(f"FAILED {msg}", fg="red", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=_HELP_FEATURES)
@click.argument("features", nargs=-1, required=True)
@click.option("--model", "-m", "model", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Exported model: .onnx, or a TensorRT engine (.engine/.plan) with its JSON sidecar.")
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (created).")
@click.option("--backend", type=click.Choice(["auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt"]),
              default="auto", show_default=True,
              help="auto: tensorrt for engines; else ort-cuda where ONNX Runtime offers CUDA, else ort-cpu.")
@click.option("--strict/--no-strict", default=False, show_default=True,
              help="Fail (instead of warning) when the backend asked for is not what runs.")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="ONNX Runtime intra-op threads (0 or unset: its default).")
@click.option("--arena/--no-arena", default=True, show_default=True,
              help="ONNX Runtime's CPU memory arena: keeps the largest call's buffers (measured: about "
                   "twice the working set of the longest video held to the end); off returns them.")
@click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--sidecar", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A TensorRT engine's metadata JSON, if not <engine>.json beside it.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory the paths of list files are relative to (default: the list's folder).")
@click.option("--layout", type=click.Choice(["auto", "TD", "TCD", "CTD"]), default="auto",
              show_default=True,
              help="Axes of files that are not per-crop files. auto: 2-D is (T, D); 3-D is (T, C, D) "
                   "only when its 2nd axis is the model's crop count and its 1st is not, else an error.")
@click.option("--crops-from-names/--no-crops-from-names", default=True, show_default=True,
              help="Group <video>__<k>.npy files into videos (crops 0..C-1 must all be present).")
@click.option("--crops", "crops", type=click.IntRange(min=1), default=None,
              help="Crops each video must have (default: the model's metadata).")
@click.option("--any-crops", is_flag=True, help="Accept videos with any number of crops (averaged).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most videos per runner call.")
@click.option("--max-rows", type=click.IntRange(min=1), default=None,
              help="Most N*C*T rows per call (default: 1024 on CPU, where larger calls stop paying; "
                   "unbounded on GPUs).")
@click.option("--memory-budget", callback=_budget, default=None,
              help="Working memory per call, e.g. 2GiB (default: half of the available RAM, or of "
                   "free GPU memory on CUDA backends).")
@click.option("--threshold", type=float, default=None, help="Report events above this anomaly score.")
@click.option("--calibrate", "calibrate", multiple=True,
              help="Normal videos' features (same forms as FEATURES; repeat the option): the threshold "
                   "becomes the quantile giving --false-alarm-rate on them.")
@click.option("--false-alarm-rate", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.01,
              show_default=True, help="With --calibrate: fraction of normal snippets allowed above.")
@click.option("--fps", type=click.FloatRange(min=0.0, min_open=True), default=30.0, show_default=True,
              help="Video frame rate, for event times in seconds (XD-Violence: 24).")
@click.option("--min-event-snippets", type=click.IntRange(min=1), default=1, show_default=True,
              help="Shortest event reported, in snippets.")
@click.option("--plot", is_flag=True, help="Write plots/<video>.png: score curve, threshold, events.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no per-video lines.")
@click.pass_context
def main(ctx, features, model, out, backend, strict, threads, arena, device_id, sidecar, root, layout,
         crops_from_names, crops, any_crops, batch_size, max_rows, memory_budget, threshold, calibrate,
         false_alarm_rate, fps, min_event_snippets, plot, quiet):
    """Score video features with an exported BN-WVAD model (ONNX Runtime or TensorRT, no torch)."""
    from .events import calibrate_threshold, find_events
    from .inputs import collect_videos
    from .io import RESULTS_FILE, save_json, save_npy, save_results
    from .runners import load_runner
    from .scoring import Scorer

    if threshold is not None and calibrate:
        raise click.UsageError("give --threshold or --calibrate, not both")
    if crops is not None and any_crops:
        raise click.UsageError("give --crops N or --any-crops, not both")
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            runner = load_runner(model, backend, strict=strict, threads=threads, arena=arena,
                                 device_id=device_id, sidecar=sidecar)
        except RuntimeFailure as e:
            click.secho(f"error: {e}", fg="red", err=True)
            ctx.exit(2)
    for w in caught:
        _warn(str(w.message))
    meta = runner.meta
    want = None if any_crops else (crops or meta.crops)
    scorer = Scorer(runner, memory_budget=memory_budget, max_batch=batch_size,
                    max_rows=max_rows or "auto", crops=want)
    if not quiet:
        click.echo(f"model {model} ({meta.describe()}); backend {runner.describe()}; "
                   f"memory budget {human_bytes(scorer.memory_budget)}", err=True)

    def gather(args):
        try:
            return collect_videos(args, root=root, layout=layout, crops_from_names=crops_from_names,
                                  feature_dim=meta.feature_dim, crops_hint=want or meta.crops)
        except ValueError as e:
            raise click.UsageError(str(e)) from None

    failures: dict[str, str] = {}
    # -- threshold from normal videos ---------------------------------------------
    calibration = None
    if calibrate:
        cvideos, cfail = gather(calibrate)
        for f in cfail:
            _fail(f"(calibration) {f.message}")
        cscores = []
        for r in scorer.iter_results(cvideos):
            if hasattr(r, "anomaly"):
                cscores.append(r.anomaly)
            else:
                _fail(f"(calibration) {r.message}")
        if not cscores:
            click.secho("error: no calibration video could be scored; no threshold", fg="red", err=True)
            ctx.exit(2)
        calibration = calibrate_threshold(cscores, false_alarm_rate)
        threshold = calibration.threshold
        if not quiet:
            click.echo(f"calibrated threshold {threshold:.6g} on {calibration.videos} normal videos "
                       f"({calibration.snippets} snippets, {100 * calibration.achieved_rate:.2f}% above)",
                       err=True)

    # -- score -------------------------------------------------------------------------
    videos, bad = gather(features)
    for f in bad:
        failures[f.name] = f.message
        _fail(f.message)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    events = {}
    from tqdm import tqdm

    bar = tqdm(total=len(videos), unit="video", disable=True if quiet else None, file=sys.stderr,
               dynamic_ncols=True)
    for r in scorer.iter_results(videos, progress=bar.update):
        if not hasattr(r, "anomaly"):
            failures[r.name] = r.message
            bar.clear()
            _fail(r.message if r.name in r.message else f"{r.name}: {r.message}")
            continue
        save_npy(out / f"{r.name}.npy", r.anomaly)
        results[r.name] = r
        if threshold is not None:
            events[r.name] = find_events(r.anomaly, threshold, frames_per_snippet=r.frames_per_snippet,
                                         fps=fps, min_snippets=min_event_snippets)
        if plot:
            from .plot import plot_video

            plot_video(out / "plots" / f"{r.name}.png", r.name, r.anomaly,
                       frames_per_snippet=r.frames_per_snippet, fps=fps, threshold=threshold,
                       events=events.get(r.name, ()))
    bar.close()
    ordered = [results[v.name] for v in videos if v.name in results]
    save_results(out / RESULTS_FILE, ordered, meta.frames_per_snippet)
    elapsed = time.perf_counter() - t0
    summary = {
        "model": {"path": str(model), "backend": runner.backend, "requested": runner.requested,
                  "providers": runner.providers, "fallback": runner.fallback, "metadata": meta.to_dict()},
        "videos": {r.name: {"snippets": r.length, "frames": r.length * r.frames_per_snippet,
                            "crops": r.crops, "max_anomaly": float(r.anomaly.max()),
                            "mean_anomaly": float(r.anomaly.mean()),
                            "events": len(events.get(r.name, ()))} for r in ordered},
        "failures": failures,
        "threshold": threshold,
        "calls": scorer.stats["calls"],
        "seconds": round(elapsed, 3),
    }
    save_json(out / "summary.json", summary)
    if threshold is not None:
        save_json(out / "events.json", {
            "threshold": threshold, "threshold_source": "calibrated" if calibration else "given",
            "calibration": calibration.to_dict() if calibration else None,
            "fps": fps, "frames_per_snippet": meta.frames_per_snippet,
            "videos": {r.name: [e.to_dict() for e in events[r.name]] for r in ordered}})
    if not quiet and ordered:
        width = min(60, max(len(r.name) for r in ordered))
        click.echo(f"{'video':<{width}} {'T':>6} {'crops':>5} {'max':>9} {'mean':>9}"
                   + (f" {'events':>6}" if threshold is not None else ""))
        for r in ordered:
            name = r.name if len(r.name) <= width else r.name[: width - 3] + "..."
            line = (f"{name:<{width}} {r.length:>6} {r.crops:>5} {r.anomaly.max():>9.4f} "
                    f"{r.anomaly.mean():>9.4f}")
            if threshold is not None:
                line += f" {len(events[r.name]):>6}"
            click.echo(line)
    click.echo(f"scored {len(ordered)} video(s) in {elapsed:.1f} s with {runner.backend}"
               + (f"; {len(failures)} failed (listed in {out / 'summary.json'})" if failures else "")
               + f"; outputs in {out}", err=True)
    ctx.exit(1 if failures else 0)


if __name__ == "__main__":   # pragma: no cover
    main()
