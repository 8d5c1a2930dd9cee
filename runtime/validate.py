"""Checks of a (features, lengths) pair against the model's metadata, before any backend runs.

A backend fed a wrong D or a float64 array fails deep inside with a shape or type message
that names no video; these checks answer first, with what was received, what was expected
and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .metadata import ModelMeta


@dataclass(frozen=True)
class ShapeLimits:
    """Largest (and smallest) N, C, T a backend accepts; None = no limit.

    ONNX Runtime has none; a TensorRT engine has its optimisation profile's range.
    """

    max_n: int | None = None
    max_c: int | None = None
    max_t: int | None = None
    min_n: int = 1
    min_c: int = 1
    min_t: int = 1


def validate_inputs(features, lengths, meta: ModelMeta, *, limits: ShapeLimits | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """features (N, C, T, D) float32 and lengths (N,) int64 -> the same, C-contiguous.

    What a direct call of `Runner.run` gets; the Scorer checks each video where it enters
    (its crop count may be split into chunks) and runs validated batches unchecked.
    """
    if not isinstance(features, np.ndarray):
        raise InputError(f"features: got a {type(features).__name__}; expected a numpy array "
                         f"(N, C, T, D) float32. Fix: np.asarray(x, dtype=np.float32)")
    if features.ndim != 4:
        raise InputError(f"features: got shape {features.shape} ({features.ndim} dimensions); "
                         f"expected (N, C, T, D) = (videos, crops, snippets, {meta.feature_dim or 'D'}). "
                         f"Fix: one video (T, D) -> x[None, None]; (C, T, D) -> x[None]")
    if features.dtype != np.float32:
        raise InputError(f"features: dtype {features.dtype}; expected float32 (the graph's input "
                         f"type). Fix: features.astype(np.float32)")
    n, c, t, d = features.shape
    if min(n, c, t) < 1:
        raise InputError(f"features: shape {features.shape} has an empty axis; expected N, C, T >= 1")
    if meta.feature_dim is not None and d != meta.feature_dim:
        raise InputError(f"features: D = {d} (shape {features.shape}); the model expects "
                         f"D = {meta.feature_dim} ({meta.describe()}). Fix: use features from the "
                         f"extractor the model was trained on (I3D: 1024, I3D + VGGish: 1152)")
    if meta.crops is not None and c != meta.crops:
        raise InputError(f"features: {c} crops (shape {features.shape}); the model expects "
                         f"{meta.crops} ({meta.describe()}). Fix: pass all {meta.crops} crops of "
                         f"each video, or score them with a Scorer (crops=None) to average the crops you have")
    lim = limits or ShapeLimits()
    for axis, value, lo, hi in (("N", n, lim.min_n, lim.max_n), ("C", c, lim.min_c, lim.max_c),
                                ("T", t, lim.min_t, lim.max_t)):
        if value < lo or (hi is not None and value > hi):
            raise InputError(f"features: {axis} = {value} (shape {features.shape}) lies outside "
                             f"what this backend was built for, [{lo}, {hi}]. Fix: score in smaller "
                             f"batches (the Scorer splits by itself), or rebuild the engine with a "
                             f"larger optimisation profile")
    lengths = np.asarray(lengths)
    if lengths.shape != (n,):
        raise InputError(f"lengths: shape {lengths.shape}; expected ({n},), one snippet count per video")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise InputError(f"lengths: dtype {lengths.dtype}; expected integers (int64)")
    bad = np.flatnonzero((lengths < 1) | (lengths > t))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"lengths: video {i} has length {int(lengths[i])}; expected 1 <= length <= "
                         f"T = {t} (the padded snippet axis). Fix: lengths[i] = real snippet count")
    if not np.isfinite(features).all():
        v, cr, sn, dd = (int(x) for x in np.argwhere(~np.isfinite(features))[0])
        raise InputError(f"features: {features[v, cr, sn, dd]} at video {v}, crop {cr}, snippet {sn}, "
                         f"dim {dd}; expected finite values. Fix: drop or repair the video")
    return np.ascontiguousarray(features), np.ascontiguousarray(lengths, dtype=np.int64)
