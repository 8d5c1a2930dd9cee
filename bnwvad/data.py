"""Training and test data in the benchmarks' real layouts (numpy only; no torch here).

What a training step consumes: B normal and B abnormal *samples*, each one crop of one
video resampled to T segments, as float32 arrays (B, T, D). A sample is one crop file
(`<video>__<k>.npy`, (L, D)) or one crop of a stacked file (`<video>.npy`, (L, C, D)):
every crop is an independent training sample, as in the published code. Labels come from
file names (or a list's second column), never from positions in a list
(`bnwvad.features.read_list`).

Resampling (DESIGN.md, "Training, exactly")
    r = floor(linspace(0, L, T + 1)); segment i = mean of rows r[i]:r[i+1], or row r[i]
    when that range is empty. The published loader computes r with
    `np.linspace(0, L, T + 1, dtype=np.uint16)` and averages with `.mean(0)` row range by
    row range; `resample` does exactly that (bit-identical; tested against a literal
    transcription). uint16 wraps above 65535 snippets; we use int64 there instead, so a
    (45-hour) video that long is resampled correctly rather than reproducing the wrap.

Audio (XD-Violence, VGGish, 128-d): one audio file per *video* (shared by all its crops),
    found by video name, either
      - from audio list files (`--audio-list`, repeatable): one path per line, relative to
        the audio root (default: the list's folder), named `<video>__vggish.npy` or
        `<video>.npy` (the public XD-Violence audio lists use the first form); or
      - without a list, at `<audio_root>/<folder of the visual file in its list>/<video>__vggish.npy`,
        then `<audio_root>/<video>__vggish.npy`, then the same two with `<video>.npy`.
    Audio rows are appended after the visual ones (D = 1024 + 128 = 1152), row by row,
    before resampling. Visual and audio lengths may differ by one snippet (feature
    extractors round the last snippet differently); both are then cut to the shorter.
    A larger difference is an error.

Sampling (reproducible and resumable): each half (normal, abnormal) is an infinite
    sequence of epochs; epoch e is the permutation `default_rng([seed, half, e])` of that
    half's samples, cut into batches of B with the remainder dropped (the published
    DataLoaders use shuffle=True, drop_last=True and restart each half when it runs out).
    The batch of step s is therefore a pure function of (seed, s): resuming at step s
    needs no saved iterator.

Loading keeps up with training through a thread pool that reads and resamples the next
    batches while the model computes (numpy releases the GIL for file reads and the
    reductions). Memory bound, stated: at most (prefetch + 1) batches of
    2 * B * T * D * 4 bytes exist at once (paper batch: 2 x 64 x 200 x 1024 x 4 = 105 MB,
    so 315 MB with the default prefetch 2), plus one raw feature file per worker being
    read (a few MB each), plus the optional in-RAM cache of resampled samples (`cache_bytes`, 0 = off),
    which keeps the first samples it sees until full (under uniform reshuffling an LRU
    would only thrash).
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .features import (FeatureFileError, ListEntry, Video, group_videos, load_features,
                       load_video, read_list, read_npy_header)

AUDIO_SUFFIX = "__vggish"
# Largest visual/audio length difference that is trimmed rather than refused.
AUDIO_LENGTH_SLACK = 1


# -- resampling -------------------------------------------------------------------------
def segment_bounds(length: int, segments: int) -> np.ndarray:
    """r = floor(linspace(0, length, segments + 1)) as int64, (segments + 1,).

    Identical to the published `np.linspace(..., dtype=np.uint16)` for length < 65536
    (linspace floors before casting to an integer dtype).
    """
    if length < 1 or segments < 1:
        raise ValueError(f"need length >= 1 and segments >= 1, got {length} and {segments}")
    if length < 65536:
        return np.linspace(0, length, segments + 1, dtype=np.uint16).astype(np.int64)
    return np.floor(np.linspace(0, length, segments + 1)).astype(np.int64)


def resample(features: np.ndarray, segments: int = 200) -> np.ndarray:
    """(L, D) snippet features -> (segments, D) float32, as the published loader does.

    Segment i is the mean of rows r[i]:r[i+1] (float32 `.mean(0)`, the published
    arithmetic), or row r[i] where that range is empty (videos shorter than `segments`
    repeat rows). A per-segment loop costs ~1.5 ms for L = 1500, D = 1024: far below a
    training step, and it keeps the rounding bit-identical to the published code.
    """
    if features.ndim != 2:
        raise ValueError(f"resample expects (L, D) features, got shape {features.shape}")
    length = features.shape[0]
    r = segment_bounds(length, segments)
    out = np.empty((segments, features.shape[1]), dtype=np.float32)
    for i in range(segments):
        a, b = r[i], r[i + 1]
        out[i] = features[a] if a == b else features[a:b].mean(0)
    return out


# -- audio -------------------------------------------------------------------------------
def _audio_video_name(path: str | Path) -> str:
    stem = Path(path).name.removesuffix(".npy")
    return stem.removesuffix(AUDIO_SUFFIX)


@dataclass
class AudioSource:
    """Where a video's audio features are (see the module docstring for the rules)."""

    root: Path | None = None
    lists: tuple[Path, ...] = ()
    dim: int = 128
    _by_name: dict[str, Path] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root) if self.root is not None else None
        self.lists = tuple(Path(p) for p in self.lists)
        if self.root is None and not self.lists:
            raise ValueError("audio features need an audio root directory or audio list files")
        if self.lists:
            by_name: dict[str, Path] = {}
            for lf in self.lists:
                for e in read_list(lf, self.root if self.root is not None else None):
                    name = _audio_video_name(e.path)
                    if name in by_name and by_name[name] != e.path:
                        raise FeatureFileError(f"{lf}: video {name!r} has two audio files, "
                                               f"{by_name[name]} and {e.path}; expected one")
                    by_name[name] = e.path
            self._by_name = by_name

    def path_for(self, video: str, visual_path: str | Path | None = None,
                 list_folder: str | None = None) -> Path:
        """The audio file of `video`; FeatureFileError naming what was looked for."""
        if self._by_name is not None:
            try:
                return self._by_name[video]
            except KeyError:
                raise FeatureFileError(
                    f"video {video!r} ({visual_path}) has no audio file in the audio list(s) "
                    f"{[str(p) for p in self.lists]}; expected a line naming "
                    f"{video}{AUDIO_SUFFIX}.npy or {video}.npy") from None
        assert self.root is not None
        tried = []
        folders = [self.root / list_folder] if list_folder else []
        folders.append(self.root)
        for suffix in (AUDIO_SUFFIX, ""):
            for folder in folders:
                p = folder / f"{video}{suffix}.npy"
                if p.is_file():
                    return p
                tried.append(str(p))
        raise FeatureFileError(f"video {video!r} ({visual_path}): no audio features found; looked "
                               f"for {', '.join(tried)}")


