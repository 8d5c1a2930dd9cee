"""Video -> frames -> snippets -> crops: the I3D feature protocol in numpy, and decoding with PyAV.

The protocol (../shared/reference/README.md, "i3d/"), in one place, torch-free:

1. frames: uint8 RGB (H, W, 3); grayscale (H, W) or (H, W, 1) becomes RGB by repetition.
   With `fps`, the sequence is first resampled to that rate by timestamp (the nearest frame to
   each instant t0 + k / fps up to the last frame's time), which also evens out variable
   frame rates. Without it every decoded frame is used, in order.
2. snippets: 16 consecutive frames; a last partial snippet is dropped (T = F // 16).
3. resize: shorter side to 256, the longer to `int(256 * long / short)`, bilinear with
   antialias exactly as `torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
   antialias=True)` on float32 of the uint8 values, then rounded half-to-even and clipped to
   uint8 (`resize_weights`: separable per-axis weight matrices with the triangle filter whose
   support grows with the downscale factor; the width pass first, as torch does).
4. crops of 224 in torchvision's geometry and order: C = 5 is top-left, top-right, bottom-left,
   bottom-right, centre (offsets `round((H - 224) / 2)`, `round((W - 224) / 2)`); C = 10 those
   five, then the same five of the horizontally flipped frame; C = 1 the centre crop.
5. pixels `x / 255 * 2 - 1`, laid out (C, 3, 16, 224, 224) float32: one clip per crop.

`VideoReader` decodes a file with PyAV in a background thread into a bounded queue of 16-frame
`Snippet`s (resampled and resized there), so memory does not grow with the video's length. It
also opens stream URLs FFmpeg reads (`is_stream_url`: rtsp://, http(s)://, udp://, file:, ...)
of unknown length, with FFmpeg options and a read timeout; `get(timeout)` lets a live consumer
wait for the next snippet without blocking past its own deadlines.
PyAV is imported on first use; without it the error says `pip install "bnwvad[video]"`.

numpy only: importing this module needs neither torch nor PyAV.
"""
from __future__ import annotations

import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from bnwvad._extras import import_or_raise

from .contract import FRAMES_PER_SNIPPET
from .errors import RuntimeFailure

SHORT_SIDE = 256
CROP_SIZE = 224
CROP_COUNTS = (1, 5, 10)
FIVE_CROPS = ("top_left", "top_right", "bottom_left", "bottom_right", "centre")
# Timestamps closer than this (seconds) are the same instant (float rounding of pts * time_base).
TIME_EPS = 1e-6
VIDEO_EXTRA = 'pip install "bnwvad[video]"'
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


