"""bnwvad-stream: score a live source of snippet features as it arrives, one JSON line per result.

    extractor | bnwvad-stream - --model xd.onnx --window 64 --lookahead 4 --threshold 21
    bnwvad-stream incoming/ --model xd.onnx --window 64 --step 4 --idle-timeout 30 --output cam1.jsonl

SOURCE is `-` (stdin: .npy arrays back to back, each (k, C, D) or (k, D) snippets) or a
DIRECTORY that snippet files arrive in (taken in name order; one .npy of (k, C, D) or (k, D)
per file). Each snippet is scored on a bounded window of its past (--window W) and of its
future (--lookahead L), S snippets per runner call (--step S): bnwvad.runtime.stream.
Memory stays bounded by the window, whatever the stream's length.

Output (stdout, or appended to --output FILE; one JSON object per line, flushed per line):
  {"stream": {"model": ..., "weights_digest": ..., "window": W, ...}}   first line of every run
  {"snippet": i, "score": .., "dfm": .., "anomaly": .., "latency_ms": ..} each final snippet
  {"event": "start" | "end", "snippet": .., ...}                      with --threshold / --calibrate
Progress and errors go to stderr; its first line says the model, the backend, W / L / S, the
delay of a result in snippets and where the threshold comes from.

Directory sources: a file is taken once it is complete (producers write then rename; names
starting with '.' and ending in .tmp are ignored; a .npy whose header or data is still short is
retried at the next poll, and reported as truncated once it stops growing). A file that
arrives with a name before one already taken is reported and skipped (order is the stream's).
A bad snippet file or array (not .npy, wrong D or crops, NaN, non-float dtype) is reported by
name on stderr and skipped; the stream goes on (exit status 1 at the end). On stdin, bytes
that are not a .npy array end the stream (nothing after them can be framed).

Exit status: 0 the source ended (EOF, or --idle-timeout) and every snippet was scored; 1 some
snippet files / arrays were skipped (each named), or the stream stopped on an error; 2 nothing
could run (usage, model, backend, output file, calibration); 130 interrupted (SIGINT / SIGTERM):
every result that was final is written, an open event is closed, the rest is not scored.
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import select
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import click
import numpy as np

from .cli import (EXIT_INTERRUPTED, EXIT_NOTHING_RAN, EXIT_OK, EXIT_SOME_FAILED, _budget, _error, _fail,
                  _load_runner_once)
from .errors import InputError, RuntimeFailure, human_bytes

STREAM_FORMAT = "bnwvad-stream"
STREAM_FORMAT_VERSION = 1
NPY_MAGIC = b"\x93NUMPY"
# A snippet array larger than this is refused without being read (snippets arrive a few at a
# time; a multi-GiB array is a mistake, and buffering it would break the memory bound).
MAX_ARRAY_BYTES = 1 << 30
MAX_HEADER_BYTES = 1 << 20
# A directory file whose header / data is still short is retried until it has not changed for
# this long (or the stream ends): then it is reported as truncated and skipped.
INCOMPLETE_GRACE_S = 5.0

_HELP_EPILOG = """SOURCE: '-' for stdin (.npy arrays back to back, e.g. `extractor | bnwvad-stream -`), or a
directory that snippet files arrive in (name order; each a .npy of (k, C, D) or (k, D)).

