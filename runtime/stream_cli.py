"""bnwvad-stream: score a live source of snippet features as it arrives, one JSON line per result.

    extractor | bnwvad-stream - --model xd.onnx --window 64 --lookahead 4 --threshold 21
    bnwvad-stream incoming/ --model xd.onnx --window 64 --step 4 --idle-timeout 30 --output cam1.jsonl
    bnwvad-stream cam1.mp4 --extractor i3d.onnx --model xd.onnx --window 64
    bnwvad-stream rtsp://cam1/stream --extractor i3d.onnx --model xd.onnx --window 64 \
        --video-option rtsp_transport=tcp --idle-timeout 10

SOURCE is `-` (stdin: .npy arrays back to back, each (k, C, D) or (k, D) snippets), a
DIRECTORY that snippet files arrive in (taken in name order; one .npy of (k, C, D) or (k, D)
per file), or video: a file (by extension: .mp4 .mkv .avi .mov .webm .mpg .mpeg .m4v) or a
stream URL FFmpeg opens (rtsp:// rtmp:// http(s):// udp:// tcp:// srt:// file:), with
--extractor (an I3D graph from `bnwvad-export i3d`). Video is decoded by PyAV in a background
thread (bounded queue); each complete 16-frame snippet is extracted (its crops in one
extractor call, --crops default the model's) and scored at once, so results come as frames
arrive. Each snippet is scored on a bounded window of its past (--window W) and of its
future (--lookahead L), S snippets per runner call (--step S): bnwvad.runtime.stream.
Memory stays bounded by the window, whatever the stream's length. Sources:
bnwvad.runtime.stream_sources; the lines written: stream_output; signals, video set-up and
calibration: stream_setup.

Output (stdout, or appended to --output FILE; one JSON object per line, flushed per line):
  {"stream": {"model": ..., "weights_digest": ..., "window": W, ...}}   first line of every run
  {"snippet": i, "score": .., "dfm": .., "anomaly": .., "latency_ms": ..} each final snippet
latency_ms: the scoring call that made the result final. From a video source also extract_ms
(crops + extractor call of the snippet whose arrival made it final) and pipeline_ms (from that
snippet's last frame decoded to this line: queue wait + extraction + scoring); the header has
"extractor" and "video" records, and event times use the video's frame rate (--video-fps).
  {"event": "start" | "end", "snippet": .., ...}                      with --threshold / --calibrate
Progress and errors go to stderr; its first line says the model, the backend, W / L / S, the
delay of a result in snippets and where the threshold comes from.

Directory sources: a file is taken once it is complete (producers write then rename; names
starting with '.' and ending in .tmp are ignored; a .npy whose header or data is still short is
retried at the next poll, and reported as truncated once it stops growing). A file that
arrives with a name before one already taken is reported and skipped (order is the stream's).
A bad snippet file or array (not .npy, wrong D or crops, NaN, non-float dtype) is reported by
name on stderr and skipped; the stream goes on (exit status 1 at the end). On stdin, bytes
that are not a .npy array end the stream (nothing after them can be framed).

Video sources: a stream that breaks mid-way (decode error, truncated file, lost connection),
a video shorter than one snippet, or an extractor failure ends the stream: the results of the
snippets before it are written (flushed), the failure is named on stderr, exit status 1. A
live URL has no known length; --idle-timeout ends it (exit 0) when no frame was decoded for
that long, and also bounds FFmpeg's network open and reads (PyAV's timeout) so a silent camera
cannot hold a read forever (without it, opening a URL may take URL_OPEN_TIMEOUT_S, reads wait
forever). A video SOURCE that cannot be opened exits 2 (nothing ran).

Exit status: 0 the source ended (EOF, or --idle-timeout) and every snippet was scored; 1 some
snippet files / arrays were skipped (each named), or the stream stopped on an error; 2 nothing
could run (usage, model, backend, output file, calibration); 130 interrupted (SIGINT / SIGTERM):
every result that was final is written, an open event is closed, the rest is not scored.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import click

from .errors import InputError, RuntimeFailure, human_bytes
from .options import EXIT_INTERRUPTED, EXIT_NOTHING_RAN, EXIT_OK, EXIT_SOME_FAILED, load_warning_once
from .options import error as _error, fail as _fail
from .options import (backend_options, crops_options, memory_budget_option, model_option,
                      threshold_options)
from .stream_output import (_append_refusal, _event_line, _header, _Lines, _OutputClosed, _silence_stdout,
                            _snippet_line)
from .stream_setup import _calibrate, _open_video, _Stop, _video_source, _video_text
from .stream_sources import DirectorySource, StdinSource, VideoSource

_HELP_EPILOG = """SOURCE: '-' for stdin (.npy arrays back to back, e.g. `extractor | bnwvad-stream -`), a
directory that snippet files arrive in (name order; each a .npy of (k, C, D) or (k, D)), or,
with --extractor, a video file (.mp4 .mkv .avi .mov .webm .mpg .mpeg .m4v) or a stream URL
(rtsp:// rtmp:// http(s):// udp:// tcp:// srt:// file:) decoded and extracted as it arrives.

\b
Exit status:
  0    the source ended (EOF, --idle-timeout) and every snippet received was scored
  1    some snippet files / arrays were skipped (each named on stderr), or the stream stopped
       on an error after it started (a video stream that broke: results before it written)
  2    nothing could run: usage, model or backend, extractor, video that cannot be opened,
       output file, calibration, window too large
  130  interrupted (Ctrl-C, SIGTERM): every final result written, an open event closed"""


# -- the command ----------------------------------------------------------------------------------
_PATH = dict(path_type=Path)


def _key_values(ctx, param, values):
    """KEY=VALUE strings -> [(key, value)], or a usage error naming the bad one."""
    out = []
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{v!r}; expected KEY=VALUE (an FFmpeg option, e.g. rtsp_transport=tcp)")
        out.append((key.strip(), value))
    return tuple(out)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=_HELP_EPILOG)
@click.argument("source", metavar="SOURCE")
@model_option()
@click.option("--window", "-w", type=click.IntRange(min=1), required=True,
              help="W: snippets of context up to and including the snippet scored.")
@click.option("--lookahead", "-l", type=click.IntRange(min=0), default=0, show_default=True,
              help="L: snippets after it that are waited for before it is scored.")
@click.option("--step", "-s", type=click.IntRange(min=1), default=1, show_default=True,
              help="S: snippets scored per runner call; a result may wait up to S-1 more snippets "
                   "(delay S-1+L) for S times fewer calls.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, **_PATH), default=None, metavar="FILE",
              help="Append the JSON lines to FILE (flushed per line) instead of stdout. A FILE whose last "
                   "run was another model's is refused unless --append-other-model.")
@click.option("--append-other-model", is_flag=True,
              help="Append to an --output FILE whose last run was written by another model.")
@backend_options(arena_help="ONNX Runtime's CPU memory arena (keeps the largest call's buffers).")
@crops_options(crops_help="Crops each snippet must have (default: the model's metadata).",
               any_crops_help="Accept any number of crops (averaged); the first array fixes the stream's count.")
@memory_budget_option()
@threshold_options(
    calibrate_help="Normal videos' features (bnwvad-infer's FEATURES forms; repeat the option), scored with the same "
                   "W / L / S: the threshold becomes the quantile giving --false-alarm-rate on them.",
    after_calibrate=[click.option(
        "--root", type=click.Path(file_okay=False, **_PATH), default=None, metavar="DIR",
        help="Directory the paths of --calibrate list files are relative to (default: the list's folder).")])
@click.option("--min-event-snippets", type=click.IntRange(min=1), default=1, show_default=True,
              help="An event starts after this many consecutive snippets above the threshold.")
@click.option("--max-gap", type=click.IntRange(min=0), default=0, show_default=True,
              help="Snippets at or below the threshold merged into an open event (it ends after more).")
@click.option("--fps", type=click.FloatRange(min=0.0, min_open=True), default=30.0, show_default=True,
              help="Video frame rate, for event times in seconds (XD-Violence: 24).")
@click.option("--poll", type=click.FloatRange(min=0.0, min_open=True), default=0.25, show_default=True,
              metavar="SECONDS", help="How often a directory SOURCE is listed.")
@click.option("--idle-timeout", type=click.FloatRange(min=0.0, min_open=True), default=None, metavar="SECONDS",
              help="End the stream (flush, exit) when no snippet (video: no frame) arrived for this long "
                   "[wait forever; stdin ends at EOF]. With a stream URL it also bounds FFmpeg's open and reads.")
@click.option("--extractor", "extractor", default=None, metavar="FILE", type=click.Path(dir_okay=False, **_PATH),
              help="I3D extractor (.onnx from `bnwvad-export i3d`): required for a video SOURCE (file or URL), "
                   "decoded with PyAV (the `video` extra).")
@click.option("--video-fps", type=click.FloatRange(min=0.0, min_open=True), default=None, metavar="F",
              help="Video SOURCE: resample to F fps by timestamp first (default: every decoded frame).")
@click.option("--video-option", "video_options", multiple=True, metavar="KEY=VALUE", callback=_key_values,
              help="Video SOURCE: an FFmpeg demuxer / protocol option (repeat the option), e.g. "
                   "rtsp_transport=tcp, probesize=500000, fflags=nobuffer.")
@click.option("--quiet", "-q", is_flag=True, help="No information lines on stderr (errors only).")
@click.pass_context
def main(ctx, source, model, window, lookahead, step, output, append_other_model, backend, strict, threads,
         arena, device_id, sidecar, crops, any_crops, memory_budget, threshold, calibrate, root,
         false_alarm_rate, min_event_snippets, max_gap, fps, poll, idle_timeout, extractor, video_fps,
         video_options, quiet):
    """Score a live source of snippet features (or, with --extractor, a video file or camera URL) as it
    arrives (windowed BN-WVAD, no torch): one JSON line per final snippet and per event start / end."""
    if threshold is not None and calibrate:
        raise click.UsageError("give --threshold or --calibrate, not both")
    if crops is not None and any_crops:
        raise click.UsageError("give --crops N or --any-crops, not both")
    if threshold is not None and not math.isfinite(threshold):
        raise click.BadParameter(f"{threshold}; expected a finite number", param_hint="--threshold")
    video = _video_source(source, extractor, video_fps, video_options)
    if source != "-" and not video:
        p = Path(source)
        if not p.is_dir():
            what = "does not exist" if not p.exists() else "is not a directory"
            raise click.BadParameter(f"{source} {what}; expected '-' (stdin), a directory that snippet "
                                     f"files arrive in, or a video file / stream URL (with --extractor)",
                                     param_hint="SOURCE")
    if output is not None and output.exists() and not output.is_file():
        raise click.BadParameter(f"{output} exists and is not a regular file", param_hint="--output")
    opts = dict(source=source, model=model, window=window, lookahead=lookahead, step=step, output=output,
                append_other_model=append_other_model, backend=backend, strict=strict, threads=threads,
                arena=arena, device_id=device_id, sidecar=sidecar, crops=crops, any_crops=any_crops,
                memory_budget=memory_budget, threshold=threshold, calibrate=calibrate, root=root,
                false_alarm_rate=false_alarm_rate, min_event_snippets=min_event_snippets, max_gap=max_gap,
                fps=fps, poll=poll, idle_timeout=idle_timeout, quiet=quiet,
                video=dict(extractor=extractor, fps=video_fps, options=dict(video_options)) if video else None)
    with _Stop() as stop:
        code = _run(stop, **opts)
    ctx.exit(code)


def _info(quiet: bool, msg: str) -> None:
    if not quiet:
        click.echo(msg, err=True)


def _run(stop: _Stop, *, source, model, window, lookahead, step, output, append_other_model, backend, strict,
         threads, arena, device_id, sidecar, crops, any_crops, memory_budget, threshold, calibrate, root,
         false_alarm_rate, min_event_snippets, max_gap, fps, poll, idle_timeout, quiet, video=None) -> int:
    from .io import model_identity
    from .runners import load_runner
    from .stream import StreamGroup

    try:
        lines = _Lines(output)
    except OSError as e:
        _error(f"--output {output}: cannot be opened for appending ({e.strerror or e})")
        return EXIT_NOTHING_RAN
    started = False
    runner = extraction = reader = None
    try:
        try:
            runner = load_warning_once(load_runner, model, backend, strict=strict, threads=threads, arena=arena,
                                       device_id=device_id, sidecar=sidecar)
        except RuntimeFailure as e:
            _error(str(e))
            return EXIT_NOTHING_RAN
        meta = runner.meta
        identity = model_identity(meta, model)
        if output is not None and not append_other_model and output.stat().st_size:
            refusal = _append_refusal(output, identity)
            if refusal is not None:
                _error(refusal)
                return EXIT_NOTHING_RAN
        want = None if any_crops else (crops or "model")      # "model": the metadata's count, if any
        try:
            group = StreamGroup(runner, window, lookahead, step, crops=want, memory_budget=memory_budget)
        except (RuntimeFailure, ValueError) as e:
            _error(str(e))
            return EXIT_NOTHING_RAN
        if video is not None:          # the extractor before calibrating: its errors come first
            from .cli import _open_extraction

            extraction = _open_extraction(video["extractor"], backend, meta, crops, any_crops, video["fps"],
                                          strict=strict, threads=threads, device_id=device_id)
            if extraction is None:
                return EXIT_NOTHING_RAN
        calibration = None
        failed_cal: list[str] = []
        if calibrate:
            calibration, failed_cal = _calibrate(stop, runner, group, calibrate, root=root, crops=want,
                                                 rate=false_alarm_rate)
            if stop:
                click.echo(f"interrupted ({stop.signal}) before the stream started; nothing written", err=True)
                return EXIT_INTERRUPTED
            if calibration is None:
                for m in failed_cal:
                    _fail(f"(calibration) {m}")
                _error("no calibration video could be scored; no threshold")
                return EXIT_NOTHING_RAN
            threshold = calibration.threshold
        if video is not None:          # opened last: a live source is read from here on
            reader = _open_video(source, video, idle_timeout)
            if reader is None:
                return EXIT_NOTHING_RAN
            # Event times in seconds follow the video's own rate, as bnwvad-infer's do.
            fps = reader.effective_fps or fps
        if stop:
            click.echo(f"interrupted ({stop.signal}) before the stream started; nothing written", err=True)
            return EXIT_INTERRUPTED
        delay = group.delay
        fps_snip = meta.frames_per_snippet / fps
        src_text = ("stdin" if source == "-" else _video_text(source, reader, extraction) if reader is not None
                    else f"directory {source}")
        thr_text = ("no threshold (no events)" if threshold is None else
                    f"threshold {threshold:.6g} given" if calibration is None else
                    f"threshold {threshold:.6g} calibrated on {calibration.videos} normal video(s) "
                    f"({calibration.snippets} snippets, {100 * calibration.achieved_rate:.2f}% above, false-alarm "
                    f"rate {false_alarm_rate:g})")
        _info(quiet, f"model {model} ({meta.describe()}, weights {identity.short()}); backend {runner.describe()}; "
                     f"window {window}, lookahead {lookahead}, step {step}: a result comes at most {delay} "
                     f"snippet(s) after its own ({delay * fps_snip:.2f} s at {fps:g} fps); {thr_text}; "
                     f"source {src_text}; memory budget {human_bytes(group.memory_budget)}")
        for m in failed_cal:
            _fail(f"(calibration) {m}")
        header = _header(model=model, identity=identity, runner=runner, group=group, window=window,
                         lookahead=lookahead, step=step, fps=fps, threshold=threshold, calibration=calibration,
                         min_event_snippets=min_event_snippets, max_gap=max_gap, source=source, reader=reader,
                         extraction=extraction, video=video)
        try:
            lines.write(header)
        except _OutputClosed as e:
            _error(f"the output was closed before the stream started ({e})")
            return EXIT_NOTHING_RAN
        started = True
        src = (StdinSource(0) if source == "-" else
               VideoSource(reader, extraction["runner"], extraction["crops"], label=source) if reader is not None
               else DirectorySource(Path(source), poll))
        return _stream(stop, src, group, lines, threshold=threshold, meta=meta, fps=fps,
                       min_event_snippets=min_event_snippets, max_gap=max_gap, poll=poll,
                       idle_timeout=idle_timeout, quiet=quiet, source=source)
    finally:
        if started:
            lines.close()
        else:
            lines.remove_if_unused()
        # A decode thread blocked in a read of a silent source is not waited for long: after an
        # idle timeout PyAV's read timeout frees it within a second; after a signal, not at all.
        if reader is not None and not reader.close(timeout=0.5 if stop else 2.0):
            _info(quiet, f"{source}: the decode thread is still blocked in a read; it ends with this process")
        if extraction is not None:
            extraction["runner"].close()
        if runner is not None:
            runner.close()


def _stream(stop, src, group, lines, *, threshold, meta, fps, min_event_snippets, max_gap, poll, idle_timeout,
            quiet, source) -> int:
    from .online_events import OnlineEvents

    video = isinstance(src, VideoSource)
    sid = ("stdin" if source == "-" else source if video and src.reader.url else Path(source).name or str(source))
    handle = group.open(sid)
    events = (OnlineEvents(threshold, min_snippets=min_event_snippets, max_gap=max_gap,
                           frames_per_snippet=meta.frames_per_snippet, fps=fps)
              if threshold is not None else None)
    bad = 0
    arrays = 0
    event_count = 0
    ended = None                  # "eof" | "idle" | "unreadable" | "error" | "output"
    last_activity = time.monotonic()
    wait = poll if isinstance(src, DirectorySource) else min(0.25, poll)

    written = 0

    def emit(results, timing=None) -> None:
        nonlocal event_count, written
        for r in results:
            line = _snippet_line(r)
            if timing is not None:      # video: the snippet whose arrival made these final
                line["extract_ms"] = round(timing[1], 3)
                line["pipeline_ms"] = round((time.perf_counter() - timing[2]) * 1e3, 3)
            lines.write(line)
            written += 1
            if events is not None:
                for u in events.feed(int(r["snippet"]), float(r["anomaly"])):
                    lines.write(_event_line(u))
                    event_count += u.kind == "start"

    def take(items) -> None:
        nonlocal bad, arrays, ended, last_activity
        for kind, name, payload in items:
            if kind == "data":
                last_activity = time.monotonic()
            elif kind == "end":
                ended = payload
            elif kind == "bad":
                bad += 1
                last_activity = time.monotonic()
                _fail(payload if payload.startswith(f"{name}:") else f"{name}: {payload}")
            elif kind == "array":
                last_activity = time.monotonic()
                if stop:
                    return                  # after a signal nothing new is scored
                try:
                    out = handle.push(payload)
                except InputError as e:     # the array: nothing changed, the stream goes on
                    bad += 1
                    _fail(f"{name}: {e}; skipped (the stream goes on: snippet numbers continue from "
                          f"{handle.snippets})")
                    continue
                arrays += 1
                emit(out, src.last if video else None)

    try:
        while not stop and ended is None:
            this_wait = wait
            if idle_timeout is not None:
                left = idle_timeout - (time.monotonic() - last_activity)
                if left <= 0:
                    _info(quiet, f"no {'frame' if video else 'snippet'} arrived for {idle_timeout:g} s (--idle-timeout): "
                                 f"the stream ends")
                    if isinstance(src, DirectorySource):
                        # What is complete is taken; a file still short is reported as truncated.
                        take(src.poll(stop, 0.0, final=True))
                    ended = "idle"
                    break
                this_wait = min(wait, max(left, 0.01))
            take(src.poll(stop, this_wait))
        if stop:
            pending = handle.snippets - handle.final
            if events is not None:
                for u in events.close():
                    lines.write(_event_line(u))
            click.echo(f"interrupted ({stop.signal}): {handle.final} snippet(s) final and written"
                       + (f", {pending} received but not final, not scored" if pending else "")
                       + (f"; {bad} snippet file(s)/array(s) skipped" if bad else ""), err=True)
            return EXIT_INTERRUPTED
        total = handle.snippets
        emit(group.flush([sid])[sid])
        if events is not None:
            for u in events.close():
                lines.write(_event_line(u))
    except _OutputClosed as e:
        _error(f"the output was closed ({e}); {written} snippet line(s) were written")
        _silence_stdout()
        return EXIT_SOME_FAILED
    except Exception as e:      # noqa: BLE001 - the runner (or the model) failed: say so, keep what is written
        _error(f"the runner failed: {type(e).__name__}: {e}; {written} snippet line(s) were written")
        try:
            if events is not None:
                for u in events.close():
                    lines.write(_event_line(u))
        except _OutputClosed:
            _silence_stdout()
        return EXIT_SOME_FAILED
    why = {"eof": "end of input", "idle": "idle timeout", "unreadable": "the source could not be read",
           "broken": "the video stream ended on the failure named above"}.get(ended, ended)
    _info(quiet, f"{why}: {total} snippet(s) "
                 + (f"from {src.reader.frames_decoded} decoded frame(s)" if video else f"from {arrays} array(s)") + " scored"
                 + (f", {event_count} event(s)" if events is not None else "")
                 + (f"; {bad} snippet file(s)/array(s) skipped (named above)" if bad else ""))
    return EXIT_SOME_FAILED if bad or ended in ("unreadable", "broken") else EXIT_OK


if __name__ == "__main__":   # pragma: no cover
    main()