def append_audio(visual: np.ndarray, audio: np.ndarray, *, visual_path, audio_path) -> np.ndarray:
    """Concatenate (L, Dv) visual and (La, Da) audio rows -> (min L, Dv + Da).

    Also accepts stacked visual (L, C, Dv): the audio is repeated for every crop.
    """
    lv, la = visual.shape[0], audio.shape[0]
    if abs(lv - la) > AUDIO_LENGTH_SLACK:
        raise FeatureFileError(
            f"{audio_path}: {la} audio snippets but {visual_path} has {lv} visual snippets; "
            f"expected the same length (a difference of at most {AUDIO_LENGTH_SLACK} is trimmed)")
    n = min(lv, la)
    a = audio[:n]
    if visual.ndim == 3:
        a = np.broadcast_to(a[:, None, :], (n, visual.shape[1], a.shape[1]))
    return np.concatenate([visual[:n], a], axis=-1)


# -- samples -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One training sample: one crop of one video.

    crop is None for a per-crop file (the file is the crop), else the crop index into a
    stacked (L, C, D) file.
    """

    path: Path
    video: str
    label: int
    crop: int | None = None
    audio: Path | None = None

    @property
    def key(self) -> str:
        return f"{self.path}" if self.crop is None else f"{self.path}[{self.crop}]"


def _folder_in_list(entry: ListEntry) -> str | None:
    """The folder holding a list line's file (`train` for `train/x__0.npy`), for audio lookup."""
    return entry.path.parent.name or None