\b
Exit status:
  0    the source ended (EOF, --idle-timeout) and every snippet received was scored
  1    some snippet files / arrays were skipped (each named on stderr), or the stream stopped
       on an error after it started
  2    nothing could run: usage, model or backend, output file, calibration, window too large
  130  interrupted (Ctrl-C, SIGTERM): every final result written, an open event closed"""


class _Stop:
    """SIGINT / SIGTERM set a flag (and wake a select() through a pipe); the loop checks it."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}
        self._wakeup_prev = None
        self.rfd: int | None = None
        self._wfd: int | None = None

    def _handler(self, signum, frame):
        if self.signal is None:
            self.signal = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handler)
        try:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._wakeup_prev = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self.rfd, self._wfd = r, w
        except (OSError, ValueError):        # pragma: no cover - no wakeup fd here: polls still check
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self._wfd is not None:
            signal.set_wakeup_fd(self._wakeup_prev if self._wakeup_prev is not None else -1)
            os.close(self._wfd)
            os.close(self.rfd)
            self.rfd = self._wfd = None
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def wait(self, fds: list[int], timeout: float) -> list[int]:
        """select() on `fds` and the wakeup pipe for up to `timeout` s: the fds that are ready."""
        if self:
            return []
        watch = list(fds) + ([self.rfd] if self.rfd is not None else [])
        if not watch:
            time.sleep(min(timeout, 0.05))
            return []
        try:
            ready, _, _ = select.select(watch, [], [], max(0.0, timeout))
        except InterruptedError:            # pragma: no cover - PEP 475 retries; belt and braces
            return []
        if self.rfd is not None and self.rfd in ready:
            try:
                while os.read(self.rfd, 512):
                    pass
            except (BlockingIOError, OSError):
                pass
        return [fd for fd in ready if fd != self.rfd]


