"""What the Scorer takes and gives: the video sources it scores, and its results and failures.

A source announces its name, crop count and length before its features load (VideoSource);
ArraySource and ValidatedSource are the in-memory ones, `check_features` the check of any
in-memory video's features. Each video comes out as a VideoResult (its outputs per snippet)
or a VideoFailure (why it could not be scored).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from .contract import OUTPUTS
from .errors import InputError


class VideoSource(Protocol):
    """A video to score: its name, crop count and length known before its features load.

    Optional: `feature_dim` (D, checked against the model before any loading) and a class
    attribute `validated = True` when `load` itself guarantees (crops, length, D) float32
    with finite values (FileVideo, ArraySource); the Scorer checks any other source's
    features once on load (`check_features`).
    """

    name: str
    crops: int
    length: int

    def load(self) -> np.ndarray:
        """(C, T, D) float32."""


def check_features(name: str, a, *, crops: int | None = None, length: int | None = None,
                   feature_dim: int | None = None) -> np.ndarray:
    """An in-memory video's features -> (C, T, D) float32, or InputError naming the video:
    a numpy array of that shape (as announced, where given), floating-point, finite."""
    if not isinstance(a, np.ndarray) or a.ndim != 3:
        raise InputError(f"video {name!r}: features of shape {getattr(a, 'shape', None)}; expected "
                         f"a numpy array (C, T, D)")
    want = (crops if crops is not None else a.shape[0], length if length is not None else a.shape[1],
            feature_dim if feature_dim is not None else a.shape[2])
    if a.shape != want:
        raise InputError(f"video {name!r}: loaded features of shape {a.shape}; expected (C, T, D) "
                         f"= {want} as announced")
    if a.dtype != np.float32:
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"video {name!r}: dtype {a.dtype}; expected float32 features")
        a = a.astype(np.float32)
    if not np.isfinite(a).all():
        c, t, d = (int(x) for x in np.argwhere(~np.isfinite(a))[0])
        raise InputError(f"video {name!r}: {a[c, t, d]} at crop {c}, snippet {t}, dim {d}; "
                         f"expected finite features")
    return a


@dataclass
class ArraySource:
    """An in-memory video: (C, T, D), or (T, D) for one crop. `load` checks it (float,
    finite; `check_features`) once; its D is checked against the model before that."""

    name: str
    features: np.ndarray
    validated: ClassVar[bool] = True

    def __post_init__(self) -> None:
        a = self.features
        if not isinstance(a, np.ndarray) or a.ndim not in (2, 3):
            shape = getattr(a, "shape", None)
            raise InputError(f"video {self.name!r}: features of shape {shape}; expected a numpy array "
                             f"(C, T, D), or (T, D) for one crop")
        if a.ndim == 2:
            self.features = a[None]

    @property
    def crops(self) -> int:
        return int(self.features.shape[0])

    @property
    def length(self) -> int:
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[2])

    def load(self) -> np.ndarray:
        return check_features(self.name, self.features)


class ValidatedSource(ArraySource):
    """An in-memory (C, T, D) float32 video whose values were validated where they entered
    (a stream's push, an HTTP request body): `load` checks nothing again."""

    def load(self) -> np.ndarray:
        return self.features


@dataclass
class VideoResult:
    """One video's outputs per snippet, each (T,) float32 (crop means, as the model defines)."""

    name: str
    score: np.ndarray
    dfm: np.ndarray
    anomaly: np.ndarray
    crops: int
    frames_per_snippet: int = 16
    calls: int = 1            # runner calls the video took part in (> 1: crop chunks)

    @property
    def length(self) -> int:
        return int(self.anomaly.shape[0])

    def per_frame(self, output: str = "anomaly") -> np.ndarray:
        """(T * frames_per_snippet,): each snippet's value repeated over its frames, as the
        benchmarks' evaluation turns snippet scores into frame scores."""
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r}; expected one of {OUTPUTS}")
        return np.repeat(getattr(self, output), self.frames_per_snippet)

    @property
    def frame_score(self) -> np.ndarray:
        return self.per_frame("score")

    @property
    def frame_dfm(self) -> np.ndarray:
        return self.per_frame("dfm")

    @property
    def frame_anomaly(self) -> np.ndarray:
        return self.per_frame("anomaly")


@dataclass
class VideoFailure:
    """A video that could not be scored, and why (the error names the file)."""

    name: str
    error: Exception

    @property
    def message(self) -> str:
        return str(self.error)
