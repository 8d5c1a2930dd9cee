"""Anomalous events of a stream, reported as they happen.

`OnlineEvents` is fed (snippet index, score) in order, e.g. the results of a StreamScorer,
and emits

- an event's START as soon as it is known: after `min_snippets` consecutive snippets strictly
  above the threshold; the start is the first of them;
- its END when it closes: after more than `max_gap` consecutive snippets at or below the
  threshold; the end is the last snippet above it. Gaps of at most `max_gap` snippets at or
  below the threshold inside an event are merged into it;
- at `close()` (end of the stream), the END of an event still open.

The closed events are exactly `find_events_merged` of the whole score sequence, and with
max_gap = 0 exactly `bnwvad.runtime.events.find_events` (runs strictly above the threshold, at
least min_snippets long). Merging is forward only: a run shorter than min_snippets is not an
event by itself, and joins an event only when it follows one within max_gap snippets (once
an event has started, every run that follows within max_gap extends it).

    events = OnlineEvents(threshold=21.0, min_snippets=3, max_gap=2, fps=24)
    for r in scorer.push(chunk):
        for e in events.feed(r["snippet"], r["anomaly"]):
            print(e.kind, e.snippet, e.seconds, e.peak)
    events.close()

numpy only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterable

import numpy as np

from .events import Event, find_events


@dataclass(frozen=True)
class EventUpdate:
    """One thing that happened to an event.

    kind "start": `snippet` is the event's first snippet, `frame` its first frame, `seconds`
    frame / fps; `peak` / `peak_snippet` the highest score so far (over its first
    min_snippets snippets).
    kind "end": `snippet` is the event's LAST snippet above the threshold (inclusive), `frame`
    the first frame after the event (exclusive, as Event.end_frame), `seconds` frame / fps
    (when the event ends); `peak` / `peak_snippet` the event's highest score and where; `event`
    the closed Event, as find_events reports it.
    `at` is the snippet whose score made the update known (its delay: at - snippet).
    """

    kind: str
    snippet: int
    frame: int
    seconds: float | None
    peak: float
    peak_snippet: int
    start_snippet: int
    at: int
    event: Event | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.event is None:
            d.pop("event")
        return d


class OnlineEvents:
    """Events of one stream from its snippet scores, fed in order (module docstring).

    threshold: a snippet is above when its score is strictly greater. min_snippets >= 1,
    max_gap >= 0 (snippets), frames_per_snippet (16), fps (None: seconds are None).
    `feed` / `extend` / `close` return the EventUpdates they caused; `events` holds the closed
    events (Event), `open_event` the start of the one in progress (or None).
    """

    def __init__(self, threshold: float, min_snippets: int = 1, max_gap: int = 0,
                 frames_per_snippet: int = 16, fps: float | None = 30.0):
        threshold = float(threshold)
        if not np.isfinite(threshold):
            raise ValueError(f"threshold = {threshold}; expected a finite number")
        for name, value, low in (("min_snippets", min_snippets, 1), ("max_gap", max_gap, 0),
                                 ("frames_per_snippet", frames_per_snippet, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} = {value!r}; expected an integer >= {low}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps = {fps}; expected a positive frame rate, or None")
        self.threshold = threshold
        self.min_snippets = int(min_snippets)
        self.max_gap = int(max_gap)
        self.frames_per_snippet = int(frames_per_snippet)
        self.fps = None if fps is None else float(fps)
        self.events: list[Event] = []
        self.open_event: EventUpdate | None = None
        self.closed = False
        self._next: int | None = None           # the snippet expected next
        # Candidate run (no event open): first snippet, length, peak.
        self._run_start: int | None = None
        self._run_len = 0
        # Open event (or candidate): peak, where; last above snippet; below-threshold gap.
        self._peak = -np.inf
        self._peak_at = -1
        self._last_above = -1
        self._gap = 0

    # -- feeding ------------------------------------------------------------------
    def feed(self, snippet: int, score: float) -> list[EventUpdate]:
        """The score of the next snippet -> the updates it causes (none, a start, an end)."""
        if self.closed:
            raise ValueError("OnlineEvents: fed after close(); start a new one for a new stream")
        if isinstance(snippet, bool) or not isinstance(snippet, (int, np.integer)) or snippet < 0:
            raise ValueError(f"snippet index {snippet!r}; expected an integer >= 0")
        t = int(snippet)
        if self._next is not None and t != self._next:
            raise ValueError(f"snippet {t} fed after snippet {self._next - 1}; expected {self._next} "
                             f"(snippets in order, none skipped or repeated)")
        v = float(score)
        if not np.isfinite(v):
            raise ValueError(f"snippet {t}: score {v}; expected a finite number")
        self._next = t + 1
        above = v > self.threshold
        if self.open_event is not None:
            if above:
                self._gap = 0
                self._last_above = t
                if v > self._peak:
                    self._peak, self._peak_at = v, t
                return []
            self._gap += 1
            if self._gap > self.max_gap:
                return [self._end(t)]
            return []
        if not above:
            self._run_start = None
            return []
        if self._run_start is None:
            self._run_start, self._run_len, self._peak, self._peak_at = t, 0, -np.inf, -1
        self._run_len += 1
        self._last_above = t
        if v > self._peak:
            self._peak, self._peak_at = v, t
        if self._run_len < self.min_snippets:
            return []
        start = self._run_start
        f = start * self.frames_per_snippet
        self.open_event = EventUpdate("start", start, f, self._seconds(f), self._peak, self._peak_at,
                                      start, t)
        self._run_start, self._gap = None, 0
        return [self.open_event]

    def extend(self, results) -> list[EventUpdate]:
        """Feed many: a StreamScorer result array (fields `snippet` and `anomaly`), or
        (snippet, score) pairs."""
        out: list[EventUpdate] = []
        if isinstance(results, np.ndarray) and results.dtype.names:
            pairs: Iterable = zip(results["snippet"].tolist(), results["anomaly"].tolist())
        else:
            pairs = results
        for t, v in pairs:
            out += self.feed(t, v)
        return out

    def close(self) -> list[EventUpdate]:
        """End of the stream: the END of the event still open, if any. Idempotent."""
        if self.closed:
            return []
        self.closed = True
        self._run_start = None
        if self.open_event is None:
            return []
        return [self._end(self._next - 1)]

    # -- internals ----------------------------------------------------------------
    def _seconds(self, frame: int) -> float | None:
        return None if self.fps is None else frame / self.fps

    def _end(self, at: int) -> EventUpdate:
        start, last, fs = self.open_event.snippet, self._last_above, self.frames_per_snippet
        f0, f1 = start * fs, (last + 1) * fs
        ev = Event(start, last + 1, f0, f1, self._seconds(f0), self._seconds(f1), float(self._peak),
                   int(self._peak_at), int(self._peak_at) * fs)
        self.events.append(ev)
        update = EventUpdate("end", last, f1, self._seconds(f1), ev.peak, ev.peak_snippet, start, at, ev)
        self.open_event = None
        self._gap = 0
        self._peak, self._peak_at = -np.inf, -1
        return update


def find_events_merged(scores: np.ndarray, threshold: float, *, frames_per_snippet: int = 16,
                       fps: float | None = None, min_snippets: int = 1, max_gap: int = 0
                       ) -> list[Event]:
    """Offline, the events OnlineEvents reports for the whole sequence `scores` (T,).

    Runs strictly above the threshold (find_events); a run of at least min_snippets starts an
    event, and every run that follows the event's last one within max_gap snippets (a gap of
    at most max_gap at or below the threshold) is merged into it. max_gap = 0 is find_events.
    """
    if isinstance(max_gap, bool) or not isinstance(max_gap, (int, np.integer)) or max_gap < 0:
        raise ValueError(f"max_gap = {max_gap!r}; expected an integer >= 0")
    runs = find_events(scores, threshold, frames_per_snippet=frames_per_snippet, fps=fps, min_snippets=1)
    out: list[Event] = []
    cur: Event | None = None
    for r in runs:
        if cur is not None and r.start_snippet - cur.end_snippet <= max_gap:
            peak = r if r.peak > cur.peak else cur
            cur = replace(cur, end_snippet=r.end_snippet, end_frame=r.end_frame, end_s=r.end_s,
                          peak=peak.peak, peak_snippet=peak.peak_snippet, peak_frame=peak.peak_frame)
            continue
        if cur is not None:
            out.append(cur)
            cur = None
        if r.snippets >= max(1, min_snippets):
            cur = r
    if cur is not None:
        out.append(cur)
    return out


__all__ = ["EventUpdate", "OnlineEvents", "find_events_merged"]
