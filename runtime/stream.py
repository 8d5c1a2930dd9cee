"""Streaming and windowed scoring: scores before a video ends, in memory bounded by a window.

Every output of the whole-video model depends on the whole video (global self-attention, a
temporal kernel normalised over all T), so nothing is final before the video ends and the cost
grows as T^2. Here each snippet is scored on a bounded window of its neighbourhood instead:

    window W     snippets of context up to and including the snippet itself (W >= 1)
    lookahead L  snippets after it that are waited for (L >= 0)
    step S       snippets scored per runner call of one stream (S >= 1)

Snippets are scored in blocks of S consecutive snippets: block b holds snippets
[bS, bS+S-1] and is run as ONE call of the exported graph on the input window
[bS-W+1, bS+S-1+L] clipped to [0, available) (so it is shorter at the start of a stream);
each snippet of the block takes the output at its own position in that window. A block is
due once snippet bS+S-1+L has arrived; `flush()` at the end of a stream scores the remaining
(partial) blocks with whatever lookahead exists. With S = 1, snippet t is scored on exactly
[t-W+1, t+L] and is final once t+L has arrived. S > 1 trades delay for calls: a snippet
waits for its block's last one, so it is final up to S-1 snippets later (delay up to S-1+L
instead of L), and a stream makes S times fewer runner calls. Snippet bS+j of a block sees
W+j snippets of context (itself included) and S-1-j+L of lookahead, fewer where the start
of the stream or its end (flush) clips the window: the numbers depend on S.

State per stream is a ring buffer of the last W-1+S+L snippets (C, D) float32: memory does
not grow with the stream's length. Scoring the same video with `score_windowed` gives the
same numbers as streaming it (blocks are batched differently: within float32 rounding).

    group = StreamGroup(runner, window=64, lookahead=8, step=4)
    cam1, cam2 = group.open("cam1"), group.open("cam2")
    out = group.push_many({"cam1": x1, "cam2": x2})       # (k, C, D) each -> {id: results}
    out["cam1"]["snippet"], out["cam1"]["anomaly"]          # the snippets that became final
    rest = group.flush()                                    # end of every stream

    scorer = StreamScorer(runner, window=64, lookahead=8)  # one stream
    r = scorer.push(x)                                      # results: structured array
    score_windowed(runner, feats, window=64, lookahead=8)   # a whole (C, T, D) video offline

Results are numpy structured arrays of RESULT_DTYPE: snippet (int64), score, dfm, anomaly
(float32, the model's crop means) and latency_ms (float64: from the start of the push that
made the snippet final to the return of its result).

Due blocks of every stream (and of one push) are batched into as few runner calls as the
memory budget (`estimate_bytes` of each call's working set), `max_rows` and `max_batch`
allow; calls go through the batch `Scorer` (padding to the longest window with `lengths`,
crop chunks when one window's crops do not fit), unchecked, after this module validated
every pushed snippet. Not thread-safe: one thread drives a group.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping

from collections import Counter

import numpy as np

from .contract import OUTPUTS, Runner
from .errors import InputError, MemoryBudgetError, human_bytes
from .planning import estimate_bytes
from .scoring import Scorer, default_memory_budget
from .sources import ValidatedSource, VideoFailure, VideoResult

RESULT_DTYPE = np.dtype([("snippet", np.int64), ("score", np.float32), ("dfm", np.float32),
                         ("anomaly", np.float32), ("latency_ms", np.float64)])
# Blocks per runner call at most (a GPU call is otherwise bounded by the memory budget only).
DEFAULT_MAX_BATCH = 256


def empty_results() -> np.ndarray:
    return np.empty(0, RESULT_DTYPE)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} = {value!r}; expected an integer >= {low}")
    return int(value)


def window_span(window: int, lookahead: int = 0, step: int = 1) -> int:
    """Snippets in the longest input window, W - 1 + S + L: the ring buffer's length and the
    padded T of a call."""
    return int(window) - 1 + int(step) + int(lookahead)


def largest_window(meta, budget: int, *, crops: int = 1, lookahead: int = 0, step: int = 1) -> int:
    """The largest W whose calls (`crops` rows of W - 1 + step + lookahead snippets) fit the
    memory budget by `estimate_bytes`; 0 when not even W = 1 fits. What to suggest when a whole
    video does not fit (`--window`)."""
    crops = max(1, int(crops))
    if estimate_bytes(crops, window_span(1, lookahead, step), meta) > budget:
        return 0
    lo, hi = 1, 2
    while estimate_bytes(crops, window_span(hi, lookahead, step), meta) <= budget:
        lo, hi = hi, hi * 2
        if hi > 1 << 40:                            # pragma: no cover - absurd budgets
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if estimate_bytes(crops, window_span(mid, lookahead, step), meta) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class _Job:
    stream: "_Stream"
    first: int                  # first snippet of the block
    count: int                  # snippets of the block
    start: int                  # first snippet of the window
    window: np.ndarray          # (C, T_w, D) float32, a copy


class _Stream:
    """A stream's state: the ring buffer of its last `span` snippets, (C, span, D)."""

    def __init__(self, sid, crops: int | None, dim: int | None):
        self.id = sid
        self.crops = crops
        self.dim = dim
        self.buf: np.ndarray | None = None
        self.arrived = 0            # snippets pushed
        self.next_block = 0         # first block not scored yet
        self.closed = False


