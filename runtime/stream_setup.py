"""What bnwvad-stream (bnwvad.runtime.stream_cli) sets up around its loop: the signal flag
(SIGINT / SIGTERM, and a wakeup pipe for select()), a video SOURCE (its usage checks, its
VideoReader with the URL timeouts, its description), and a threshold calibrated on normal videos.
"""
from __future__ import annotations

import os
import select
import signal
import threading
import time
from pathlib import Path

import click

from .options import error as _error
from .errors import RuntimeFailure

# How long opening a stream URL may take without --idle-timeout (connect, handshake, probing).
URL_OPEN_TIMEOUT_S = 60.0


class _Stop:
    """SIGINT / SIGTERM set a flag (and wake a select() through a pipe); the loop checks it."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}
        self._wakeup_prev = None
        self.rfd: int | None = None
        self._wfd: int | None = None

    def _handler(self, signum, frame):
        if self.signal is None:
            self.signal = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handler)
        try:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._wakeup_prev = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self.rfd, self._wfd = r, w
        except (OSError, ValueError):        # pragma: no cover - no wakeup fd here: polls still check
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self._wfd is not None:
            signal.set_wakeup_fd(self._wakeup_prev if self._wakeup_prev is not None else -1)
            os.close(self._wfd)
            os.close(self.rfd)
            self.rfd = self._wfd = None
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def wait(self, fds: list[int], timeout: float) -> list[int]:
        """select() on `fds` and the wakeup pipe for up to `timeout` s: the fds that are ready."""
        if self:
            return []
        watch = list(fds) + ([self.rfd] if self.rfd is not None else [])
        if not watch:
            time.sleep(min(timeout, 0.05))
            return []
        try:
            ready, _, _ = select.select(watch, [], [], max(0.0, timeout))
        except InterruptedError:            # pragma: no cover - PEP 475 retries; belt and braces
            return []
        if self.rfd is not None and self.rfd in ready:
            try:
                while os.read(self.rfd, 512):
                    pass
            except (BlockingIOError, OSError):
                pass
        return [fd for fd in ready if fd != self.rfd]


def _video_source(source: str, extractor, video_fps, video_options) -> bool:
    """Whether SOURCE is video (a file by extension, or a stream URL); usage errors (exit 2)
    for a video without --extractor and for the video options with a features source."""
    from .inputs import VIDEO_EXTENSIONS, is_video_path
    from .video import is_stream_url

    url = is_stream_url(source)
    video = url or (source != "-" and is_video_path(source) and not Path(source).is_dir())
    if video and extractor is None:
        what = "a stream URL" if url else "a video file"
        raise click.UsageError(
            f"SOURCE {source} is {what}; streaming video needs the I3D feature extractor: add --extractor "
            f"i3d.onnx (written by `bnwvad-export i3d WEIGHTS -o i3d.onnx`). Feature sources are '-' (stdin) "
            f"or a directory of .npy snippet files")
    if not video:
        given = [name for name, v in (("--extractor", extractor), ("--video-fps", video_fps),
                                      ("--video-option", video_options)) if v]
        if given:
            raise click.UsageError(
                f"{', '.join(given)} given, but SOURCE {source} is a features source ('-' or a directory of .npy "
                f"snippets); {given[0]} applies to a video SOURCE: a file ending in {' '.join(VIDEO_EXTENSIONS)} "
                f"or a stream URL (rtsp:// rtmp:// http(s):// udp:// tcp:// srt:// file:)")
    elif not url and not Path(source).is_file():
        what = "does not exist" if not Path(source).exists() else "is not a regular file"
        raise click.BadParameter(f"{source} {what}; expected a video file, or a stream URL such as "
                                 f"rtsp://host/path", param_hint="SOURCE")
    return bool(video)


def _open_video(source: str, video: dict, idle_timeout):
    """The VideoReader of a video SOURCE (opened: fails at once when it cannot be), or None after
    printing the error (the caller exits 2)."""
    from .frames import SHORT_SIDE
    from .video import VideoError, VideoReader, is_stream_url

    timeout = None
    if is_stream_url(source):
        # PyAV's interrupt callback, the one way out of a blocked network open or read (a signal
        # is only seen once FFmpeg returns): the open waits at most --idle-timeout (else
        # URL_OPEN_TIMEOUT_S); a read a second more than --idle-timeout (else forever), so the
        # loop's own idle check (no frame for that long: exit 0) comes first and the thread's
        # timeout only frees a read that would otherwise never return.
        timeout = ((idle_timeout or URL_OPEN_TIMEOUT_S), None if idle_timeout is None else idle_timeout + 1.0)
    try:
        return VideoReader(source, fps=video["fps"], short_side=SHORT_SIDE, options=video["options"],
                           timeout=timeout)
    except VideoError as e:
        _error(str(e))
        return None


def _video_text(source, reader, extraction) -> str:
    info = reader.info
    rate = f"{info.fps:g} fps" if info.fps else "frame rate unknown"
    if reader.fps is not None:
        rate += f", resampled to {reader.fps:g} fps"
    ex = extraction["runner"]
    return (f"video {source} ({info.width}x{info.height} {info.codec}, {rate}) through extractor {ex.path} "
            f"({extraction['crops']} crop(s) per snippet, {ex.describe()})")


def _calibrate(stop, runner, group, paths, *, root, crops, rate):
    """(Calibration or None, failure messages): the normal videos scored with score_windowed and
    the stream's W / L / S, then calibrate_threshold."""
    from .events import calibrate_threshold
    from .inputs import collect_videos
    from .stream import score_windowed

    meta = runner.meta
    try:
        videos, bad = collect_videos(paths, root=root, feature_dim=meta.feature_dim,
                                     crops_hint=(crops if isinstance(crops, int) else None) or meta.crops)
    except ValueError as e:
        return None, [str(e)]
    failures = [f.message for f in bad]
    scores = []
    for v in videos:
        if stop:
            break
        try:
            feats = v.load()
            r = score_windowed(runner, feats, group.window, group.lookahead, group.step, crops=crops,
                               name=v.name, memory_budget=group.memory_budget)
        except (RuntimeFailure, ValueError) as e:
            failures.append(str(e) if v.name in str(e) else f"{v.name}: {e}")
            continue
        scores.append(r["anomaly"])
    if not scores:
        return None, failures
    return calibrate_threshold(scores, rate), failures
