"""Batched multi-crop scoring: padding, packing, memory budget, crop chunks, failures."""
from __future__ import annotations

import numpy as np
import pytest

from _toy_onnx import TOY_CROPS, TOY_D, toy_reference
from bnwvad.runtime import (ArraySource, BackendError, InputError, MemoryBudgetError, Scorer, VideoFailure,
                            estimate_bytes, load_runner, plan_calls)
from bnwvad.runtime.scoring import default_memory_budget
from bnwvad.runtime.contract import check

LENGTHS = [5, 1, 17, 16, 3, 40, 2, 12, 12, 30]


def videos(lengths=LENGTHS, crops=TOY_CROPS, d=TOY_D, seed=1):
    rng = np.random.default_rng(seed)
    return {f"v{i}": (rng.normal(size=(crops, t, d)) * 2).astype(np.float32) for i, t in enumerate(lengths)}


@pytest.fixture(scope="module")
def runner(toy_onnx):
    return load_runner(toy_onnx, "ort-cpu", threads=1)


def test_batched_equals_each_video_alone_and_the_reference(runner):
    vids = videos()
    scorer = Scorer(runner, max_batch=8, min_fill=0.0)
    batched = scorer.score(vids)
    assert scorer.stats["calls"] < len(vids)                      # really batched
    assert [r.name for r in batched] == list(vids)                # input order kept
    for r in batched:
        alone = Scorer(runner, max_batch=1).score({r.name: vids[r.name]})[0]
        ref = toy_reference(vids[r.name])
        for k in ("score", "dfm", "anomaly"):
            assert getattr(r, k).shape == (vids[r.name].shape[1],)
            assert check("padding", getattr(r, k), getattr(alone, k))[1]
            np.testing.assert_allclose(getattr(r, k), ref[k], rtol=1e-5, atol=1e-6)


def test_per_frame_outputs_repeat_each_snippet_16_times(runner):
    r = Scorer(runner).score({"a": videos([7])["v0"]})[0]
    assert r.frames_per_snippet == 16
    assert r.frame_anomaly.shape == (7 * 16,) and r.per_frame("dfm").shape == (112,)
    np.testing.assert_array_equal(r.frame_score.reshape(7, 16), np.repeat(r.score[:, None], 16, 1))


def test_plan_sorts_by_length_and_bounds_padding_and_batch(runner):
    plan = plan_calls(LENGTHS, [3] * len(LENGTHS), runner.meta, budget=1 << 40, max_batch=3, min_fill=0.75)
    assert not plan.failures
    seen = sorted(i for c in plan.calls for i in c.videos)
    assert seen == list(range(len(LENGTHS)))
    for call in plan.calls:
        ls = [LENGTHS[i] for i in call.videos]
        assert call.length == max(ls) and len(ls) <= 3 and min(ls) >= 0.75 * max(ls)
        assert call.crops == (0, 3)
    firsts = [LENGTHS[c.videos[0]] for c in plan.calls]
    assert firsts == sorted(firsts, reverse=True)


def test_memory_budget_splits_batches_then_crops_with_identical_results(runner):
    vids = videos()
    free = Scorer(runner, max_batch=16, min_fill=0.0).score(vids)
    # Room for exactly one crop row of the longest video: every call holds one video, and
    # videos with T near 40 are split into crop chunks.
    budget = estimate_bytes(1, 40, runner.meta)
    scorer = Scorer(runner, max_batch=16, min_fill=0.0, call_budget=budget)
    tight = scorer.score(vids)
    assert max(r.calls for r in tight) == TOY_CROPS               # the T = 40 video: 3 chunks of one crop
    assert scorer.stats["calls"] > len(vids)
    for a, b in zip(free, tight):
        for k in ("score", "dfm", "anomaly"):
            np.testing.assert_allclose(getattr(b, k), getattr(a, k), rtol=1e-6, atol=1e-7)
    # A budget fitting two rows of T = 40 splits that video's 3 crops as 2 + 1.
    two = Scorer(runner, call_budget=estimate_bytes(2, 40, runner.meta)).score({"v5": vids["v5"]})[0]
    assert two.calls == 2
    np.testing.assert_allclose(two.anomaly, free[5].anomaly, rtol=1e-6, atol=1e-7)