class StreamHandle:
    """One stream of a StreamGroup: `push`, `flush`, and its state."""

    def __init__(self, group: "StreamGroup", state: _Stream):
        self._group = group
        self._state = state

    @property
    def id(self):
        return self._state.id

    def push(self, snippets) -> np.ndarray:
        """The next k snippets (k, C, D), or (k, D) for one crop -> the results that became
        final (RESULT_DTYPE). Only this stream's due blocks run."""
        return self._group.push_many({self._state.id: snippets})[self._state.id]

    def flush(self) -> np.ndarray:
        """End of the stream: score what is left, close the stream, return its results."""
        return self._group.flush([self._state.id])[self._state.id]

    @property
    def snippets(self) -> int:
        """Snippets pushed so far."""
        return self._state.arrived

    @property
    def final(self) -> int:
        """Snippets whose results have been returned (all of those before this index)."""
        return min(self._state.arrived, self._state.next_block * self._group.step)

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def crops(self) -> int | None:
        return self._state.crops

    @property
    def buffer_shape(self) -> tuple | None:
        """(C, W - 1 + S + L, D) once the first snippet arrived; it never grows."""
        return None if self._state.buf is None else tuple(self._state.buf.shape)

    @property
    def buffer_nbytes(self) -> int:
        return 0 if self._state.buf is None else int(self._state.buf.nbytes)


