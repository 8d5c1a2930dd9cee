"""bnwvad-extract: I3D features of video files with an exported extractor, without torch.

    bnwvad-extract VIDEO|DIR|LIST... --extractor i3d.onnx --out DIR [--crops 10|5|1] [--fps F] [--stacked]

Outputs in DIR (each written atomically: temp file, then rename):
  <video>__<k>.npy  (T, D) float32 features of crop k (0..C-1), the datasets' layout that
                    bnwvad-infer and the training lists read; or with --stacked
  <video>.npy       (T, C, D) float32, every crop in one file
  summary.json      the run's record (format "bnwvad-extract-run"): which extractor wrote DIR
                    (weights digest, precision), the settings (crops, fps, layout), every file
                    the run wrote (relative paths), per video its source, snippets, real-time
                    factor, and "partial" / "error" where the video broke mid-way; failures;
                    status. It is rewritten after every video, so a killed run can be resumed.

DIR holds one run. Resuming: a DIR written by the same extractor (weights digest and
precision) with the same crops, fps and layout keeps the videos recorded as complete whose
outputs are all there and whose source file is unchanged (size and modification time) and
extracts only the rest (a partial or failed video is tried again). Refused unless --overwrite:
a DIR written by another extractor or with other settings (--overwrite removes exactly the files
its summary.json lists), a bnwvad-infer run folder (the same), or a non-empty folder with no
summary.json (--overwrite removes nothing there).

A video that breaks mid-way (a decode error, a truncated file) keeps the features of the
snippets decoded before the break: its files are written and summary.json says "partial": true
with the error; it counts as failed (exit status 1). A video that cannot be opened, or has
fewer than 16 frames, writes nothing and is named as failed.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from .errors import RuntimeFailure
from .options import (EXIT_INTERRUPTED, EXIT_NOTHING_RAN, EXIT_OK, EXIT_SOME_FAILED, PATH, backend_options, error,
                      fail, load_warning_once, prepare_out)

EXTRACT_FORMAT = "bnwvad-extract-run"
EXTRACT_FORMAT_VERSION = 1

_HELP_EPILOG = """VIDEO: a file ending in .mp4 .mkv .avi .mov .webm .mpg .mpeg .m4v; DIR: every such
file below it; LIST: a text file with one video path per line (relative to its folder or --root).

