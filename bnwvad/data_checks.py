"""Every file a run will read, checked from its .npy header before anything is trained.

One missing or broken file among thousands should fail a run before step 0, with every
bad file named, not at the step that first samples it, hours in. `check_files` reads only
the headers (no data; threads, so a network file system answers in parallel) of the
training samples, their audio files and the test videos, and returns a FileCheck: one
message per bad file, the good files' shapes, the crop counts per video.
`DataCheckError` is the error a caller raises with those messages (numpy only).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .features import FeatureFileError, Video, read_npy_header
from .samples import AUDIO_LENGTH_SLACK, AudioSource, Sample

MAX_NAMED = 20           # bad files named one by one in a DataCheckError; the rest are counted


class DataCheckError(FeatureFileError):
    """Files of a run's lists that cannot be used, all of them (`problems`: one message per
    file, each naming it); raised before anything is trained or written."""

    def __init__(self, problems: Sequence[str], checked: int, what: str = "feature files"):
        self.problems = list(problems)
        self.checked = checked
        shown = self.problems[:MAX_NAMED]
        more = len(self.problems) - len(shown)
        lines = [f"{len(self.problems)} of the {checked} {what} in the lists cannot be used; nothing was "
                 f"trained or written. Fix or remove "
                 f"{'it' if len(self.problems) == 1 else 'them'} and start again:"]
        lines += [f"  {m}" for m in shown]
        if more:
            lines.append(f"  ... and {more} more (all {len(self.problems)} are listed by "
                         f"bnwvad.data_checks.check_files)")
        super().__init__("\n".join(lines))


@dataclass
class FileCheck:
    """What `check_files` found: every problem (one message per file), the header shapes of
    the good files, and the crop count per video of the training and test data."""

    checked: int
    problems: list[str]
    shapes: dict[Path, tuple[int, ...]]
    train_crops: int | None          # crops per training video (None: they differ)
    test_crops: int | None           # crops per test video (None: no test set, or they differ)
    dims: dict[int, list[Path]]      # visual D -> files with that D (wrong ones included)

    @property
    def crops(self) -> int | None:
        """Crops per video at test time, else in training: what an export records."""
        return self.test_crops if self.test_crops is not None else self.train_crops


def _read_headers(files: dict[Path, tuple[int, ...]], progress: bool, desc: str
                  ) -> tuple[dict[Path, tuple[int, ...]], dict[Path, str]]:
    """Headers of many files (threads: a network file system answers faster in parallel)."""
    import os
    import sys

    from tqdm import tqdm

    def one(item):
        path, ndim = item
        try:
            shape, _ = read_npy_header(path, ndim=ndim)
            return path, shape, None
        except FeatureFileError as e:
            return path, None, str(e)

    shapes: dict[Path, tuple[int, ...]] = {}
    errors: dict[Path, str] = {}
    bar = tqdm(total=len(files), desc=desc, unit="file", file=sys.stderr, disable=not progress,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0, leave=False)
    try:
        workers = max(1, min(16, 4 * (os.cpu_count() or 1), len(files)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bnwvad-check") as pool:
            for path, shape, err in pool.map(one, files.items(), chunksize=64):
                if err is None:
                    shapes[path] = shape
                else:
                    errors[path] = err
                bar.update(1)
    finally:
        bar.close()
    return shapes, errors


def check_files(normal: Sequence[Sample], abnormal: Sequence[Sample], test: Sequence[Video] = (), *,
                feature_dim: int, audio: AudioSource | None = None, progress: bool = False,
                problems: Sequence[str] = ()) -> FileCheck:
    """Check every file a run will read, from its .npy header only (no data read), before
    anything is trained: exists, is a complete .npy file, a float array of the right number
    of dimensions, T > 0, the right D (feature_dim, minus audio.dim when audio is
    appended), audio as long as the visual features (within AUDIO_LENGTH_SLACK), and the
    crops of a test video of one shape. NaN/inf values are only seen when a file is read.

    Returns a FileCheck with one message per bad file (`problems` given are kept first);
    raising is the caller's choice (`DataCheckError`).
    """
    visual_dim = feature_dim - (audio.dim if audio is not None else 0)
    files: dict[Path, tuple[int, ...]] = {}
    audio_files: set[Path] = set()
    for s in (*normal, *abnormal):
        files.setdefault(Path(s.path), (2,) if s.crop is None else (3,))
        if s.audio is not None:
            files.setdefault(Path(s.audio), (2,))
            audio_files.add(Path(s.audio))
    for v in test:
        for p in v.paths:
            files.setdefault(Path(p), (2, 3) if v.stacked else (2,))
        a = v.extra.get("audio")
        if a is not None:
            files.setdefault(Path(a), (2,))
            audio_files.add(Path(a))
    shapes, errors = _read_headers(files, progress, "checking files")
    bad: dict[Path, str] = dict(errors)
    dims: dict[int, list[Path]] = {}
    for p, shape in shapes.items():
        want = audio.dim if p in audio_files else visual_dim
        if p not in audio_files:
            dims.setdefault(shape[-1], []).append(p)
        if shape[-1] != want:
            kind = "audio feature" if p in audio_files else "feature"
            bad[p] = (f"{p}: {kind} dimension D = {shape[-1]} (shape {shape}); expected D = {want}"
                      + (f" (the model's {feature_dim} = {visual_dim} visual + {audio.dim} audio)"
                         if audio is not None else ""))
    # Audio as long as the visual features of each sample and test video.
    pairs = {(Path(s.path), Path(s.audio)) for s in (*normal, *abnormal) if s.audio is not None}
    pairs |= {(Path(v.paths[0]), Path(v.extra["audio"])) for v in test if v.extra.get("audio") is not None}
    for vis, aud in sorted(pairs):
        if vis in shapes and aud in shapes and aud not in bad:
            lv, la = shapes[vis][0], shapes[aud][0]
            if abs(lv - la) > AUDIO_LENGTH_SLACK:
                bad[aud] = (f"{aud}: {la} audio snippets but {vis} has {lv} visual snippets; expected "
                            f"the same length (a difference of at most {AUDIO_LENGTH_SLACK} is trimmed)")
    # The crops of a test video must agree in shape (they are stacked).
    test_counts = set()
    for v in test:
        if v.stacked:
            shape = shapes.get(Path(v.paths[0]))
            if shape is not None:
                test_counts.add(1 if len(shape) == 2 else shape[1])
            continue
        test_counts.add(len(v.paths))
        got = [shapes.get(Path(p)) for p in v.paths]
        if all(g is not None for g in got) and len(set(got)) > 1:
            for p, g in zip(v.paths, got):
                if g != got[0] and Path(p) not in bad:
                    bad[Path(p)] = (f"{p}: shape {g}, but {v.paths[0]} (crop 0 of video {v.name!r}) has "
                                    f"{got[0]}; expected every crop of a video to have the same shape")
    per_video: dict[str, int] = {}
    for s in (*normal, *abnormal):
        per_video[s.video] = per_video.get(s.video, 0) + 1
    train_counts = set(per_video.values())
    ordered = [bad[p] for p in files if p in bad]           # list order
    return FileCheck(checked=len(files), problems=[*problems, *ordered], shapes=shapes,
                     train_crops=train_counts.pop() if len(train_counts) == 1 else None,
                     test_crops=test_counts.pop() if len(test_counts) == 1 else None, dims=dims)


__all__ = ["DataCheckError", "FileCheck", "MAX_NAMED", "check_files"]