# -- .npy framing -------------------------------------------------------------------------------
class _Bad(Exception):
    """A snippet file / array that cannot be used. fatal: a byte stream that cannot be framed
    any further (the rest of stdin is lost)."""

    def __init__(self, message: str, *, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


def _npy_header(buf) -> tuple[int, tuple, bool, np.dtype] | None:
    """(header bytes, shape, fortran_order, dtype) of the .npy array at the start of `buf`;
    None while the header is incomplete; _Bad (fatal) when the bytes are not a .npy header."""
    n = len(buf)
    if n < 8:
        m = min(n, len(NPY_MAGIC))
        if bytes(buf[:m]) != NPY_MAGIC[:m]:
            raise _Bad(_not_npy(bytes(buf[:n])), fatal=True)
        return None
    if bytes(buf[:6]) != NPY_MAGIC:
        raise _Bad(_not_npy(bytes(buf[:8])), fatal=True)
    major = buf[6]
    if major == 1:
        size_bytes = 2
    elif major in (2, 3):
        size_bytes = 4
    else:
        raise _Bad(f"unsupported .npy format version {major}.{buf[7]}", fatal=True)
    if n < 8 + size_bytes:
        return None
    hlen = int.from_bytes(bytes(buf[8:8 + size_bytes]), "little")
    if hlen > MAX_HEADER_BYTES:
        raise _Bad(f"a .npy header of {hlen} bytes; expected a small header (corrupted?)", fatal=True)
    total = 8 + size_bytes + hlen
    if n < total:
        return None
    reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    try:
        shape, fortran, dtype = reader(_header_file(buf, total))
    except Exception as e:     # noqa: BLE001 - untrusted bytes: ValueError, SyntaxError, ...
        raise _Bad(f"not a readable .npy array: corrupted header ({e})", fatal=True) from None
    if dtype.hasobject:
        raise _Bad("holds a pickled object array, which is never loaded (it could run code); expected "
                   "float32 snippets", fatal=True)
    return total, tuple(int(s) for s in shape), bool(fortran), dtype


def _header_file(buf, total: int) -> io.BytesIO:
    """The header as numpy's readers want it: a file positioned after the magic and version."""
    f = io.BytesIO(bytes(buf[:total]))
    f.seek(8)
    return f


def _not_npy(head: bytes) -> str:
    return (f"not a .npy array (starts with {head!r}, not the .npy magic \\x93NUMPY); expected .npy "
            f"snippet arrays (k, C, D) written with numpy.save")


def _data_bytes(shape: tuple, dtype: np.dtype) -> int:
    return int(math.prod(shape)) * int(dtype.itemsize)


def _array(raw: bytes, shape: tuple, fortran: bool, dtype: np.dtype) -> np.ndarray:
    a = np.frombuffer(raw, dtype=dtype, count=int(math.prod(shape)))
    return a.reshape(shape, order="F" if fortran else "C")


def _shape_problem(shape: tuple, dtype: np.dtype) -> str | None:
    """What is wrong with a header's shape / dtype before reading its data (the stream checks
    the rest: crops, D, values)."""
    if len(shape) not in (2, 3):
        return f"array of shape {shape}; expected snippets (k, C, D), or (k, D) for one crop"
    if not np.issubdtype(dtype, np.floating):
        return f"dtype {dtype} (shape {shape}); expected floating-point features (float32)"
    if _data_bytes(shape, dtype) > MAX_ARRAY_BYTES:
        return (f"shape {shape} {dtype} is {human_bytes(_data_bytes(shape, dtype))}, over the "
                f"{human_bytes(MAX_ARRAY_BYTES)} a snippet array may have; expected a few snippets per array")
    return None


# -- sources --------------------------------------------------------------------------------------
# Each source's poll(stop, wait) returns a list of items:
#   ("array", name, ndarray)   ("bad", name, message)   ("end", None, reason)
# and waits up to `wait` seconds (waking up on a signal) when it has nothing.
class StdinSource:
    """.npy arrays back to back on a file descriptor (stdin), framed by their headers: read
    with select() + os.read, so a signal or an idle timeout never waits on a blocked read."""

    def __init__(self, fd: int = 0, label: str = "stdin"):
        self.fd = fd
        self.label = label
        self.buf = bytearray()
        self.offset = 0              # stream offset of buf[0]
        self.count = 0               # arrays framed so far
        self.skip = 0                # bytes of a refused array still to discard
        self.header = None
        self.eof = False
        self.broken = False

    def _name(self) -> str:
        return f"{self.label} array #{self.count} (byte {self.offset})"

    def poll(self, stop: _Stop, wait: float) -> list:
        if self.broken:
            return [("end", None, "unreadable")]
        items: list = []
        if not self.eof and stop.wait([self.fd], wait):
            try:
                chunk = os.read(self.fd, 1 << 20)
            except OSError as e:
                items.append(("bad", self.label, f"cannot be read ({e.strerror or e}); ending the stream"))
                self.broken = True
                return items + [("end", None, "unreadable")]
            if chunk:
                items.append(("data", None, len(chunk)))
                if self.skip:                   # the rest of a refused array: discarded unread
                    cut = min(self.skip, len(chunk))
                    self.skip -= cut
                    self.offset += cut
                    chunk = chunk[cut:]
                self.buf += chunk
            else:
                self.eof = True
        items += self._frame()
        if self.eof and not self.broken:
            if self.buf or self.skip or self.header is not None:
                have = len(self.buf)
                need = (self.header[0] + _data_bytes(self.header[1], self.header[3])
                        if self.header is not None else None)
                items.append(("bad", self._name(), f"the input ended inside this array ({have} bytes"
                              + (f" of {need}" if need else "") + "); expected a complete .npy array"))
                self.buf.clear()
                self.skip = 0
                self.header = None
            items.append(("end", None, "eof"))
        return items

    def _frame(self) -> list:
        out = []
        while not self.broken:
            if self.skip:
                return out
            if self.header is None:
                try:
                    self.header = _npy_header(self.buf)
                except _Bad as e:
                    out.append(("bad", self._name(), f"{e}; the rest of {self.label} cannot be framed as "
                                                     f"arrays: ending the stream"))
                    self.broken = True
                    self.buf.clear()
                    return out
                if self.header is None:
                    return out
            hlen, shape, fortran, dtype = self.header
            need = _data_bytes(shape, dtype)
            problem = _shape_problem(shape, dtype)
            if problem is not None:           # refused from its header: its data is skipped unread
                out.append(("bad", self._name(), problem))
                drop = min(len(self.buf), hlen + need)
                self.skip = hlen + need - drop
                del self.buf[:drop]
                self.offset += drop
                self.count += 1
                self.header = None
                continue
            if len(self.buf) < hlen + need:
                return out
            a = _array(bytes(self.buf[hlen:hlen + need]), shape, fortran, dtype)
            out.append(("array", self._name(), a))
            del self.buf[:hlen + need]
            self.offset += hlen + need
            self.count += 1
            self.header = None
        return out


class DirectorySource:
    """Snippet files arriving in a folder, taken in name order once complete."""

    def __init__(self, folder: Path, poll_s: float):
        self.folder = folder
        self.poll_s = poll_s
        self.last: str | None = None          # the last name taken
        self.seen: set[str] = set()           # names listed by the previous scan (bounded by the folder)
        self.waiting: dict[str, tuple] = {}   # incomplete file -> ((size, mtime), since)
        self.reported: set[str] = set()

    def _scan(self) -> list[str]:
        names = []
        with os.scandir(self.folder) as it:
            for e in it:
                if e.name.startswith(".") or e.name.endswith(".tmp"):
                    continue
                names.append(e.name)
        return sorted(names)

    def poll(self, stop: _Stop, wait: float, *, final: bool = False) -> list:
        """final: the stream ends now; every complete file is taken, and one still short is
        reported as truncated (not waited for)."""
        try:
            names = self._scan()
        except OSError as e:
            return [("bad", str(self.folder), f"cannot be listed ({e.strerror or e}); ending the stream"),
                    ("end", None, "unreadable")]
        items: list = []
        listed = set(names)
        for n in names:
            if self.last is not None and n <= self.last and n not in self.seen and n not in self.reported:
                self.reported.add(n)
                items.append(("bad", str(self.folder / n),
                              f"arrived after {self.last!r} was taken (snippet files are taken in name "
                              f"order); skipped"))
        self.seen = listed
        self.reported &= listed
        for n in (n for n in names if self.last is None or n > self.last):
            kind, payload = self._read(self.folder / n, final)
            if kind == "wait":
                if final:                      # gone between the listing and now
                    continue
                break                          # name order: nothing after it is taken before it
            self.waiting.pop(n, None)
            self.last = n
            items.append((kind, str(self.folder / n), payload))
            if stop:
                break
        if not items:
            stop.wait([], wait)
        return items

    def _read(self, p: Path, final: bool) -> tuple[str, object]:
        """("array", a) | ("bad", message) | ("wait", None): a .npy still being written."""
        try:
            st = os.stat(p)
        except FileNotFoundError:
            if os.path.islink(p):
                return "bad", f"dangling symbolic link (to {os.readlink(p)!r})"
            return "wait", None                # gone between the listing and now
        except OSError as e:
            return "bad", f"cannot be read ({e.strerror or e})"
        if not stat.S_ISREG(st.st_mode):
            what = ("a directory" if stat.S_ISDIR(st.st_mode) else
                    "a FIFO (never opened: reading it would block)" if stat.S_ISFIFO(st.st_mode) else
                    "not a regular file")
            return "bad", f"is {what}; expected a .npy snippet file"
        try:
            with open(p, "rb") as f:
                head = f.read(min(st.st_size, 8 + 4 + MAX_HEADER_BYTES))
                try:
                    h = _npy_header(head)
                except _Bad as e:
                    return "bad", str(e)
                if h is not None:
                    hlen, shape, fortran, dtype = h
                    problem = _shape_problem(shape, dtype)
                    if problem is not None:
                        return "bad", problem
                    need = _data_bytes(shape, dtype)
                    if st.st_size >= hlen + need:
                        f.seek(hlen)
                        raw = f.read(need)
                        if len(raw) == need:
                            return "array", _array(raw, shape, fortran, dtype)
        except OSError as e:
            return "bad", f"cannot be read ({e.strerror or e})"
        # Incomplete: retried while it changes; reported once it has not for a while.
        now = time.monotonic()
        key = (st.st_size, st.st_mtime_ns)
        prev = self.waiting.get(p.name)
        if prev is None or prev[0] != key:
            self.waiting[p.name] = (key, now)
            prev = self.waiting[p.name]
        if final or now - prev[1] >= INCOMPLETE_GRACE_S:
            self.waiting.pop(p.name, None)
            what = "its .npy header" if h is None else f"the {hlen + need} bytes its header announces"
            return "bad", (f"truncated: {st.st_size} bytes, short of {what}, and no longer growing; "
                           f"expected a complete .npy file (producers: write, then rename)")
        return "wait", None


# -- output ---------------------------------------------------------------------------------------
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


# -- the command ----------------------------------------------------------------------------------
_PATH = dict(path_type=Path)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=_HELP_EPILOG)
@click.argument("source", metavar="SOURCE")
@click.option("--model", "-m", "model", required=True, metavar="FILE", type=click.Path(dir_okay=False, **_PATH),
              help="Exported model: .onnx, or a TensorRT engine (.engine/.plan) with its JSON sidecar.")
