"""The evaluation protocol of the published results: ground truth, frame scores, AUC / AP.

numpy + scikit-learn only (no torch): training, the torch-free runtime, `bnwvad-eval
--scores` and the benchmark all compute their numbers with this module, so a deployed
model is measured by exactly the code that measures the PyTorch one. The files it needs
are read beside it: annotation files and snippet counts by `bnwvad.annotations`,
precomputed scores (and which recorded runs wrote them) by `bnwvad.score_folders`.

The protocol (`shared/datasets/README.md`):

- Per test video, in test-list order: ``gt = zeros(16 * T)``, then ``gt[s:e] = 1`` for each
  annotated event (0-based, end-exclusive frame indices; numpy slicing clips an event that
  runs past ``16 * T``, as the published code does). T is the video's snippet count, taken
  from its features (or a ``test_snippets.csv``-like mapping), never from the frame count.
  A video without an annotation line is all normal.
- Snippet scores become frame scores by repeating each one ``frames_per_snippet`` (16) times.
- ``auc``: ROC AUC over all frames (``sklearn.metrics.roc_auc_score``).
- ``ap``: AP **as published**: ``sklearn.metrics.auc(recall, precision)`` on
  ``precision_recall_curve`` (trapezoid rule). This is what the paper's AP numbers are.
- ``average_precision``: ``sklearn.metrics.average_precision_score`` (step-wise sum), which
  is NOT the published AP; reported beside it so the two are never confused.
- ``auc_sub`` / ``ap_sub`` / ``average_precision_sub``: the same on the frames of abnormal
  videos only (for XD-Violence these frames are exactly ``xd_anomaly_mask.npy``).
- ``per_class``: for each anomaly class, the metrics on the frames of the normal videos
  plus the videos of that class (the paper's Table 9 rule). A video labelled with several
  classes (XD-Violence ``_label_G-B2-B6``) counts for each of them.

All metric values are fractions in [0, 1] (the paper prints percentages: multiply by 100).
A metric that is undefined because its frames hold a single class (e.g. no anomalous
frame at all) is ``None`` (JSON ``null``), never NaN.

Speed without changing a digit: the 16 frames of a snippet share one score, so the frames
are grouped per snippet into (score, label, count) triples and the sklearn functions get
the counts as sample weights. scikit-learn's curves only depend on per-threshold sums of
the weights, and sums of integer weights are exact in float64, so every curve point - and
hence every metric - is bitwise identical to the frame-by-frame computation (a test checks
this), 16 times faster.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
from sklearn.metrics import auc as _trapezoid_auc
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from .features import XD_CLASSES

FRAMES_PER_SNIPPET = 16
# Class tags that mean "normal" in the benchmarks' names (XD `_label_A`, UCF `Normal`).
NORMAL_TAGS = frozenset({"A", "Normal"})

Annotations = dict[str, tuple[tuple[int, int], ...]]


class AnnotationError(ValueError):
    """An annotation file that cannot be used: names the file and line, what was found and expected."""


class EvaluationError(ValueError):
    """Scores or snippet counts that do not fit the test set (missing video, wrong length, ...)."""


class VideoLike(Protocol):
    """What evaluation needs of a test video; `bnwvad.features.Video` is one."""

    name: str
    label: int | None
    classes: tuple[str, ...]


# --------------------------------------------------------------------------------------
# Ground truth and frame scores
# --------------------------------------------------------------------------------------
def frame_scores(snippet_scores: np.ndarray, frames_per_snippet: int = FRAMES_PER_SNIPPET) -> np.ndarray:
    """Repeat each snippet score `frames_per_snippet` times (the published frame scores)."""
    return np.repeat(np.asarray(snippet_scores), frames_per_snippet)


def video_ground_truth(events: Sequence[tuple[int, int]], snippets: int,
                       frames_per_snippet: int = FRAMES_PER_SNIPPET) -> np.ndarray:
    """One video's frame labels: zeros(16 * T) with ``gt[s:e] = 1`` per event (uint8)."""
    gt = np.zeros(frames_per_snippet * int(snippets), dtype=np.uint8)
    for s, e in events:
        gt[s:e] = 1        # slicing clips an event past the last scored frame, as published
    return gt