# -- errors -------------------------------------------------------------------------------------
class VideoError(RuntimeFailure):
    """A video that cannot be turned into snippets; the message names the file, what was found
    and what was expected. `path` is the file (or None for in-memory frames)."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class VideoDependencyError(VideoError, ImportError):
    """PyAV (the decoder) is not installed."""


class VideoOpenError(VideoError):
    """The file is missing, unreadable, not a video FFmpeg can demux, or has no video stream."""


class VideoTooShortError(VideoError):
    """Fewer frames than one snippet (16), zero included. `frames`: how many there were."""

    def __init__(self, message: str, *, path=None, frames: int = 0):
        super().__init__(message, path=path)
        self.frames = int(frames)


class VideoDecodeError(VideoError):
    """The stream broke mid-way (a decode error, or it ends well before its declared length).
    The snippets decoded before the break were delivered; `frame_index` is the first frame
    that could not be decoded, `snippets` how many snippets were delivered."""

    def __init__(self, message: str, *, path=None, frame_index: int = 0, snippets: int = 0):
        super().__init__(message, path=path)
        self.frame_index = int(frame_index)
        self.snippets = int(snippets)


def import_av():
    """The PyAV module, or VideoDependencyError naming the extra to install."""
    return import_or_raise("av", lambda e: VideoDependencyError(
        f"decoding video files needs PyAV, which is not importable here ({e}). Fix: {VIDEO_EXTRA}"))


# -- frames ------------------------------------------------------------------------------------
def as_rgb(frames, *, what: str = "frames") -> np.ndarray:
    """uint8 frames (..., H, W, 3); (..., H, W) and (..., H, W, 1) grayscale are repeated to RGB.

    A single frame may be (H, W[, 1|3]); a stack (F, H, W[, 1|3]) must say it is one with a
    trailing channel axis or be (F, H, W, 3); a 3-D array is read as ONE frame (H, W, C) when
    its last axis is 1 or 3, else as a grayscale stack (F, H, W)."""
    x = np.asarray(frames)
    if x.dtype != np.uint8:
        raise VideoError(f"{what}: dtype {x.dtype}; expected uint8 RGB (0..255) frames")
    if x.ndim == 2:
        x = x[..., None]
    elif x.ndim == 3 and x.shape[-1] not in (1, 3):
        x = x[..., None]                        # (F, H, W) grayscale
    if x.ndim not in (3, 4) or x.shape[-1] not in (1, 3):
        raise VideoError(f"{what}: shape {x.shape}; expected (H, W), (H, W, 1|3) or (F, H, W, 1|3) uint8")
    if x.shape[-3] < 1 or x.shape[-2] < 1:
        raise VideoError(f"{what}: empty frames of shape {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def resized_size(height: int, width: int, short: int = SHORT_SIDE) -> tuple[int, int]:
    """(H, W) after scaling the shorter side to `short`; the longer is `int(short * long / shorter)`."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


@lru_cache(maxsize=64)
def resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's antialiased bilinear resampling of one axis (align_corners=False), banded:
    (first, weights) with output i = sum_k weights[i, k] * input[first[i] + k].

    Output i is centred at input `scale * (i + 0.5)`, scale = in / out; the triangle filter's
    support is 1 input pixel, times the scale when downscaling (so every input pixel under an
    output pixel counts: the antialias); each row is normalised to sum to 1, so the borders
    renormalise instead of clamping. Computed in float32 as torch does for float32 input
    (the window bounds truncate toward zero, as its C++ int() does). Read-only arrays."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize of an axis of {in_size} to {out_size}: both must be >= 1")
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1 else f32(1.0)
    invscale = f32(1.0) / scale if scale >= 1 else f32(1.0)
    center = scale * (np.arange(out_size, dtype=f32) + f32(0.5))
    lo = np.maximum(np.trunc(center - support + f32(0.5)).astype(np.int64), 0)
    hi = np.minimum(np.trunc(center + support + f32(0.5)).astype(np.int64), in_size)
    j = lo[:, None] + np.arange(int((hi - lo).max()))[None, :]                     # (out, taps)
    x = (j.astype(f32) - center[:, None] + f32(0.5)) * invscale
    w = np.where(j < hi[:, None], np.maximum(f32(1.0) - np.abs(x), f32(0.0)), f32(0.0)).astype(f32)
    total = w.sum(axis=1, keepdims=True, dtype=f32)
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    lo.setflags(write=False)
    w.setflags(write=False)
    return lo, w


def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """The same resampling as a dense (out_size, in_size) float32 matrix: output = W @ input
    along the axis (`resize_taps` is its banded form, what `resize_frames` applies)."""
    lo, w = resize_taps(in_size, out_size)
    out = np.zeros((out_size, in_size), dtype=np.float32)
    for k in range(w.shape[1]):
        cols = lo + k
        ok = cols < in_size
        out[np.flatnonzero(ok), cols[ok]] += w[ok, k]
    return out


def _resample_axis(y: np.ndarray, axis: int, in_size: int, out_size: int) -> np.ndarray:
    """Apply resize_taps(in_size, out_size) along `axis` of float32 `y`, summing the taps in
    order (as torch's kernel does)."""
    lo, w = resize_taps(in_size, out_size)
    shape = [1] * y.ndim
    shape[axis] = out_size
    acc = None
    for k in range(w.shape[1]):
        src = np.take(y, np.minimum(lo + k, in_size - 1), axis=axis)   # past the end: weight 0
        src *= w[:, k].reshape(shape)
        if acc is None:
            acc = src
        else:
            acc += src
    return acc