class StreamGroup:
    """Streams that share one runner; blocks due together run in as few calls as possible.

    window / lookahead / step: W, L, S (module docstring). crops: "model" (the metadata's
    crop count; any when it has none), an int, or None (any: each stream's count is fixed by
    its first push). memory_budget: bytes one call may use (`estimate_bytes`; default: the
    Scorer's, half of what is free). max_rows: N * C * T per call ("auto": the Scorer's CPU
    limit, none on GPUs). max_batch: blocks per call.

    `push_many` validates every stream's push before changing any state: a bad push raises
    InputError (attributes `stream` and `snippet`) naming the stream and the snippet, and
    leaves every stream as it was, so the caller can report it and push the others again.
    A runner failure propagates; the blocks of the failed call are lost (reopen the streams).
    """

    def __init__(self, runner: Runner, window: int, lookahead: int = 0, step: int = 1, *,
                 crops: int | str | None = "model", memory_budget: int | None = None,
                 max_rows: int | str | None = "auto", max_batch: int = DEFAULT_MAX_BATCH):
        self.window = _check_int("window", window, 1)
        self.lookahead = _check_int("lookahead", lookahead, 0)
        self.step = _check_int("step", step, 1)
        self.max_batch = _check_int("max_batch", max_batch, 1)
        self.span = window_span(self.window, self.lookahead, self.step)
        self.runner = runner
        self.meta = runner.meta
        if crops == "model":
            crops = self.meta.crops
        elif crops is not None:
            crops = _check_int("crops", crops, 1)
        self.crops = crops
        budget = int(memory_budget) if memory_budget else default_memory_budget(runner.device)
        # The batch Scorer runs the calls: padding, lengths, crop chunks, unchecked runs.
        self._scorer = Scorer(runner, call_budget=budget, max_batch=self.max_batch, min_fill=0.0,
                              max_rows=max_rows, crops=None)
        self.memory_budget = self._scorer.memory_budget
        self.max_rows = self._scorer.max_rows
        limits = getattr(runner, "limits", None)
        max_t = getattr(limits, "max_t", None)
        if max_t is not None and self.span > max_t:
            raise InputError(
                f"window {self.window} + step {self.step} - 1 + lookahead {self.lookahead} = {self.span} "
                f"snippets per call; this backend's engine accepts at most T = {max_t}. Fix: a "
                f"smaller window, step or lookahead, or an engine built for a larger T")
        one = estimate_bytes(1, self.span, self.meta)
        if one > self.memory_budget:
            fit = largest_window(self.meta, self.memory_budget, lookahead=self.lookahead, step=self.step)
            hint = (f"a window of at most {fit} (with this lookahead and step)" if fit
                    else "a smaller lookahead or step")
            raise MemoryBudgetError(
                f"window {self.window} + step {self.step} - 1 + lookahead {self.lookahead} = {self.span} "
                f"snippets needs {human_bytes(one)} ({one} bytes) per crop, over the memory budget of "
                f"{human_bytes(self.memory_budget)} ({self.memory_budget} bytes). Fix: {hint}, or "
                f"raise the budget", needed=one, budget=self.memory_budget)
        self._cap_n = min(self.max_batch, getattr(limits, "max_n", None) or self.max_batch)
        self._streams: dict = {}
        self._pending: list[_Job] = []
        self._pending_rows = 0
        self._pending_t = 0
        self.blocks = 0                                 # blocks scored

    # -- public -----------------------------------------------------------------
    @property
    def stats(self) -> dict:
        """Runner calls, blocks (Scorer's "videos"), padded and real rows so far."""
        return dict(self._scorer.stats)

    @property
    def delay(self) -> int:
        """Snippets a result waits for after its own snippet arrived, at most (S - 1 + L)."""
        return self.step - 1 + self.lookahead

    @property
    def streams(self) -> list:
        return list(self._streams)

    def open(self, stream_id: Hashable) -> StreamHandle:
        """Start a stream; its id names it in results and errors."""
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id!r} is already open; expected a new id")
        st = _Stream(stream_id, self.crops, self.meta.feature_dim)
        self._streams[stream_id] = st
        return StreamHandle(self, st)

    def handle(self, stream_id) -> StreamHandle:
        return StreamHandle(self, self._get(stream_id))

    def push_many(self, pushes: Mapping) -> dict:
        """{stream id: the next k snippets (k, C, D) or (k, D)} -> {id: results that became
        final}, one entry per id given (empty where nothing did)."""
        t0 = time.perf_counter()
        checked = [(self._get(sid), self._check_push(self._get(sid), x)) for sid, x in pushes.items()]
        out: dict = {st.id: [] for st, _ in checked}
        for st, x in checked:
            self._feed(st, x, out)
        self._run_pending(out)
        return self._package(out, t0)

    def flush(self, stream_ids: Iterable | None = None) -> dict:
        """End the given streams (default: all open ones): score their remaining blocks with
        the lookahead that exists, batched together; each stream is closed and removed."""
        t0 = time.perf_counter()
        ids = list(self._streams) if stream_ids is None else list(stream_ids)
        states = [self._get(sid) for sid in ids]
        out: dict = {st.id: [] for st in states}
        for st in states:
            self._flush_stream(st, out)
        self._run_pending(out)
        for st in states:
            st.closed = True
            st.buf = None
            self._streams.pop(st.id, None)
        return self._package(out, t0)

    # -- validation -------------------------------------------------------------
    def _get(self, sid) -> _Stream:
        try:
            st = self._streams[sid]
        except (KeyError, TypeError):
            raise InputError(f"stream {sid!r} is not open (flushed, or never opened); open it with "
                             f"group.open({sid!r}) first") from None
        return st

    def _error(self, st: _Stream, snippet: int | None, message: str, *, last: int | None = None
               ) -> InputError:
        """InputError "stream <id>, snippet(s) <first>[..<last>]: message", with attributes
        `stream` and `snippet` (the first snippet concerned)."""
        where = f"stream {st.id!r}"
        if snippet is not None:
            where += (f", snippets {snippet}..{last}" if last is not None and last > snippet
                      else f", snippet {snippet}")
        err = InputError(f"{where}: {message}")
        err.stream = st.id
        err.snippet = snippet
        return err

    def _check_push(self, st: _Stream, snippets) -> np.ndarray:
        """The pushed snippets as (k, C, D) float32, or InputError; changes nothing."""
        n = st.arrived
        a = snippets
        if not isinstance(a, np.ndarray):
            try:
                a = np.asarray(a)
            except Exception:           # noqa: BLE001 - anything numpy cannot read
                raise self._error(st, n, f"got a {type(snippets).__name__}; expected a numpy array "
                                         f"(k, C, D) of snippets") from None
        c_want = st.crops
        if a.ndim == 2:
            if c_want is not None and c_want != 1:
                raise self._error(st, n, f"got shape {a.shape}, one crop (k, D); the stream has "
                                         f"{c_want} crops. Fix: push (k, {c_want}, D) arrays")
            a = a[:, None, :]
        elif a.ndim != 3:
            raise self._error(st, n, f"got shape {a.shape}; expected (k, C, D) snippets, or (k, D) "
                                     f"for one crop")
        k, c, d = a.shape
        last = n + k - 1
        if c_want is not None and c != c_want:
            model = f" (the model expects {self.meta.crops})" if self.meta.crops == c_want else ""
            raise self._error(st, n, f"{c} crops (shape {a.shape}); the stream has {c_want}{model}. "
                                     f"Fix: push every crop of each snippet", last=last)
        if c < 1 or d < 1:
            raise self._error(st, n, f"shape {a.shape} has an empty crop or feature axis", last=last)
        if st.dim is not None and d != st.dim:
            raise self._error(st, n, f"D = {d} (shape {a.shape}); expected D = {st.dim} "
                                     f"({self.meta.describe()}). Fix: features from the extractor the "
                                     f"model was trained on", last=last)
        if not np.issubdtype(a.dtype, np.floating):
            raise self._error(st, n, f"dtype {a.dtype}; expected floating-point features (float32)",
                              last=n + k - 1)
        if st.closed:
            raise self._error(st, n, "the stream was flushed; open a new one")
        if k == 0:
            return np.empty((0, c, d), np.float32)
        a = a.astype(np.float32, copy=False)
        finite = np.isfinite(a)
        if not finite.all():
            i, cr, dd = (int(v) for v in np.argwhere(~finite)[0])
            raise self._error(st, n + i, f"{a[i, cr, dd]} at crop {cr}, dim {dd}; expected finite "
                                         f"features. Fix: drop or repair the snippet")
        return a

    # -- blocks -----------------------------------------------------------------
    def _feed(self, st: _Stream, x: np.ndarray, out: dict) -> None:
        """Append validated snippets (k, C, D) to the ring; queue each block as it becomes due."""
        k = x.shape[0]
        if k == 0:
            return
        if st.buf is None:
            st.crops, st.dim = int(x.shape[1]), int(x.shape[2])
            st.buf = np.zeros((st.crops, self.span, st.dim), np.float32)
        S, R = self.step, self.span
        i = 0
        while i < k:
            due_at = st.next_block * S + S + self.lookahead      # snippets needed for the next block
            m = min(k - i, due_at - st.arrived)                  # 1 <= m <= R
            p = st.arrived % R
            first = min(m, R - p)
            st.buf[:, p:p + first] = x[i:i + first].transpose(1, 0, 2)
            if first < m:
                st.buf[:, : m - first] = x[i + first:i + m].transpose(1, 0, 2)
            st.arrived += m
            i += m
            if st.arrived == due_at:
                self._queue(st, st.next_block * S, S, out)

    def _flush_stream(self, st: _Stream, out: dict) -> None:
        S = self.step
        while not st.closed and st.next_block * S < st.arrived:
            b0 = st.next_block * S
            self._queue(st, b0, min(S, st.arrived - b0), out)

    def _queue(self, st: _Stream, first: int, count: int, out: dict) -> None:
        """Queue block [first, first + count) on the window [first - W + 1, arrived)."""
        start = max(0, first - self.window + 1)
        idx = np.arange(start, st.arrived) % self.span
        job = _Job(st, first, count, start, np.take(st.buf, idx, axis=1))
        st.next_block += 1
        c, t = job.window.shape[0], job.window.shape[1]
        if self._pending and not self._fits(self._pending_rows + c, max(self._pending_t, t),
                                            len(self._pending) + 1):
            self._run_pending(out)
        self._pending.append(job)
        self._pending_rows += c
        self._pending_t = max(self._pending_t, t)

    def _fits(self, rows: int, t: int, n: int) -> bool:
        """Would one call of n windows, `rows` crop rows padded to t, stay within the limits?"""
        if n > self._cap_n:
            return False
        if self.max_rows is not None and rows * t > self.max_rows:
            return False
        return estimate_bytes(rows, t, self.meta) <= self.memory_budget

    def _run_pending(self, out: dict) -> None:
        jobs, self._pending = self._pending, []
        self._pending_rows = self._pending_t = 0
        if not jobs:
            return
        sources = [ValidatedSource(str(j), job.window) for j, job in enumerate(jobs)]
        parts: list = [None] * len(jobs)
        for r in self._scorer.iter_results(sources):
            if isinstance(r, VideoFailure):
                raise r.error
            j = int(r.name)
            job = jobs[j]
            o = job.first - job.start
            parts[j] = (job.first, job.count, *(getattr(r, k)[o:o + job.count] for k in OUTPUTS))
        for job, part in zip(jobs, parts):
            out.setdefault(job.stream.id, []).append(part)
        self.blocks += len(jobs)

    @staticmethod
    def _records(parts: list) -> np.ndarray:
        """A stream's block results, in order (contiguous snippets) -> one RESULT_DTYPE array."""
        if not parts:
            return empty_results()
        total = sum(p[1] for p in parts)
        rec = np.empty(total, RESULT_DTYPE)
        rec["snippet"] = np.arange(parts[0][0], parts[0][0] + total)
        for i, name in enumerate(OUTPUTS):
            rec[name] = np.concatenate([p[2 + i] for p in parts])
        return rec

    def _package(self, out: dict, t0: float) -> dict:
        done = {sid: self._records(parts) for sid, parts in out.items()}
        ms = (time.perf_counter() - t0) * 1e3
        for rec in done.values():
            rec["latency_ms"] = ms
        return done