\b
Exit status:
  0    every video extracted (or already complete in --out and skipped)
  1    some videos failed or are partial (each named on stderr and in summary.json); the rest written
  2    nothing could run: usage, extractor or backend, output folder, missing extra (PyAV: bnwvad[video])
  130  interrupted (Ctrl-C, SIGTERM): finished videos written, summary.json "interrupted": true"""


# -- the extractor --------------------------------------------------------------------------------
def open_extractor(path, backend: str = "auto", **kw):
    """(ExtractorRunner, ModelIdentity) of an exported extractor, its load warnings printed once;
    None after printing the one-line error when it cannot be loaded (the caller exits 2)."""
    from .extractor import ExtractorRunner
    from .io import model_identity

    try:
        runner = load_warning_once(ExtractorRunner, path, backend, **kw)
    except RuntimeFailure as e:
        error(str(e))
        return None
    return runner, model_identity(runner.meta, path)


def extractor_record(path, runner, identity) -> dict:
    """What a summary.json says about the extractor of a run."""
    return {"path": str(path), "weights_digest": identity.digest, "digest_of": identity.digest_of,
            "precision": identity.precision, "feature_dim": runner.feature_dim, "batch": runner.batch,
            "backend": runner.backend, "requested": runner.requested, "providers": list(runner.providers),
            "fallback": runner.fallback}


@dataclass
class Extraction:
    """One video's extraction: features (T, C, D) float32 of the snippets decoded (None when
    there are none), the error that ended it early (None: complete), and what it took."""

    name: str
    source: Path
    features: object = None
    error: BaseException | None = None
    video_fps: float | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def snippets(self) -> int:
        return 0 if self.features is None else int(self.features.shape[0])

    @property
    def partial(self) -> bool:
        return self.error is not None and self.features is not None

    @property
    def video_seconds(self) -> float | None:
        return None if not self.video_fps else self.snippets * 16 / self.video_fps

    @property
    def realtime_factor(self) -> float | None:
        vs = self.video_seconds
        return None if vs is None or self.seconds <= 0 else vs / self.seconds

    def message(self) -> str:
        e = self.error
        text = str(e) if e is not None else ""
        return text if str(self.source) in text else f"{self.source}: {text}"

    def record(self) -> dict:
        rtf = self.realtime_factor
        return {"snippets": self.snippets, "frames": self.snippets * 16,
                "video_fps": self.video_fps,
                "video_seconds": None if self.video_seconds is None else round(self.video_seconds, 3),
                "seconds": round(self.seconds, 3), "realtime_factor": None if rtf is None else round(rtf, 3),
                "partial": self.partial, "error": None if self.error is None else self.message()}


def extract_one(name: str, path: Path, extractor, crops: int, fps: float | None, *, quiet: bool = False,
                decoder_threads: int = 0) -> Extraction:
    """Extract one video with a progress bar on stderr (snippets, real-time factor). Errors of
    the video (bnwvad.runtime.video.VideoError, and the extractor's per-call errors) are
    returned in the Extraction with the snippets done before them; KeyboardInterrupt and
    unexpected errors propagate."""
    import numpy as np
    from tqdm import tqdm

    from .extractor import ExtractProgress, iter_clip_features
    from .frames import SHORT_SIDE
    from .video import VideoError, VideoReader

    ex = Extraction(name, Path(path))
    t0 = time.perf_counter()
    total = None
    try:
        with VideoReader(path) as probe:
            info = probe.info
        rate = fps or info.fps
        if fps is None and info.frames:
            total = info.frames // 16
        elif rate and info.duration:
            total = int(info.duration * rate) // 16
        ex.video_fps = float(rate) if rate else None
        ex.info = {"width": info.width, "height": info.height, "codec": info.codec,
                   "declared_fps": info.fps, "declared_frames": info.frames}
    except VideoError as e:
        ex.error = e
        ex.seconds = time.perf_counter() - t0
        return ex
    label = name if len(name) <= 30 else name[:27] + "..."
    bar = tqdm(total=total, unit="snip", desc=label, disable=True if quiet else None, file=sys.stderr,
               dynamic_ncols=True, leave=True)
    feats = []

    def progress(p):
        bar.update(1)
        if p.realtime_factor is not None:
            bar.set_postfix_str(f"{p.realtime_factor:.2f}x real time", refresh=False)

    # iter_video_features' loop, except that a decode error ends the snippet stream cleanly, so
    # the snippets already batched for the extractor are still extracted (kept as partial).
    def snippets(reader):
        try:
            yield from reader
        except VideoError as e:
            ex.error = e

    try:
        with VideoReader(path, fps=fps, short_side=SHORT_SIDE, decoder_threads=decoder_threads) as reader:
            rate = reader.effective_fps
            for f in iter_clip_features(snippets(reader), extractor, crops, resized=True):
                feats.append(f)
                elapsed = time.perf_counter() - t0
                seconds = len(feats) * reader.frames_per_snippet / rate if rate else None
                progress(ExtractProgress(str(path), len(feats), len(feats) * reader.frames_per_snippet, seconds,
                                         elapsed, seconds / elapsed if seconds and elapsed > 0 else None))
    except (VideoError, RuntimeFailure) as e:
        ex.error = e
    finally:
        bar.close()
        ex.seconds = time.perf_counter() - t0
    if feats:
        ex.features = np.stack(feats)
    elif ex.error is None:          # cannot happen (a video of no snippet raises), but say so
        from .video import VideoTooShortError

        ex.error = VideoTooShortError(f"{path}: no snippet could be extracted", path=path)
    return ex


# -- run folders -------------------------------------------------------------------------------
@dataclass
class ExtractRun:
    """What an extraction run folder's summary.json says (the earlier run, when resuming)."""

    record: object                 # bnwvad.runtime.io.RunRecord (for remove_listed)
    settings: dict
    videos: dict


def read_extract_run(folder: Path):
    """The earlier bnwvad-extract run of `folder` (ExtractRun), None when it holds no
    summary.json; RunFolderError when its summary.json is not a usable extraction record
    (a bnwvad-infer run's says so)."""
    from .io import RunFolderError, read_summary_doc, record_from_summary

    found = read_summary_doc(folder)
    if found is None:
        return None
    path, doc = found
    if not isinstance(doc, dict) or doc.get("format") != EXTRACT_FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise RunFolderError(f"{path}: not a bnwvad-extract run record (format {fmt!r}, expected "
                             f"{EXTRACT_FORMAT!r})")
    rec = record_from_summary(folder, path, doc, "extractor", "bnwvad-extract")
    videos = doc.get("videos") if isinstance(doc.get("videos"), dict) else {}
    settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
    return ExtractRun(rec, settings, videos)


def _source_stamp(path: Path) -> dict:
    st = os.stat(path)
    return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def claim_extract_dir(folder: Path, identity, settings: dict, *, overwrite: bool):
    """May this extraction write into the existing `folder`? Returns (earlier run record whose
    files are to be removed or None, {video: its earlier record} to keep: resumed videos);
    RunFolderError when refused. The rules of bnwvad-infer's folders (bnwvad.runtime.io
    claim_output_dir), except that a run of the same extractor and settings is resumed."""
    from .io import SUMMARY_FILE, RunFolderError, read_run

    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return None, {}
    why = None
    try:
        run = read_extract_run(folder)
    except RunFolderError as e:
        run, why = None, str(e)
    if run is None:
        infer = None
        try:
            infer = read_run(folder)          # a bnwvad-infer run folder: its listed files can go
        except RunFolderError:
            pass
        if overwrite:
            return infer, {}
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        if infer is not None:
            raise RunFolderError(
                f"--out {folder}: holds a bnwvad-infer run (scores of model {infer.model.short()}), not "
                f"extracted features. Fix: a new --out, or --overwrite to remove the {len(infer.files)} "
                f"file(s) that run wrote (listed in its {SUMMARY_FILE}) and nothing else")
        raise RunFolderError(
            f"--out {folder}: not empty ({len(entries)} entries: {shown}) and "
            f"{why or f'holds no {SUMMARY_FILE}'}, so it is not a bnwvad-extract run folder and this "
            f"run's outputs would mix with files of unknown origin. Fix: a new or empty --out, or "
            f"--overwrite to write into it anyway (it removes nothing there: no run lists those files)")
    rec = run.record
    same_model = (rec.model.digest, rec.model.precision) == (identity.digest, identity.precision)
    same_settings = all(run.settings.get(k) == v for k, v in settings.items())
    if same_model and same_settings:
        keep = {}
        for name, v in run.videos.items():
            if not isinstance(v, dict) or v.get("partial") or v.get("error") or not isinstance(v.get("files"), list):
                continue
            files = v["files"]
            if not files or not all(f in rec.files and (folder / f).is_file() for f in files):
                continue
            keep[name] = v
        return rec, keep
    if overwrite:
        return rec, {}
    if not same_model:
        what = (f"the features of another extractor (weights {rec.model.describe()}"
                + (f", {rec.model_path}" if rec.model_path else "") + f"); this one is {identity.describe()}")
    else:
        diff = {k: (run.settings.get(k), v) for k, v in settings.items()
                if run.settings.get(k) != v and k != "crop_names"}
        what = "features of this extractor with other settings (" + ", ".join(
            f"{k} {a!r}, now {b!r}" for k, (a, b) in diff.items()) + ")"
    raise RunFolderError(
        f"--out {folder}: holds {what}, per its {SUMMARY_FILE}. Fix: a new --out, or --overwrite to "
        f"remove the {len(rec.files)} file(s) that run wrote (listed in its {SUMMARY_FILE}) and nothing else")


class _Outputs:
    """What a committed extraction run has written, and its summary.json."""

    def __init__(self, out: Path, extractor: dict, settings: dict, kept: dict, skipped: list):
        self.out, self.extractor, self.settings = out, extractor, settings
        self.videos: dict[str, dict] = dict(kept)     # kept from the earlier run, then in completion order
        self.skipped = list(skipped)
        self.failures: dict[str, str] = {}
        self.pending: list[str] = []

    def save(self, status: str, seconds: float | None = None, signal: str | None = None) -> None:
        from .io import SUMMARY_FILE, save_json

        files = [f for v in self.videos.values() for f in v["files"]] + [SUMMARY_FILE]
        save_json(self.out / SUMMARY_FILE, {
            "format": EXTRACT_FORMAT, "format_version": EXTRACT_FORMAT_VERSION,
            "status": status, "interrupted": status == "interrupted", **({"signal": signal} if signal else {}),
            "extractor": self.extractor, "settings": self.settings, "files": files,
            "videos": self.videos, "skipped": self.skipped, "failures": self.failures,
            "not_processed": self.pending, "seconds": None if seconds is None else round(seconds, 3)})

    def write(self, ex: Extraction, stat: dict) -> list[str]:
        from .io import save_npy
        import numpy as np

        feats = ex.features
        if self.settings["layout"] == "stacked":
            files = [f"{ex.name}.npy"]
            save_npy(self.out / files[0], feats)
        else:
            files = [f"{ex.name}__{k}.npy" for k in range(feats.shape[1])]
            for k, f in enumerate(files):
                save_npy(self.out / f, np.ascontiguousarray(feats[:, k]))
        self.videos[ex.name] = {"source": str(ex.source), **stat, **ex.record(), **ex.info, "files": files}
        if ex.partial:
            self.failures[ex.name] = ex.message()
        return files


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=_HELP_EPILOG)
@click.argument("inputs", nargs=-1, required=True, metavar="VIDEO|DIR|LIST...", type=click.Path(**PATH))
@click.option("--extractor", "-e", required=True, metavar="FILE", type=click.Path(dir_okay=False, **PATH),
              help="Exported I3D extractor (.onnx written by `bnwvad-export i3d`).")