def load_train_samples(list_file: str | Path, root: str | Path | None = None, *,
                       audio: AudioSource | None = None, problems: list[str] | None = None
                       ) -> tuple[list[Sample], list[Sample]]:
    """(normal, abnormal) training samples of a list, every crop its own sample.

    Stacked files contribute one sample per crop (C read from the .npy header).
    Raises FeatureFileError when a line has no label, a video has crop gaps, or a half
    is empty. With `problems` (a list), a video whose stacked file or audio file cannot be
    used is left out and its error appended there instead of raised, so that every bad
    file can be reported at once (`check_files`); an empty half is then not raised when
    problems were found.
    """
    list_file = Path(list_file)
    entries = read_list(list_file, root)
    unlabeled = [e for e in entries if e.label is None]
    if unlabeled:
        raise FeatureFileError(
            f"{list_file}: {len(unlabeled)} line(s) carry no label, e.g. {unlabeled[0].path.name!r}; "
            f"expected names with `_label_A` (normal) / `_label_<class>` (XD-Violence) or `Normal` "
            f"(UCF-Crime), or a second column 0 (normal) / 1 (anomalous)")
    videos = group_videos(entries, source=str(list_file))
    folders = {e.video: _folder_in_list(e) for e in entries}
    normal: list[Sample] = []
    abnormal: list[Sample] = []
    found = 0
    for v in videos:
        try:
            a = audio.path_for(v.name, v.paths[0], folders.get(v.name)) if audio is not None else None
            if v.stacked:
                shape, _ = read_npy_header(v.paths[0], ndim=(2, 3))      # crop count, no data read
                # (T, D): a single-crop video stored without crop suffix; (T, C, D): C crops.
                crops: Sequence[int | None] = [None] if len(shape) == 2 else range(shape[1])
                samples = [Sample(v.paths[0], v.name, int(v.label), c, a) for c in crops]
            else:
                samples = [Sample(p, v.name, int(v.label), None, a) for p in v.paths]
        except FeatureFileError as e:
            if problems is None:
                raise
            problems.append(str(e))
            found += 1
            continue
        (abnormal if v.label else normal).extend(samples)
    for name, half in (("normal", normal), ("abnormal", abnormal)):
        if not half and not found:
            raise FeatureFileError(f"{list_file}: no {name} training videos among its "
                                   f"{len(videos)} videos; expected both normal and abnormal ones")
    return normal, abnormal


def load_test_videos(list_file: str | Path, root: str | Path | None = None, *,
                     audio: AudioSource | None = None, problems: list[str] | None = None) -> list[Video]:
    """Test videos in list order, each with all its crops (features.group_videos).

    With audio, each Video carries its audio file in `video.extra["audio"]`; read a video
    with `load_test_features`, which appends it. With `problems` (a list), a video without
    audio is left out and its error appended there instead of raised.
    """
    list_file = Path(list_file)
    entries = read_list(list_file, root)
    videos = group_videos(entries, source=str(list_file))
    if audio is not None:
        folders = {e.video: _folder_in_list(e) for e in entries}
        kept = []
        for v in videos:
            try:
                v.extra["audio"] = audio.path_for(v.name, v.paths[0], folders.get(v.name))
            except FeatureFileError as e:
                if problems is None:
                    raise
                problems.append(str(e))
                continue
            kept.append(v)
        videos = kept
    return videos


def load_test_features(video: Video, *, feature_dim: int | None = None) -> np.ndarray:
    """All crops of a test video as (C, T, D) float32, audio appended when the video has it.

    feature_dim is the total D (visual + audio).
    """
    audio_path = video.extra.get("audio")
    if audio_path is None:
        return load_video(video, feature_dim=feature_dim)
    vis = load_video(video)                                   # (C, T, Dv)
    aud = load_features(audio_path, ndim=(2,))                # (Ta, Da)
    out = append_audio(vis.transpose(1, 0, 2), aud, visual_path=video.paths[0],
                       audio_path=audio_path).transpose(1, 0, 2)
    out = np.ascontiguousarray(out)
    if feature_dim is not None and out.shape[-1] != feature_dim:
        raise FeatureFileError(f"{video.paths[0]} + {audio_path}: D = {vis.shape[-1]} + {aud.shape[-1]} "
                               f"= {out.shape[-1]}; expected D = {feature_dim}")
    return out


def load_sample(sample: Sample, *, feature_dim: int | None = None) -> np.ndarray:
    """One sample's full-length features (L, D) float32, audio appended when it has some."""
    if sample.crop is None:
        x = load_features(sample.path, ndim=(2,))
    else:
        # A stacked file is read whole and one crop kept: C times the I/O of a per-crop
        # file; the in-RAM cache (cache_bytes) keeps every crop of a file it reads.
        x = load_features(sample.path, ndim=(3,))[:, sample.crop]
    if sample.audio is not None:
        aud = load_features(sample.audio, ndim=(2,))
        x = append_audio(x, aud, visual_path=sample.path, audio_path=sample.audio)
    if feature_dim is not None and x.shape[-1] != feature_dim:
        what = f"{sample.path}" + (f" + {sample.audio}" if sample.audio else "")
        raise FeatureFileError(f"{what}: feature dimension D = {x.shape[-1]}; expected D = {feature_dim}"
                               + (" (visual + audio)" if sample.audio else ""))
    return np.ascontiguousarray(x, dtype=np.float32)


