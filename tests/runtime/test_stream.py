"""Streaming and windowed scoring: the window definition, bounded state, batching of streams,
validation, memory budget; on the toy graph and on a tiny exported BN-WVAD."""
import subprocess
import sys

import numpy as np
import pytest

from _toy_onnx import TOY_CROPS, TOY_D, toy_reference
from bnwvad.runtime import InputError, MemoryBudgetError, Scorer, load_runner
from bnwvad.runtime.contract import OUTPUTS, error
from bnwvad.runtime.planning import estimate_bytes
from bnwvad.runtime.stream import (RESULT_DTYPE, StreamGroup, StreamScorer, largest_window,
                                   score_windowed, window_span)

BUDGET = 1 << 30
PARAMS = [(1, 0, 1), (4, 2, 1), (5, 3, 3), (3, 0, 4), (6, 1, 2)]     # (window, lookahead, step)


@pytest.fixture(scope="module")
def runner(toy_onnx):
    r = load_runner(toy_onnx, "ort-cpu", threads=1)
    yield r
    r.close()


class Spy:
    """A runner that records its calls (and that they come unchecked)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []
        self.meta, self.device, self.limits = inner.meta, inner.device, inner.limits

    def run(self, features, lengths, *, check=True):
        self.calls.append((features.shape, lengths.copy(), check))
        return self.inner.run(features, lengths, check=check)


def video(rng, t, c=TOY_CROPS, d=TOY_D):
    return rng.normal(size=(c, t, d)).astype(np.float32)


def by_definition(x, window, lookahead, step):
    """The design, literally: block b on [bS-W+1, bS+S-1+L] clipped, the toy graph in numpy."""
    t_all = x.shape[1]
    out = {k: np.zeros(t_all) for k in OUTPUTS}
    for b0 in range(0, t_all, step):
        lo, hi = max(0, b0 - window + 1), min(t_all, b0 + step + lookahead)
        ref = toy_reference(x[:, lo:hi])
        for t in range(b0, min(t_all, b0 + step)):
            for k in OUTPUTS:
                out[k][t] = ref[k][t - lo]
    return out


def stream_in_random_pushes(scorer, x, rng, max_push=7):
    parts, i = [], 0
    while i < x.shape[1]:
        k = int(rng.integers(0, max_push + 1))
        parts.append(scorer.push(x[:, i:i + k].transpose(1, 0, 2)))
        i += k
    parts.append(scorer.flush())
    rec = np.concatenate(parts)
    assert rec.dtype == RESULT_DTYPE and (rec["snippet"] == np.arange(x.shape[1])).all()
    return rec


def rel(a, b):
    return error(a, b, "rel_to_max")


@pytest.mark.parametrize("window,lookahead,step", PARAMS)
def test_stream_follows_the_window_definition(runner, window, lookahead, step):
    rng = np.random.default_rng(window * 100 + lookahead * 10 + step)
    x = video(rng, 37)
    rec = stream_in_random_pushes(StreamScorer(runner, window, lookahead, step, memory_budget=BUDGET), x, rng)
    ref = by_definition(x, window, lookahead, step)
    for k in OUTPUTS:
        assert rel(rec[k], ref[k]) < 1e-5, k


@pytest.mark.parametrize("window,lookahead,step", PARAMS + [(50, 50, 1)])
def test_stream_equals_score_windowed(runner, window, lookahead, step):
    rng = np.random.default_rng(window + 7 * lookahead + 31 * step)
    x = video(rng, 41)
    offline = score_windowed(runner, x, window, lookahead, step, memory_budget=BUDGET)
    for trial in range(3):
        s = StreamScorer(runner, window, lookahead, step, memory_budget=BUDGET)
        rec = stream_in_random_pushes(s, x, rng, max_push=[1, 5, 30][trial])
        for k in OUTPUTS:
            assert offline[k].shape == (41,) and offline[k].dtype == np.float32
            assert rel(rec[k], offline[k]) <= 1e-6, (k, trial)


def test_whole_window_is_the_whole_video(runner):
    rng = np.random.default_rng(1)
    x = video(rng, 23)
    whole = Scorer(runner, call_budget=BUDGET).score({"v": x})[0]
    for w, la in [(23, 23), (40, 30)]:
        got = score_windowed(runner, x, w, la, 1, memory_budget=BUDGET)
        for k in OUTPUTS:
            assert rel(got[k], getattr(whole, k)) <= 1e-5


def test_results_are_final_as_soon_as_their_lookahead_arrived(runner):
    rng = np.random.default_rng(2)
    x = video(rng, 30).transpose(1, 0, 2)           # (T, C, D)
    s = StreamScorer(runner, window=4, lookahead=3, step=1, memory_budget=BUDGET)
    assert s.delay == 3
    got = [s.push(x[t:t + 1]) for t in range(30)]
    for t, rec in enumerate(got):                    # the push of snippet t makes t - 3 final
        assert rec["snippet"].tolist() == ([t - 3] if t >= 3 else [])
        assert (rec["latency_ms"] >= 0).all()
    assert s.final == 27 and s.flush()["snippet"].tolist() == [27, 28, 29]
    s2 = StreamScorer(runner, window=4, lookahead=1, step=3, memory_budget=BUDGET)
    assert s2.delay == 3
    seen = [s2.push(x[t:t + 1])["snippet"].tolist() for t in range(9)]
    # block [0, 2] is due once snippet 3 arrived, block [3, 5] once 6 did.
    assert seen == [[], [], [], [0, 1, 2], [], [], [3, 4, 5], [], []]


def test_state_is_bounded_by_the_window(runner):
    rng = np.random.default_rng(3)
    w, la, st = 4, 1, 2
    s = StreamScorer(runner, w, la, st, memory_budget=BUDGET)
    chunk = rng.normal(size=(500, TOY_CROPS, TOY_D)).astype(np.float32)
    shapes, total, emitted = set(), 0, 0
    while total < 20_000:
        k = int(rng.integers(1, 500))
        emitted += s.push(chunk[:k]).size
        total += k
        shapes.add((s.buffer_shape, s.buffer_nbytes))
    assert shapes == {((TOY_CROPS, window_span(w, la, st), TOY_D), TOY_CROPS * 6 * TOY_D * 4)}
    assert emitted + s.flush().size == total and s.closed


def test_bad_pushes_name_the_stream_and_snippet_and_change_nothing(runner):
    rng = np.random.default_rng(4)
    x = video(rng, 12).transpose(1, 0, 2)
    ref = StreamScorer(runner, 3, 1, 1, memory_budget=BUDGET)
    want = np.concatenate([ref.push(x[:5]), ref.push(x[5:]), ref.flush()])
    s = StreamScorer(runner, 3, 1, 1, name="cam7", memory_budget=BUDGET)
    first = s.push(x[:5])
    nan = x[5:].copy()
    nan[2, 1, 3] = np.nan
    bad = [(nan, "stream 'cam7', snippet 7: nan at crop 1, dim 3"),
           (x[5:, :, :5], "stream 'cam7', snippets 5..11: D = 5 "),
           (x[5:, :2], "snippets 5..11: 2 crops .* the stream has 3 .*model expects 3"),
           (x[5:, 0], r"one crop \(k, D\); the stream has 3 crops"),
           (x[5:].astype(np.int64), "snippets 5..11: dtype int64; expected floating-point"),
           (x[None], "expected \\(k, C, D\\)"),
           ("garbage", "expected \\(k, C, D\\)")]
    for arr, msg in bad:
        with pytest.raises(InputError, match=msg) as ei:
            s.push(arr)
        assert ei.value.stream == "cam7"
    assert s.snippets == 5 and s.final == 4
    got = np.concatenate([first, s.push(x[5:].astype(np.float64)), s.flush()])
    for k in OUTPUTS:
        np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(InputError, match="not open"):
        s.push(x[:1])


def test_one_crop_streams_and_any_crops(runner):
    rng = np.random.default_rng(5)
    one = rng.normal(size=(9, TOY_D)).astype(np.float32)
    g = StreamGroup(runner, 3, 1, 1, crops=None, memory_budget=BUDGET)
    a, b = g.open("a"), g.open("b")
    res = g.push_many({"a": one, "b": video(rng, 9).transpose(1, 0, 2)})
    assert a.crops == 1 and b.crops == TOY_CROPS and res["a"].size == res["b"].size == 8
    with pytest.raises(InputError, match="stream 'a', snippet 9: 2 crops .*the stream has 1"):
        a.push(np.zeros((1, 2, TOY_D), np.float32))
    got = np.concatenate([res["a"], a.flush()])
    ref = score_windowed(runner, one, 3, 1, 1, crops=None, memory_budget=BUDGET)
    assert rel(got["anomaly"], ref["anomaly"]) <= 1e-6
    with pytest.raises(InputError, match=r"one crop \(k, D\); the stream has 3"):
        StreamScorer(runner, 3, memory_budget=BUDGET).push(one)


def test_group_batches_streams_and_each_gets_what_it_gets_alone(runner):
    rng = np.random.default_rng(6)
    lengths = {"a": 40, "b": 25, "c": 33}
    xs = {k: video(rng, t) for k, t in lengths.items()}
    spy = Spy(runner)
    g = StreamGroup(spy, 5, 2, 2, memory_budget=BUDGET)
    handles = {k: g.open(k) for k in xs}
    got = {k: [] for k in xs}
    pos = dict.fromkeys(xs, 0)
    late = {"c": 6}                                  # c starts after a few rounds
    for rnd in range(200):
        batch = {}
        for k, x in xs.items():
            if rnd < late.get(k, 0) or pos[k] >= lengths[k]:
                continue
            n = int(rng.integers(0, 6))
            batch[k] = x[:, pos[k]:pos[k] + n].transpose(1, 0, 2)
            pos[k] += n
        if not batch:
            break
        for k, rec in g.push_many(batch).items():
            got[k].append(rec)
    for k, rec in g.flush().items():
        got[k].append(rec)
    assert not g.streams and all(h.closed for h in handles.values())
    batched = max(len(lens) for _, lens, _ in spy.calls)
    assert batched > 1 and all(check is False for _, _, check in spy.calls)
    for k, x in xs.items():
        rec = np.concatenate(got[k])
        assert (rec["snippet"] == np.arange(lengths[k])).all()
        alone = score_windowed(runner, x, 5, 2, 2, memory_budget=BUDGET, max_batch=1)
        for o in OUTPUTS:
            assert rel(rec[o], alone[o]) <= 1e-5, (k, o)


def test_group_push_is_all_or_nothing(runner):
    rng = np.random.default_rng(7)
    g = StreamGroup(runner, 3, 0, 1, memory_budget=BUDGET)
    g.open("ok"), g.open("bad")
    x = video(rng, 4).transpose(1, 0, 2)
    with pytest.raises(InputError, match="stream 'bad', snippets 0..3: D = 3") as ei:
        g.push_many({"ok": x, "bad": x[:, :, :3]})
    assert ei.value.stream == "bad" and g.handle("ok").snippets == 0
    assert g.push_many({"ok": x})["ok"].size == 4
    with pytest.raises(InputError, match="stream 'nope' is not open"):
        g.push_many({"nope": x})
    with pytest.raises(ValueError, match="already open"):
        g.open("ok")
    assert g.flush()["bad"].size == 0


def test_memory_budget_bounds_every_call(runner):
    rng = np.random.default_rng(8)
    meta = runner.meta
    w, la, st = 6, 2, 1
    span = window_span(w, la, st)
    x = video(rng, 30)
    free = score_windowed(runner, x, w, la, st, memory_budget=BUDGET)
    # Two windows of all crops per call.
    budget = estimate_bytes(2 * TOY_CROPS, span, meta)
    spy = Spy(runner)
    two = score_windowed(spy, x, w, la, st, memory_budget=budget)
    assert all(estimate_bytes(s[0] * s[1], s[2], meta) <= budget for s, _, _ in spy.calls)
    # Full windows two per call (the first, shorter windows fit three).
    assert {s[0] for s, _, _ in spy.calls if s[2] == span} == {2} and len(spy.calls) >= 14
    # Not even one window's 3 crops: crop chunks, averaged exactly.
    budget = estimate_bytes(2, span, meta)
    spy = Spy(runner)
    chunked = score_windowed(spy, x, w, la, st, memory_budget=budget)
    assert {s[1] for s, _, _ in spy.calls if s[2] == span} == {1, 2}
    for k in OUTPUTS:
        assert rel(two[k], free[k]) <= 1e-6 and rel(chunked[k], free[k]) <= 1e-6
    # Not even one crop: refused up front, with the window that would fit.
    budget = estimate_bytes(1, 20, meta)
    with pytest.raises(MemoryBudgetError, match="window of at most 17") as ei:
        StreamScorer(runner, 30, 2, 2, memory_budget=budget)
    assert ei.value.budget == budget and largest_window(meta, budget, lookahead=2, step=2) == 17
    assert largest_window(meta, 100) == 0


def test_engine_limits_and_parameters_are_checked(runner):
    from bnwvad.runtime.validate import ShapeLimits

    spy = Spy(runner)
    spy.limits = ShapeLimits(max_t=8)
    StreamScorer(spy, 6, 2, 1, memory_budget=BUDGET)
    with pytest.raises(InputError, match="at most T = 8"):
        StreamScorer(spy, 6, 2, 2, memory_budget=BUDGET)
    for bad in ({"window": 0}, {"window": 2, "lookahead": -1}, {"window": 2, "step": 0},
                {"window": 2.5}):
        with pytest.raises(ValueError):
            StreamScorer(runner, memory_budget=BUDGET, **bad)
    with pytest.raises(InputError, match="shape \\(1, 1, 4, 8\\); expected a numpy array \\(C, T, D\\)"):
        score_windowed(runner, np.zeros((4, 8), np.float32)[None, None], 3)


def test_stream_modules_import_no_torch(toy_onnx):
    code = f"""
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
import numpy as np
from bnwvad.runtime import load_runner
from bnwvad.runtime.stream import StreamScorer
from bnwvad.runtime.online_events import OnlineEvents
s = StreamScorer(load_runner({str(toy_onnx)!r}, "ort-cpu"), 3, 1, memory_budget=1 << 28)
r = np.concatenate([s.push(np.ones((5, 3, 8), np.float32)), s.flush()])
ev = OnlineEvents(-1.0)
ev.extend(r)
assert len(ev.close()) == 1 and r.size == 5
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("NO-TORCH-OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "NO-TORCH-OK" in proc.stdout, proc.stdout + proc.stderr


# -- a real BN-WVAD graph ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bnwvad(tmp_path_factory):
    """A tiny BN-WVAD (D = 24, random trained-looking BN statistics) exported to ONNX."""
    torch = pytest.importorskip("torch")
    export = pytest.importorskip("bnwvad.export")
    from bnwvad import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(feature_dim=24, embed_dim=16, heads=2, head_dim=8, mlp_dim=16,
                                    hidden_dims=(8, 4)))
    with torch.no_grad():
        for bn in model.head.bns:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    path = tmp_path_factory.mktemp("tiny_bnwvad") / "tiny.onnx"
    export.export_onnx(model.eval(), path, verify=False)
    r = load_runner(path, "ort-cpu", threads=1)
    yield r
    r.close()


