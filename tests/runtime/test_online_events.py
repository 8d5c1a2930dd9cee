"""OnlineEvents: starts as soon as known, ends when closed, equal to the offline events."""
import numpy as np
import pytest

from bnwvad.runtime.events import find_events
from bnwvad.runtime.online_events import EventUpdate, OnlineEvents, find_events_merged


def run_online(scores, threshold, **kw):
    ev = OnlineEvents(threshold, **kw)
    updates = []
    for t, v in enumerate(scores):
        updates += [(t, u) for u in ev.feed(t, v)]
    updates += [(len(scores), u) for u in ev.close()]
    return ev, updates


def random_scores(rng, t):
    # Blocky sequences (runs and gaps of every length) plus noise, some exact threshold hits.
    base = np.repeat(rng.random(t // 3 + 1), rng.integers(1, 5, size=t // 3 + 1))[:t]
    s = np.round(base + 0.05 * rng.normal(size=base.size), 2)
    return s.astype(np.float32)


@pytest.mark.parametrize("min_snippets", [1, 2, 4])
def test_closed_events_equal_find_events_without_gaps(min_snippets):
    rng = np.random.default_rng(min_snippets)
    for trial in range(60):
        s = random_scores(rng, int(rng.integers(1, 80)))
        thr = float(np.round(rng.uniform(0.2, 0.8), 2))
        fps = [None, 24.0, 30.0][trial % 3]
        ev, updates = run_online(s, thr, min_snippets=min_snippets, max_gap=0, fps=fps)
        offline = find_events(s, thr, min_snippets=min_snippets, fps=fps)
        assert ev.events == offline
        ends = [u.event for _, u in updates if u.kind == "end"]
        assert ends == offline
        assert [u.snippet for _, u in updates if u.kind == "start"] == [e.start_snippet for e in offline]


@pytest.mark.parametrize("max_gap", [1, 2, 5])
@pytest.mark.parametrize("min_snippets", [1, 3])
def test_closed_events_equal_the_offline_merge(max_gap, min_snippets):
    rng = np.random.default_rng(10 * max_gap + min_snippets)
    for _ in range(60):
        s = random_scores(rng, int(rng.integers(1, 80)))
        thr = float(np.round(rng.uniform(0.2, 0.8), 2))
        ev, _ = run_online(s, thr, min_snippets=min_snippets, max_gap=max_gap, fps=25.0)
        assert ev.events == find_events_merged(s, thr, min_snippets=min_snippets, max_gap=max_gap, fps=25.0)


def test_offline_merge_is_find_events_at_gap_zero():
    rng = np.random.default_rng(3)
    for _ in range(30):
        s = random_scores(rng, 60)
        assert find_events_merged(s, 0.5, min_snippets=2) == find_events(s, 0.5, min_snippets=2)


def test_documented_merging():
    s = np.array([0, 5, 6, 0, 7, 0, 0, 4, 0, 0, 0, 3], np.float32)     # threshold 1
    runs = [(e.start_snippet, e.end_snippet) for e in find_events(s, 1.0)]
    assert runs == [(1, 3), (4, 5), (7, 8), (11, 12)]
    merged = find_events_merged(s, 1.0, max_gap=2)
    assert [(e.start_snippet, e.end_snippet, e.peak, e.peak_snippet) for e in merged] == [(1, 8, 7.0, 4),
                                                                                       (11, 12, 3.0, 11)]
    # A run shorter than min_snippets starts nothing, even close before a long one; after an
    # event has started, short runs within max_gap extend it.
    s2 = np.array([5, 0, 5, 5, 0, 5, 0, 0, 5], np.float32)
    got = find_events_merged(s2, 1.0, min_snippets=2, max_gap=1)
    assert [(e.start_snippet, e.end_snippet) for e in got] == [(2, 6)]
    ev, _ = run_online(s2, 1.0, min_snippets=2, max_gap=1, fps=None)
    assert ev.events == got
    # The equal-to-threshold value is below (strictly above counts).
    assert find_events_merged(np.array([2, 1, 2], np.float32), 1.0) == find_events(np.array([2, 1, 2]), 1.0)


def test_start_and_end_are_emitted_as_soon_as_known():
    s = [0, 2, 3, 2, 0, 2, 0, 0, 0, 2, 2]
    _, updates = run_online(s, 1.0, min_snippets=2, max_gap=1, frames_per_snippet=16, fps=32.0)
    kinds = [(at, u.kind, u.snippet) for at, u in updates]
    # start of [1..]: known at snippet 2 (the 2nd above); the gap at 4 is merged (5 is above);
    # 6, 7 close it at 7 (more than max_gap = 1 below); end = last above = 5. The last run
    # starts at 9, known at 10, closed by close().
    assert kinds == [(2, "start", 1), (7, "end", 5), (10, "start", 9), (11, "end", 10)]
    start, end = updates[0][1], updates[1][1]
    assert isinstance(start, EventUpdate) and start.at == 2
    assert (start.frame, start.seconds, start.peak, start.peak_snippet) == (16, 0.5, 3.0, 2)
    assert (end.frame, end.seconds, end.peak, end.peak_snippet, end.start_snippet) == (96, 3.0, 3.0, 2, 1)
    assert end.event.start_snippet == 1 and end.event.end_snippet == 6 and end.at == 7
    assert "event" not in start.to_dict() and end.to_dict()["event"]["end_frame"] == 96


def test_extend_takes_stream_results_and_pairs():
    from bnwvad.runtime.stream import RESULT_DTYPE

    rec = np.zeros(6, RESULT_DTYPE)
    rec["snippet"] = np.arange(6)
    rec["anomaly"] = [0, 2, 2, 0, 0, 2]
    ev = OnlineEvents(1.0)
    got = ev.extend(rec[:3]) + ev.extend([(3, 0.0), (4, 0.0), (5, 2.0)]) + ev.close()
    assert [(u.kind, u.snippet) for u in got] == [("start", 1), ("end", 2), ("start", 5), ("end", 5)]
    assert ev.close() == []


def test_bad_feeds_are_refused():
    ev = OnlineEvents(1.0)
    ev.feed(5, 0.0)                                   # a stream may start at any index
    with pytest.raises(ValueError, match="snippet 7 fed after snippet 5; expected 6"):
        ev.feed(7, 0.0)
    with pytest.raises(ValueError, match="expected 6"):
        ev.feed(5, 0.0)
    with pytest.raises(ValueError, match="snippet 6: score nan"):
        ev.feed(6, float("nan"))
    ev.feed(6, 2.0)
    ev.close()
    with pytest.raises(ValueError, match="after close"):
        ev.feed(7, 0.0)
    for kw in ({"threshold": float("inf")}, {"threshold": 1, "min_snippets": 0},
               {"threshold": 1, "max_gap": -1}, {"threshold": 1, "fps": 0}):
        with pytest.raises(ValueError):
            OnlineEvents(**kw)