def fingerprint(samples: Sequence[Sample]) -> str:
    """A digest of the sample list (file names, crops, labels, audio file names, in order):
    resume refuses a changed list.

    Only names count, not the folders the files are in: the same data seen from another
    working directory, or through a moved dataset folder, has the same fingerprint. (A
    video's files are named after the video, so names identify the samples.)
    """
    h = hashlib.sha256()
    for s in samples:
        audio = "" if s.audio is None else Path(s.audio).name
        h.update(f"{Path(s.path).name}[{s.crop}]\t{s.label}\t{audio}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


def legacy_fingerprint(samples: Sequence[Sample]) -> str:
    """The fingerprint of runs started before bnwvad 0.1's run folders kept their own
    identity: the sample paths as resolved (so it depends on the working directory)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.key}\t{s.label}\t{s.audio}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


# -- checking every file before training -------------------------------------------------
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
                         f"bnwvad.data.check_files)")
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


# -- sampling ----------------------------------------------------------------------------
class EpochSampler:
    """Batches of one half as a pure function of (seed, step): reshuffled epochs, drop_last.

    stream separates the halves (0 normal, 1 abnormal) so they shuffle independently.
    """

    def __init__(self, n: int, batch_size: int, seed: int, stream: int, *, name: str = "samples"):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected at least 1")
        if n < batch_size:
            raise ValueError(f"only {n} {name} for a batch of {batch_size}: every batch needs "
                             f"{batch_size} distinct samples; lower the batch size")
        self.n, self.batch_size, self.seed, self.stream = n, batch_size, seed, stream
        self.per_epoch = n // batch_size
        self._perm: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def position(self, step: int) -> dict:
        """Epoch and batch-within-epoch of the 0-based batch number `step`."""
        return {"epoch": step // self.per_epoch, "batch": step % self.per_epoch,
                "batches_per_epoch": self.per_epoch}

    def indices(self, step: int) -> np.ndarray:
        """Sample indices (B,) of the 0-based batch number `step`."""
        epoch, b = divmod(step, self.per_epoch)
        with self._lock:
            if self._perm is None or self._perm[0] != epoch:
                rng = np.random.default_rng([self.seed, self.stream, epoch])
                self._perm = (epoch, rng.permutation(self.n))
            perm = self._perm[1]
        return perm[b * self.batch_size:(b + 1) * self.batch_size]


# -- loading -----------------------------------------------------------------------------
@dataclass
class LoaderConfig:
    """How batches are produced (not part of the recipe: results do not depend on it)."""

    workers: int = 2                 # loader threads; 0 = load in the training thread
    prefetch: int = 2                # batches loading while the model trains on one (>= 1)
    cache_bytes: int = 0             # in-RAM cache of resampled samples; 0 = off

    def __post_init__(self) -> None:
        if self.workers < 0 or self.prefetch < 0 or self.cache_bytes < 0:
            raise ValueError(f"workers, prefetch and cache_bytes must be >= 0, got {self}")


class SampleCache:
    """Resampled samples kept in RAM up to a byte limit; fills once, never evicts."""

    def __init__(self, limit_bytes: int):
        self.limit = int(limit_bytes)
        self.used = 0
        self.hits = self.misses = 0
        self._d: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            x = self._d.get(key)
            if x is None:
                self.misses += 1
            else:
                self.hits += 1
            return x

    def put(self, key: str, x: np.ndarray) -> None:
        with self._lock:
            if key not in self._d and self.used + x.nbytes <= self.limit:
                x.setflags(write=False)
                self._d[key] = x
                self.used += x.nbytes


@dataclass
class Batch:
    step: int                # 0-based batch number
    normal: np.ndarray       # (B, T, D) float32
    abnormal: np.ndarray     # (B, T, D) float32
    wait_s: float = 0.0      # time the consumer waited for it


class BatchLoader:
    """Produces the batches of steps [start, stop) in order, prefetching in threads.

    The content of every batch depends only on (seed, step), never on timing or on the
    number of workers.
    """

    def __init__(self, normal: Sequence[Sample], abnormal: Sequence[Sample], *, batch_size: int,
                 segments: int, seed: int, feature_dim: int | None = None,
                 config: LoaderConfig | None = None):
        self.normal, self.abnormal = list(normal), list(abnormal)
        self.batch_size, self.segments, self.feature_dim = batch_size, segments, feature_dim
        self.config = config or LoaderConfig()
        self.samplers = (EpochSampler(len(self.normal), batch_size, seed, 0, name="normal training samples"),
                         EpochSampler(len(self.abnormal), batch_size, seed, 1,
                                      name="abnormal training samples"))
        self.cache = SampleCache(self.config.cache_bytes) if self.config.cache_bytes else None

    @property
    def batch_bytes(self) -> int | None:
        if self.feature_dim is None:
            return None
        return 2 * self.batch_size * self.segments * self.feature_dim * 4

    def memory_bound_bytes(self) -> int | None:
        """(prefetch + 1) batches + the cache limit (raw files being read come on top)."""
        if self.batch_bytes is None:
            return None
        return (self.config.prefetch + 1) * self.batch_bytes + self.config.cache_bytes

    def positions(self, step: int) -> dict:
        return {"normal": self.samplers[0].position(step), "abnormal": self.samplers[1].position(step)}

    def sample_resampled(self, s: Sample) -> np.ndarray:
        """(T, D) resampled features of one sample, through the cache when enabled."""
        if self.cache is not None:
            hit = self.cache.get(s.key)
            if hit is not None:
                return hit
        if self.cache is not None and s.crop is not None:
            # Stacked: the whole file is read anyway; resample and keep every crop of it.
            full = load_features(s.path, ndim=(3,))
            aud = load_features(s.audio, ndim=(2,)) if s.audio is not None else None
            out = None
            for c in range(full.shape[1]):
                x = full[:, c]
                if aud is not None:
                    x = append_audio(x, aud, visual_path=s.path, audio_path=s.audio)
                self._check_dim(s, x)
                r = resample(np.ascontiguousarray(x), self.segments)
                self.cache.put(Sample(s.path, s.video, s.label, c, s.audio).key, r)
                if c == s.crop:
                    out = r
            assert out is not None
            return out
        out = resample(load_sample(s, feature_dim=self.feature_dim), self.segments)
        if self.cache is not None:
            self.cache.put(s.key, out)
        return out

    def _check_dim(self, s: Sample, x: np.ndarray) -> None:
        if self.feature_dim is not None and x.shape[-1] != self.feature_dim:
            raise FeatureFileError(f"{s.path}: feature dimension D = {x.shape[-1]}; expected "
                                   f"D = {self.feature_dim}")

    def _fill(self, out: np.ndarray, row: int, s: Sample) -> None:
        out[row] = self.sample_resampled(s)

    def _dim(self) -> int:
        if self.feature_dim is None:
            self.feature_dim = int(load_sample(self.normal[0]).shape[-1])
        return self.feature_dim

    def _submit(self, pool: ThreadPoolExecutor | None, step: int):
        d = self._dim()
        halves = []
        futures: list[Future] = []
        for sampler, samples in zip(self.samplers, (self.normal, self.abnormal)):
            out = np.empty((self.batch_size, self.segments, d), dtype=np.float32)
            for row, i in enumerate(sampler.indices(step)):
                if pool is None:
                    self._fill(out, row, samples[i])
                else:
                    futures.append(pool.submit(self._fill, out, row, samples[i]))
            halves.append(out)
        return step, halves, futures

    def batches(self, start: int, stop: int) -> Iterator[Batch]:
        """Yield the batches of steps start..stop-1 (0-based batch numbers).

        While the consumer trains on one batch, the next `prefetch` are being loaded; if
        the consumer drops its reference to a batch before asking for the next (the
        training loop does), at most prefetch + 1 batches exist at once.
        """
        cfg = self.config
        if cfg.workers == 0:
            for step in range(start, stop):
                t0 = time.perf_counter()
                _, (nor, abn), _ = self._submit(None, step)
                yield Batch(step, nor, abn, time.perf_counter() - t0)
            return
        pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="bnwvad-load")
        pending: deque = deque()
        ahead = max(cfg.prefetch, 1)
        try:
            nxt = start
            while nxt < stop or pending:
                if not pending:
                    pending.append(self._submit(pool, nxt))
                    nxt += 1
                step, (nor, abn), futures = pending.popleft()
                # Queue the next `prefetch` batches before waiting on this one, so they
                # load while this one finishes and while the model trains on it.
                while nxt < stop and len(pending) < ahead:
                    pending.append(self._submit(pool, nxt))
                    nxt += 1
                t0 = time.perf_counter()
                for f in futures:
                    f.result()           # re-raises a worker's FeatureFileError here
                yield Batch(step, nor, abn, time.perf_counter() - t0)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
