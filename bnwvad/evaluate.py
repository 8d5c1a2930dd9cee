"""Evaluating a model on a test set in the benchmarks' real layouts.

- `score_videos`: a torch model's snippet scores per test video (each video's crops as one
  (1, C, T, D) forward in eval mode, no gradients).
- `evaluate_model(model, test_videos, annotations, device=...) -> dict`: those scores through
  `bnwvad.metrics.evaluate_scores` (what the training loop calls periodically).
- `dataset_files` / `load_test_set`: the list, annotation and snippet-count files of a
  dataset, with the defaults `bnwvad-eval` uses.
- `evaluate_dataset`: list file + root + annotation file -> metrics and scores.

torch is imported inside the functions that run a model, so the dataset helpers serve
`bnwvad-eval --scores` where torch is not installed.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np

from .features import Video, group_videos, load_video, read_list
from .annotations import read_annotations, read_snippet_counts, snippet_counts_from_features
from .metrics import FRAMES_PER_SNIPPET, Annotations, EvaluationError, evaluate_scores
from .plot import plot_score_curves

if TYPE_CHECKING:
    import torch

    from .model import BNWVAD


# --------------------------------------------------------------------------------------
# Dataset files
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset's test files are by default, relative to its root directory."""

    list_file: str
    annotations: tuple[str, ...]      # candidates, first existing wins
    snippets: tuple[str, ...] = ()    # optional test_snippets.csv candidates
    default_root: str | None = None
    preset: str | None = None         # for bare (published) state_dicts


LAYOUTS: dict[str, DatasetLayout] = {
    "ucf": DatasetLayout("list/UCF_Test.list", ("UCF_Annotation.txt", "list/UCF_Annotation.txt"),
                         ("test_snippets.csv", "list/test_snippets.csv"), preset="ucf"),
    "xd": DatasetLayout("list/XD_Test.list", ("XD_Annotation.txt", "list/XD_Annotation.txt"),
                        ("test_snippets.csv", "list/test_snippets.csv"), preset="xd"),
    "shanghaitech": DatasetLayout("list/SH_Test.list", ("SH_Annotation.txt", "list/SH_Annotation.txt"),
                                  ("test_snippets.csv", "list/test_snippets.csv"), preset="shanghaitech"),
    # The built-in demo set is written in XD-Violence's layout under ./demo_data.
    "demo": DatasetLayout("list/XD_Test.list", ("XD_Annotation.txt", "list/XD_Annotation.txt"),
                          ("test_snippets.csv", "list/test_snippets.csv"), default_root="demo_data"),
}


@dataclass(frozen=True)
class DatasetFiles:
    dataset: str | None
    root: Path | None          # feature paths in the list resolve against it (None: the list's folder)
    list_file: Path
    annotations: Path
    snippets: Path | None      # a test_snippets.csv, when one was given or found
    preset: str | None


