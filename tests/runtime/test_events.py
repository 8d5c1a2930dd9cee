"""Events above a threshold and threshold calibration on normal videos."""
import numpy as np
import pytest

from bnwvad.runtime import calibrate_threshold, find_events


def test_events_are_maximal_runs_above_the_threshold():
    s = np.array([0.9, 0.1, 0.6, 0.8, 0.5, 0.2, 0.7], np.float32)
    ev = find_events(s, 0.5, frames_per_snippet=16, fps=25)
    assert [(e.start_snippet, e.end_snippet) for e in ev] == [(0, 1), (2, 4), (6, 7)]
    e = ev[1]
    assert (e.start_frame, e.end_frame, e.peak_snippet, e.peak_frame) == (32, 64, 3, 48)
    assert e.start_s == pytest.approx(32 / 25) and e.end_s == pytest.approx(64 / 25)
    assert e.peak == pytest.approx(0.8)                           # 0.5 is not above 0.5
    assert [e.snippets for e in find_events(s, 0.5, min_snippets=2)] == [2]
    assert find_events(s, 0.95) == [] and find_events(s, 0.5, fps=None)[0].start_s is None
    with pytest.raises(ValueError, match="fps = 0"):
        find_events(s, 0.5, fps=0)


def test_calibration_bounds_the_false_alarm_rate():
    rng = np.random.default_rng(0)
    normal = [rng.random(n) for n in (100, 37, 250)]
    cal = calibrate_threshold(normal, 0.01)
    allv = np.concatenate(normal)
    assert cal.snippets == allv.size and cal.videos == 3
    assert np.mean(allv > cal.threshold) == pytest.approx(cal.achieved_rate) and cal.achieved_rate <= 0.01
    assert calibrate_threshold(normal, 0.0).threshold == pytest.approx(allv.max())
    with pytest.raises(ValueError, match="at least one normal video"):
        calibrate_threshold([], 0.01)
    with pytest.raises(ValueError, match="false_alarm_rate = 1.5"):
        calibrate_threshold(normal, 1.5)