def is_abnormal(video: VideoLike, annotations: Mapping[str, Sequence] | None = None) -> bool:
    """Label 1 is abnormal, 0 normal; an unlabelled video is abnormal when it has events."""
    if video.label is not None:
        return int(video.label) == 1
    return bool(annotations and annotations.get(video.name))


def ground_truth(videos: Sequence[VideoLike], annotations: Mapping[str, Sequence[tuple[int, int]]],
                 snippets: Mapping[str, int],
                 frames_per_snippet: int = FRAMES_PER_SNIPPET) -> np.ndarray:
    """Frame labels of the whole test set, concatenated in `videos` order (uint8)."""
    return np.concatenate([video_ground_truth(annotations.get(v.name, ()), _count(snippets, v.name),
                                              frames_per_snippet) for v in videos])


def abnormal_frame_mask(videos: Sequence[VideoLike], snippets: Mapping[str, int],
                        frames_per_snippet: int = FRAMES_PER_SNIPPET,
                        annotations: Mapping[str, Sequence] | None = None) -> np.ndarray:
    """True on the frames of abnormal videos (the `_sub` metrics' frames; XD's
    ``xd_anomaly_mask.npy``)."""
    return np.concatenate([np.full(frames_per_snippet * _count(snippets, v.name),
                                   is_abnormal(v, annotations)) for v in videos])


def _count(snippets: Mapping[str, int], name: str) -> int:
    try:
        return int(snippets[name])
    except KeyError:
        raise EvaluationError(f"no snippet count for test video {name!r}") from None


def video_classes(video: VideoLike) -> tuple[str, ...]:
    """The anomaly classes of a video, readable: XD letters become names (B1 -> Fighting),
    UCF-Crime class folders stay as they are; normal videos have none."""
    out = []
    for tag in getattr(video, "classes", ()) or ():
        if tag in NORMAL_TAGS:
            continue
        name = XD_CLASSES.get(tag, tag)
        if name not in out:
            out.append(name)
    return tuple(out)


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------
def _snippet_groups(scores: np.ndarray, gt: np.ndarray, fps: int):
    """(score, label, weight) triples: per snippet, its anomalous and normal frame counts."""
    t = scores.shape[0]
    pos = gt.reshape(t, fps).sum(1, dtype=np.int64)
    s = np.concatenate([scores, scores])
    y = np.concatenate([np.ones(t, np.uint8), np.zeros(t, np.uint8)])
    w = np.concatenate([pos, fps - pos])
    keep = w > 0        # sklearn drops zero weights too; doing it here keeps arrays small
    return s[keep], y[keep], w[keep].astype(np.float64)


def binary_metrics(y_true: np.ndarray, y_score: np.ndarray,
                   sample_weight: np.ndarray | None = None) -> dict[str, float | None]:
    """``auc``, ``ap`` (published: trapezoid area under the PR curve) and
    ``average_precision`` (``average_precision_score``), fractions; None when undefined.

    `sample_weight` holds integer frame counts (see the module docstring); None means
    one frame per entry.
    """
    y_true = np.asarray(y_true)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    positives = float(np.sum(y_true if w is None else y_true * w))
    total = float(y_true.size if w is None else w.sum())
    if positives == 0 or positives == total:
        return {"auc": None, "ap": None, "average_precision": None}
    precision, recall, _ = precision_recall_curve(y_true, y_score, sample_weight=w)
    return {
        "auc": float(roc_auc_score(y_true, y_score, sample_weight=w)),
        "ap": float(_trapezoid_auc(recall, precision)),
        "average_precision": float(average_precision_score(y_true, y_score, sample_weight=w)),
    }


