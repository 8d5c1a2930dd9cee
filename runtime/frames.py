"""Frames -> snippets -> crops: the I3D feature protocol in numpy (decoding with PyAV: video.py).

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

numpy only: importing this module needs neither torch nor PyAV. bnwvad.runtime.video re-exports
every public name here (the protocol's documented home), next to the decoder that feeds it.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterator, Sequence

import numpy as np

from .contract import FRAMES_PER_SNIPPET
from .video_errors import VideoError, VideoTooShortError

SHORT_SIDE = 256
CROP_SIZE = 224
CROP_COUNTS = (1, 5, 10)
FIVE_CROPS = ("top_left", "top_right", "bottom_left", "bottom_right", "centre")
# Timestamps closer than this (seconds) are the same instant (float rounding of pts * time_base).
TIME_EPS = 1e-6


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


__all__ = ["CROP_COUNTS", "CROP_SIZE", "FIVE_CROPS", "NearestResampler", "SHORT_SIDE", "TIME_EPS", "as_rgb",
           "crop_boxes", "crop_names", "iter_frame_snippets", "resample_indices", "resize_frames", "resize_taps",
           "resize_weights", "resized_size", "snippet_clips", "snippet_count"]