@click.option("--window", "-w", type=click.IntRange(min=1), required=True,
              help="W: snippets of context up to and including the snippet scored.")
@click.option("--lookahead", "-l", type=click.IntRange(min=0), default=0, show_default=True,
              help="L: snippets after it that are waited for before it is scored.")
@click.option("--step", "-s", type=click.IntRange(min=1), default=1, show_default=True,
              help="S: snippets scored per runner call; a result may wait up to S-1 more snippets "
                   "(delay S-1+L) for S times fewer calls.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, **_PATH), default=None, metavar="FILE",
              help="Append the JSON lines to FILE (flushed per line) instead of stdout. A FILE whose last "
                   "run was another model's is refused unless --append-other-model.")
@click.option("--append-other-model", is_flag=True,
              help="Append to an --output FILE whose last run was written by another model.")
@click.option("--backend", type=click.Choice(["auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt"]),
              default="auto", show_default=True,
              help="auto: tensorrt for engines; else ort-cuda where ONNX Runtime offers CUDA, else ort-cpu.")
@click.option("--strict/--no-strict", default=False, show_default=True,
              help="Fail (instead of warning) when the backend asked for is not what runs.")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="ONNX Runtime intra-op threads (0 or unset: its default).")
@click.option("--arena/--no-arena", default=True, show_default=True,
              help="ONNX Runtime's CPU memory arena (keeps the largest call's buffers).")
