"""PNG of one scored video: its anomaly-score curve, the threshold and its events marked
(`bnwvad-infer --plot`). Evaluation curves against ground truth are
`bnwvad.plot.plot_score_curves`.

matplotlib is imported here, on first use, and only its object-oriented API with the Agg
canvas: no pyplot, no global backend switch, no display needed.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .events import Event
from ..atomic import atomic_write


def plot_video(path: str | Path, name: str, anomaly: np.ndarray, *, frames_per_snippet: int = 16,
                fps: float | None = None, threshold: float | None = None,
                events: Sequence[Event] = ()) -> Path:
    """Write `path` (PNG): per-frame anomaly score against time (seconds at fps, else frames)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise RuntimeError(f"--plot needs matplotlib ({e}). Fix: pip install matplotlib") from None
    frames = np.repeat(np.asarray(anomaly, np.float64), frames_per_snippet)     # (T * 16,)
    scale = 1.0 / fps if fps else 1.0
    x = np.arange(frames.size) * scale
    fig = Figure(figsize=(10, 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, frames, lw=1.0, color="tab:blue", label="anomaly score")
    for k, ev in enumerate(events):
        ax.axvspan(ev.start_frame * scale, ev.end_frame * scale, color="tab:red", alpha=0.2,
                   label="event" if k == 0 else None)
        # Marker at the middle of the peak snippet (its frames all carry the peak score).
        ax.plot([(ev.peak_frame + frames_per_snippet / 2) * scale], [ev.peak], marker="v",
                color="tab:red", ms=5)
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=0.8, label=f"threshold {threshold:.4g}")
    ax.set_xlim(0, max(frames.size, 1) * scale)          # to the end of the last snippet
    ax.set_xlabel("time (s)" if fps else "frame")
    ax.set_ylabel("anomaly")
    ax.set_title(name, fontsize=9)
    ax.legend(loc="best", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