def _check_scores(scores: Mapping[str, Any], videos: Sequence[VideoLike],
                  snippets: Mapping[str, int] | None) -> dict[str, np.ndarray]:
    missing = [v.name for v in videos if v.name not in scores]
    if missing:
        raise EvaluationError(
            f"no scores for {len(missing)} of {len(videos)} test videos, first {missing[0]!r}"
            f"{' (also ' + ', '.join(repr(m) for m in missing[1:3]) + (' ...' if len(missing) > 3 else '') + ')' if len(missing) > 1 else ''}"
            f"; expected one snippet-score vector per test video")
    out = {}
    for v in videos:
        s = np.asarray(scores[v.name])
        if s.ndim != 1:
            raise EvaluationError(f"video {v.name!r}: scores of shape {s.shape}; expected a vector (T,) "
                                  f"of snippet scores")
        if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
            raise EvaluationError(f"video {v.name!r}: scores of dtype {s.dtype}; expected numbers")
        if snippets is not None:
            want = _count(snippets, v.name)
            if s.shape[0] != want:
                raise EvaluationError(f"video {v.name!r}: {s.shape[0]} snippet scores; expected "
                                      f"{want} (its snippet count T)")
        if s.shape[0] == 0:
            raise EvaluationError(f"video {v.name!r}: 0 snippet scores; expected T >= 1")
        if not np.isfinite(s).all():
            i = int(np.argmin(np.isfinite(s)))
            raise EvaluationError(f"video {v.name!r}: score {s[i]} at snippet {i}; expected finite scores")
        # float32 -> float64 is exact, so rankings (and every metric) are unchanged.
        out[v.name] = s.astype(np.float64)
    return out


def evaluate_scores(scores: Mapping[str, Any], videos: Sequence[VideoLike],
                    annotations: Mapping[str, Sequence[tuple[int, int]]], *,
                    snippets: Mapping[str, int] | None = None,
                    frames_per_snippet: int = FRAMES_PER_SNIPPET,
                    per_class: bool = True) -> dict[str, Any]:
    """All metrics of a test set from per-video snippet scores.

    scores: ``{video name: (T,) snippet anomaly scores}`` (extra names are ignored).
    videos: the test videos in test-list order, each with ``name``, ``label`` (1 abnormal,
        0 normal, None: abnormal iff annotated) and ``classes`` (`bnwvad.features.Video`).
    annotations: ``{video name: ((s, e), ...)}`` from `read_annotations`.
    snippets: ``{video name: T}``. When given, every score vector must have exactly that
        length (EvaluationError names the video, found and expected); when None, T is the
        length of the scores (right when they were just computed from the features).

    Returns a JSON-serialisable dict, values as fractions in [0, 1] (None when undefined):
    ``auc``, ``ap`` (published trapezoid form), ``average_precision``
    (``average_precision_score``), ``auc_sub``, ``ap_sub``, ``average_precision_sub``
    (abnormal videos' frames only), ``frames``, ``anomalous_frames``, ``frames_sub``,
    ``videos``, ``abnormal_videos``, ``frames_per_snippet``, and ``per_class``:
    ``{class: {auc, ap, average_precision, videos, frames, anomalous_frames}}`` on the
    frames of the normal videos plus that class's videos.
    """
    videos = list(videos)
    if not videos:
        raise EvaluationError("no test videos to evaluate")
    names = [v.name for v in videos]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise EvaluationError(f"test video {dup!r} appears twice in the test set")
    if frames_per_snippet < 1:
        raise ValueError(f"frames_per_snippet={frames_per_snippet}; expected a positive integer")
    if annotations:
        unknown = [n for n in annotations if n not in set(names)]
        if len(unknown) == len(annotations):
            raise EvaluationError(
                f"none of the {len(annotations)} annotated videos (e.g. {unknown[0]!r}) is a test video "
                f"(e.g. {names[0]!r}): the annotation file does not belong to this test list")
        if unknown:
            warnings.warn(f"{len(unknown)} annotated videos are not in the test list (e.g. {unknown[0]!r}); "
                          f"they are ignored", stacklevel=2)
    checked = _check_scores(scores, videos, snippets)
    fps = frames_per_snippet

    groups, abnormal, frames, positives = [], [], [], []
    for v in videos:
        s = checked[v.name]
        gt = video_ground_truth(annotations.get(v.name, ()), s.shape[0], fps)
        groups.append(_snippet_groups(s, gt, fps))
        abnormal.append(is_abnormal(v, annotations))
        frames.append(gt.size)
        positives.append(int(gt.sum(dtype=np.int64)))

    def subset(idx: Sequence[int]) -> dict[str, Any]:
        if not idx:
            return {"auc": None, "ap": None, "average_precision": None}
        s = np.concatenate([groups[i][0] for i in idx])
        y = np.concatenate([groups[i][1] for i in idx])
        w = np.concatenate([groups[i][2] for i in idx])
        return binary_metrics(y, s, w)

    everything = range(len(videos))
    result: dict[str, Any] = dict(subset(list(everything)))
    sub = [i for i in everything if abnormal[i]]
    result.update({f"{k}_sub": v for k, v in subset(sub).items()})
    result.update(
        frames=int(sum(frames)),
        anomalous_frames=int(sum(positives)),
        frames_sub=int(sum(frames[i] for i in sub)),
        videos=len(videos),
        abnormal_videos=len(sub),
        frames_per_snippet=fps,
    )
    classes: dict[str, Any] = {}
    if per_class:
        normal = [i for i in everything if not abnormal[i]]
        members: dict[str, list[int]] = {}
        for i, v in enumerate(videos):
            if abnormal[i]:
                for c in video_classes(v):
                    members.setdefault(c, []).append(i)
        for c in sorted(members):
            idx = sorted(normal + members[c])      # test-list order, as the published slices
            classes[c] = dict(subset(idx), videos=len(members[c]),
                              frames=int(sum(frames[i] for i in idx)),
                              anomalous_frames=int(sum(positives[i] for i in idx)))
    result["per_class"] = classes
    return result