def resize_frames(frames, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 frames (F, H, W, 3) (or one (H, W, 3); grayscale accepted) -> (F, h, w, 3) uint8
    resized to `size` = (h, w) (default `resized_size(H, W)`) with torch's antialiased bilinear
    semantics, rounded half-to-even and clipped. An axis already of its size is left as is."""
    x = as_rgb(frames)
    single = x.ndim == 3
    if single:
        x = x[None]
    _, h, w, _ = x.shape
    oh, ow = size if size is not None else resized_size(h, w)
    if (oh, ow) == (h, w):
        return x[0] if single else x
    y = x.astype(np.float32)
    if ow != w:      # width first, as torch's separable kernel
        y = _resample_axis(y, 2, w, ow)
    if oh != h:
        y = _resample_axis(y, 1, h, oh)
    out = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return out[0] if single else out


# -- crops -------------------------------------------------------------------------------------
def crop_boxes(height: int, width: int, crops: int = 10, size: int = CROP_SIZE) -> list[tuple[int, int, bool]]:
    """[(top, left, flipped)] of the crops in torchvision's order (five_crop / ten_crop).

    For a flipped crop, (top, left) are in the horizontally flipped frame (the flipped frame's
    centre crop is not the mirror of the original's when W - 224 is odd)."""
    if crops not in CROP_COUNTS:
        raise ValueError(f"crops = {crops!r}; expected one of {CROP_COUNTS}")
    if height < size or width < size:
        raise ValueError(f"frame of {height}x{width} is smaller than the {size}x{size} crop")
    centre = (int(round((height - size) / 2.0)), int(round((width - size) / 2.0)))
    five = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), centre]
    if crops == 1:
        return [(*centre, False)]
    boxes = [(t, l, False) for t, l in five]
    if crops == 10:
        boxes += [(t, l, True) for t, l in five]
    return boxes


def crop_names(crops: int) -> list[str]:
    """Names of the crops in order, e.g. 'top_left', ..., 'flip_centre'."""
    if crops == 1:
        return ["centre"]
    names = list(FIVE_CROPS)
    return names + [f"flip_{n}" for n in FIVE_CROPS] if crops == 10 else names


# x / 255 * 2 - 1 in float32 for every uint8 value (a table lookup gives the same floats).
_SCALE = (np.arange(256, dtype=np.float32) / np.float32(255) * np.float32(2) - np.float32(1)).astype(np.float32)


def snippet_clips(frames, crops: int = 10, *, resized: bool = False) -> np.ndarray:
    """One snippet's frames (16, H, W[, 1|3]) uint8 -> (C, 3, 16, 224, 224) float32 clips in
    [-1, 1], C = `crops` in torchvision's order. `resized`: the frames already have their
    shorter side at 256 (what VideoReader(short_side=256) delivers)."""
    x = as_rgb(frames, what="snippet frames")
    if x.ndim != 4:
        raise VideoError(f"snippet frames: shape {x.shape}; expected a stack (F, H, W, 3)")
    if not resized:
        x = resize_frames(x)
    f, h, w, _ = x.shape
    boxes = crop_boxes(h, w, crops)
    out = np.empty((len(boxes), 3, f, CROP_SIZE, CROP_SIZE), dtype=np.float32)
    flipped = None
    for c, (top, left, flip) in enumerate(boxes):
        if flip and flipped is None:
            flipped = x[:, :, ::-1]
        src = flipped if flip else x
        patch = src[:, top:top + CROP_SIZE, left:left + CROP_SIZE]          # (F, 224, 224, 3)
        out[c] = _SCALE[patch.transpose(3, 0, 1, 2)]
    return out


