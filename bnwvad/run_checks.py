"""What `bnwvad.train.prepare` reads and checks before a run writes anything.

- `load_run_data`: the training and test lists, and every file they name checked from its
  .npy header (`bnwvad.data_checks.check_files`): one missing or broken file among
  thousands fails the run before step 0 with every bad file named (DataCheckError); the
  test set with its annotations.
- `restore_checkpoint`: that the last.pt a resume continues from belongs to this run (its
  run id, the model, the recipe and the samples), then its weights and Adam state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, read_checkpoint
from .config import ModelConfig, TrainConfig
from .data import load_test_videos, load_train_samples
from .data_checks import DataCheckError, FileCheck, check_files
from .features import Video
from .model import BNWVAD
from .run_folder import RUN_FILE, DataSpec, RunFolderError, TrainingError
from .samples import Sample

# -- data -----------------------------------------------------------------------------------
@dataclass
class RunTestSet:
    """The test set a run evaluates on: its videos, annotations and (when known) snippet counts."""

    videos: list[Video]
    annotations: dict
    snippets: dict[str, int] | None


def load_run_test_set(data: DataSpec, videos: list[Video] | None = None) -> RunTestSet | None:
    """The run's test set (None without a test list); a bad snippet-count file is a TrainingError."""
    if data.test_list is None:
        return None
    from .annotations import read_annotations, read_snippet_counts
    from .metrics import EvaluationError

    if videos is None:
        videos = load_test_videos(data.test_list, data.root, audio=data.audio)
    annotations = read_annotations(data.annotations)
    snippets = None
    if data.snippets is not None and data.audio is None:
        try:
            snippets = read_snippet_counts(data.snippets, videos, list_file=data.test_list)
        except EvaluationError as e:
            raise TrainingError(str(e)) from None
    return RunTestSet(videos, annotations, snippets)


def load_run_data(data: DataSpec, model_cfg: ModelConfig, progress: bool
                  ) -> tuple[list[Sample], list[Sample], RunTestSet | None, FileCheck]:
    """Read the lists and check every file they name (headers only) before anything runs.

    Raises DataCheckError naming every bad file, or TrainingError when all features merely
    have another D than the model (with the hint for audio features)."""
    problems: list[str] = []
    normal, abnormal = load_train_samples(data.train_list, data.root, audio=data.audio, problems=problems)
    test_videos = None
    if data.test_list is not None:
        test_videos = load_test_videos(data.test_list, data.root, audio=data.audio, problems=problems)
    check = check_files(normal, abnormal, test_videos or (), feature_dim=model_cfg.feature_dim,
                        audio=data.audio, progress=progress, problems=problems)
    if check.problems:
        audio_dim = data.audio.dim if data.audio is not None else 0
        visual = [p for paths in check.dims.values() for p in paths]
        dims = list(check.dims)
        if (not problems and len(dims) == 1 and dims[0] + audio_dim != model_cfg.feature_dim
                and len(check.problems) == len(visual)):
            # Every visual file has one D, and it is not the model's: one line says it all.
            (dim, paths), = check.dims.items()
            total = dim + audio_dim
            raise TrainingError(
                f"{paths[0]}: the training features have D = {total}"
                + (" (visual + audio)" if data.audio else "")
                + f" but the model expects feature_dim = {model_cfg.feature_dim}"
                + ("; pass --audio-root/--audio-list for the 1152-d audio-visual model"
                   if not data.audio and model_cfg.feature_dim == dim + 128 else "")
                + f" (all {len(paths)} feature files have D = {dim})")
        raise DataCheckError(check.problems, check.checked + len(problems))
    test = None
    if test_videos is not None:
        test = load_run_test_set(data, test_videos)
    return normal, abnormal, test, check


# -- resume ---------------------------------------------------------------------------------
# Train-config fields that may change when a run is resumed (they do not change the
# batches or the updates of the steps already done).
RESUMABLE_CHANGES = ("iterations", "eval_every", "extra")


def restore_checkpoint(path: Path, model: BNWVAD, optimizer: torch.optim.Optimizer, model_cfg: ModelConfig,
                       train_cfg: TrainConfig, fingerprints: dict[str, str], *,
                       legacy_fingerprints: dict[str, str] | None = None, run_id: str | None = None
                       ) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Load last.pt into model/optimizer after checking it belongs to this run (its run id,
    when both it and run.json have one; the model, the recipe and the samples). Returns the
    step, the best-so-far record and the RNG states (the training loop sets them)."""
    obj = read_checkpoint(path)
    ts = obj.get("train_state") if isinstance(obj, dict) else None
    if not isinstance(ts, dict):
        raise TrainingError(f"{path}: holds no training state (a best.pt or a published "
                            f"state_dict?); resume needs the last.pt of a run")
    own = ts.get("run_id")
    if own is not None and run_id is not None and own != run_id:
        raise RunFolderError(f"{path} belongs to run {own}, but {path.parent / RUN_FILE} to run {run_id}: "
                             f"the folder mixes two runs; refusing to resume (put the run's own last.pt "
                             f"back, or start a new run in another folder)")
    saved_model = obj.get("config", {})
    diff = _diff(saved_model, model_cfg.to_dict())
    if diff:
        raise TrainingError(f"{path}: the model settings differ from the run being resumed: "
                            f"{'; '.join(diff)}")
    diff = _diff(ts.get("train_config", {}), train_cfg.to_dict(), ignore=RESUMABLE_CHANGES)
    if diff:
        raise TrainingError(f"{path}: the training recipe differs from the run being resumed "
                            f"(only {', '.join(RESUMABLE_CHANGES)} may change): {'; '.join(diff)}")
    if ts.get("fingerprints") not in (fingerprints, legacy_fingerprints):
        raise TrainingError(f"{path}: the training list's samples changed since the run started "
                            f"(saved {ts.get('fingerprints')}, now {fingerprints}); resume needs the same data")
    try:
        model.load_state_dict(obj["state_dict"])
        optimizer.load_state_dict(ts["optimizer"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot restore the training state: {e}") from None
    best = dict(ts.get("best") or {})
    return int(ts["step"]), best, ts["rng"]


def _diff(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


__all__ = ["RESUMABLE_CHANGES", "RunTestSet", "load_run_data", "load_run_test_set", "restore_checkpoint"]
