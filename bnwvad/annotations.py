"""The test set's ground-truth files: annotation files and snippet counts.

What `bnwvad.metrics` turns into frame labels, read and checked here, each error naming the
file and line (AnnotationError, EvaluationError):

- annotation files, in UCF-Crime's ``<Class>/<Video>.mp4 <frames> <Class> s1 e1 s2 e2`` or
  XD-Violence's ``<video> s1 e1 [s2 e2 ...]`` form (`read_annotations`; the format is detected
  from the first line, `detect_annotation_format`): ``{video: ((s, e), ...)}``, frame
  indices 0-based and end-exclusive;
- snippet counts T per test video, from a ``test_snippets.csv`` (`read_snippet_counts`) or
  from the headers of the videos' feature files (`snippet_counts_from_features`).

numpy only (no torch), like `bnwvad.metrics`.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from .features import FeatureFileError, read_npy_header
from .metrics import AnnotationError, Annotations, EvaluationError, VideoLike

ANNOTATION_FORMATS = ("ucf", "xd")


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


__all__ = ["ANNOTATION_FORMATS", "detect_annotation_format", "read_annotations", "read_snippet_counts",
           "snippet_counts_from_features"]
