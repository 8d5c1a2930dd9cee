"""bnwvad-infer's output folder: what a committed run has written, its summary.json, results.npz
and events.json (layouts: bnwvad.runtime.io).

Shared by the single-process run (bnwvad.runtime.cli) and the Ray run (bnwvad.runtime.ray_batch),
so both write the same files from the same per-video results.
"""
from __future__ import annotations

import click

from .options import error as _error, fail as _fail, warn as _warn  # noqa: F401 (cli's names)


class _Outputs:
    """What a committed run has written, and its summary.json."""

    def __init__(self, out, model, runner, identity, threshold, calibration, fps, budget_text, scorer):
        self.out, self.model, self.runner, self.identity = out, model, runner, identity
        self.threshold, self.calibration, self.fps = threshold, calibration, fps
        self.budget_text, self.scorer = budget_text, scorer
        self.results: dict = {}            # video -> VideoResult, in completion order
        self.files: dict[str, list[str]] = {}   # video -> its files, relative to out
        self.events: dict = {}
        self.failures: dict[str, str] = {}
        self.pending: list[str] = []       # videos collected but not finished (interrupted)
        self.shared: list[str] = []        # results.npz, events.json
        self.extractor: dict | None = None # with video inputs: summary.json's "extractor"
        self.sources: dict[str, dict] = {} # video input -> its source and extraction record
        self.video_fps: dict[str, float] = {}   # video input -> its frame rate (event times)
        # Files the run may still write, listed while it runs (the Ray run: its workers write
        # each video's files), so a run killed meanwhile leaves a summary that accounts for them.
        self.planned: list[str] = []

    def save_summary(self, status: str, order=(), seconds: float | None = None,
                     signal: str | None = None) -> None:
        from .io import RUN_FORMAT, RUN_FORMAT_VERSION, SUMMARY_FILE, save_json

        meta, runner = self.runner.meta, self.runner
        ordered = [self.results[n] for n in order if n in self.results]
        files = [f for r in ordered for f in self.files[r.name]] + self.shared
        files = list(dict.fromkeys(files + self.planned + [SUMMARY_FILE]))
        summary = {
            "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
            "status": status, "interrupted": status == "interrupted",
            **({"signal": signal} if signal else {}),
            "model": {"path": str(self.model), "weights_digest": self.identity.digest,
                      "digest_of": self.identity.digest_of, "precision": self.identity.precision,
                      "backend": runner.backend, "requested": runner.requested,
                      "providers": runner.providers, "fallback": runner.fallback,
                      "metadata": meta.to_dict()},
            **({"extractor": self.extractor} if self.extractor is not None else {}),
            "files": files,
            "videos": {r.name: {"snippets": r.length, "frames": r.length * r.frames_per_snippet,
                                "crops": r.crops, "max_anomaly": float(r.anomaly.max()),
                                "mean_anomaly": float(r.anomaly.mean()),
                                "events": len(self.events.get(r.name, ())),
                                **({"video": self.sources[r.name]} if r.name in self.sources else {}),
                                "files": self.files[r.name]} for r in ordered},
            "failures": self.failures,
            "not_scored": self.pending,
            "threshold": self.threshold,
            "memory_budget": self.budget_text,
            "calls": self.scorer.stats["calls"],
            "seconds": None if seconds is None else round(seconds, 3),
        }
        save_json(self.out / SUMMARY_FILE, summary)

    def write_video(self, r, *, min_event_snippets: int, plot: bool) -> None:
        from .io import save_npy

        save_npy(self.out / f"{r.name}.npy", r.anomaly)
        self.add_video(r, [f"{r.name}.npy"], min_event_snippets=min_event_snippets, plot=plot)

    def add_video(self, r, files: list[str], *, min_event_snippets: int, plot: bool = False) -> None:
        """Record a video whose files (relative to out; its <video>.npy first) are written: its
        events at the threshold, and its plot with `plot`."""
        from .events import find_events

        files = list(files)
        self.results[r.name] = r           # recorded as each file lands: nothing unlisted on an error
        self.files[r.name] = files
        fps = self.video_fps.get(r.name) or self.fps
        if self.threshold is not None:
            self.events[r.name] = find_events(r.anomaly, self.threshold,
                                              frames_per_snippet=r.frames_per_snippet, fps=fps,
                                              min_snippets=min_event_snippets)
        if plot:
            from .plot import plot_video

            png = f"plots/{r.name}.png"
            plot_video(self.out / png, r.name, r.anomaly, frames_per_snippet=r.frames_per_snippet,
                       fps=fps, threshold=self.threshold, events=self.events.get(r.name, ()))
            files.append(png)

    def finish(self, order, status: str, seconds: float, signal: str | None = None) -> list:
        from .io import RESULTS_FILE, save_json, save_results

        ordered = [self.results[n] for n in order if n in self.results]
        save_results(self.out / RESULTS_FILE, ordered, self.runner.meta.frames_per_snippet)
        self.shared = [RESULTS_FILE]
        if self.threshold is not None:
            cal = self.calibration
            save_json(self.out / "events.json", {
                "threshold": self.threshold, "threshold_source": "calibrated" if cal else "given",
                "calibration": cal.to_dict() if cal else None,
                "fps": self.fps, "frames_per_snippet": self.runner.meta.frames_per_snippet,
                **({"video_fps": {n: f for n, f in self.video_fps.items() if n in self.results}}
                   if self.video_fps else {}),
                "videos": {r.name: [e.to_dict() for e in self.events.get(r.name, ())] for r in ordered}})
            self.shared.append("events.json")
        self.save_summary(status, order, seconds, signal)
        return ordered


def _video_failed(run: "_Outputs", r, scorer) -> None:
    """Record and print a video's failure. A whole video over the memory budget is never
    switched to windows silently: the message says which --window would fit."""
    from .errors import MemoryBudgetError

    msg = r.message if r.name in r.message else f"{r.name}: {r.message}"
    if isinstance(r.error, MemoryBudgetError) and getattr(scorer, "window", None) is None:
        from .stream import largest_window

        w = largest_window(scorer.meta, scorer.call_budget, crops=1)
        if w > 0:
            msg += (f". Or score it in windows, in memory bounded by the window instead of its length: "
                    f"--window {min(w, 256)} (the largest that fits this budget is {w})")
    run.failures[r.name] = msg
    _fail(msg)


def _report(run: _Outputs, ordered, quiet: bool) -> None:
    if quiet or not ordered:
        return
    threshold = run.threshold
    width = min(60, max(len(r.name) for r in ordered))
    click.echo(f"{'video':<{width}} {'T':>6} {'crops':>5} {'max':>9} {'mean':>9}"
               + (f" {'events':>6}" if threshold is not None else ""))
    for r in ordered:
        name = r.name if len(r.name) <= width else r.name[: width - 3] + "..."
        line = f"{name:<{width}} {r.length:>6} {r.crops:>5} {r.anomaly.max():>9.4f} {r.anomaly.mean():>9.4f}"
        if threshold is not None:
            line += f" {len(run.events.get(r.name, ())):>6}"
        click.echo(line)
