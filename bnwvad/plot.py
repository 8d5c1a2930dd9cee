"""Evaluation score curves against the ground truth, as a PNG (matplotlib, imported on first
use). One scored video with its threshold and events is `bnwvad.runtime.plot.plot_video`.

Torch-free, so `bnwvad-eval --scores` can plot a deployed model's scores. Uses the Agg
canvas directly (no pyplot): nothing global is switched, so this never changes the
backend of a caller's interactive session.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .atomic import atomic_write
from .metrics import FRAMES_PER_SNIPPET, EvaluationError, VideoLike, is_abnormal, video_classes


def default_plot_videos(videos: Sequence[VideoLike], annotations: Mapping[str, Sequence],
                        abnormal: int = 3, normal: int = 1) -> list[str]:
    """The first `abnormal` annotated abnormal videos and the first `normal` normal ones,
    in test-list order (deterministic, so plots of two runs compare)."""
    ab = [v.name for v in videos if is_abnormal(v, annotations) and annotations.get(v.name)]
    if len(ab) < abnormal:          # abnormal videos without events still show their curve
        ab += [v.name for v in videos if is_abnormal(v, annotations) and v.name not in ab]
    no = [v.name for v in videos if not is_abnormal(v, annotations)]
    return ab[:abnormal] + no[:normal]


def check_plot_videos(names: Sequence[str], videos: Sequence[VideoLike]) -> None:
    """EvaluationError naming any requested video that is not a test video."""
    known = {v.name for v in videos}
    unknown = [n for n in names if n not in known]
    if unknown:
        sample = ", ".join(repr(v.name) for v in list(videos)[:3])
        raise EvaluationError(f"video {unknown[0]!r} is not in the test list "
                              f"({len(known)} videos, e.g. {sample}); expected a test video name "
                              f"(a feature file name without '__<crop>.npy')")


def plot_score_curves(path: str | os.PathLike, scores: Mapping[str, Any],
                      videos: Sequence[VideoLike], annotations: Mapping[str, Sequence[tuple[int, int]]],
                      *, names: Sequence[str] | None = None,
                      frames_per_snippet: int = FRAMES_PER_SNIPPET, title: str | None = None,
                      extra: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write a PNG with one panel per video: its frame-level anomaly score (each snippet's
    score held for `frames_per_snippet` frames) with the annotated events shaded.

    names: videos to draw (default `default_plot_videos`); unknown names raise
    EvaluationError. extra: optional ``{label: {video: (T,) curve in [0, 1]}}`` drawn on a
    second axis (e.g. the classifier score). The file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    videos = list(videos)
    names = list(names) if names else default_plot_videos(videos, annotations)
    if not names:
        raise EvaluationError("no videos to plot")
    check_plot_videos(names, videos)
    by_name = {v.name: v for v in videos}
    missing = [n for n in names if n not in scores]
    if missing:
        raise EvaluationError(f"no scores for video {missing[0]!r} to plot")

    fig = Figure(figsize=(10, 2.3 * len(names)), dpi=100, constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        s = np.asarray(scores[name], dtype=np.float64)
        frames = np.arange(s.size * frames_per_snippet + 1)
        # A step curve: snippet i covers frames [16 i, 16 (i + 1)).
        ax.stairs(s, frames[::frames_per_snippet], baseline=None, color="C3", linewidth=1.2,
                  label="anomaly score")
        for k, (start, end) in enumerate(annotations.get(name, ())):
            ax.axvspan(start, min(end, s.size * frames_per_snippet), color="C0", alpha=0.2, lw=0,
                       label="ground truth (anomalous)" if k == 0 else None)
        handles, labels = ax.get_legend_handles_labels()
        if extra:
            # Extra curves (classifier score, in [0, 1]) get their own axis: the anomaly
            # score is score * DFM and can be far larger.
            ax2 = ax.twinx()
            for j, (label, curves) in enumerate(extra.items()):
                if name in curves:
                    ax2.stairs(np.asarray(curves[name], dtype=np.float64), frames[::frames_per_snippet],
                               baseline=None, color=f"C{j + 4}", linewidth=0.8, alpha=0.8, label=label)
            ax2.set_ylim(0, 1.05)
            ax2.set_ylabel(", ".join(extra), fontsize=8)
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        v = by_name[name]
        kind = "abnormal" if is_abnormal(v, annotations) else "normal"
        cls = ", ".join(video_classes(v))
        ax.set_title(f"{name}  ({kind}{': ' + cls if cls else ''}, {s.size} snippets)", fontsize=9)
        ax.set_xlim(0, s.size * frames_per_snippet)
        lo = min(0.0, float(s.min()))
        ax.set_ylim(lo, max(float(s.max()) * 1.1, lo + 1e-6))   # room above the curve's peak
        ax.set_ylabel("anomaly score")
        ax.legend(handles, labels, loc="upper right", fontsize=7)
    axes[-1].set_xlabel("frame")
    if title:
        fig.suptitle(title, fontsize=10)

    return atomic_write(path, lambda f: fig.savefig(f, format="png"))


__all__ = ["check_plot_videos", "default_plot_videos", "plot_score_curves"]
