"""The JSON lines bnwvad-stream writes (bnwvad.runtime.stream_cli): the header that opens every
run, a line per final snippet and per event start / end, to stdout or appended to an --output
file, flushed one by one; and the check that an --output file's last run was this model's.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from pathlib import Path

import numpy as np

STREAM_FORMAT = "bnwvad-stream"
STREAM_FORMAT_VERSION = 1


class _OutputClosed(Exception):
    pass


class _Lines:
    """JSON lines to stdout or appended to a file, flushed one by one."""

    def __init__(self, path: Path | None):
        self.path = path
        self.created = False
        if path is None:
            self.f = sys.stdout
        else:
            self.created = not path.exists()
            self.f = open(path, "a", encoding="utf-8")
        self.lines = 0

    def write(self, obj: dict) -> None:
        try:
            self.f.write(json.dumps(obj, separators=(", ", ": ")) + "\n")
            self.f.flush()
        except (BrokenPipeError, ValueError, OSError) as e:
            raise _OutputClosed(str(e) or type(e).__name__) from None
        self.lines += 1

    def close(self) -> None:
        if self.path is not None:
            self.f.close()

    def remove_if_unused(self) -> None:
        """Before the stream started: take back a file this run created and left empty."""
        self.close()
        if self.path is not None and self.created and self.lines == 0:
            try:
                if self.path.stat().st_size == 0:
                    self.path.unlink()
            except OSError:
                pass


def _last_header(path: Path) -> dict | None:
    """The header object of the last run appended to `path`, None when it holds none."""
    last = None
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b'{"stream"'):
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(doc, dict) and isinstance(doc.get("stream"), dict):
                        last = doc["stream"]
    except OSError:
        return None
    return last


def _append_refusal(output: Path, identity) -> str | None:
    """Why this run may not be appended to the non-empty --output file (its lines would mix with
    another model's, or with lines of unknown origin), or None when it may."""
    prev = _last_header(output)
    if prev is None:
        return (f"--output {output}: not empty and holds no bnwvad-stream header line, so the lines of "
                f"this run would mix with lines of unknown origin. Fix: a new --output, or "
                f"--append-other-model to append anyway")
    if (prev.get("weights_digest"), prev.get("precision")) != (identity.digest, identity.precision):
        return (f"--output {output}: its last run was written by another model (weights "
                f"{prev.get('weights_digest')}, {prev.get('precision')}, model {prev.get('model')}); this "
                f"model is {identity.describe()}. Fix: a new --output, or --append-other-model")
    return None


def _header(*, model, identity, runner, group, window, lookahead, step, fps, threshold, calibration,
            min_event_snippets, max_gap, source, reader, extraction, video) -> dict:
    """The first line of every run: {"stream": {...}} (the model, W / L / S, the threshold and where it
    comes from, the source; a video source adds its "extractor" and "video" records)."""
    meta = runner.meta
    return {"stream": {
        "format": STREAM_FORMAT, "format_version": STREAM_FORMAT_VERSION,
        "model": str(model), "weights_digest": identity.digest, "digest_of": identity.digest_of,
        "precision": identity.precision, "preset": meta.preset, "backend": runner.backend,
        "window": window, "lookahead": lookahead, "step": step, "delay_snippets": group.delay,
        "crops": group.crops, "frames_per_snippet": meta.frames_per_snippet, "fps": fps,
        "threshold": threshold,
        "threshold_source": None if threshold is None else ("calibrated" if calibration else "given"),
        "calibration": calibration.to_dict() if calibration else None,
        "min_event_snippets": min_event_snippets, "max_gap": max_gap,
        "source": "-" if source == "-" else str(source),
        **(_video_records(reader, extraction, video) if reader is not None else {}),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}}


def _video_records(reader, extraction, video) -> dict:
    """The header's "extractor" (path, weights digest, precision, ...) and "video" records."""
    info = reader.info
    return {"extractor": extraction["record"],
            "video": {"source": reader.source, "url": reader.url, "fps": reader.effective_fps,
                      "declared_fps": info.fps, "resampled_fps": reader.fps, "width": info.width,
                      "height": info.height, "codec": info.codec, "declared_frames": info.frames,
                      "options": video["options"]}}


def _f32(x) -> float:
    """A float32 as the shortest decimal that reads back to it."""
    return float(str(np.float32(x)))


def _snippet_line(r) -> dict:
    return {"snippet": int(r["snippet"]), "score": _f32(r["score"]), "dfm": _f32(r["dfm"]),
            "anomaly": _f32(r["anomaly"]), "latency_ms": round(float(r["latency_ms"]), 3)}


def _event_line(u) -> dict:
    line = {"event": u.kind, "snippet": int(u.snippet), "frame": int(u.frame),
            "seconds": None if u.seconds is None else round(float(u.seconds), 3),
            "start_snippet": int(u.start_snippet), "peak": _f32(u.peak), "peak_snippet": int(u.peak_snippet),
            "at": int(u.at)}
    if u.kind == "end" and u.event is not None:
        line["snippets"] = int(u.event.snippets)
        line["start_s"] = None if u.event.start_s is None else round(float(u.event.start_s), 3)
        line["end_s"] = None if u.event.end_s is None else round(float(u.event.end_s), 3)
    return line


def _silence_stdout() -> None:
    """After a broken pipe, let the interpreter's final flush of stdout go nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