def test_a_crop_too_large_for_the_budget_fails_with_the_memory_it_needs(runner):
    vids = videos([40, 3])
    need = estimate_bytes(1, 40, runner.meta)
    scorer = Scorer(runner, call_budget=need - 1)
    with pytest.raises(MemoryBudgetError, match=rf"needs .* \({need} bytes\) to score even one crop, over "
                                                rf"the memory budget of .* \({need - 1} bytes\)") as e:
        scorer.score(vids)
    assert e.value.needed == need and e.value.budget == need - 1
    # The other video still scores when failures are collected rather than raised.
    out = list(scorer.iter_results([ArraySource(k, v) for k, v in vids.items()]))
    assert {type(r).__name__ for r in out} == {"VideoResult", "VideoFailure"}
    assert [r.name for r in out if isinstance(r, VideoFailure)] == ["v0"]


def test_the_memory_estimate_grows_with_the_attention_square(runner):
    m = runner.meta
    assert estimate_bytes(2, 100, m) == 2 * estimate_bytes(1, 100, m)
    assert estimate_bytes(1, 2000, m) > 3.5 * estimate_bytes(1, 1000, m)


def test_the_default_budget_is_a_fraction_of_what_is_free_under_the_tightest_limit(monkeypatch):
    import psutil

    from bnwvad.runtime import _cuda, memory

    # The real one: at most half of what psutil says is available (a cgroup may bind tighter).
    assert 0 < default_memory_budget() <= psutil.virtual_memory().available * memory.DEFAULT_FRACTION * 1.05
    # Exactly fraction x the tightest limit; the fallback only when nothing can be read.
    monkeypatch.setattr(memory, "cgroup_limits", lambda *a: [])
    monkeypatch.setattr(memory, "host_limit", lambda: memory.Limit("MemAvailable (host)", 12 << 30))
    assert default_memory_budget(fraction=0.25) == 3 << 30
    assert default_memory_budget() == 6 << 30
    # CUDA: free device memory when libcudart answers and it is tighter, else host RAM.
    monkeypatch.setattr(_cuda, "set_device", lambda i: None)
    monkeypatch.setattr(_cuda, "mem_get_info", lambda: (2 << 30, 80 << 30))
    assert default_memory_budget("cuda") == 1 << 30

    def no_cudart(*a):
        raise BackendError("the CUDA runtime library (libcudart) was not found")
    monkeypatch.setattr(_cuda, "mem_get_info", no_cudart)
    assert default_memory_budget("cuda", fraction=0.5) == 6 << 30
    monkeypatch.setattr(memory, "host_limit", lambda: None)
    assert default_memory_budget() == memory.FALLBACK_BYTES == 4 << 30


def test_crop_count_policy(runner):
    vids = {"two": videos([6], crops=2)["v0"]}
    with pytest.raises(InputError, match=r"'two': 2 crop\(s\); the model expects 3 .*--any-crops"):
        Scorer(runner).score(vids)
    out = Scorer(runner, crops=None).score(vids)[0]
    np.testing.assert_allclose(out.anomaly, toy_reference(vids["two"])["anomaly"], rtol=1e-5, atol=1e-6)
    # Videos with different crop counts never share a call.
    mixed = {**videos([6], crops=2), "x": videos([6], crops=1)["v0"]}
    scorer = Scorer(runner, crops=None)
    scorer.score(mixed)
    assert scorer.stats["calls"] == 2


class _Broken:
    name, crops, length = "broken", TOY_CROPS, 4

    def load(self):
        raise OSError("disk on fire")


def test_a_video_failing_to_load_fails_alone_and_the_batch_completes(runner):
    good = [ArraySource(k, v) for k, v in videos([4, 4, 4]).items()]
    out = list(Scorer(runner, min_fill=0.0).iter_results([good[0], _Broken(), *good[1:]]))
    fails = [r for r in out if isinstance(r, VideoFailure)]
    assert [f.name for f in fails] == ["broken"] and "disk on fire" in fails[0].message
    assert sorted(r.name for r in out if not isinstance(r, VideoFailure)) == ["v0", "v1", "v2"]