def _read_through(owner: str, name: str) -> property:
    """A read-only property returning self.<owner>.<name>."""
    return property(lambda self: getattr(getattr(self, owner), name),
                    doc=f"The {name} of this object's {owner.lstrip('_')}.")


class StreamScorer:
    """One stream scored as it arrives: the one-stream case of StreamGroup.

        scorer = StreamScorer(runner, window=64, lookahead=8, step=1)
        for chunk in source:                       # (k, C, D) float32 snippets
            for r in scorer.push(chunk):           # the snippets that became final
                r["snippet"], r["anomaly"], r["latency_ms"]
        tail = scorer.flush()                      # at the end of the stream

    With step S = 1, snippet t is scored on snippets [t-W+1, t+L] and returned by the push that
    delivers snippet t+L. S > 1 scores S snippets per runner call, so a snippet may wait for
    up to S-1 more snippets (delay S-1+L) in exchange for S times fewer calls. Memory: a ring
    buffer of W-1+S+L snippets (`buffer_nbytes`), whatever the stream's length. A bad push
    raises InputError naming the stream and the snippet and changes nothing. Keyword
    arguments are StreamGroup's.
    """

    def __init__(self, runner: Runner, window: int, lookahead: int = 0, step: int = 1, *,
                 crops: int | str | None = "model", name: Hashable = "stream",
                 memory_budget: int | None = None, max_rows: int | str | None = "auto",
                 max_batch: int = DEFAULT_MAX_BATCH):
        self.group = StreamGroup(runner, window, lookahead, step, crops=crops,
                                 memory_budget=memory_budget, max_rows=max_rows, max_batch=max_batch)
        self.name = name
        self._handle = self.group.open(name)

    def push(self, snippets) -> np.ndarray:
        return self._handle.push(snippets)

    def flush(self) -> np.ndarray:
        return self._handle.flush()

    # The one stream's state, read through to its handle and group (same names, same meaning).
    snippets = _read_through("_handle", "snippets")
    final = _read_through("_handle", "final")
    closed = _read_through("_handle", "closed")
    buffer_shape = _read_through("_handle", "buffer_shape")
    buffer_nbytes = _read_through("_handle", "buffer_nbytes")
    delay = _read_through("group", "delay")
    stats = _read_through("group", "stats")


