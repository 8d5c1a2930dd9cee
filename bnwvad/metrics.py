"""The evaluation protocol of the published results: ground truth, frame scores, AUC / AP.

numpy + scikit-learn only (no torch): training, the torch-free runtime, `bnwvad-eval
--scores` and the benchmark all compute their numbers with this module, so a deployed
model is measured by exactly the code that measures the PyTorch one.

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

import csv
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np
from sklearn.metrics import auc as _trapezoid_auc
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from .features import XD_CLASSES, FeatureFileError, read_npy, read_npy_header

FRAMES_PER_SNIPPET = 16
ANNOTATION_FORMATS = ("ucf", "xd")
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
# Annotation files
# --------------------------------------------------------------------------------------
def _is_int(tok: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", tok) is not None


def detect_annotation_format(path: str | os.PathLike) -> str:
    """'ucf' or 'xd', from the first non-empty line of an annotation file.

    UCF-Crime lines are ``<Class>/<Video>.mp4 <frames> <Class> s1 e1 s2 e2`` (the third
    token is a class name); XD-Violence lines are ``<video> s1 e1 [s2 e2 ...]`` (integers
    after the name).
    """
    p = Path(path)
    for lineno, line in enumerate(_read_lines(p), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) >= 3 and _is_int(parts[1]) and not _is_int(parts[2]):
            return "ucf"
        if all(_is_int(t) for t in parts[1:]):
            return "xd"
        raise AnnotationError(
            f"{p}:{lineno}: cannot tell the annotation format from {line.strip()!r}; expected "
            f"UCF-Crime '<Class>/<Video>.mp4 <frames> <Class> s1 e1 s2 e2' or XD-Violence "
            f"'<video> s1 e1 [s2 e2 ...]'")
    raise AnnotationError(f"{p}: the annotation file has no lines; expected one line per annotated video")


def _read_lines(p: Path) -> list[str]:
    if not p.is_file():
        raise AnnotationError(f"{p}: no such annotation file")
    try:
        return p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{p}: not a UTF-8 text file ({e}); expected an annotation list") from None


def read_annotations(path: str | os.PathLike, dataset: str | None = None) -> Annotations:
    """Parse an annotation file into ``{video name: ((s, e), ...)}``.

    `dataset` is the format: 'ucf' (UCF-Crime), 'xd' (XD-Violence, also the generic
    ``<video> s1 e1 ...`` form used for ShanghaiTech and the demo set), or None to detect
    it. Video names are those of the feature files without the crop suffix: UCF-Crime's
    ``Arson/Arson022_x264.mp4`` becomes ``Arson022_x264``. ``-1 -1`` pairs (UCF-Crime's
    "no event") are skipped. Events are frame indices, 0-based and end-exclusive.

    Raises AnnotationError naming the file and line for a malformed line (non-integer or
    negative frame index other than a -1 pair, an odd number of indices, an end before its
    start, a video listed twice).
    """
    p = Path(path)
    fmt = dataset
    if fmt in (None, "auto"):
        fmt = detect_annotation_format(p)
    elif fmt not in ANNOTATION_FORMATS:
        raise ValueError(f"annotation format {dataset!r}; expected one of {ANNOTATION_FORMATS} or None")
    out: dict[str, tuple[tuple[int, int], ...]] = {}
    for lineno, line in enumerate(_read_lines(p), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{p}:{lineno}"
        if fmt == "ucf":
            if len(parts) != 7:
                raise AnnotationError(
                    f"{where}: {len(parts)} fields in {line.strip()!r}; expected 7 (UCF-Crime: "
                    f"'<Class>/<Video>.mp4 <frames> <Class> s1 e1 s2 e2', -1 for no event)")
            if not _is_int(parts[1]):
                raise AnnotationError(f"{where}: frame count {parts[1]!r} is not an integer")
            name = Path(parts[0]).name
            name = name[:-4] if name.lower().endswith(".mp4") else name
            nums = parts[3:]
        else:
            name, nums = parts[0], parts[1:]
            if len(nums) % 2:
                raise AnnotationError(
                    f"{where}: {len(nums)} frame indices for {name!r}; expected pairs "
                    f"'s e' (XD-Violence: '<video> s1 e1 [s2 e2 ...]')")
        bad = [t for t in nums if not _is_int(t)]
        if bad:
            raise AnnotationError(f"{where}: {bad[0]!r} is not an integer frame index "
                                  f"(line {line.strip()!r})")
        vals = [int(t) for t in nums]
        events = []
        for s, e in zip(vals[0::2], vals[1::2]):
            if s == -1 and e == -1:
                continue                     # UCF-Crime's placeholder for "no event"
            if s < 0 or e < 0:
                raise AnnotationError(f"{where}: event ({s}, {e}) of {name!r} has a negative frame "
                                      f"index; expected 0 <= start <= end (or '-1 -1' for none)")
            if e < s:
                raise AnnotationError(f"{where}: event ({s}, {e}) of {name!r} ends before it starts; "
                                      f"expected start <= end (0-based, end-exclusive)")
            events.append((s, e))
        if name in out:
            raise AnnotationError(f"{where}: video {name!r} is annotated twice; expected one line per video")
        out[name] = tuple(events)
    if not out:
        raise AnnotationError(f"{p}: the annotation file has no lines; expected one line per annotated video")
    return out


# --------------------------------------------------------------------------------------
# Snippet counts
# --------------------------------------------------------------------------------------
def read_snippet_counts(path: str | os.PathLike, videos: Sequence[VideoLike] | None = None, *,
                        list_file: str | os.PathLike | None = None) -> dict[str, int]:
    """``{video: T}`` from a CSV with a header holding ``video`` and ``snippets`` columns
    (the datasets' ``test_snippets.csv``).

    With `videos` (a test list's, read from `list_file`): every one must have a row, and the
    result holds exactly those videos, in their order.
    """
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"{p}: no such snippet-count file")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "video" not in cols or "snippets" not in cols:
            raise EvaluationError(f"{p}: header {cols}; expected a CSV with columns 'video' and 'snippets'")
        out: dict[str, int] = {}
        for row in reader:
            lineno = reader.line_num
            name, t = (row.get("video") or "").strip(), (row.get("snippets") or "").strip()
            if not _is_int(t) or int(t) < 1:
                raise EvaluationError(f"{p}:{lineno}: snippets {t!r} for {name!r}; expected a positive integer")
            if name in out:
                raise EvaluationError(f"{p}:{lineno}: video {name!r} listed twice")
            out[name] = int(t)
    if videos is None:
        return out
    missing = [v.name for v in videos if v.name not in out]
    if missing:
        of = f" of {list_file}" if list_file is not None else ""
        raise EvaluationError(f"{p}: no snippet count for {len(missing)} test videos, first "
                              f"{missing[0]!r}; expected a row per video{of}")
    return {v.name: out[v.name] for v in videos}


def snippet_counts_from_features(videos: Iterable[Any]) -> dict[str, int]:
    """``{video: T}`` read from the headers of each video's feature files (no data read).

    `videos` are `bnwvad.features.Video`s: per-crop files are (T, D), a stacked file is
    (T, C, D); every crop of a video must have the same T.
    """
    out = {}
    for v in videos:
        ts = set()
        for path in v.paths:
            try:
                ts.add(read_npy_header(path, ndim=(2, 3))[0][0])
            except FeatureFileError as e:
                raise EvaluationError(str(e)) from None
        if len(ts) != 1:
            raise EvaluationError(f"video {v.name!r}: its crop files disagree on T {sorted(ts)} "
                                  f"({v.paths[0].parent})")
        out[v.name] = ts.pop()
    return out


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
# Reading precomputed scores and printing
# --------------------------------------------------------------------------------------
def load_score_dir(directory: str | os.PathLike, videos: Sequence[VideoLike]) -> dict[str, np.ndarray]:
    """``{video: (T,) scores}`` from ``<directory>/<video>.npy`` (the runtime's output format).

    Every test video must have its file; each is read by `bnwvad.features.read_npy` (never
    unpickled) and must be a 1-D float array, dtype kept. Files for other videos are ignored.
    """
    d = Path(directory)
    if not d.is_dir():
        raise EvaluationError(f"{d}: no such score directory; expected one <video>.npy per test video")
    missing = [f"{v.name}.npy" for v in videos if not (d / f"{v.name}.npy").is_file()]
    if missing:
        raise _missing_scores(str(d), missing, len(videos))
    return _read_scores({v.name: d / f"{v.name}.npy" for v in videos})


def _missing_scores(where: str, missing: Sequence[str], total: int, note: str = "") -> EvaluationError:
    return EvaluationError(
        f"{where}: no score file for {len(missing)} of {total} test videos, first {missing[0]!r}; "
        f"expected one <video>.npy of snippet scores (T,) per test video{note}")


def _read_scores(paths: Mapping[str, Path]) -> dict[str, np.ndarray]:
    """Each 1-D float score file, by `read_npy` (never unpickled), dtype kept."""
    out = {}
    for name, path in paths.items():
        try:
            out[name] = read_npy(path, ndim=(1,), kind="score")
        except FeatureFileError as e:
            raise EvaluationError(str(e)) from None
    return out


def load_run_scores(directories: str | os.PathLike | Sequence[str | os.PathLike],
                    videos: Sequence[VideoLike]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """``{video: (T,) scores}`` from the ``--out`` folders of bnwvad-infer runs, all of ONE model,
    and a description of the runs used (folder, weights digest, precision, status).

    What `bnwvad-eval --scores` reads. Each folder's summary.json (the run's record) must exist
    and list every score file taken from it; every test video's ``<video>.npy`` must be in
    exactly one folder. Refused, naming the files and digests: a folder with no summary.json
    (score files of no recorded run), a run that never finished, a score file the run does not
    list (a stale file of an earlier run), folders written by different models (weights digest
    or precision). The files are then read as by `load_score_dir`.
    """
    from .runtime.io import SUMMARY_FILE, RunFolderError, read_run

    dirs = [Path(d) for d in ([directories] if isinstance(directories, (str, os.PathLike))
                              else directories)]
    if not dirs:
        raise EvaluationError("no score directory given")
    runs = {}
    for d in dirs:
        if not d.is_dir():
            raise EvaluationError(f"{d}: no such score directory; expected the --out folder of a "
                                  f"bnwvad-infer run (one <video>.npy per test video)")
        try:
            rec = read_run(d)
        except RunFolderError as e:
            raise EvaluationError(f"{e}; so which model wrote the score files in {d} is unknown. "
                                  f"Fix: score the test set with bnwvad-infer into a new --out") from None
        if rec is None:
            some = sorted(p.name for p in d.glob("*.npy"))
            shown = ", ".join(some[:3]) + (", ..." if len(some) > 3 else "")
            raise EvaluationError(
                f"{d}: no {SUMMARY_FILE}, so its {len(some)} score file(s) ({shown or 'none'}) come from no "
                f"recorded bnwvad-infer run and which model wrote them is unknown; expected the --out "
                f"folder of a bnwvad-infer run. Fix: score the test set with bnwvad-infer into a new --out")
        if rec.status == "running":
            raise EvaluationError(f"{rec.summary}: the bnwvad-infer run that wrote {d} never finished "
                                  f"(killed?), so its files are not recorded. Fix: run it again")
        runs[d] = rec
    models: dict[tuple[str, str | None], list[Path]] = {}
    for d, rec in runs.items():
        models.setdefault((rec.model.digest, rec.model.precision), []).append(d)
    if len(models) > 1:
        parts = [f"{digest} ({precision or 'precision ?'}) in {', '.join(map(str, ds))}"
                 for (digest, precision), ds in models.items()]
        raise EvaluationError(f"the score folders were written by {len(models)} different models: "
                              f"{'; '.join(parts)}; expected the scores of one model")
    where: dict[str, Path] = {}
    missing, unlisted, twice = [], {}, []
    for v in videos:
        name = f"{v.name}.npy"
        found = [d for d in dirs if (d / name).is_file()]
        if not found:
            missing.append(name)
        elif len(found) > 1:
            twice.append((name, found))
        elif name not in runs[found[0]].files:
            unlisted.setdefault(found[0], []).append(name)
        else:
            where[v.name] = found[0]
    if twice:
        name, found = twice[0]
        raise EvaluationError(f"{len(twice)} test video(s) have a score file in several folders, first "
                              f"{name!r} in {', '.join(map(str, found))}; expected each in one")
    if unlisted:
        d, names = next(iter(unlisted.items()))
        rec = runs[d]
        raise EvaluationError(
            f"{d}: {len(names)} score file(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) "
            f"are not listed in its {SUMMARY_FILE}, so the run it records (model {rec.model.describe()}) "
            f"did not write them (stale files of an earlier run?); expected only that run's scores")
    if missing:
        cut = [str(d) for d, rec in runs.items() if rec.status == "interrupted"]
        raise _missing_scores(", ".join(map(str, dirs)), missing, len(videos),
                              f" (the run in {', '.join(cut)} was interrupted)" if cut else "")
    out = _read_scores({v.name: where[v.name] / f"{v.name}.npy" for v in videos})
    used = [{"folder": str(d), "weights_digest": rec.model.digest, "precision": rec.model.precision,
             "model": rec.model_path, "status": rec.status} for d, rec in runs.items()]
    return out, used


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
    "ANNOTATION_FORMATS", "AnnotationError", "Annotations", "EvaluationError", "FRAMES_PER_SNIPPET",
    "abnormal_frame_mask", "binary_metrics", "detect_annotation_format", "evaluate_scores",
    "format_table", "frame_scores", "ground_truth", "is_abnormal", "load_run_scores", "load_score_dir",
    "read_annotations", "read_snippet_counts", "snippet_counts_from_features", "video_classes",
    "video_ground_truth",
]