@click.option("--out", "-o", "out", required=True, metavar="DIR", type=click.Path(**PATH),
              help="Output FOLDER (created): <video>__<k>.npy per crop (or <video>.npy with --stacked) "
                   "and summary.json. A non-empty one must hold an earlier run of this extractor with "
                   "these settings, which is resumed.")
@click.option("--crops", type=click.Choice(["10", "5", "1"]), default="10", show_default=True,
              help="10: corners + centre and their flips; 5: corners + centre; 1: centre (torchvision order).")
@click.option("--fps", type=click.FloatRange(min=0.0, min_open=True), default=None, metavar="F",
              help="Resample every video to this frame rate first (nearest frame by timestamp); default: "
                   "every decoded frame.")
@click.option("--stacked", is_flag=True, help="One <video>.npy (T, C, D) per video instead of one file per crop.")
@click.option("--overwrite", is_flag=True,
              help="Write into a non-empty --out that another extractor (or other settings, or bnwvad-infer) "
                   "wrote, removing exactly the files its summary.json lists, or that holds no summary.json "
                   "(removing nothing).")
@backend_options(choices=("auto", "ort-cpu", "ort-cuda", "ort-trt"),
                 backend_help="auto: ort-cuda where ONNX Runtime offers CUDA, else ort-cpu.", arena_help=None,
                 device_help="CUDA device for the ort-cuda and ort-trt backends.", sidecar=False)
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Clips per extractor call (default: the export's crops_batch).")
@click.option("--root", type=click.Path(file_okay=False, **PATH), default=None, metavar="DIR",
              help="Directory the paths of list files are relative to (default: the list's folder).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def main(ctx, inputs, extractor, out, crops, fps, stacked, overwrite, backend, strict, threads, device_id,
         batch, root, quiet):
    """Extract I3D features of videos with an exported extractor (ONNX Runtime, no torch)."""
    from bnwvad._extras import require

    from .io import InterruptSignals

    require("av", "decoding videos")          # no PyAV: names the extra, exits 2
    opts = dict(inputs=inputs, extractor=extractor, out=out, crops=int(crops), fps=fps, stacked=stacked,
                overwrite=overwrite, backend=backend, strict=strict, threads=threads, device_id=device_id,
                batch=batch, root=root, quiet=quiet)
    with InterruptSignals() as signals:
        ctx.exit(_run(signals, **opts))


def _run(signals, *, inputs, extractor, out, crops, fps, stacked, overwrite, backend, strict, threads,
         device_id, batch, root, quiet) -> int:
    from .inputs import collect_video_files
    from .io import RunFolderError, remove_created, remove_listed
    from .frames import crop_names

    t0 = time.perf_counter()
    created = prepare_out(out)
    if created is None:
        return EXIT_NOTHING_RAN
    committed = False
    try:
        opened = open_extractor(extractor, backend, strict=strict, threads=threads, device_id=device_id,
                                batch=batch)
        if opened is None:
            return EXIT_NOTHING_RAN
        runner, identity = opened
        settings = {"crops": crops, "crop_names": crop_names(crops), "fps": fps,
                    "layout": "stacked" if stacked else "per-crop",
                    "feature_dim": runner.feature_dim}
        try:
            earlier, kept = claim_extract_dir(out, identity, settings, overwrite=overwrite)
        except RunFolderError as e:
            error(str(e))
            return EXIT_NOTHING_RAN
        videos, bad = collect_video_files(inputs, root=root)
        # A recorded video is skipped only when its source is the same file, unchanged.
        # Earlier complete videos not named now stay (a feature folder accumulates).
        todo, keep, skipped = [], dict(kept), []
        for name, path in videos:
            old = keep.get(name)
            try:
                stat = _source_stamp(path)
            except OSError:
                stat = None
            if old is not None and stat is not None and old.get("source") == str(path) and all(
                    old.get(k) == v for k, v in stat.items()):
                skipped.append(name)
            else:
                keep.pop(name, None)
                todo.append((name, path))
        if not quiet:
            click.echo(f"extractor {extractor} ({runner.feature_dim}-d, {identity.precision or '?'}); "
                       f"{runner.describe()}; {crops} crop(s)" + (f", {fps:g} fps" if fps else "")
                       + f"; {len(todo)} video(s) to extract" + (f", {len(skipped)} already done" if skipped else ""),
                       err=True)
        with signals.held():
            stale = []
            if earlier is not None:
                keep_files = {f for v in keep.values() for f in v["files"]}
                from .io import RunRecord

                gone = RunRecord(earlier.folder, earlier.model, earlier.model_path,
                                 tuple(f for f in earlier.files if f not in keep_files), earlier.status)
                stale = remove_listed(gone)
            run = _Outputs(out, extractor_record(extractor, runner, identity), settings, keep, skipped)
            run.save("running")
            committed = True
    except KeyboardInterrupt as e:
        click.echo(f"interrupted ({getattr(e, 'signal', 'SIGINT')}) before any extraction; {out} is unchanged",
                   err=True)
        return EXIT_INTERRUPTED
    finally:
        if not committed:
            remove_created(created)
    if stale and not quiet:
        click.echo(f"removed {len(stale)} file(s) of the earlier run in {out} that this run replaces", err=True)
    return _extract_all(signals, run, runner, todo, bad, crops, fps, quiet, t0)


def _extract_all(signals, run: _Outputs, runner, todo, bad, crops, fps, quiet, t0) -> int:
    interrupted = None
    done = 0
    try:
        for f in bad:
            run.failures[f.name] = f.message
            fail(f.message)
        for name, path in todo:
            ex = extract_one(name, path, runner, crops, fps, quiet=quiet)
            if ex.features is None:
                run.failures[name] = ex.message()
                fail(ex.message())
                with signals.held():
                    run.save("running", time.perf_counter() - t0)
                continue
            try:
                stat = _source_stamp(path)
            except OSError:
                stat = {}
            with signals.held():           # a video's files and their record, together
                run.write(ex, stat)
                run.save("running", time.perf_counter() - t0)
            done += 1
            if ex.partial:
                fail(f"{ex.message()} (partial: {ex.snippets} snippet(s) kept, marked \"partial\" in "
                     f"summary.json)")
    except KeyboardInterrupt as e:
        interrupted = getattr(e, "signal", "SIGINT")
    except BaseException as e:
        run.failures["(run)"] = f"the run stopped: {type(e).__name__}: {e}"
        run.save("failed", time.perf_counter() - t0)
        raise
    run.pending = [n for n, _ in todo if n not in run.videos and n not in run.failures]
    elapsed = time.perf_counter() - t0
    try:
        with signals.held():
            run.save("interrupted" if interrupted else "complete", elapsed, interrupted)
    except KeyboardInterrupt:
        pass
    summary = run.out / "summary.json"
    if interrupted:
        click.echo(f"interrupted ({interrupted}) after {done} of {len(todo)} video(s) ({len(run.pending)} not "
                   f"processed): the finished videos' features and {summary} (\"interrupted\": true) are "
                   f"written", err=True)
        return EXIT_INTERRUPTED
    skipped = f", {len(run.skipped)} already done" if run.skipped else ""
    click.echo(f"extracted {done} video(s){skipped} in {elapsed:.1f} s with {runner.backend}"
               + (f"; {len(run.failures)} failed or partial (listed in {summary})" if run.failures else "")
               + f"; features in {run.out}", err=True)
    return EXIT_SOME_FAILED if run.failures else EXIT_OK


if __name__ == "__main__":   # pragma: no cover
    main()
