"""Batched multi-crop scoring of many videos of different lengths, within a memory budget.

The Scorer packs videos into runner calls (bnwvad.runtime.planning: longest first, padded to
a call's longest with `lengths` telling the graph where each video ends; crop chunks for a
video whose crops do not fit together), runs them, and yields a VideoResult or VideoFailure
per video (bnwvad.runtime.sources, with the sources it takes).

The budget bounds the whole process (DESIGN.md, "Deployment conditions"): a call may use
    budget - baseline (the process's RSS once the model is loaded) - reserve
where the reserve is SAFETY_BYTES plus what the runner may hold between calls (ONNX Runtime's
arena, its arena-free session: OrtRunner.reserve_bytes), and a call costs the runner's peak
for its estimate (OrtRunner.peak_bytes: the arena's overshoot counted) plus, for a video
split into crop chunks, the whole video's features held across its calls.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Iterator, Sequence

import numpy as np

from .contract import OUTPUTS, Runner
from .errors import InputError, MemoryBudgetError, human_bytes
from .memory import DEFAULT_FRACTION, MemoryBudget, given_budget, memory_budget, process_rss
from .planning import CallPlan, estimate_bytes, plan_calls
from .sources import ArraySource, VideoFailure, VideoResult, VideoSource, check_features

# Rows (N * C * padded T) per call beyond which batching stops paying on CPU. Measured on
# the exported published model (ONNX Runtime, 2 cores, calls timed in alternation): T = 40
# gains 1.25x at N = 4 and 1.35x at N = 10; T = 100 gains 1.1x at N = 2 but loses 10% at
# N = 4 (the attention falls out of cache); T >= 400 gains nothing. GPUs want large calls:
# there only the memory budget bounds them.
CPU_MAX_ROWS = 1024
# Process memory outside the calls and the runner that the budget leaves room for: results,
# Python objects, a plot backend (matplotlib + a figure: 37 MiB measured), the page cache a
# cgroup charges while features are read.
SAFETY_BYTES = 64 << 20

memory_budget_of = memory_budget      # the Scorer's own name for it (its argument shadows it)


def default_memory_budget(device: str = "cpu", fraction: float = DEFAULT_FRACTION) -> int:
    """A fraction of what is free under the tightest memory limit over this process: its
    container's cgroup limit, the host's MemAvailable, and free device memory on CUDA
    backends (bnwvad.runtime.memory, which also says which limit it was); 4 GiB when none
    can be read."""
    return memory_budget(device, fraction=fraction).bytes


class Scorer:
    """Scores many videos with one runner: batching, padding, memory budget, crop policy.

        scorer = Scorer(load_runner("model.onnx"))
        results = scorer.score({"a": feats_a, "b": feats_b})   # (C, T, D) each -> [VideoResult]
        scorer.budget.describe()     # e.g. "1.6 GiB for the process (98 MiB in use + 50% of ... cgroup ...)"

    memory_budget: what the whole process may hold, bytes, or a MemoryBudget (default: its RSS
    now plus half of what is free under the tightest of its cgroup limits and MemAvailable,
    or of free GPU memory on CUDA backends; bnwvad.runtime.memory). A given number is capped
    at what the tightest limit allows. Each call then gets at most `call_budget` = budget -
    baseline - reserve (see the module docstring). baseline: bytes the process holds outside
    the calls (default: its RSS now on CPU backends; 0 on GPUs, whose budget is device memory);
    reserve: room kept for everything else (default: SAFETY_BYTES plus the runner's
    `reserve_bytes`, on CPU backends). call_budget: instead of memory_budget, the estimated
    bytes (estimate_bytes) one call may use, nothing else counted: for callers that bound
    the process themselves (the pre-#10 meaning of memory_budget).
    max_batch: videos per call. min_fill: shortest video in a call relative to its longest
    (limits padding work). max_rows: N * C * T per call, "auto" = CPU_MAX_ROWS on CPU backends
    and no limit on GPUs, None = no limit. crops: "model" requires the metadata's crop count,
    an int requires that count, None accepts any (each video's crops are averaged).
    """

    def __init__(self, runner: Runner, *, memory_budget: int | MemoryBudget | None = None, max_batch: int = 32,
                 min_fill: float = 0.75, max_rows: int | str | None = "auto",
                 crops: int | str | None = "model", baseline: int | None = None, reserve: int | None = None,
                 call_budget: int | None = None):
        if call_budget is not None and memory_budget is not None:
            raise ValueError("give memory_budget (the process's) or call_budget (one call's), not both")
        if max_batch < 1:
            raise ValueError(f"max_batch = {max_batch}; expected >= 1")
        if not 0.0 <= min_fill <= 1.0:
            raise ValueError(f"min_fill = {min_fill}; expected a fraction in [0, 1]")
        self.runner = runner
        self.meta = runner.meta
        device = getattr(runner, "device", "cpu")
        cpu = device == "cpu"
        self._per_call = call_budget is not None
        if self._per_call:
            self.budget = given_budget(int(call_budget))
            baseline, reserve = 0, 0
        elif isinstance(memory_budget, MemoryBudget):
            self.budget = memory_budget
        elif memory_budget:
            self.budget = given_budget(int(memory_budget),
                                       cap=memory_budget_of(device, fraction=1.0, include_process=True))
        else:
            self.budget = memory_budget_of(device, include_process=True)
        self.baseline = int(baseline) if baseline is not None else (process_rss() if cpu else 0)
        self.reserve = (int(reserve) if reserve is not None else
                        (SAFETY_BYTES + int(getattr(runner, "reserve_bytes", 0)) if cpu else 0))
        self.max_batch = int(max_batch)
        self.min_fill = float(min_fill)
        if max_rows == "auto":
            max_rows = CPU_MAX_ROWS if cpu else None
        self.max_rows = None if max_rows is None else int(max_rows)
        self.crops = self.meta.crops if crops == "model" else crops
        self.stats = {"calls": 0, "videos": 0, "padded_rows": 0, "real_rows": 0, "plain_calls": 0}

    @property
    def memory_budget(self) -> int:
        """The budget in bytes (the whole process's)."""
        return self.budget.bytes

    @memory_budget.setter
    def memory_budget(self, nbytes: int) -> None:
        self.budget = given_budget(int(nbytes))

    @property
    def call_budget(self) -> int:
        """Bytes one call may add to the process: budget - baseline - reserve."""
        return max(0, self.budget.bytes - self.baseline - self.reserve)

    def call_bytes(self, rows: int, length: int, *, arena: bool = True) -> int:
        """What a call of `rows` crop rows padded to `length` adds to the process, as planned:
        the runner's peak for estimate_bytes (its arena counted), or the estimate itself."""
        est = estimate_bytes(rows, length, self.meta)
        peak = None if self._per_call else getattr(self.runner, "peak_bytes", None)
        if peak is None:
            return est
        return int(peak(est, arena))

    def _budget_note(self, need: int) -> str:
        """The end of a MemoryBudgetError: the budget, where it came from, what is left of it
        per call, and the budget that would fit."""
        least = need + self.baseline + self.reserve
        container = (", and the container's memory limit with it" if self.budget.limit.source.startswith("cgroup")
                     else "")
        return (f"over the {human_bytes(self.call_budget)} a call may use under the memory budget of "
                f"{self.budget.describe()} (the process holds {human_bytes(self.baseline)}, "
                f"{human_bytes(self.reserve)} kept in reserve). Fix: raise the budget (--memory-budget / "
                f"memory_budget=) to at least {human_bytes(least)}{container}")

    # -- public -----------------------------------------------------------------
    def score(self, videos) -> list[VideoResult]:
        """Score in-memory videos; raises the first video's error. videos: a mapping name ->
        array, or a sequence of arrays (named by position) or VideoSources. Results keep the
        input order."""
        sources = self._as_sources(videos)
        out: dict[str, VideoResult] = {}
        for r in self.iter_results(sources):
            if isinstance(r, VideoFailure):
                raise r.error
            out[r.name] = r
        return [out[s.name] for s in sources]

    def iter_results(self, sources: Sequence[VideoSource],
                     progress: Callable[[int], None] | None = None
                     ) -> Iterator[VideoResult | VideoFailure]:
        """Yield a VideoResult or VideoFailure per source, in processing order (longest first).

        A video whose features fail to load or validate is yielded as a failure and the rest
        of its call still runs. progress(k) is called as k more videos finish.
        """
        names = Counter(s.name for s in sources)
        dup = sorted(n for n, k in names.items() if k > 1)
        if dup:
            raise InputError(f"video names {dup[:5]} occur more than once; expected unique names "
                             f"(results are keyed by name)")
        done = [False] * len(sources)
        candidates = []
        for i, s in enumerate(sources):
            err = self._check_source(s)
            if err is not None:
                done[i] = True
                yield VideoFailure(s.name, err)
                if progress:
                    progress(1)
            else:
                candidates.append(i)
        lengths = [sources[i].length for i in candidates]
        crops = [sources[i].crops for i in candidates]
        plan = self.plan(lengths, crops)
        for j, err in plan.failures.items():
            i = candidates[j]
            done[i] = True
            yield VideoFailure(sources[i].name, err)
            if progress:
                progress(1)
        cache: dict[int, np.ndarray] = {}       # a chunked video's features across its calls
        partial: dict[int, dict[str, np.ndarray]] = {}
        for call in plan.calls:
            members = [candidates[j] for j in call.videos]
            feats: dict[int, np.ndarray] = {}
            for i in members:
                if done[i]:
                    continue
                try:
                    feats[i] = cache[i] if i in cache else self._load(sources[i])
                except Exception as e:   # noqa: BLE001 - a bad file fails its video only
                    done[i] = True
                    partial.pop(i, None)
                    cache.pop(i, None)
                    yield VideoFailure(sources[i].name, e)
                    if progress:
                        progress(1)
            if not feats:
                continue
            s, e = call.crops
            chunked = (e - s) < sources[members[0]].crops
            if chunked:
                cache.update(feats)
            out = self._run_call([feats[i][s:e] for i in feats], arena=call.arena)
            for row, i in enumerate(feats):
                c_all = sources[i].crops
                vals = {k: out[k][row, : sources[i].length] for k in OUTPUTS}
                if chunked:
                    # Crop-mean of the whole video = sum over chunks of (chunk mean * chunk / C).
                    acc = partial.setdefault(i, {k: np.zeros(sources[i].length, np.float64) for k in OUTPUTS})
                    for k in OUTPUTS:
                        acc[k] += vals[k].astype(np.float64) * ((e - s) / c_all)
                    acc.setdefault("_calls", 0)
                    acc["_calls"] += 1
                    if e < c_all:
                        continue
                    vals = {k: acc[k].astype(np.float32) for k in OUTPUTS}
                    calls = acc["_calls"]
                    del partial[i]
                    cache.pop(i, None)
                else:
                    calls = 1
                done[i] = True
                yield VideoResult(sources[i].name, *(np.array(vals[k], np.float32) for k in OUTPUTS),
                                  crops=c_all, frames_per_snippet=self.meta.frames_per_snippet,
                                  calls=calls)
                if progress:
                    progress(1)

    def plan(self, lengths: Sequence[int], crops: Sequence[int]) -> CallPlan:
        """The calls that score videos of these lengths and crop counts within call_budget."""
        peak = None if self._per_call else getattr(self.runner, "peak_bytes", None)
        plain = None
        if peak is not None and getattr(self.runner, "can_drop_arena", False):
            plain = lambda est: int(peak(est, False))      # noqa: E731
        plan = plan_calls(lengths, crops, self.meta, budget=self.call_budget,
                          max_batch=self.max_batch, min_fill=self.min_fill, max_rows=self.max_rows,
                          limits=getattr(self.runner, "limits", None),
                          peak=(lambda est: int(peak(est, True))) if peak is not None else None,
                          plain_peak=plain, budget_note=None if self._per_call else self._budget_note,
                          count_held=not self._per_call)
        if not self._per_call:
            # In the process's terms: the budget it has, and the least one that would fit.
            for err in plan.failures.values():
                if isinstance(err, MemoryBudgetError):
                    err.needed += self.baseline + self.reserve
                    err.budget = self.memory_budget
        return plan

    # -- internals ----------------------------------------------------------------
    def _as_sources(self, videos) -> list:
        if isinstance(videos, dict):
            return [ArraySource(str(k), np.asarray(v) if not isinstance(v, np.ndarray) else v)
                    for k, v in videos.items()]
        out = []
        for k, v in enumerate(videos):
            out.append(ArraySource(str(k), v) if isinstance(v, np.ndarray) else v)
        return out

    def _check_source(self, s) -> Exception | None:
        """What a source announces, against the model: before planning, nothing loaded."""
        if s.length < 1 or s.crops < 1:
            return InputError(f"video {s.name!r}: {s.crops} crops x {s.length} snippets; expected at "
                              f"least one crop of at least one snippet")
        if self.crops is not None and s.crops != self.crops:
            return InputError(
                f"video {s.name!r}: {s.crops} crop(s); the model expects {self.crops} "
                f"({self.meta.describe()}). Fix: give all {self.crops} crops of the video, or accept "
                f"any crop count (crops=None, --any-crops) to average the crops given")
        d, want = getattr(s, "feature_dim", None), self.meta.feature_dim
        if d is not None and want is not None and d != want:
            return InputError(f"video {s.name!r}: D = {d}; the model expects D = {want} "
                              f"({self.meta.describe()}). Fix: use features from the extractor the "
                              f"model was trained on")
        return None

    def _load(self, s) -> np.ndarray:
        """The source's features. FileVideo and ArraySource validate on load (values where they
        enter); any other VideoSource is checked here, once."""
        a = s.load()
        if getattr(s, "validated", False):
            return a
        return check_features(s.name, a, crops=s.crops, length=s.length,
                              feature_dim=self.meta.feature_dim)

    def _run_call(self, videos: list[np.ndarray], arena: bool = True) -> dict[str, np.ndarray]:
        """videos: each (C', T_i, D), same C' -> outputs (N, T_max) per name. arena=False: the
        runner's arena-free path (planned only where the runner has one)."""
        n, c = len(videos), videos[0].shape[0]
        t = max(v.shape[1] for v in videos)
        d = videos[0].shape[2]
        batch = np.zeros((n, c, t, d), np.float32)          # zero padding, as the contract says
        lengths = np.empty(n, np.int64)
        for row, v in enumerate(videos):
            batch[row, :, : v.shape[1]] = v
            lengths[row] = v.shape[1]
        # Each video was checked where it entered (header and values on load, crop count and
        # D against the model before planning; a chunk has fewer crops): the batch is valid.
        if arena:
            out = self.runner.run(batch, lengths, check=False)
        else:
            out = self.runner.run(batch, lengths, check=False, arena=False)
            self.stats["plain_calls"] += 1
        self.stats["calls"] += 1
        self.stats["videos"] += n
        self.stats["padded_rows"] += n * c * t
        self.stats["real_rows"] += c * int(lengths.sum())
        return out