@click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True,
              help="CUDA device (GPU index) for the ort-cuda, ort-trt and tensorrt backends.")
@click.option("--sidecar", type=click.Path(dir_okay=False, **_PATH), default=None, metavar="FILE",
              help="A TensorRT engine's metadata JSON, if not <engine>.json beside it.")
@click.option("--crops", "crops", type=click.IntRange(min=1), default=None,
              help="Crops each snippet must have (default: the model's metadata).")
@click.option("--any-crops", is_flag=True,
              help="Accept any number of crops (averaged); the first array fixes the stream's count.")
@click.option("--memory-budget", callback=_budget, default=None, metavar="SIZE",
              help="Working memory per call, e.g. 2GiB (default: half of the available RAM, or of free GPU "
                   "memory on CUDA backends).")
@click.option("--threshold", type=float, default=None, help="Report events above this anomaly score.")
@click.option("--calibrate", "calibrate", multiple=True, metavar="PATH", type=click.Path(**_PATH),
              help="Normal videos' features (bnwvad-infer's FEATURES forms; repeat the option), scored with "
                   "the same W / L / S: the threshold becomes the quantile giving --false-alarm-rate on them.")
@click.option("--root", type=click.Path(file_okay=False, **_PATH), default=None, metavar="DIR",
              help="Directory the paths of --calibrate list files are relative to (default: the list's folder).")
@click.option("--false-alarm-rate", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.01,
              show_default=True, help="With --calibrate: fraction of normal snippets allowed above.")
@click.option("--min-event-snippets", type=click.IntRange(min=1), default=1, show_default=True,
              help="An event starts after this many consecutive snippets above the threshold.")
@click.option("--max-gap", type=click.IntRange(min=0), default=0, show_default=True,
              help="Snippets at or below the threshold merged into an open event (it ends after more).")
@click.option("--fps", type=click.FloatRange(min=0.0, min_open=True), default=30.0, show_default=True,
              help="Video frame rate, for event times in seconds (XD-Violence: 24).")
@click.option("--poll", type=click.FloatRange(min=0.0, min_open=True), default=0.25, show_default=True,
              metavar="SECONDS", help="How often a directory SOURCE is listed.")
@click.option("--idle-timeout", type=click.FloatRange(min=0.0, min_open=True), default=None, metavar="SECONDS",
              help="End the stream (flush, exit) when no snippet arrived for this long [wait forever; "
                   "stdin ends at EOF].")