# -- snippets and frame rates ------------------------------------------------------------------
def snippet_count(frames: int, frames_per_snippet: int = FRAMES_PER_SNIPPET) -> int:
    """T = F // 16: a last partial snippet is dropped."""
    return int(frames) // int(frames_per_snippet)


def _check_fps(fps) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise VideoError(f"fps = {fps!r}; expected a positive frame rate (frames per second)")
    return value


def resample_indices(timestamps: Sequence[float], fps: float) -> np.ndarray:
    """Indices of the frames nearest (in time) to the instants t0 + k / fps, k = 0, 1, ...
    while the instant is not after the last frame's time (a tie, within TIME_EPS, picks the
    earlier frame).
    Timestamps in seconds, in presentation order (a step backwards counts as no step)."""
    fps = _check_fps(fps)
    t = np.maximum.accumulate(np.asarray(timestamps, dtype=np.float64))
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    n = int(math.floor((t[-1] - t[0] + TIME_EPS) * fps)) + 1
    targets = t[0] + np.arange(n) / fps
    targets = targets[targets <= t[-1] + TIME_EPS]
    idx = np.searchsorted(t, targets - TIME_EPS, side="left").clip(0, t.size - 1)
    prev = np.maximum(idx - 1, 0)
    earlier = (idx > 0) & (targets - t[prev] <= t[idx] - targets + TIME_EPS)
    return np.where(earlier, prev, idx).astype(np.int64)


class NearestResampler:
    """The streaming form of `resample_indices`: push (time, item) in presentation order, get
    back [(instant, item)] for the instants t0 + k / fps it settles (the same choice as
    resample_indices, frame by frame)."""

    def __init__(self, fps: float):
        self.fps = _check_fps(fps)
        self.k = 0
        self.t0: float | None = None
        self.prev: tuple[float, object] | None = None

    def _target(self) -> float:
        return self.t0 + self.k / self.fps

    def push(self, t: float, item) -> list:
        out = []
        if self.prev is None:
            self.t0 = float(t)
            self.prev = (float(t), item)
            out.append((self.t0, item))           # k = 0 is the first frame itself
            self.k = 1
            return out
        pt, pitem = self.prev
        t = max(float(t), pt)
        while self._target() <= t + TIME_EPS:
            tau = self._target()
            # The nearer of the frame before and this one; a tie (within TIME_EPS) the earlier.
            out.append((tau, pitem if tau - pt <= t - tau + TIME_EPS else item))
            self.k += 1
        self.prev = (t, item)
        return out


def iter_frame_snippets(frames, *, fps: float | None = None, timestamps: Sequence[float] | None = None,
                        native_fps: float | None = None,
                        frames_per_snippet: int = FRAMES_PER_SNIPPET) -> Iterator[np.ndarray]:
    """In-memory frames (F, H, W[, 1|3]) uint8 -> 16-frame snippets (views when not resampled).

    With `fps`, the frames are first resampled by `timestamps` (seconds), or by index /
    `native_fps` when there are none. Fewer than 16 frames -> VideoTooShortError."""
    x = as_rgb(frames)
    if x.ndim != 4:
        x = x[None]
    total = x.shape[0]
    if fps is not None:
        if timestamps is None:
            if native_fps is None:
                raise VideoError("resampling in-memory frames to a frame rate needs their timestamps "
                                 "or their native fps")
            timestamps = np.arange(total) / _check_fps(native_fps)
        if len(timestamps) != total:
            raise VideoError(f"{len(timestamps)} timestamps for {total} frames; expected one per frame")
        x = x[resample_indices(timestamps, fps)]
    if x.shape[0] < frames_per_snippet:
        extra = f" after resampling to {fps:g} fps (from {total})" if fps is not None else ""
        raise VideoTooShortError(f"in-memory video: {x.shape[0]} frames{extra}; expected at least "
                                 f"{frames_per_snippet} (one snippet)", frames=x.shape[0])
    for i in range(snippet_count(x.shape[0], frames_per_snippet)):
        yield x[i * frames_per_snippet:(i + 1) * frames_per_snippet]


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