def dataset_files(dataset: str | None = None, *, root: str | os.PathLike | None = None,
                  list_file: str | os.PathLike | None = None,
                  annotations: str | os.PathLike | None = None,
                  snippets: str | os.PathLike | None = None) -> DatasetFiles:
    """Resolve a dataset's test files; explicit paths win over the layout's defaults.

    Defaults (``demo_data`` is the demo's root; ucf / xd / shanghaitech need `root` or an
    explicit list): the list ``<root>/list/<UCF|XD|SH>_Test.list``; the annotations
    ``<UCF|XD|SH>_Annotation.txt`` (or ``list/<...>``) under the root, else beside the list;
    ``test_snippets.csv`` likewise, if present (T of each test video, checked against the
    scores). Raises EvaluationError naming what was looked for.
    """
    if dataset is not None and dataset not in LAYOUTS:
        raise EvaluationError(f"unknown dataset {dataset!r}; expected one of {sorted(LAYOUTS)}")
    layout = LAYOUTS.get(dataset) if dataset else None
    base = Path(root) if root is not None else (
        Path(layout.default_root) if layout and layout.default_root else None)
    if base is not None and not base.is_dir():
        raise EvaluationError(f"{base}: no such dataset root directory"
                              + (" (run bnwvad-train with no arguments to generate the demo set)"
                                 if dataset == "demo" and root is None else ""))

    def need(what: str, flag: str) -> None:
        raise EvaluationError(f"no {what}: give {flag}" + ("" if layout else " or --dataset")
                              + (" or --root" if layout and base is None else ""))

    if list_file is not None:
        lf = Path(list_file)
    elif layout and base is not None:
        lf = base / layout.list_file
    else:
        need("test list file", "--list")
    if not lf.is_file():
        raise EvaluationError(f"{lf}: no such test list file")

    # Defaults are looked for under the root, then beside the list (the published metadata
    # keeps the list, annotations and test_snippets.csv in one folder).
    dirs = list(dict.fromkeys([*([base] if base is not None else []), lf.parent]))
    if annotations is not None:
        ann = Path(annotations)
        if not ann.is_file():
            raise EvaluationError(f"{ann}: no such annotation file")
    elif layout:
        tried = list(dict.fromkeys(d / a for d in dirs for a in layout.annotations))
        ann = next((p for p in tried if p.is_file()), None)
        if ann is None:
            raise EvaluationError(f"no annotation file: looked for {', '.join(map(str, tried))}; "
                                  f"give --annotations")
    else:
        need("annotation file", "--annotations")

    snip = None
    if snippets is not None:
        snip = Path(snippets)
        if not snip.is_file():
            raise EvaluationError(f"{snip}: no such snippet-count file")
    else:
        names = layout.snippets if layout else ("test_snippets.csv",)
        snip = next((d / n for d in dirs for n in names if (d / n).is_file()), None)
    return DatasetFiles(dataset, base, lf, ann, snip, layout.preset if layout else None)


@dataclass
class TestSet:
    videos: list[Video]                 # test-list order
    annotations: Annotations
    snippets: dict[str, int] | None     # T per video when known before scoring
    files: DatasetFiles


def load_test_set(files: DatasetFiles, *, need_snippets: bool = False) -> TestSet:
    """Read the test list (videos grouped with their crops, labels from names) and the
    annotations. Snippet counts come from the snippet CSV when there is one, else (when
    `need_snippets`, i.e. for precomputed scores) from the feature files' headers."""
    videos = group_videos(read_list(files.list_file, files.root), source=str(files.list_file))
    annotations = read_annotations(files.annotations)
    snippets = None
    if files.snippets is not None:
        snippets = read_snippet_counts(files.snippets, videos, list_file=files.list_file)
    elif need_snippets:
        try:
            snippets = snippet_counts_from_features(videos)
        except EvaluationError as e:
            raise EvaluationError(f"{e} (the snippet counts T are read from the feature files; "
                                  f"without them, give --snippets test_snippets.csv)") from None
    return TestSet(videos, annotations, snippets, files)


# --------------------------------------------------------------------------------------
# Scoring a model
# --------------------------------------------------------------------------------------
class VideoScores(NamedTuple):
    """One video's crop-mean snippet outputs, float32 (T,) each."""

    anomaly: np.ndarray
    score: np.ndarray
    dfm: np.ndarray