@click.option("--quiet", "-q", is_flag=True, help="No information lines on stderr (errors only).")
@click.pass_context
def main(ctx, source, model, window, lookahead, step, output, append_other_model, backend, strict, threads,
         arena, device_id, sidecar, crops, any_crops, memory_budget, threshold, calibrate, root,
         false_alarm_rate, min_event_snippets, max_gap, fps, poll, idle_timeout, quiet):
    """Score a live source of snippet features as it arrives (windowed BN-WVAD, no torch): one JSON
    line per final snippet and per event start / end."""
    if threshold is not None and calibrate:
        raise click.UsageError("give --threshold or --calibrate, not both")
    if crops is not None and any_crops:
        raise click.UsageError("give --crops N or --any-crops, not both")
    if threshold is not None and not math.isfinite(threshold):
        raise click.BadParameter(f"{threshold}; expected a finite number", param_hint="--threshold")
    if source != "-":
        p = Path(source)
        if not p.is_dir():
            what = "does not exist" if not p.exists() else "is not a directory"
            raise click.BadParameter(f"{source} {what}; expected '-' (stdin) or a directory that snippet "
                                     f"files arrive in", param_hint="SOURCE")
    if output is not None and output.exists() and not output.is_file():
        raise click.BadParameter(f"{output} exists and is not a regular file", param_hint="--output")
    opts = dict(source=source, model=model, window=window, lookahead=lookahead, step=step, output=output,
                append_other_model=append_other_model, backend=backend, strict=strict, threads=threads,
                arena=arena, device_id=device_id, sidecar=sidecar, crops=crops, any_crops=any_crops,
                memory_budget=memory_budget, threshold=threshold, calibrate=calibrate, root=root,
                false_alarm_rate=false_alarm_rate, min_event_snippets=min_event_snippets, max_gap=max_gap,
                fps=fps, poll=poll, idle_timeout=idle_timeout, quiet=quiet)
    with _Stop() as stop:
        code = _run(stop, **opts)
    ctx.exit(code)


def _info(quiet: bool, msg: str) -> None:
    if not quiet:
        click.echo(msg, err=True)


