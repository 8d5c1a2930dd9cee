"""Anomalous events: maximal runs of snippets whose score stays above a threshold.

The threshold is given, or calibrated on normal videos: the (1 - false_alarm_rate) quantile
of their snippet scores, so at most that fraction of normal snippets (and, since each snippet
stands for frames_per_snippet frames, of normal frames) lies above it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class Event:
    """One event. Snippet and frame ranges are [start, end); seconds are frame / fps."""

    start_snippet: int
    end_snippet: int
    start_frame: int
    end_frame: int
    start_s: float | None
    end_s: float | None
    peak: float
    peak_snippet: int
    peak_frame: int

    @property
    def snippets(self) -> int:
        return self.end_snippet - self.start_snippet

    def to_dict(self) -> dict:
        return asdict(self)


def find_events(scores: np.ndarray, threshold: float, *, frames_per_snippet: int = 16,
                fps: float | None = None, min_snippets: int = 1) -> list[Event]:
    """Runs of `scores` (T,) strictly above `threshold`, at least `min_snippets` long."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold = {threshold}; expected a finite number")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps = {fps}; expected a positive frame rate")
    above = np.concatenate([[False], s > threshold, [False]])
    edges = np.flatnonzero(above[1:] != above[:-1])        # alternating starts and ends
    events = []
    for start, end in zip(edges[::2], edges[1::2]):
        if end - start < max(1, min_snippets):
            continue
        peak_at = int(start + np.argmax(s[start:end]))
        f0, f1 = int(start) * frames_per_snippet, int(end) * frames_per_snippet
        events.append(Event(int(start), int(end), f0, f1,
                            None if fps is None else f0 / fps, None if fps is None else f1 / fps,
                            float(s[peak_at]), peak_at, peak_at * frames_per_snippet))
    return events


@dataclass(frozen=True)
class Calibration:
    threshold: float
    false_alarm_rate: float          # asked for
    achieved_rate: float             # fraction of calibration snippets above the threshold
    snippets: int
    videos: int

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate_threshold(normal_scores: Iterable[np.ndarray], false_alarm_rate: float = 0.01
                        ) -> Calibration:
    """Threshold from normal videos' snippet scores (each (T,)) at a false-alarm rate.

    The 'higher' quantile is used, so the fraction of normal snippets strictly above the
    threshold never exceeds the rate asked for.
    """
    if not 0.0 <= false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate = {false_alarm_rate}; expected a fraction in [0, 1)")
    arrays = [np.asarray(a, dtype=np.float64).reshape(-1) for a in normal_scores]
    if not arrays or sum(a.size for a in arrays) == 0:
        raise ValueError("calibration needs the scores of at least one normal video; got none")
    allv = np.concatenate(arrays)
    thr = float(np.quantile(allv, 1.0 - false_alarm_rate, method="higher"))
    return Calibration(thr, float(false_alarm_rate), float(np.mean(allv > thr)), int(allv.size),
                       len(arrays))
