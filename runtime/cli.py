"""bnwvad-infer: score feature files with an exported BN-WVAD model, without torch.

    bnwvad-infer FEATURES... --model model.onnx --out DIR [--threshold X | --calibrate NORMAL]
    bnwvad-infer VIDEO.mp4... --extractor i3d.onnx --model model.onnx --out DIR [--crops C]
    bnwvad-infer FEATURES... --model model.onnx --out DIR [--actors N] --ray [ADDRESS]
    bnwvad-infer FEATURES... --server http://HOST:8000 --out DIR

Video files (by extension: .mp4 .mkv .avi .mov .webm .mpg .mpeg .m4v), given as such or found
in a directory argument, are scored directly with --extractor (an I3D graph written by
`bnwvad-export i3d`): decoded and extracted (bnwvad.runtime.extractor.extract_video, one video at
a time, a progress bar each) with the detector's crop count (its metadata's, else --crops),
then scored like feature files. summary.json records the extractor too (path, weights digest,
precision) and per video its source, frame rate and extraction time; event times of a video
input use its own frame rate (--video-fps when given). A video that cannot be decoded, is too
short, or breaks mid-way is a failure naming the file (nothing of it is scored: extract it with
bnwvad-extract to keep the snippets before the break).

Outputs in DIR (each written atomically: temp file, then rename):
  <video>.npy    snippet anomaly scores (T,) float32, the format `bnwvad-eval --scores DIR` reads
  results.npz    score, dfm and anomaly of every video (layout: bnwvad.runtime.io)
  summary.json   the run's record: which model wrote DIR (weights digest, precision), every
                 file the run wrote (relative paths), per-video summary, failures, status
  events.json    with --threshold / --calibrate: events per video, threshold, calibration
  plots/<video>.png  with --plot

DIR holds one run. Checked before any scoring: DIR can be created and written; if it is not
empty, it was written by this same model (whose earlier outputs this run then replaces, every
file its summary.json lists, so a video that fails now keeps no stale score). Another model's
folder, or a non-empty folder with no summary.json, is refused unless --overwrite, which removes
exactly the files the earlier run listed and nothing else. With --ray (bnwvad.runtime.ray_batch: a
Ray Data actor pool, the same outputs plus per-video completion records in DIR/.parts) a folder of
this same model is RESUMED instead: only the videos without a valid record are scored. With
--server URL the videos are scored by a running bnwvad-serve (bnwvad.client) and DIR is its model's.

Exit status: 0 all scored; 1 some inputs failed (each reported by name, the rest written);
2 nothing could run (bad options, model or backend errors, output folder, failed calibration,
a missing extra); 130 interrupted (SIGINT / SIGTERM): the videos finished are written and
summary.json says "interrupted": true.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .errors import InputError, RuntimeFailure, human_bytes
from .options import EXIT_INTERRUPTED, EXIT_NOTHING_RAN, EXIT_OK, EXIT_SOME_FAILED, load_warning_once
from .options import (MODEL_HELP, backend_options, crops_options, memory_budget_option, model_option,
                      threshold_options, window_options)
from .outputs import _Outputs, _error, _fail, _report, _video_failed, _warn  # noqa: F401 (also cli's API)

_HELP_EPILOG = """FEATURES: .npy files ((T, D) one crop; (T, C, D) stacked crops), per-crop sets
<video>__<k>.npy (grouped by name), directories of them, or list files (datasets' format);
with --extractor also video files (.mp4 .mkv .avi .mov .webm .mpg .mpeg .m4v) and directories
holding them.

\b
Exit status:
  0    every input scored
  1    some inputs failed (each named on stderr and in summary.json); the rest written
  2    nothing could run: usage, model or backend, output folder, calibration, missing extra
  130  interrupted (Ctrl-C, SIGTERM): finished videos written, summary.json "interrupted": true"""


def open_model(model, backend, **kw):
    """(runner, ModelIdentity) of an exported model, its load warnings printed once; None after
    printing the one-line error when it cannot be loaded (the caller exits 2)."""
    from .io import model_identity
    from .runners import load_runner

    try:
        runner = load_warning_once(load_runner, model, backend, **kw)
    except RuntimeFailure as e:
        _error(str(e))
        return None
    return runner, model_identity(runner.meta, model)


def _open_server(url):
    """(model, ModelIdentity, RemoteScorer) of the bnwvad-serve at url; None after printing the
    one-line error when it cannot be reached or does not say which model it serves (exit 2)."""
    from bnwvad.client import Client, ClientError, RemoteModel, RemoteScorer

    from .io import ModelIdentity

    client = Client(url)
    try:
        remote = RemoteModel(client, client.model())
    except (ClientError, TypeError, ValueError) as e:
        _error(f"--server {url}: {e}")
        return None
    if not remote.weights_digest:
        _error(f"--server {url}: the server reports no weights digest; expected one to record which model "
               f"wrote --out (start bnwvad-serve with its model check on)")
        return None
    return remote, ModelIdentity(remote.weights_digest, "weights (bnwvad-serve)", remote.meta.precision), \
        RemoteScorer(client, remote)


_PATH = dict(path_type=Path)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=_HELP_EPILOG)
@click.argument("features", nargs=-1, required=True, type=click.Path(**_PATH))
@model_option(MODEL_HELP + " Required, except with --server.", required=False)
@click.option("--out", "-o", "out", required=True, metavar="DIR", type=click.Path(**_PATH),
              help="Output FOLDER (created): <video>.npy, results.npz, summary.json, events.json, "
                   "plots/. A non-empty one must hold an earlier run of this same model, whose outputs "
                   "are replaced.")
@click.option("--overwrite", is_flag=True,
              help="Write into a non-empty --out that another model wrote (removing exactly the files "
                   "its summary.json lists) or that holds no summary.json (removing nothing).")
@backend_options()
@click.option("--root", type=click.Path(file_okay=False, **_PATH), default=None, metavar="DIR",
              help="Directory the paths of list files are relative to (default: the list's folder).")
@click.option("--layout", type=click.Choice(["auto", "TD", "TCD", "CTD"]), default="auto",
              show_default=True,
              help="Axes of files that are not per-crop files. auto: 2-D is (T, D); 3-D is (T, C, D) "
                   "only when its 2nd axis is the model's crop count and its 1st is not, else an error.")
@click.option("--crops-from-names/--no-crops-from-names", default=True, show_default=True,
              help="Group <video>__<k>.npy files into videos (crops 0..C-1 must all be present).")
@crops_options()
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most videos per runner call.")
@click.option("--max-rows", type=click.IntRange(min=1), default=None,
              help="Most N*C*T rows per call (default: 1024 on CPU, where larger calls stop paying; "
                   "unbounded on GPUs).")
@memory_budget_option()
@window_options(
    window_help="Score in windows of W snippets (as bnwvad-stream does live): time and memory linear in a video's "
                "length, for videos too long to score whole. Scores then depend on W.",
    lookahead_help="With --window: snippets after each snippet in its window.",
    step_help="With --window: snippets scored per window call (amortises the window).")
@threshold_options()
@click.option("--fps", type=click.FloatRange(min=0.0, min_open=True), default=30.0, show_default=True,
              help="Video frame rate, for event times in seconds (XD-Violence: 24).")
@click.option("--min-event-snippets", type=click.IntRange(min=1), default=1, show_default=True,
              help="Shortest event reported, in snippets.")
@click.option("--plot", is_flag=True, help="Write plots/<video>.png: score curve, threshold, events.")
@click.option("--extractor", "extractor", default=None, metavar="FILE", type=click.Path(dir_okay=False, **_PATH),
              help="I3D extractor (.onnx from `bnwvad-export i3d`): score VIDEO files directly "
                   "(decoded with PyAV, the `video` extra).")
@click.option("--video-fps", type=click.FloatRange(min=0.0, min_open=True), default=None, metavar="F",
              help="With --extractor: resample video inputs to F fps first (default: every decoded frame).")
@click.option("--ray", "ray", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Score on a Ray cluster (the `ray` extra; bnwvad.runtime.ray_batch): alone, a local one; "
                   "auto, HOST:PORT or ray://HOST:PORT, that cluster (inputs and --out on storage every node "
                   "sees). Resumable: an --out of this same model is resumed, only the videos without a "
                   "valid record scored. Write it last or as --ray=ADDRESS.")
@click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: actors, each holding one model session.")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="With --ray: GPUs per actor (fractions share a GPU).")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="With --ray: CPUs per actor [local cluster: its CPUs / --actors; else 1].")
@click.option("--server", "server", default=None, metavar="URL",
              help="Score through a running bnwvad-serve at URL (its model; bnwvad.client), one request per "
                   "video: the same outputs, --out's rules with the server's model.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no per-video lines.")
@click.pass_context
def main(ctx, features, model, out, overwrite, backend, strict, threads, arena, device_id, sidecar, root,
         layout, crops_from_names, crops, any_crops, batch_size, max_rows, memory_budget, window, lookahead,
         step, threshold,
         calibrate, false_alarm_rate, fps, min_event_snippets, plot, extractor, video_fps, ray, actors,
         gpus_per_actor, cpus_per_actor, server, quiet):
    """Score video features (or, with --extractor, video files) with an exported BN-WVAD model
    (ONNX Runtime or TensorRT, no torch)."""
    from .inputs import is_video_path
    from .io import InterruptSignals

    if extractor is None:
        given = [str(p) for p in features if is_video_path(p) and not p.is_dir()]
        if given:
            raise click.UsageError(
                f"{given[0]}: a video file ({len(given)} given); scoring video files needs the I3D feature "
                f"extractor: add --extractor i3d.onnx (written by `bnwvad-export i3d WEIGHTS -o i3d.onnx`), "
                f"or extract features first with `bnwvad-extract VIDEO --extractor i3d.onnx --out FEATS` "
                f"and score FEATS")
    if (model is None) == (server is None):
        raise click.UsageError("give --model FILE (or --server URL to score through bnwvad-serve)"
                               if model is None else "give --model or --server, not both")
    if server is not None and (ray is not None or window is not None or extractor is not None):
        raise click.UsageError("--server scores feature files whole on the server; it does not combine with "
                               "--ray, --window or --extractor")
    if ray is not None:
        from .ray_batch import parse_address, require_ray

        require_ray()                      # before any work: without it, the extra to install (exit 2)

        if extractor is not None or plot:
            raise click.UsageError(f"--ray scores feature files without plots; {'--extractor' if extractor else '--plot'} "
                                   f"is not supported with it. Fix: extract features first with `bnwvad-extract`, "
                                   f"or score without --ray")
        try:
            ray = {"address": parse_address(ray), "actors": actors, "gpus_per_actor": gpus_per_actor,
                   "cpus_per_actor": cpus_per_actor}
        except ValueError as e:
            raise click.UsageError(str(e)) from None
    if threshold is not None and calibrate:
        raise click.UsageError("give --threshold or --calibrate, not both")
    if crops is not None and any_crops:
        raise click.UsageError("give --crops N or --any-crops, not both")
    opts = dict(features=features, model=model, out=out, overwrite=overwrite, backend=backend,
                strict=strict, threads=threads, arena=arena, device_id=device_id, sidecar=sidecar,
                root=root, layout=layout, crops_from_names=crops_from_names, crops=crops,
                any_crops=any_crops, batch_size=batch_size, max_rows=max_rows,
                memory_budget=memory_budget, window=window, lookahead=lookahead, step=step,
                threshold=threshold, calibrate=calibrate,
                false_alarm_rate=false_alarm_rate, fps=fps, min_event_snippets=min_event_snippets,
                plot=plot, extractor=extractor, video_fps=video_fps, ray=ray, server=server, quiet=quiet)
    with InterruptSignals() as signals:
        ctx.exit(_run(signals, **opts))


def _run(signals, *, features, model, out, overwrite, backend, strict, threads, arena, device_id,
         sidecar, root, layout, crops_from_names, crops, any_crops, batch_size, max_rows, memory_budget,
         window, lookahead, step, threshold, calibrate, false_alarm_rate, fps, min_event_snippets, plot,
         extractor, video_fps, ray, server, quiet) -> int:
    """The run; returns the exit status. Nothing in --out changes until every check passed and
    the threshold is known ("commit"); from then on what is done is recorded, even when
    interrupted."""
    from .inputs import collect_videos
    from .options import calibrate_on
    from .io import RunFolderError, claim_output_dir, prepare_output_dir, remove_created, remove_listed
    from .scoring import Scorer

    t0 = time.perf_counter()
    try:
        created = prepare_output_dir(out, "--out")
    except RunFolderError as e:
        _error(str(e))
        return EXIT_NOTHING_RAN
    committed = False
    try:
        opened = (_open_server(server) if server is not None else
                  open_model(model, backend, strict=strict, threads=threads, arena=arena, device_id=device_id,
                             sidecar=sidecar))
        if opened is None:
            return EXIT_NOTHING_RAN
        runner, identity = opened[:2]
        model = model or server
        meta = runner.meta
        try:
            earlier = claim_output_dir(out, identity, overwrite=overwrite)
        except RunFolderError as e:
            _error(str(e))
            return EXIT_NOTHING_RAN
        want = None if any_crops else (crops or meta.crops)
        if server is not None:
            scorer = opened[2]
        elif window is not None:
            from .stream import WindowedScorer

            scorer = WindowedScorer(runner, window, lookahead, step, memory_budget=memory_budget,
                                    max_batch=batch_size, max_rows=max_rows or "auto", crops=want)
        else:
            scorer = Scorer(runner, memory_budget=memory_budget, max_batch=batch_size,
                            max_rows=max_rows or "auto", crops=want)
        budget = getattr(scorer, "budget", None)
        budget_text = budget.describe() if budget is not None else human_bytes(scorer.memory_budget)
        if not quiet:
            windows = (f"; windows W={window} L={lookahead} S={step}" if window is not None else "")
            click.echo(f"model {model} ({meta.describe()}); backend {runner.describe()}; "
                       f"memory budget {budget_text}{windows}", err=True)

        def gather(args):
            try:
                return collect_videos(args, root=root, layout=layout, crops_from_names=crops_from_names,
                                      feature_dim=meta.feature_dim, crops_hint=want or meta.crops)
            except ValueError as e:
                raise click.UsageError(str(e)) from None

        extraction = None
        if extractor is not None:
            extraction = _open_extraction(extractor, backend, meta, crops, any_crops, video_fps,
                                          strict=strict, threads=threads, device_id=device_id)
            if extraction is None:
                return EXIT_NOTHING_RAN
            features, extraction["inputs"], vbad = _split_video_inputs(features)
        videos, bad = gather(features) if features else ([], [])
        if extraction is not None:
            bad = bad + vbad
            names = {v.name for v in videos}
            for name, path in list(extraction["inputs"]):
                if name in names:
                    extraction["inputs"].remove((name, path))
                    from .inputs import Failure

                    bad.append(Failure(name, InputError(
                        f"video name {name!r} comes from a video file ({path}) and from feature files; "
                        f"outputs are named <video>.npy, so names must be unique. Fix: score them in "
                        f"separate runs (different --out) or rename one")))
        # -- threshold from normal videos ---------------------------------------------------
        calibration = None
        if calibrate:
            calibration = calibrate_on(scorer, *gather(calibrate), false_alarm_rate, quiet=quiet)
            if calibration is None:
                return EXIT_NOTHING_RAN
            threshold = calibration.threshold
        # -- commit: --out is this run's from here on ----------------------------------------
        if ray is not None:                # the Ray run commits (resumes) and scores on its own
            from .ray_batch import run_key, run_ray

            run = _Outputs(out, model, runner, identity, threshold, calibration, fps, budget_text, scorer)
            committed = True
            return run_ray(signals, run, videos, bad, t0, earlier=earlier, model=model, backend=backend,
                           load=dict(strict=strict, threads=threads, arena=arena, device_id=device_id,
                                     sidecar=sidecar), key=run_key(identity, window, lookahead, step),
                           crops=want, batch_size=batch_size, max_rows=max_rows, memory_budget=memory_budget,
                           min_event_snippets=min_event_snippets, quiet=quiet, **ray)
        with signals.held():
            removed = remove_listed(earlier) if earlier is not None else []
            run = _Outputs(out, model, runner, identity, threshold, calibration, fps, budget_text, scorer)
            if extraction is not None:
                run.extractor = extraction["record"]
            run.save_summary("running")
            committed = True
    except KeyboardInterrupt as e:
        click.echo(f"interrupted ({getattr(e, 'signal', 'SIGINT')}) before anything was scored; "
                   f"{out} is unchanged", err=True)
        return EXIT_INTERRUPTED
    finally:
        if not committed:
            remove_created(created)
    if removed and not quiet:
        whose = ("the earlier run of this model" if earlier.model.digest == identity.digest
                 and earlier.model.precision == identity.precision
                 else f"the run of model {earlier.model.short()} (--overwrite)")
        click.echo(f"replacing {whose} in {out}: removed the {len(removed)} file(s) it wrote",
                   err=True)
    return _score(signals, run, scorer, videos, bad, t0, min_event_snippets=min_event_snippets,
                  plot=plot, quiet=quiet, extraction=extraction)


def _open_extraction(extractor, backend, meta, crops, any_crops, video_fps, **kw) -> dict | None:
    """The extractor for video inputs, checked against the detector (feature dim, crop count);
    None after printing the one-line error (the caller exits 2)."""
    from bnwvad._extras import require

    from .extract_cli import extractor_record, open_extractor
    from .frames import CROP_COUNTS

    require("av", "scoring video files")            # no PyAV: names the extra, exits 2
    want = crops or meta.crops
    if want is None and any_crops:
        want = 10
    if want not in CROP_COUNTS:
        _error(f"the model {('expects ' + str(want) + ' crops') if want else 'declares no crop count'} "
               f"({meta.describe()}); video inputs are extracted with 1, 5 or 10 crops. Fix: --crops 1, 5 or 10")
        return None
    ext_backend = backend if backend in ("auto", "ort-cpu", "ort-cuda", "ort-trt") else "auto"
    opened = open_extractor(extractor, ext_backend, **kw)
    if opened is None:
        return None
    runner, identity = opened
    if runner.feature_dim != meta.feature_dim:
        _error(f"--extractor {extractor}: makes {runner.feature_dim}-d features but the model {meta.describe()} "
               f"reads {meta.feature_dim}-d ones; expected the extractor the model was trained on")
        runner.close()
        return None
    record = extractor_record(extractor, runner, identity)
    record.update(crops=int(want), video_fps=video_fps)
    return {"runner": runner, "crops": int(want), "fps": video_fps, "record": record, "inputs": []}


def _holds_npy(folder: Path) -> bool:
    import os

    return any(n.endswith(".npy") for _, _, names in os.walk(folder) for n in names)


def _split_video_inputs(features):
    """(feature arguments, [(name, video path)], failures): video files go to the extractor; a
    directory gives its videos and stays a feature argument only when it holds .npy files."""
    from .inputs import collect_video_files, is_video_path, scan_video_dir

    feats, vids = [], []
    for a in features:
        p = Path(a)
        if p.is_dir():
            found, _ = scan_video_dir(p)
            if found:
                vids.append(p)
            if not found or _holds_npy(p):
                feats.append(a)
        elif is_video_path(p):
            vids.append(p)
        else:
            feats.append(a)
    videos, bad = collect_video_files(vids) if vids else ([], [])
    return feats, videos, bad


def _score(signals, run: _Outputs, scorer, videos, bad, t0, *, min_event_snippets, plot, quiet,
           extraction=None) -> int:
    from tqdm import tqdm

    out = run.out
    interrupted = None
    bar = None
    try:
        for f in bad:
            run.failures[f.name] = f.message
            _fail(f.message)
        inputs = extraction["inputs"] if extraction is not None else []
        bar = tqdm(total=len(videos) + len(inputs), unit="video", disable=True if quiet else None,
                   file=sys.stderr, dynamic_ncols=True)
        for r in scorer.iter_results(videos, progress=bar.update):
            if not hasattr(r, "anomaly"):
                bar.clear()
                _video_failed(run, r, scorer)
                continue
            with signals.held():           # a video's outputs and their record, together
                run.write_video(r, min_event_snippets=min_event_snippets, plot=plot)
        for name, path in inputs:          # video files: extract, then score, one at a time
            _score_video_file(signals, run, scorer, extraction, name, path, bar,
                              min_event_snippets=min_event_snippets, plot=plot, quiet=quiet)
    except KeyboardInterrupt as e:
        interrupted = getattr(e, "signal", "SIGINT")
    except BaseException as e:
        # Record what is done, then let the error speak for itself.
        run.failures["(run)"] = f"the run stopped: {type(e).__name__}: {e}"
        run.finish([v.name for v in videos] + [n for n, _ in (extraction["inputs"] if extraction else [])],
                   "failed", time.perf_counter() - t0)
        raise
    finally:
        if bar is not None:
            bar.close()
    order = [v.name for v in videos] + [n for n, _ in (extraction["inputs"] if extraction else [])]
    run.pending = [n for n in order if n not in run.results and n not in run.failures]
    elapsed = time.perf_counter() - t0
    try:
        with signals.held():               # the record of what was done is always written
            ordered = run.finish(order, "interrupted" if interrupted else "complete", elapsed, interrupted)
            _report(run, ordered, quiet)
    except KeyboardInterrupt:
        pass                               # everything was written before it arrived
    failures = run.failures
    if interrupted:
        click.echo(f"interrupted ({interrupted}) after scoring {len(ordered)} of {len(videos)} video(s) "
                   f"({len(run.pending)} not scored): the finished videos' outputs and "
                   f"{out / 'summary.json'} (\"interrupted\": true) are written", err=True)
        return EXIT_INTERRUPTED
    click.echo(f"scored {len(ordered)} video(s) in {elapsed:.1f} s with {run.runner.backend}"
               + (f"; {len(failures)} failed (listed in {out / 'summary.json'})" if failures else "")
               + f"; outputs in {out}", err=True)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def _score_video_file(signals, run: _Outputs, scorer, extraction, name, path, bar, *, min_event_snippets,
                      plot, quiet) -> None:
    """One video input: extract its features (progress bar), score them, write its outputs."""
    import numpy as np

    from .extract_cli import extract_one
    from .sources import ArraySource

    bar.clear()
    ex = extract_one(name, path, extraction["runner"], extraction["crops"], extraction["fps"], quiet=quiet)
    try:
        if ex.error is not None:
            msg = ex.message()
            if ex.partial:
                msg += (f" (the {ex.snippets} snippet(s) before the break are not scored; "
                        f"`bnwvad-extract` keeps them as a partial output)")
            run.failures[name] = msg
            _fail(msg)
            return
        src = ArraySource(name, np.ascontiguousarray(ex.features.transpose(1, 0, 2)))
        for r in scorer.iter_results([src]):
            if not hasattr(r, "anomaly"):
                _video_failed(run, r, scorer)
                continue
            with signals.held():
                run.sources[name] = {"source": str(path), **ex.record(), **ex.info}
                if ex.video_fps:
                    run.video_fps[name] = ex.video_fps
                run.write_video(r, min_event_snippets=min_event_snippets, plot=plot)
    finally:
        bar.update(1)


if __name__ == "__main__":   # pragma: no cover
    main()
