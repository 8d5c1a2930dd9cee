"""Video -> 16-frame snippets: decoding with PyAV, feeding the I3D protocol of frames.py.

`VideoReader` decodes a file with PyAV in a background thread into a bounded queue of 16-frame
`Snippet`s (resampled and resized there), so memory does not grow with the video's length. It
also opens stream URLs FFmpeg reads (`is_stream_url`: rtsp://, http(s)://, udp://, file:, ...)
of unknown length, with FFmpeg options and a read timeout; `get(timeout)` lets a live consumer
wait for the next snippet without blocking past its own deadlines.
PyAV is imported on first use; without it the error says `pip install "bnwvad[video]"`.

The protocol itself (frames -> snippets -> resize -> crops -> clips, numpy) is bnwvad.runtime.frames
and its errors bnwvad.runtime.video_errors; their public names are re-exported here, so
`bnwvad.runtime.video` stays the one import for all of it (README). numpy only: importing this
module needs neither torch nor PyAV.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from .contract import FRAMES_PER_SNIPPET
# Re-exported (see the docstring) as well as used here.
from .frames import (CROP_COUNTS, CROP_SIZE, FIVE_CROPS, SHORT_SIDE, TIME_EPS, NearestResampler, _check_fps, as_rgb,
                     crop_boxes, crop_names, iter_frame_snippets, resample_indices, resize_frames, resize_taps,
                     resize_weights, resized_size, snippet_clips, snippet_count)
from .video_errors import (VIDEO_EXTRA, VideoDecodeError, VideoDependencyError, VideoError, VideoOpenError,
                           VideoTooShortError, import_av)

# Protocols a SOURCE may name as "scheme:..." to be opened by FFmpeg as a stream, not as a path
# (a Windows drive "C:" is one letter, never one of these).
URL_SCHEMES = ("file", "http", "https", "rtmp", "rtmps", "rtp", "rtsp", "rtsps", "srt", "tcp", "udp")


def is_stream_url(source) -> bool:
    """Whether `source` is a URL FFmpeg opens by protocol (rtsp://cam/1, udp://@:1234, file:x.ts)
    rather than a file path: a string starting with one of URL_SCHEMES and ':'."""
    if not isinstance(source, str):
        return False
    scheme, sep, _ = source.partition(":")
    return bool(sep) and scheme.lower() in URL_SCHEMES


# -- decoding ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoInfo:
    """What the container declares. fps: the stream's average frame rate; frames / duration:
    the declared frame count and length in seconds (None where the container has none)."""

    path: str
    width: int
    height: int
    fps: float | None
    frames: int | None
    duration: float | None
    codec: str


@dataclass
class Snippet:
    """One snippet: `frames` (16, H, W, 3) uint8 (shorter side 256 when the reader resizes),
    `index` (0-based), `first_frame` (index of its first frame in the sequence snippets are cut
    from: decoded frames, or resampled ones with fps), `times` (seconds, one per frame),
    `ready_at` (time.perf_counter() when its last frame was decoded and resized: what a live
    consumer measures its latency from)."""

    index: int
    frames: np.ndarray
    first_frame: int
    times: np.ndarray
    ready_at: float = 0.0


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def _parse_duration_tag(text) -> float | None:
    """Matroska's per-stream DURATION tag, "HH:MM:SS.nnnnnnnnn", in seconds."""
    try:
        h, m, s = str(text).split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except (ValueError, TypeError):
        return None


class VideoReader:
    """Decode a video file (or stream URL) into 16-frame snippets in a background thread.

        with VideoReader("a.mp4", fps=None, short_side=256) as reader:
            print(reader.info)                    # VideoInfo
            for snippet in reader:                # Snippet, frames (16, H', W', 3) uint8
                ...

    The file is opened here (a missing, unreadable or stream-less file fails at once); the
    thread starts on iteration and keeps at most `max_queued` snippets ahead of the consumer,
    so memory is bounded by the snippet size, not the video's length. fps: resample to this
    rate by timestamp first (nearest frame). short_side: resize each frame in the decode
    thread (the protocol's 256; None keeps decoded frames). Errors (VideoError subclasses)
    are raised by the iteration after the snippets decoded before them. One iteration per reader.

    A `path` that is_stream_url (rtsp://..., http://..., file:...) is opened by FFmpeg as given,
    with `options` (FFmpeg's demuxer / protocol options, e.g. {"rtsp_transport": "tcp"}) and
    `timeout` (PyAV's: seconds, or (open, read), after which a blocked network open or read
    fails instead of waiting forever); its length may be unknown. `get(timeout)` is the
    iteration's step for a consumer with its own deadlines: the next snippet, or None.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float | None = None, short_side: int | None = None,
                 frames_per_snippet: int = FRAMES_PER_SNIPPET, max_queued: int = 2, decoder_threads: int = 0,
                 options: Mapping[str, str] | None = None, timeout: float | tuple | None = None):
        self.url = is_stream_url(path)
        # A URL stays a string: Path() would fold its "//".
        self.path = None if self.url else Path(path)
        self.source = str(path) if self.url else str(self.path)
        self.options = {str(k): str(v) for k, v in (options or {}).items()}
        self.timeout = timeout
        self.ended = False                  # the end (or a failure) was delivered by get()
        self.fps = None if fps is None else _check_fps(fps)
        self.short_side = None if short_side is None else int(short_side)
        self.frames_per_snippet = int(frames_per_snippet)
        self.max_queued = max(1, int(max_queued))
        self.frames_decoded = 0             # decoded frames so far (the thread updates these)
        self.frames_used = 0                # frames of the snippet sequence (after resampling)
        self.snippets = 0                   # snippets delivered to the consumer
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queued)
        self._container = None
        self._av = import_av()
        if not self.url and not self.path.is_file():
            raise VideoOpenError(f"{self.path}: no such video file", path=self.path)
        self._container, self._stream = self._open(decoder_threads)
        s, c = self._stream, self._container
        rate = float(s.average_rate) if s.average_rate else None
        duration = None
        if s.duration and s.time_base:
            duration = float(s.duration * s.time_base)
        elif _parse_duration_tag(s.metadata.get("DURATION")) is not None:
            duration = _parse_duration_tag(s.metadata.get("DURATION"))
        self._container_duration = c.duration / 1e6 if c.duration else None
        ctx = s.codec_context
        self.info = VideoInfo(path=self.source, width=int(ctx.width or 0), height=int(ctx.height or 0),
                              fps=rate, frames=int(s.frames) if s.frames else None, duration=duration,
                              codec=str(ctx.name))

    @property
    def effective_fps(self) -> float | None:
        """The rate of the snippet sequence: the requested fps, else the stream's."""
        return self.fps if self.fps is not None else self.info.fps

    def _open(self, decoder_threads: int):
        av, src = self._av, self.source
        expected = ("expected a video stream FFmpeg can open (rtsp://, rtmp://, http(s)://, udp://, tcp://, "
                    "srt://, file:), reachable from here" if self.url else
                    "expected a video file FFmpeg can decode (e.g. .mp4, .mkv, .avi, .webm)")
        try:
            container = av.open(src, mode="r", options=self.options, timeout=self.timeout)
        except EOFError:                                  # av.error.EOFError: nothing after the header
            raise VideoTooShortError(f"{src}: the {'stream' if self.url else 'file'} ends before its first video "
                                     f"frame (0 frames); expected a video of at least {self.frames_per_snippet} "
                                     f"frames", path=src, frames=0) from None
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            if self.url:
                waited = (f" within the {self.timeout if not isinstance(self.timeout, tuple) else self.timeout[0]:g} "
                          f"s open timeout" if self.timeout is not None and isinstance(e, av.ExitError) else "")
                raise VideoOpenError(f"{src}: cannot be opened{waited} (FFmpeg says: {_ffmpeg_message(e)}); "
                                     f"{expected}", path=src) from None
            size = self.path.stat().st_size if self.path.exists() else 0
            raise VideoOpenError(f"{src}: cannot be read as a video ({size} bytes; FFmpeg says: "
                                 f"{_ffmpeg_message(e)}); {expected}", path=src) from None
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            container.close()
            raise VideoOpenError(f"{src}: has no video stream (streams: {', '.join(kinds)}); {expected}",
                                 path=src)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if decoder_threads:
            stream.codec_context.thread_count = int(decoder_threads)
        return container, stream

    # -- the decode thread --
    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _decode(self) -> None:
        try:
            self._decode_all()
        except BaseException as e:            # delivered to the consumer, after earlier snippets
            self._put(_Failure(e))
        else:
            self._put(_END)

    def _decode_all(self) -> None:
        av, path, fps = self._av, self.source, self.fps
        per = self.frames_per_snippet
        resampler = NearestResampler(fps) if fps is not None else None
        rate = self.info.fps
        frames: list[np.ndarray] = []
        times: list[float] = []
        put = 0
        first_t = last_t = None
        shape = None
        decoded = 0

        def emit(batch):
            nonlocal put, frames, times
            for t, arr in batch:
                frames.append(arr)
                times.append(t)
                self.frames_used += 1
                if len(frames) == per:
                    snip = Snippet(index=put, frames=np.stack(frames), first_frame=put * per,
                                   times=np.asarray(times, dtype=np.float64), ready_at=time.perf_counter())
                    frames, times = [], []
                    if not self._put(snip):
                        return False
                    put += 1
            return True

        it = self._container.decode(self._stream)
        while True:
            if self._stop.is_set():
                return
            try:
                frame = next(it)
            except StopIteration:
                break
            except (av.FFmpegError, OSError, ValueError, RuntimeError) as e:
                where = f" ({last_t:.2f} s)" if last_t is not None else ""
                cause = ("no data within the read timeout, or the connection was lost" if self.url else
                         "the file is corrupted or truncated")
                raise VideoDecodeError(
                    f"{path}: decoding broke at frame {decoded}{where} after {put} complete snippet(s) "
                    f"({_ffmpeg_message(e)}); expected a stream that decodes to its end: {cause}. "
                    f"The {put} snippet(s) before the break were delivered",
                    path=path, frame_index=decoded, snippets=put) from None
            arr = frame.to_ndarray(format="rgb24")
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise VideoDecodeError(
                    f"{path}: frame {decoded} is {arr.shape[1]}x{arr.shape[0]} but the stream started at "
                    f"{shape[1]}x{shape[0]}; expected one resolution per video (re-encode it with a fixed size)",
                    path=path, frame_index=decoded, snippets=put)
            if self.short_side is not None:
                arr = resize_frames(arr, resized_size(arr.shape[0], arr.shape[1], self.short_side))
            t = frame.time
            if t is None:
                if rate is None:
                    if resampler is not None:
                        raise VideoDecodeError(f"{path}: frame {decoded} has no timestamp and the stream no "
                                               f"frame rate; cannot resample to {fps:g} fps", path=path,
                                               frame_index=decoded, snippets=put)
                    t = float(decoded)
                else:
                    t = decoded / rate
            t = float(t)
            if first_t is None:
                first_t = t
            last_t = t if last_t is None else max(last_t, t)
            decoded += 1
            self.frames_decoded = decoded
            batch = resampler.push(t, arr) if resampler is not None else [(t, arr)]
            if not emit(batch):
                return
        if decoded == 0:
            raise VideoTooShortError(f"{path}: no video frame could be decoded (0 frames); expected a video "
                                     f"of at least {per} frames", path=path, frames=0)
        self._check_complete(decoded, first_t, last_t, put)
        if self.frames_used < per:
            extra = f" after resampling to {fps:g} fps (from {decoded} decoded)" if fps is not None else ""
            raise VideoTooShortError(f"{path}: {self.frames_used} frames{extra}; expected at least {per} "
                                     f"frames (one snippet)", path=path, frames=self.frames_used)

    def _check_complete(self, decoded: int, first_t: float, last_t: float, put: int) -> None:
        """A stream that ends well before its declared length broke mid-way (truncated file)."""
        info = self.info
        rate = info.fps or (decoded / max(last_t - first_t, TIME_EPS) if decoded > 1 else None)
        interval = 1.0 / rate if rate else 0.0
        covered = (last_t - first_t) + interval
        declared, slack = info.duration, 0.0
        if declared is None and self._container_duration is not None:
            declared, slack = self._container_duration, 1.0     # may include a longer audio stream
        short = None
        if declared is not None and declared - covered > max(3 * interval, 0.05 * declared, 0.25) + slack:
            short = f"it ends at {covered:.2f} s but declares {declared:.2f} s"
        elif info.frames is not None and decoded < info.frames - max(2, 0.02 * info.frames):
            short = f"it declares {info.frames} frames"
        if short is not None:
            raise VideoDecodeError(
                f"{self.source}: the stream broke off after frame {decoded - 1} ({decoded} frames decoded, {put} "
                f"complete snippet(s)): {short}; expected the whole declared length (the file is truncated or "
                f"corrupted). The {put} snippet(s) before the break were delivered",
                path=self.source, frame_index=decoded, snippets=put)

    # -- the consumer side --
    def _start(self) -> None:
        if self._thread is None:
            name = Path(self.source).name if not self.url else self.source
            self._thread = threading.Thread(target=self._decode, name=f"decode:{name}", daemon=True)
            self._thread.start()

    def get(self, timeout: float) -> Snippet | None:
        """The next snippet, waiting at most `timeout` seconds for it (the decode thread starts on
        the first call); None when none came in time, or once the video ended (then `ended` is
        True). The error that ended decoding (a VideoError) is raised after the snippets before it."""
        if self.ended:
            return None
        self._start()
        try:
            item = self._queue.get(timeout=max(0.0, float(timeout)))
        except queue.Empty:
            if not self._thread.is_alive() and self._queue.empty():
                self.ended = True
                raise VideoError(f"{self.source}: the decode thread ended without a result",
                                 path=self.source) from None
            return None
        if item is _END:
            self.ended = True
            return None
        if isinstance(item, _Failure):
            self.ended = True
            raise item.error
        self.snippets += 1
        return item

    def __iter__(self) -> Iterator[Snippet]:
        if self._thread is not None:
            raise VideoError(f"{self.source}: a VideoReader is iterated once; open a new one", path=self.source)
        self._start()
        try:
            while True:
                snip = self.get(0.5)
                if snip is not None:
                    yield snip
                elif self.ended:
                    return
        finally:
            self.close()

    def close(self, timeout: float | None = None) -> bool:
        """Stop the decode thread (if running) and close the file. timeout: wait at most this
        long for the thread, which a live source that sends nothing can hold in a blocking read
        (a FIFO; a network read without a read timeout): it is then left to end with the process
        (a daemon), the container is not closed under it, and False is returned."""
        self._stop.set()
        thread = self._thread
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            while thread.is_alive():
                try:                                # unblock a put() waiting for room
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                thread.join(timeout=0.05)
                if deadline is not None and thread.is_alive() and time.monotonic() > deadline:
                    return False
        if self._container is not None:
            try:
                self._container.close()
            except Exception:           # closing a broken container may complain; nothing to keep
                pass
            self._container = None
        return True

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _ffmpeg_message(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return f"{type(e).__name__}: {str(text).splitlines()[0] if text else ''}".rstrip(": ")


def probe(path: str | os.PathLike) -> VideoInfo:
    """What the container declares about its video stream (opens the file, decodes nothing)."""
    with VideoReader(path) as reader:
        return reader.info


__all__ = ["CROP_COUNTS", "CROP_SIZE", "FIVE_CROPS", "NearestResampler", "SHORT_SIDE", "Snippet",
           "VideoDecodeError", "VideoDependencyError", "VideoError", "VideoInfo", "VideoOpenError",
           "VideoReader", "VideoTooShortError", "URL_SCHEMES", "as_rgb", "crop_boxes", "crop_names", "import_av",
           "is_stream_url", "iter_frame_snippets", "probe", "resample_indices", "resize_frames", "resize_weights",
           "resize_taps", "resized_size", "snippet_clips", "snippet_count"]