def test_nan_in_a_video_is_reported_by_name(runner):
    v = videos([4])["v0"]
    v[1, 2, 3] = np.inf
    with pytest.raises(InputError, match=r"video 'bad': inf at crop 1, snippet 2, dim 3"):
        Scorer(runner).score({"bad": v})


class _Spy:
    """A runner that records how the Scorer calls it."""

    def __init__(self, runner):
        self._runner, self.calls = runner, []

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, features, lengths, **kwargs):
        self.calls.append(kwargs)
        return self._runner.run(features, lengths, **kwargs)


def test_the_scorer_runs_validated_batches_unchecked_once_per_call(runner):
    vids = videos()
    for budget in (None, estimate_bytes(1, 40, runner.meta)):        # batches, then crop chunks too
        spy = _Spy(runner)
        scorer = Scorer(spy, max_batch=4, min_fill=0.0, call_budget=budget)
        got = scorer.score(vids)
        assert scorer.stats["calls"] > 1
        assert spy.calls == [{"check": False}] * scorer.stats["calls"]
        for r in got:
            np.testing.assert_allclose(r.anomaly, toy_reference(vids[r.name])["anomaly"], rtol=1e-5, atol=1e-6)


class _Foreign:
    """A VideoSource of another library: neither FileVideo nor ArraySource."""

    def __init__(self, name, features, length=None):
        self.name, self.features = name, features
        self.crops, self.length = features.shape[0], length or features.shape[1]

    def load(self):
        return self.features


def test_in_memory_videos_are_still_checked_once(runner):
    bad = videos([4])["v0"]
    bad[2, 3, 1] = np.nan
    spy = _Spy(runner)
    with pytest.raises(InputError, match=r"video 'bad': nan at crop 2, snippet 3, dim 1; expected finite"):
        Scorer(spy).score({"bad": bad})
    with pytest.raises(InputError, match=r"video 'ints': dtype int64; expected float32 features"):
        Scorer(spy).score({"ints": np.ones((TOY_CROPS, 4, TOY_D), np.int64)})
    assert spy.calls == []                                         # nothing reached the runner
    # Another library's source is checked on load too (values, and the shape it announced)...
    out = list(Scorer(spy).iter_results([_Foreign("f", bad), _Foreign("g", videos([3])["v0"][:, :2], length=3)]))
    fails = {r.name: r.message for r in out if isinstance(r, VideoFailure)}
    assert "nan at crop 2, snippet 3" in fails["f"]
    assert "shape (3, 2, 8); expected (C, T, D) = (3, 3, 8) as announced" in fails["g"]
    # ... and a D announced against the model's before anything loads.
    x = videos([4], d=5)["v0"]
    with pytest.raises(InputError, match=r"video 'd5': D = 5; the model expects D = 8"):
        Scorer(spy).score({"d5": x})
    assert spy.calls == []
    # float64 in memory is accepted and converted once.
    good = videos([4])["v0"]
    r = Scorer(runner).score({"f64": good.astype(np.float64)})[0]
    np.testing.assert_allclose(r.anomaly, toy_reference(good)["anomaly"], rtol=1e-5, atol=1e-6)


def test_a_file_rewritten_after_collection_fails_naming_it(runner, tmp_path):
    from bnwvad.runtime.inputs import collect_videos

    vids = videos([6, 5])
    for name, v in vids.items():
        for k in range(TOY_CROPS):
            np.save(tmp_path / f"{name}__{k}.npy", v[k])
    found, failures = collect_videos([tmp_path], feature_dim=TOY_D, crops_hint=TOY_CROPS)
    assert not failures and [v.feature_dim for v in found] == [TOY_D, TOY_D]
    np.save(tmp_path / "v1__2.npy", vids["v1"][2, :4])                   # T 5 -> 4 meanwhile
    out = list(Scorer(runner).iter_results(found))
    fails = {r.name: r.message for r in out if isinstance(r, VideoFailure)}
    assert list(fails) == ["v1"]
    assert fails["v1"].startswith(f"{tmp_path / 'v1__2.npy'}: shape (4, 8) on load, but (5,) when video "
                                  f"'v1' was collected")


def test_duplicate_names_are_refused(runner):
    v = videos([4])["v0"]
    with pytest.raises(InputError, match="occur more than once"):
        list(Scorer(runner).iter_results([ArraySource("a", v), ArraySource("a", v)]))


