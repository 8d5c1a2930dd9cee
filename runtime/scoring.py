"""Batched multi-crop scoring of many videos of different lengths, within a memory budget.

Videos are sorted by length (longest first) and packed into calls of the runner: each call
is N videos x C crops padded with zeros to the longest one's T, with `lengths` telling the
graph where each video ends, so every video gets exactly its own result (the graph masks
attention keys and the temporal kernel past a video's length).

Memory. One call's working set is dominated by the attention scores, per row (one crop of
one video) `heads` T x T float32 matrices plus the T x T temporal kernel, alive a few at a
time, and by the (T, width) activations; `estimate_bytes` models it. A call is kept under the
budget by packing fewer videos; a video whose C crops do not fit together is scored in crop
chunks whose outputs are averaged with weights chunk/C (the model's outputs are crop means,
a linear map of per-crop outputs); a video whose single crop does not fit fails with
MemoryBudgetError giving the bytes it needs.

The budget bounds the whole process (DESIGN.md, "Deployment conditions"): a call may use
    budget - baseline (the process's RSS once the model is loaded) - reserve
where the reserve is SAFETY_BYTES plus what the runner may hold between calls (ONNX Runtime's
arena, its arena-free session: OrtRunner.reserve_bytes), and a call costs the runner's peak
for its estimate (OrtRunner.peak_bytes: the arena's overshoot counted) plus, for a video
split into crop chunks, the whole video's features held across its calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, Protocol, Sequence

from collections import Counter

import numpy as np

from .errors import InputError, MemoryBudgetError, human_bytes
from .memory import DEFAULT_FRACTION, MemoryBudget, given_budget, memory_budget, process_rss
from .contract import OUTPUTS, Runner
from .metadata import ModelMeta
from .validate import ShapeLimits

# The working-set model, fitted to the exported published model on ONNX Runtime CPU (peak
# RSS over the call, arena off; bench/runtime_throughput.py has the probe): per row, 1.75
# attention-sized (T, T) float32 matrices per head (scores and softmax, not all heads alive
# at once) plus 2 for the temporal kernel and G, and (T, 15 E + 3 D) activations (q, k, v, t,
# the concatenated heads, residual, LayerNorm and feed-forward buffers, the input and its
# padded copy). Measured vs estimated: (N, T) = (1, 2074) 952 vs 1163 MiB, (1, 1000) 357 vs
# 377, (4, 256) 249 vs 255, (16, 64) 218 vs 221. ORT's arena rounds blocks up, and CUDA
# kernels differ: hence a budget of half the free memory by default.
ATTN_COPIES = 1.75
ACT_WIDTH_E = 15
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


def estimate_bytes(rows: int, length: int, meta: ModelMeta) -> int:
    """Working memory of one call with `rows` = N * C crop rows padded to T = `length`.

    rows * (ATTN_COPIES * heads + 2) * T^2 * 4   attention scores + temporal kernel / G
    + rows * T * (ACT_WIDTH_E * E + 3 * D) * 4   activations, plus the input and its padded copy
    """
    t = int(length)
    attn = int((ATTN_COPIES * meta.heads + 2) * t * t)
    act = t * (ACT_WIDTH_E * meta.embed_dim + 3 * (meta.feature_dim or 1024))
    return int(rows) * (attn + act) * 4


memory_budget_of = memory_budget      # the Scorer's own name for it (its argument shadows it)


def default_memory_budget(device: str = "cpu", fraction: float = DEFAULT_FRACTION) -> int:
    """A fraction of what is free under the tightest memory limit over this process: its
    container's cgroup limit, the host's MemAvailable, and free device memory on CUDA
    backends (bnwvad.runtime.memory, which also says which limit it was); 4 GiB when none
    can be read."""
    return memory_budget(device, fraction=fraction).bytes


class VideoSource(Protocol):
    """A video to score: its name, crop count and length known before its features load.

    Optional: `feature_dim` (D, checked against the model before any loading) and a class
    attribute `validated = True` when `load` itself guarantees (crops, length, D) float32
    with finite values (FileVideo, ArraySource); the Scorer checks any other source's
    features once on load (`check_features`).
    """

    name: str
    crops: int
    length: int

    def load(self) -> np.ndarray:
        """(C, T, D) float32."""


def check_features(name: str, a, *, crops: int | None = None, length: int | None = None,
                   feature_dim: int | None = None) -> np.ndarray:
    """An in-memory video's features -> (C, T, D) float32, or InputError naming the video:
    a numpy array of that shape (as announced, where given), floating-point, finite."""
    if not isinstance(a, np.ndarray) or a.ndim != 3:
        raise InputError(f"video {name!r}: features of shape {getattr(a, 'shape', None)}; expected "
                         f"a numpy array (C, T, D)")
    want = (crops if crops is not None else a.shape[0], length if length is not None else a.shape[1],
            feature_dim if feature_dim is not None else a.shape[2])
    if a.shape != want:
        raise InputError(f"video {name!r}: loaded features of shape {a.shape}; expected (C, T, D) "
                         f"= {want} as announced")
    if a.dtype != np.float32:
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"video {name!r}: dtype {a.dtype}; expected float32 features")
        a = a.astype(np.float32)
    if not np.isfinite(a).all():
        c, t, d = (int(x) for x in np.argwhere(~np.isfinite(a))[0])
        raise InputError(f"video {name!r}: {a[c, t, d]} at crop {c}, snippet {t}, dim {d}; "
                         f"expected finite features")
    return a


@dataclass
class ArraySource:
    """An in-memory video: (C, T, D), or (T, D) for one crop. `load` checks it (float,
    finite; `check_features`) once; its D is checked against the model before that."""

    name: str
    features: np.ndarray
    validated: ClassVar[bool] = True

    def __post_init__(self) -> None:
        a = self.features
        if not isinstance(a, np.ndarray) or a.ndim not in (2, 3):
            shape = getattr(a, "shape", None)
            raise InputError(f"video {self.name!r}: features of shape {shape}; expected a numpy array "
                             f"(C, T, D), or (T, D) for one crop")
        if a.ndim == 2:
            self.features = a[None]

    @property
    def crops(self) -> int:
        return int(self.features.shape[0])

    @property
    def length(self) -> int:
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[2])

    def load(self) -> np.ndarray:
        return check_features(self.name, self.features)


class ValidatedSource(ArraySource):
    """An in-memory (C, T, D) float32 video whose values were validated where they entered
    (a stream's push, an HTTP request body): `load` checks nothing again."""

    def load(self) -> np.ndarray:
        return self.features


@dataclass
class VideoResult:
    """One video's outputs per snippet, each (T,) float32 (crop means, as the model defines)."""

    name: str
    score: np.ndarray
    dfm: np.ndarray
    anomaly: np.ndarray
    crops: int
    frames_per_snippet: int = 16
    calls: int = 1            # runner calls the video took part in (> 1: crop chunks)

    @property
    def length(self) -> int:
        return int(self.anomaly.shape[0])

    def per_frame(self, output: str = "anomaly") -> np.ndarray:
        """(T * frames_per_snippet,): each snippet's value repeated over its frames, as the
        benchmarks' evaluation turns snippet scores into frame scores."""
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r}; expected one of {OUTPUTS}")
        return np.repeat(getattr(self, output), self.frames_per_snippet)

    @property
    def frame_score(self) -> np.ndarray:
        return self.per_frame("score")

    @property
    def frame_dfm(self) -> np.ndarray:
        return self.per_frame("dfm")

    @property
    def frame_anomaly(self) -> np.ndarray:
        return self.per_frame("anomaly")