class WindowedScorer(Scorer):
    """The batch Scorer's interface (iter_results / score) over `score_windowed`: every video
    is scored in windows of W snippets with L of lookahead, S per call, exactly as a stream
    fed that video, in time and memory linear in its length. bnwvad-infer --window uses it.

    Sources are checked as the Scorer checks them (crop policy, D, values on load); a video
    whose window does not fit the budget fails with MemoryBudgetError naming the largest
    window that would fit.
    """

    def __init__(self, runner: Runner, window: int, lookahead: int = 0, step: int = 1, **scorer_kwargs):
        super().__init__(runner, **scorer_kwargs)
        self.window = _check_int("window", window, 1)
        self.lookahead = _check_int("lookahead", lookahead, 0)
        self.step = _check_int("step", step, 1)

    def iter_results(self, sources, progress=None):
        names = Counter(s.name for s in sources)
        dup = sorted(n for n, k in names.items() if k > 1)
        if dup:
            raise InputError(f"video names {dup[:5]} occur more than once; expected unique names "
                             f"(results are keyed by name)")
        for s in sources:
            try:
                err = self._check_source(s)
                if err is not None:
                    raise err
                feats = self._load(s)
                out = score_windowed(self.runner, feats, self.window, self.lookahead, self.step,
                                     crops=None, name=s.name, memory_budget=self.call_budget,
                                     max_rows=self.max_rows, max_batch=self.max_batch)
            except Exception as e:      # noqa: BLE001 - a bad video is reported, the rest go on
                if not isinstance(e, (InputError, MemoryBudgetError, ValueError, OSError)):
                    raise
                yield VideoFailure(s.name, e)
            else:
                self.stats["calls"] += 1
                self.stats["videos"] += 1
                yield VideoResult(s.name, out["score"], out["dfm"], out["anomaly"], crops=s.crops,
                                  frames_per_snippet=self.meta.frames_per_snippet)
            if progress:
                progress(1)