def test_real_graph_windowed_streaming_and_batching(tiny_bnwvad):
    r = tiny_bnwvad
    rng = np.random.default_rng(9)
    c, d = 2, r.meta.feature_dim
    lengths = [30, 21, 26]
    xs = [(rng.random((c, t, d)) * 2).astype(np.float32) for t in lengths]
    kw = dict(crops=None, memory_budget=BUDGET)
    # (a) S = 1 with W >= T and L >= T is the whole-video model.
    whole = Scorer(r, crops=None, call_budget=BUDGET).score({"v": xs[0]})[0]
    full = score_windowed(r, xs[0], 30, 30, 1, **kw)
    for k in OUTPUTS:
        assert rel(full[k], getattr(whole, k)) <= 1e-5, k
    # A short window is not the whole video (the windows really cut the context).
    assert rel(score_windowed(r, xs[0], 6, 2, 1, **kw)["anomaly"], whole.anomaly) > 1e-3
    # (b) streaming in random pushes == score_windowed.
    for w, la, st in [(6, 2, 1), (5, 3, 4)]:
        offline = score_windowed(r, xs[0], w, la, st, **kw)
        rec = stream_in_random_pushes(StreamScorer(r, w, la, st, **kw), xs[0], rng)
        for k in OUTPUTS:
            assert rel(rec[k], offline[k]) <= 1e-6, (w, la, st, k)
    # (c) three streams batched in one group == each alone.
    spy = Spy(r)
    g = StreamGroup(spy, 6, 2, 1, **kw)
    for i in range(3):
        g.open(i)
    got = {i: [] for i in range(3)}
    for t0 in range(0, 30, 4):
        res = g.push_many({i: x[:, t0:t0 + 4].transpose(1, 0, 2) for i, x in enumerate(xs)
                           if t0 < x.shape[1]})
        for i, rec in res.items():
            got[i].append(rec)
    for i, rec in g.flush().items():
        got[i].append(rec)
    assert max(len(lens) for _, lens, _ in spy.calls) >= 6          # blocks of several streams
    for i, x in enumerate(xs):
        rec = np.concatenate(got[i])
        alone = stream_in_random_pushes(StreamScorer(r, 6, 2, 1, **kw), x, rng, max_push=1)
        for k in OUTPUTS:
            assert rel(rec[k], alone[k]) <= 1e-5, (i, k)


def test_published_model_whole_window_and_streaming(xd_onnx):
    """The published weights (skips without ../shared): a window covering the video is the
    whole-video model; streaming equals score_windowed."""
    r = load_runner(xd_onnx, "ort-cpu", threads=1)
    x = np.random.default_rng(10).random((r.meta.crops, 20, r.meta.feature_dim)).astype(np.float32)
    whole = Scorer(r, call_budget=BUDGET).score({"v": x})[0]
    full = score_windowed(r, x, 20, 20, 1, memory_budget=BUDGET)
    part = score_windowed(r, x, 6, 2, 2, memory_budget=BUDGET)
    s = StreamScorer(r, 6, 2, 2, memory_budget=BUDGET)
    tcd = x.transpose(1, 0, 2)
    rec = np.concatenate([s.push(tcd[:9]), s.push(tcd[9:]), s.flush()])
    for k in OUTPUTS:
        assert rel(full[k], getattr(whole, k)) <= 1e-5, k
        assert rel(rec[k], part[k]) <= 1e-6, k
    r.close()
