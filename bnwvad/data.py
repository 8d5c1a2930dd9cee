"""Training and test data in the benchmarks' real layouts (numpy only; no torch here).

What a training step consumes: B normal and B abnormal *samples*, each one crop of one
video resampled to T segments, as float32 arrays (B, T, D) (`bnwvad.samples`: a sample's
features, resampling, audio). Every crop is an independent training sample, as in the
published code. Labels come from file names (or a list's second column), never from
positions in a list (`bnwvad.features.read_list`). Every file of the lists is checked
before training by `bnwvad.data_checks`.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .features import FeatureFileError, ListEntry, Video, group_videos, load_features, read_list, read_npy_header
from .samples import AudioSource, Sample, append_audio, load_sample, resample


# -- lists -------------------------------------------------------------------------------
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
    file can be reported at once (`bnwvad.data_checks.check_files`); an empty half is then
    not raised when problems were found.
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