@dataclass
class VideoFailure:
    """A video that could not be scored, and why (the error names the file)."""

    name: str
    error: Exception

    @property
    def message(self) -> str:
        return str(self.error)


@dataclass
class Call:
    """One runner call: videos (indices into the plan's input) and the crop range taken from
    each (all of them, except for a video split into crop chunks, which has a call to itself)."""

    videos: list[int]
    crops: tuple[int, int]          # [start, stop) crop range, the same for every video here
    length: int                     # padded T
    bytes: int                      # estimate_bytes of the call
    peak: int = 0                   # what the call adds to the process, as planned (see plan_calls)
    arena: bool = True              # False: through the runner's arena-free path


@dataclass
class CallPlan:
    """The runner calls that score a set of videos, and the videos that cannot be scored."""

    calls: list[Call]
    failures: dict[int, Exception] = field(default_factory=dict)


def plan_calls(lengths: Sequence[int], crops: Sequence[int], meta: ModelMeta, *, budget: int,
               max_batch: int = 32, min_fill: float = 0.75, max_rows: int | None = None,
               limits: ShapeLimits | None = None, peak: Callable[[int], int] | None = None,
               plain_peak: Callable[[int], int] | None = None,
               budget_note: Callable[[int], str] | None = None, count_held: bool = False) -> CallPlan:
    """Pack videos (lengths[i], crops[i]) into calls, longest first.

    A call holds videos with the same C whose lengths are >= min_fill x its longest (so no
    video is padded past 1 / min_fill of its own length), at most max_batch videos, at most
    max_rows = N * C * T rows (a video alone may exceed it), and a planned cost within
    `budget`; limits (a TensorRT profile) cap N, C and T.

    Cost of a call: peak(estimate_bytes) (default: the estimate itself), plus, with
    count_held, for a video split into crop chunks its whole features (C x T x D float32,
    held across its calls).
    plain_peak: the cost on the runner's arena-free path, tried for a video none of whose
    crops fits at `peak` (such calls have arena=False); None: no such path. budget_note(need)
    ends a MemoryBudgetError's message (the Scorer explains its budget there).
    """
    lim = limits or ShapeLimits()
    cap_n = max(1, min(max_batch, lim.max_n or max_batch))
    cost = peak or int
    d = int(meta.feature_dim or 1024)
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    plan = CallPlan([])
    by_crops: dict[int, list[int]] = {}
    for i in order:
        by_crops.setdefault(int(crops[i]), []).append(i)
    for c, idx in by_crops.items():
        k = 0
        while k < len(idx):
            first = idx[k]
            t = int(lengths[first])
            if lim.max_t is not None and t > lim.max_t:
                plan.failures[first] = InputError(
                    f"video has T = {t} snippets; this backend's engine accepts at most {lim.max_t}. "
                    f"Fix: rebuild the engine with a larger T in its profile, or use ONNX Runtime")
                k += 1
                continue
            per_call_c = c if lim.max_c is None else min(c, lim.max_c)
            need = cost(estimate_bytes(per_call_c, t, meta))
            if need > budget or per_call_c < c:
                # Not even this video's C crops fit together: crop chunks, alone in their calls,
                # its whole features held meanwhile.
                held = c * t * d * 4 if count_held else 0

                def fits(f, n):
                    return f(estimate_bytes(n, t, meta)) + (held if n < c else 0) <= budget

                chunk, arena = 0, True
                for f, arena in ((cost, True), (plain_peak, False)):
                    if f is None:
                        continue
                    chunk = per_call_c
                    while chunk > 0 and not fits(f, chunk):
                        chunk -= 1
                    if chunk > 0:
                        break
                if chunk == 0:
                    one = (min(f(estimate_bytes(1, t, meta)) for f in (cost, plain_peak) if f is not None)
                           + (held if c > 1 else 0))
                    note = budget_note(one) if budget_note else (
                        f"over the memory budget of {human_bytes(budget)} ({budget} bytes). Fix: raise the "
                        f"budget (--memory-budget / memory_budget=) to at least {human_bytes(one)}")
                    plan.failures[first] = MemoryBudgetError(
                        f"video with T = {t} snippets needs {human_bytes(one)} ({one} bytes) to score "
                        f"even one crop, {note}, or split the video into shorter parts",
                        needed=one, budget=budget)
                else:
                    f = cost if arena else plain_peak
                    for s in range(0, c, chunk):
                        e = min(c, s + chunk)
                        est = estimate_bytes(e - s, t, meta)
                        plan.calls.append(Call([first], (s, e), t, est, f(est) + (held if e - s < c else 0),
                                               arena=arena))
                k += 1
                continue
            members = [first]
            k += 1
            while k < len(idx) and len(members) < cap_n:
                nxt = idx[k]
                if int(lengths[nxt]) < min_fill * t:
                    break
                if max_rows is not None and (len(members) + 1) * c * t > max_rows:
                    break
                if cost(estimate_bytes((len(members) + 1) * c, t, meta)) > budget:
                    break
                members.append(nxt)
                k += 1
            est = estimate_bytes(len(members) * c, t, meta)
            plan.calls.append(Call(members, (0, c), t, est, cost(est)))
    return plan


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