def _run(stop: _Stop, *, source, model, window, lookahead, step, output, append_other_model, backend, strict,
         threads, arena, device_id, sidecar, crops, any_crops, memory_budget, threshold, calibrate, root,
         false_alarm_rate, min_event_snippets, max_gap, fps, poll, idle_timeout, quiet) -> int:
    from .io import model_identity
    from .stream import StreamGroup

    try:
        lines = _Lines(output)
    except OSError as e:
        _error(f"--output {output}: cannot be opened for appending ({e.strerror or e})")
        return EXIT_NOTHING_RAN
    started = False
    runner = None
    try:
        try:
            runner = _load_runner_once(model, backend, strict=strict, threads=threads, arena=arena,
                                       device_id=device_id, sidecar=sidecar)
        except RuntimeFailure as e:
            _error(str(e))
            return EXIT_NOTHING_RAN
        meta = runner.meta
        identity = model_identity(meta, model)
        if output is not None and not append_other_model and output.stat().st_size:
            prev = _last_header(output)
            if prev is None:
                _error(f"--output {output}: not empty and holds no bnwvad-stream header line, so the lines of "
                       f"this run would mix with lines of unknown origin. Fix: a new --output, or "
                       f"--append-other-model to append anyway")
                return EXIT_NOTHING_RAN
            if (prev.get("weights_digest"), prev.get("precision")) != (identity.digest, identity.precision):
                _error(f"--output {output}: its last run was written by another model (weights "
                       f"{prev.get('weights_digest')}, {prev.get('precision')}, model {prev.get('model')}); this "
                       f"model is {identity.describe()}. Fix: a new --output, or --append-other-model")
                return EXIT_NOTHING_RAN
        want = None if any_crops else (crops or "model")      # "model": the metadata's count, if any
        try:
            group = StreamGroup(runner, window, lookahead, step, crops=want, memory_budget=memory_budget)
        except (RuntimeFailure, ValueError) as e:
            _error(str(e))
            return EXIT_NOTHING_RAN
        calibration = None
        failed_cal: list[str] = []
        if calibrate:
            calibration, failed_cal = _calibrate(stop, runner, group, calibrate, root=root, crops=want,
                                                 rate=false_alarm_rate)
            if stop:
                click.echo(f"interrupted ({stop.signal}) before the stream started; nothing written", err=True)
                return EXIT_INTERRUPTED
            if calibration is None:
                for m in failed_cal:
                    _fail(f"(calibration) {m}")
                _error("no calibration video could be scored; no threshold")
                return EXIT_NOTHING_RAN
            threshold = calibration.threshold
        if stop:
            click.echo(f"interrupted ({stop.signal}) before the stream started; nothing written", err=True)
            return EXIT_INTERRUPTED
        delay = group.delay
        fps_snip = meta.frames_per_snippet / fps
        src_text = "stdin" if source == "-" else f"directory {source}"
        thr_text = ("no threshold (no events)" if threshold is None else
                    f"threshold {threshold:.6g} given" if calibration is None else
                    f"threshold {threshold:.6g} calibrated on {calibration.videos} normal video(s) "
                    f"({calibration.snippets} snippets, {100 * calibration.achieved_rate:.2f}% above, false-alarm "
                    f"rate {false_alarm_rate:g})")
        _info(quiet, f"model {model} ({meta.describe()}, weights {identity.short()}); backend {runner.describe()}; "
                     f"window {window}, lookahead {lookahead}, step {step}: a result comes at most {delay} "
                     f"snippet(s) after its own ({delay * fps_snip:.2f} s at {fps:g} fps); {thr_text}; "
                     f"source {src_text}; memory budget {human_bytes(group.memory_budget)}")
        for m in failed_cal:
            _fail(f"(calibration) {m}")
        header = {"stream": {
            "format": STREAM_FORMAT, "format_version": STREAM_FORMAT_VERSION,
            "model": str(model), "weights_digest": identity.digest, "digest_of": identity.digest_of,
            "precision": identity.precision, "preset": meta.preset, "backend": runner.backend,
            "window": window, "lookahead": lookahead, "step": step, "delay_snippets": delay,
            "crops": group.crops, "frames_per_snippet": meta.frames_per_snippet, "fps": fps,
            "threshold": threshold,
            "threshold_source": None if threshold is None else ("calibrated" if calibration else "given"),
            "calibration": calibration.to_dict() if calibration else None,
            "min_event_snippets": min_event_snippets, "max_gap": max_gap,
            "source": "-" if source == "-" else str(source),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}}
        try:
            lines.write(header)
        except _OutputClosed as e:
            _error(f"the output was closed before the stream started ({e})")
            return EXIT_NOTHING_RAN
        started = True
        src = StdinSource(0) if source == "-" else DirectorySource(Path(source), poll)
        return _stream(stop, src, group, lines, threshold=threshold, meta=meta, fps=fps,
                       min_event_snippets=min_event_snippets, max_gap=max_gap, poll=poll,
                       idle_timeout=idle_timeout, quiet=quiet, source=source)
    finally:
        if started:
            lines.close()
        else:
            lines.remove_if_unused()
        if runner is not None:
            runner.close()


def _calibrate(stop, runner, group, paths, *, root, crops, rate):
    """(Calibration or None, failure messages): the normal videos scored with score_windowed and
    the stream's W / L / S, then calibrate_threshold."""
    from .events import calibrate_threshold
    from .inputs import collect_videos
    from .stream import score_windowed

    meta = runner.meta
    try:
        videos, bad = collect_videos(paths, root=root, feature_dim=meta.feature_dim,
                                     crops_hint=(crops if isinstance(crops, int) else None) or meta.crops)
    except ValueError as e:
        return None, [str(e)]
    failures = [f.message for f in bad]
    scores = []
    for v in videos:
        if stop:
            break
        try:
            feats = v.load()
            r = score_windowed(runner, feats, group.window, group.lookahead, group.step, crops=crops,
                               name=v.name, memory_budget=group.memory_budget)
        except (RuntimeFailure, ValueError) as e:
            failures.append(str(e) if v.name in str(e) else f"{v.name}: {e}")
            continue
        scores.append(r["anomaly"])
    if not scores:
        return None, failures
    return calibrate_threshold(scores, rate), failures