# -- the real model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def xd_runner(xd_onnx):
    return load_runner(xd_onnx, "ort-cpu")


def test_real_model_batched_equals_one_at_a_time(xd_runner, reference_dir):
    ref = np.load(reference_dir / "infer_xd_5crop_T137.npz")
    base = ref["features"]                                         # (5, 137, 1024)
    vids = {"full": base, "a": base[:, :40], "b": base[:, 50:53], "c": base[:, 7:8],
            "d": base[:, 60:97][:, ::-1].copy()}
    batched = Scorer(xd_runner, min_fill=0.0).score(vids)
    for r in batched:
        alone = Scorer(xd_runner, max_batch=1).score({r.name: vids[r.name]})[0]
        for k in ("score", "dfm", "anomaly"):
            err, ok = check("padding", getattr(r, k), getattr(alone, k))
            assert ok, (r.name, k, err)
    np.testing.assert_allclose(batched[0].anomaly, ref["anomaly_crop_mean"], rtol=1e-4,
                               atol=1e-4 * np.abs(ref["anomaly_crop_mean"]).max())


def test_real_model_crop_chunks_equal_the_whole(xd_runner, reference_dir):
    base = np.load(reference_dir / "infer_xd_5crop_T137.npz")["features"]
    whole = Scorer(xd_runner).score({"v": base})[0]
    split = Scorer(xd_runner, call_budget=estimate_bytes(2, 137, xd_runner.meta)).score({"v": base})[0]
    assert split.calls == 3
    for k in ("score", "dfm", "anomaly"):
        assert check("padding", getattr(split, k), getattr(whole, k))[1]


def test_max_rows_caps_a_call_but_never_splits_a_video(runner):
    plan = plan_calls(LENGTHS, [3] * len(LENGTHS), runner.meta, budget=1 << 40, max_batch=32,
                      min_fill=0.0, max_rows=100)
    for call in plan.calls:
        assert len(call.videos) == 1 or len(call.videos) * 3 * call.length <= 100
    assert sorted(i for c in plan.calls for i in c.videos) == list(range(len(LENGTHS)))
    assert Scorer(runner).max_rows == 1024 and Scorer(runner, max_rows=None).max_rows is None


# -- the budget bounds the process (#10) ----------------------------------------------------------
def test_a_given_budget_bounds_the_process_baseline_reserve_and_arena_counted(runner, monkeypatch):
    import math

    from bnwvad.runtime import memory, scoring
    from bnwvad.runtime.memory import MemoryBudget
    from bnwvad.runtime.runners import ARENA_HELD, ARENA_PEAK, PLAIN_PEAK, PLAIN_SESSION_BYTES

    monkeypatch.setattr(memory, "process_rss", lambda: 100 << 20)
    monkeypatch.setattr(scoring, "process_rss", lambda: 100 << 20)
    s = Scorer(runner, memory_budget=2 << 30)
    assert isinstance(s.budget, MemoryBudget) and s.memory_budget == 2 << 30 and s.budget.given == 2 << 30
    assert s.baseline == 100 << 20
    assert s.reserve == scoring.SAFETY_BYTES + ARENA_HELD + PLAIN_SESSION_BYTES == runner.reserve_bytes + (64 << 20)
    assert s.call_budget == (2 << 30) - s.baseline - s.reserve
    est = estimate_bytes(1, 40, runner.meta)
    assert s.call_bytes(1, 40) == math.ceil(est * ARENA_PEAK)
    assert s.call_bytes(1, 40, arena=False) == math.ceil(est * PLAIN_PEAK)
    # Derived: this process's RSS plus half of what is free under the tightest limit, named.
    cg = memory.Limit("cgroup v1 memory.limit_in_bytes (/x)", 1 << 30, 3 << 29)
    monkeypatch.setattr(memory, "cgroup_limits", lambda *a: [cg])
    d = Scorer(runner)
    assert d.memory_budget == (100 << 20) + (1 << 29) and "cgroup v1 memory.limit_in_bytes (/x)" in d.budget.describe()
    # A given budget over that limit is capped at it (the kernel would kill past it).
    g = Scorer(runner, memory_budget=8 << 30)
    assert g.memory_budget == (100 << 20) + (1 << 30) and g.budget.capped and "capped" in g.budget.describe()
    with pytest.raises(ValueError, match="not both"):
        Scorer(runner, memory_budget=1 << 30, call_budget=1 << 20)


