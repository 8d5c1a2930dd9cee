"""The live sources bnwvad-stream reads (bnwvad.runtime.stream_cli): snippet features on stdin or
arriving in a directory, and video (a file or a stream URL) decoded and extracted as it arrives.

Each source's poll(stop, wait) returns a list of items:
  ("array", name, ndarray (k, C, D) or (k, D))   ("bad", name, message)
  ("data", None, count)   activity: bytes read / frames decoded (for --idle-timeout)
  ("end", None, reason)   reason: "eof" | "unreadable" | "broken"
and waits up to `wait` seconds (waking up on a signal: `stop.wait`) when it has nothing. `stop`
is stream_setup._Stop, the command's signal flag: truthy once SIGINT / SIGTERM arrived.

stdin and directory sources frame .npy arrays themselves (no pickle is ever loaded); the video
source runs bnwvad.runtime.video.VideoReader (decode thread, bounded queue) and an I3D extractor
on each 16-frame snippet as soon as it is complete.
"""
from __future__ import annotations

import io
import math
import os
import stat
import time
from pathlib import Path

import numpy as np

from .errors import RuntimeFailure, human_bytes
from .frames import snippet_clips
from .video import VideoError

NPY_MAGIC = b"\x93NUMPY"
# A snippet array larger than this is refused without being read (snippets arrive a few at a
# time; a multi-GiB array is a mistake, and buffering it would break the memory bound).
MAX_ARRAY_BYTES = 1 << 30
MAX_HEADER_BYTES = 1 << 20
# A directory file whose header / data is still short is retried until it has not changed for
# this long (or the stream ends): then it is reported as truncated and skipped.
INCOMPLETE_GRACE_S = 5.0


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


# -- sources (the item protocol: module docstring) ----------------------------------------------
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

    def poll(self, stop, wait: float) -> list:
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

    def poll(self, stop, wait: float, *, final: bool = False) -> list:
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


class VideoSource:
    """A video file or stream URL, decoded by a VideoReader (its thread, a queue of at most
    `reader.max_queued` snippets) and extracted snippet by snippet: each complete 16-frame
    snippet's crops go to the extractor in one `run` call as soon as it is taken, and come
    out as one ("array", name, (1, C, D)) item. Nothing else is kept: memory is the reader's
    queue, one snippet's clips and the scorer's window, whatever the video's length.

    Frames decoded since the last poll are reported as ("data", None, n) (activity for
    --idle-timeout). A decode failure (a stream that breaks, a video shorter than a snippet) or
    an extractor failure is one ("bad", source, message) then ("end", None, "broken"): the
    snippets before it were delivered. `last` holds the timing of the snippet just delivered:
    (snippet index, extract_ms, ready_at) where ready_at is when its last frame was decoded
    (time.perf_counter()).
    """

    def __init__(self, reader, extractor, crops: int, *, label: str | None = None):
        self.reader = reader
        self.extractor = extractor
        self.crops = int(crops)
        self.label = label or reader.source
        self.frames = 0                     # frames decoded, as last reported
        self.last: tuple[int, float, float] | None = None
        self.ended = False

    def poll(self, stop, wait: float) -> list:
        if self.ended:
            return [("end", None, "broken")]
        items: list = []
        try:
            snip = self.reader.get(wait)
        except VideoError as e:
            self.ended = True
            return self._activity() + [("bad", self.label, str(e)), ("end", None, "broken")]
        items += self._activity()
        if snip is None:
            if self.reader.ended:
                items.append(("end", None, "eof"))
            return items
        if stop:
            return items                    # after a signal nothing new is extracted
        t0 = time.perf_counter()
        try:
            feats = self.extractor.run(snippet_clips(snip.frames, self.crops, resized=True))
        except (RuntimeFailure, ValueError) as e:
            self.ended = True
            name = getattr(self.extractor, "path", "the extractor")
            return items + [("bad", str(name), f"the extractor failed on snippet {snip.index} of {self.label} "
                                                f"({type(e).__name__}: {e}); the stream ends here"),
                            ("end", None, "broken")]
        self.last = (snip.index, (time.perf_counter() - t0) * 1e3, snip.ready_at)
        first = snip.first_frame
        items.append(("array", f"{self.label} snippet {snip.index} (frames {first}..{first + len(snip.frames) - 1})",
                      feats.reshape(1, self.crops, -1)))
        return items

    def _activity(self) -> list:
        n = self.reader.frames_decoded
        if n == self.frames:
            return []
        new, self.frames = n - self.frames, n
        return [("data", None, new)]

    def close(self, timeout: float = 2.0) -> bool:
        """Stop decoding; a decode thread still blocked in a read after `timeout` s is left to
        end with the process (VideoReader.close)."""
        return self.reader.close(timeout=timeout)
