"""Packing videos of different lengths into runner calls within a memory budget.

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

`plan_calls` makes the plan; the Scorer (bnwvad.runtime.scoring) runs it, with the budget a call
may use.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from .errors import InputError, MemoryBudgetError, human_bytes
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


def estimate_bytes(rows: int, length: int, meta: ModelMeta) -> int:
    """Working memory of one call with `rows` = N * C crop rows padded to T = `length`.

    rows * (ATTN_COPIES * heads + 2) * T^2 * 4   attention scores + temporal kernel / G
    + rows * T * (ACT_WIDTH_E * E + 3 * D) * 4   activations, plus the input and its padded copy
    """
    t = int(length)
    attn = int((ATTN_COPIES * meta.heads + 2) * t * t)
    act = t * (ACT_WIDTH_E * meta.embed_dim + 3 * (meta.feature_dim or 1024))
    return int(rows) * (attn + act) * 4


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