def resolve_device(device: "str | torch.device | None" = "auto") -> "torch.device":
    """'auto' (or None): CUDA when available, else CPU; anything else as torch reads it. A
    CUDA request without CUDA, or a name torch does not know, is a ValueError."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here; "
                         f"use --device cpu or auto")
    return dev


def _same_device(a: "torch.device", b: "torch.device") -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def score_videos(model: "BNWVAD", videos: Sequence[Video], *, device: "str | torch.device | None" = None,
                 progress: bool = True, load: Callable[..., np.ndarray] | None = None
                 ) -> dict[str, VideoScores]:
    """Score every test video: its crops (C, T, D) as one (1, C, T, D) forward.

    The model is put in eval mode (BatchNorm uses its running statistics and does not
    update them) under ``torch.no_grad()`` and given back in the mode it came in, so the
    training loop can call this mid-run. `device`: where to run (default: where the model
    is; it must already be there - the model is not moved, a training model stays put).
    The next video's files are read in a background thread while one is scored.
    load: ``load(video, feature_dim=D) -> (C, T, D) float32``; default
    `bnwvad.features.load_video` (e.g. pass a loader that appends audio features).
    """
    import torch
    from tqdm import tqdm

    param = next(model.parameters())
    dev = param.device if device is None else resolve_device(device)
    if not _same_device(dev, param.device):
        raise ValueError(f"the model is on {param.device} but device={str(device)!r} was asked for; "
                         f"move the model first (model.to(device))")
    dim = model.config.feature_dim
    load = load or load_video
    out: dict[str, VideoScores] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(load, videos[0], feature_dim=dim) if videos else None
            bar = tqdm(videos, desc="evaluating", unit="video", disable=not progress,
                       leave=False, dynamic_ncols=True)
            for i, video in enumerate(bar):
                x = pending.result()                 # raises FeatureFileError for a bad file
                pending = (pool.submit(load, videos[i + 1], feature_dim=dim)
                           if i + 1 < len(videos) else None)
                res = model(torch.from_numpy(x).unsqueeze(0).to(dev))
                out[video.name] = VideoScores(*(o[0].float().cpu().numpy()
                                                for o in (res.anomaly, res.score, res.dfm)))
    finally:
        model.train(was_training)
    return out


def evaluate_model(model: "BNWVAD", test_videos: Sequence[Video], annotations: Annotations, *,
                   device: "str | torch.device | None" = None, snippets: dict[str, int] | None = None,
                   frames_per_snippet: int = FRAMES_PER_SNIPPET, per_class: bool = True,
                   progress: bool = False, load: Callable[..., np.ndarray] | None = None
                   ) -> dict[str, Any]:
    """Metrics of `model` on a test set: the training loop's periodic evaluation.

    evaluate_model(model, test_videos, annotations, *, device=None, snippets=None,
                   frames_per_snippet=16, per_class=True, progress=False, load=None) -> dict

    model: a BNWVAD (any mode; restored afterwards). test_videos: `bnwvad.features.Video`s
    in test-list order (``group_videos(read_list(list, root))``). annotations: from
    `bnwvad.annotations.read_annotations`. device: where the model already is (default: its
    parameters' device). snippets: optional ``{video: T}`` to check the feature lengths
    against. load: the feature loader (see `score_videos`). Returns
    `bnwvad.metrics.evaluate_scores`'s dict: ``auc``, ``ap`` (published trapezoid form),
    ``average_precision``, ``auc_sub``, ``ap_sub``, ``frames``, ``anomalous_frames``,
    ``per_class``, ... as fractions in [0, 1].
    """
    scores = score_videos(model, test_videos, device=device, progress=progress, load=load)
    return evaluate_scores({k: v.anomaly for k, v in scores.items()}, test_videos, annotations,
                           snippets=snippets, frames_per_snippet=frames_per_snippet, per_class=per_class)


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    scores: dict[str, VideoScores]
    test_set: TestSet


def evaluate_dataset(model: "BNWVAD", list_file: str | os.PathLike, annotations: str | os.PathLike, *,
                     root: str | os.PathLike | None = None, snippets: str | os.PathLike | None = None,
                     device: "str | torch.device | None" = None, progress: bool = True,
                     frames_per_snippet: int = FRAMES_PER_SNIPPET) -> EvalResult:
    """Score and evaluate a model on a test list (paths resolved against `root`, default the
    list's folder) with an annotation file (and optionally a test_snippets.csv to check the
    feature lengths against)."""
    files = DatasetFiles(None, Path(root) if root is not None else None, Path(list_file),
                         Path(annotations), Path(snippets) if snippets is not None else None, None)
    test_set = load_test_set(files)
    scores = score_videos(model, test_set.videos, device=device, progress=progress)
    metrics = evaluate_scores({k: v.anomaly for k, v in scores.items()}, test_set.videos,
                              test_set.annotations, snippets=test_set.snippets,
                              frames_per_snippet=frames_per_snippet)
    return EvalResult(metrics, scores, test_set)


__all__ = ["DatasetFiles", "DatasetLayout", "EvalResult", "LAYOUTS", "TestSet", "VideoScores",
           "dataset_files", "evaluate_dataset", "evaluate_model", "load_test_set", "plot_score_curves",
           "resolve_device", "score_videos"]