def score_windowed(runner: Runner, features, window: int, lookahead: int = 0, step: int = 1, *,
                   crops: int | str | None = "model", name: str = "video",
                   memory_budget: int | None = None, max_rows: int | str | None = "auto",
                   max_batch: int = DEFAULT_MAX_BATCH, chunk: int = 4096) -> dict[str, np.ndarray]:
    """A whole video (C, T, D) (or (T, D) for one crop) scored as StreamScorer scores it when
    fed that video: {"score", "dfm", "anomaly": (T,) float32}.

    Time and memory are linear in T: many blocks of the video go into one padded call (N
    blocks x C crops x the window), bounded by memory_budget / max_rows / max_batch, and the
    video is validated `chunk` snippets at a time (a memory-mapped array stays on disk).
    Errors are InputError naming `name` and the snippet, or MemoryBudgetError when one crop
    of one window does not fit the budget (`largest_window` says what does).
    """
    a = features
    if not isinstance(a, np.ndarray) or a.ndim not in (2, 3):
        raise InputError(f"video {name!r}: features of shape {getattr(a, 'shape', None)}; expected a "
                         f"numpy array (C, T, D), or (T, D) for one crop")
    if a.ndim == 2:
        a = a[None]
    if a.shape[1] < 1:
        raise InputError(f"video {name!r}: features of shape {a.shape} have no snippets; expected T >= 1")
    group = StreamGroup(runner, window, lookahead, step, crops=crops, memory_budget=memory_budget,
                        max_rows=max_rows, max_batch=max_batch)
    group.open(name)
    st = group._get(name)
    t_all = a.shape[1]
    chunk = max(1, int(chunk))
    out: dict = {name: []}
    for s in range(0, t_all, chunk):
        x = group._check_push(st, a[:, s:s + chunk].transpose(1, 0, 2))
        group._feed(st, x, out)
    group._flush_stream(st, out)
    group._run_pending(out)
    st.closed, st.buf = True, None
    rec = group._records(out[name])
    assert rec.shape == (t_all,) and (rec["snippet"] == np.arange(t_all)).all()
    return {k: np.ascontiguousarray(rec[k]) for k in OUTPUTS}


__all__ = ["DEFAULT_MAX_BATCH", "RESULT_DTYPE", "StreamGroup", "StreamHandle", "StreamScorer", "WindowedScorer",
           "empty_results", "largest_window", "score_windowed", "window_span"]