def test_a_crop_that_fits_only_without_the_arena_runs_on_the_arena_free_session(runner):
    vids = videos([40, 12])
    free = Scorer(runner, min_fill=0.0).score(vids)
    held = TOY_CROPS * 40 * TOY_D * 4          # a chunked video's features, held across its calls
    probe = Scorer(runner, memory_budget=1 << 30, baseline=0, reserve=0)
    budget = probe.call_bytes(1, 40, arena=False) + held
    assert probe.call_bytes(1, 40) + held > budget                 # with the arena: not even one crop
    spy = _Spy(runner)
    s = Scorer(spy, memory_budget=budget, baseline=0, reserve=0, min_fill=0.0)
    assert s.call_budget == budget
    plan = s.plan([40, 12], [TOY_CROPS, TOY_CROPS])
    assert [c.arena for c in plan.calls if c.length == 40] == [False] * TOY_CROPS
    assert all(c.peak <= budget for c in plan.calls)
    got = s.score(vids)
    assert s.stats["plain_calls"] == TOY_CROPS and {"check": False, "arena": False} in spy.calls
    assert runner._plain is not None and not runner._plain.get_session_options().enable_cpu_mem_arena
    for a, b in zip(free, got):
        np.testing.assert_allclose(b.anomaly, a.anomaly, rtol=1e-6, atol=1e-7)


def test_a_crop_over_the_process_budget_fails_naming_the_budget_and_its_source(runner, monkeypatch):
    from bnwvad.runtime import memory

    monkeypatch.setattr(memory, "cgroup_limits",
                        lambda *a: [memory.Limit("cgroup v2 memory.max (/sys/fs/cgroup/box)", 1 << 20, 1 << 30)])
    monkeypatch.setattr(memory, "process_rss", lambda: 0)
    s = Scorer(runner, baseline=0, reserve=1000)            # derived: half of 1 MiB, from the cgroup
    need = s.call_bytes(1, 400, arena=False) + TOY_CROPS * 400 * TOY_D * 4
    assert need > s.call_budget
    out = list(s.iter_results([ArraySource("long", videos([400])["v0"]), ArraySource("ok", videos([5])["v0"])]))
    (fail,) = [r for r in out if isinstance(r, VideoFailure)]
    assert fail.name == "long" and isinstance(fail.error, MemoryBudgetError)
    msg = fail.message
    assert f"({need} bytes) to score even one crop" in msg and "cgroup v2 memory.max (/sys/fs/cgroup/box)" in msg
    assert "raise the budget (--memory-budget / memory_budget=) to at least" in msg and "split the video" in msg
    assert fail.error.needed == need + 1000 and fail.error.budget == s.memory_budget
    assert [r.name for r in out if not isinstance(r, VideoFailure)] == ["ok"]


class _RecordingSession:
    def __init__(self, session):
        self._s, self.options = session, []

    def run(self, names, feed, options=None):
        self.options.append(options)
        return self._s.run(names, feed, options)

    def __getattr__(self, name):
        return getattr(self._s, name)


def test_large_calls_shrink_the_arena_small_ones_keep_it(toy_onnx):
    from bnwvad.runtime.runners import SHRINK_ABOVE

    r = load_runner(toy_onnx, "ort-cpu", threads=1)
    r.session = rec = _RecordingSession(r.session)
    small = np.zeros((1, TOY_CROPS, 20, TOY_D), np.float32)
    t = 2400
    assert estimate_bytes(1, t, r.meta) > SHRINK_ABOVE > estimate_bytes(TOY_CROPS, 20, r.meta)
    r.run(small, np.array([20]))
    r.run(np.zeros((1, 1, t, TOY_D), np.float32), np.array([t]), check=False)
    assert rec.options[0] is None
    assert rec.options[1].get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    off = load_runner(toy_onnx, "ort-cpu", threads=1, arena=False)
    assert not off.can_drop_arena and off.reserve_bytes == 0 and off.peak_bytes(1000) == 1050
