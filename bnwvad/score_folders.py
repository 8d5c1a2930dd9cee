"""Precomputed scores read back for evaluation, and where they came from.

- `load_score_dir`: ``{video: (T,) scores}`` from one folder of ``<video>.npy`` files (the
  runtime's output format), every test video's file present, each read by
  `bnwvad.features.read_npy` (never unpickled).
- `load_run_scores`: what `bnwvad-eval --scores` reads: the ``--out`` folders of bnwvad-infer
  runs, checked to be the recorded output of ONE model (each folder's summary.json lists its
  files and the weights digest; score files of no recorded run, of an unfinished run, stale
  files the run does not list, or folders of several models are refused by name).

numpy only (no torch): the errors are `bnwvad.metrics.EvaluationError`s.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .features import FeatureFileError, read_npy
from .metrics import EvaluationError, VideoLike


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


__all__ = ["load_run_scores", "load_score_dir"]