# --------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}"


def format_table(metrics: Mapping[str, Any], title: str | None = None) -> str:
    """A plain-text table of `evaluate_scores`'s result (fractions, with % beside them)."""
    def pct(v):
        return "" if v is None else f"({100 * v:6.2f}%)"

    lines = []
    if title:
        lines.append(title)
    lines.append(f"{metrics['videos']} videos ({metrics['abnormal_videos']} abnormal), "
                 f"{metrics['frames']:,} frames, {metrics['anomalous_frames']:,} anomalous "
                 f"({metrics['frames_per_snippet']} frames per snippet)")
    rows = [
        ("AUC      ROC AUC, all frames", "auc"),
        ("AP       published: trapezoid area under PR curve", "ap"),
        ("AvgPrec  sklearn average_precision_score", "average_precision"),
        ("AUC_sub  ROC AUC, abnormal videos' frames", "auc_sub"),
        ("AP_sub   published AP, abnormal videos' frames", "ap_sub"),
        ("AvgPrec_sub", "average_precision_sub"),
    ]
    width = max(len(r[0]) for r in rows)
    for label, key in rows:
        v = metrics.get(key)
        lines.append(f"  {label:<{width}}  {_fmt(v):>6} {pct(v)}")
    per = metrics.get("per_class") or {}
    if per:
        cw = max(12, *(len(c) for c in per))
        lines.append("per class (normal videos + that class's videos):")
        lines.append(f"  {'class':<{cw}}  {'videos':>6}  {'AUC':>6}  {'AP':>6}  {'AvgPrec':>7}")
        for c, m in per.items():
            lines.append(f"  {c:<{cw}}  {m['videos']:>6}  {_fmt(m['auc']):>6}  {_fmt(m['ap']):>6}  "
                         f"{_fmt(m['average_precision']):>7}")
    return "\n".join(lines)


__all__ = [
    "AnnotationError", "Annotations", "EvaluationError", "FRAMES_PER_SNIPPET", "VideoLike",
    "abnormal_frame_mask", "binary_metrics", "evaluate_scores", "format_table", "frame_scores",
    "ground_truth", "is_abnormal", "video_classes", "video_ground_truth",
]