def _stream(stop, src, group, lines, *, threshold, meta, fps, min_event_snippets, max_gap, poll, idle_timeout,
            quiet, source) -> int:
    from .online_events import OnlineEvents

    sid = "stdin" if source == "-" else Path(source).name or str(source)
    handle = group.open(sid)
    events = (OnlineEvents(threshold, min_snippets=min_event_snippets, max_gap=max_gap,
                           frames_per_snippet=meta.frames_per_snippet, fps=fps)
              if threshold is not None else None)
    bad = 0
    arrays = 0
    event_count = 0
    ended = None                  # "eof" | "idle" | "unreadable" | "error" | "output"
    last_activity = time.monotonic()
    wait = poll if isinstance(src, DirectorySource) else min(0.25, poll)

    written = 0

    def emit(results) -> None:
        nonlocal event_count, written
        for r in results:
            lines.write(_snippet_line(r))
            written += 1
            if events is not None:
                for u in events.feed(int(r["snippet"]), float(r["anomaly"])):
                    lines.write(_event_line(u))
                    event_count += u.kind == "start"

    def take(items) -> None:
        nonlocal bad, arrays, ended, last_activity
        for kind, name, payload in items:
            if kind == "data":
                last_activity = time.monotonic()
            elif kind == "end":
                ended = payload
            elif kind == "bad":
                bad += 1
                last_activity = time.monotonic()
                _fail(f"{name}: {payload}")
            elif kind == "array":
                last_activity = time.monotonic()
                if stop:
                    return                  # after a signal nothing new is scored
                try:
                    out = handle.push(payload)
                except InputError as e:     # the array: nothing changed, the stream goes on
                    bad += 1
                    _fail(f"{name}: {e}; skipped (the stream goes on: snippet numbers continue from "
                          f"{handle.snippets})")
                    continue
                arrays += 1
                emit(out)

    try:
        while not stop and ended is None:
            this_wait = wait
            if idle_timeout is not None:
                left = idle_timeout - (time.monotonic() - last_activity)
                if left <= 0:
                    _info(quiet, f"no snippet arrived for {idle_timeout:g} s (--idle-timeout): the stream ends")
                    if isinstance(src, DirectorySource):
                        # What is complete is taken; a file still short is reported as truncated.
                        take(src.poll(stop, 0.0, final=True))
                    ended = "idle"
                    break
                this_wait = min(wait, max(left, 0.01))
            take(src.poll(stop, this_wait))
        if stop:
            pending = handle.snippets - handle.final
            if events is not None:
                for u in events.close():
                    lines.write(_event_line(u))
            click.echo(f"interrupted ({stop.signal}): {handle.final} snippet(s) final and written"
                       + (f", {pending} received but not final, not scored" if pending else "")
                       + (f"; {bad} snippet file(s)/array(s) skipped" if bad else ""), err=True)
            return EXIT_INTERRUPTED
        total = handle.snippets
        emit(group.flush([sid])[sid])
        if events is not None:
            for u in events.close():
                lines.write(_event_line(u))
    except _OutputClosed as e:
        _error(f"the output was closed ({e}); {written} snippet line(s) were written")
        _silence_stdout()
        return EXIT_SOME_FAILED
    except Exception as e:      # noqa: BLE001 - the runner (or the model) failed: say so, keep what is written
        _error(f"the runner failed: {type(e).__name__}: {e}; {written} snippet line(s) were written")
        try:
            if events is not None:
                for u in events.close():
                    lines.write(_event_line(u))
        except _OutputClosed:
            _silence_stdout()
        return EXIT_SOME_FAILED
    why = {"eof": "end of input", "idle": "idle timeout",
           "unreadable": "the source could not be read"}.get(ended, ended)
    _info(quiet, f"{why}: {total} snippet(s) from {arrays} array(s) scored"
                 + (f", {event_count} event(s)" if events is not None else "")
                 + (f"; {bad} snippet file(s)/array(s) skipped (named above)" if bad else ""))
    return EXIT_SOME_FAILED if bad or ended == "unreadable" else EXIT_OK


def _silence_stdout() -> None:
    """After a broken pipe, let the interpreter's final flush of stdout go nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":   # pragma: no cover
    main()
