"""Feature files and list files in the benchmarks' real layouts (numpy only, no torch).

Shared by training (`bnwvad.data`), evaluation and the torch-free runtime, so every
entry point reads and validates features the same way.

Layouts
- A per-crop file `<video>__<k>.npy` holds one crop, (T, D). `<video>` may itself contain
  `__` (XD-Violence names do): the crop index is the digits after the LAST `__`.
- A stacked file `<video>.npy` holds all crops, (T, C, D).
- A list file has one feature path per line (resolved against a root directory), with an
  optional second column giving the label (0 normal, 1 anomalous) where names carry none.

Labels come from file names, never from positions in a list:
- XD-Violence: `_label_A` is normal; other letters after `_label_` are violence classes
  (`B1` fighting, `B2` shooting, `B4` riot, `B5` abuse, `B6` car accident, `G` explosion).
- UCF-Crime: `Normal` in the name is normal; the class is the parent folder.
"""
from __future__ import annotations

import io
import math
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

XD_CLASSES = {"A": "Normal", "B1": "Fighting", "B2": "Shooting", "B4": "Riot", "B5": "Abuse",
              "B6": "Car accident", "G": "Explosion"}
_CROP = re.compile(r"^(?P<video>.+)__(?P<crop>\d+)$")
_F32_MAX = float(np.finfo(np.float32).max)


class FeatureFileError(ValueError):
    """A feature or list file that cannot be used: names the file, what was found, what was expected."""


def split_crop(path: str | Path) -> tuple[str, int | None]:
    """`dir/<video>__<k>.npy` -> (`<video>`, k); `<video>.npy` -> (`<video>`, None)."""
    stem = Path(path).name
    if stem.endswith(".npy"):
        stem = stem[:-4]
    m = _CROP.match(stem)
    return (m["video"], int(m["crop"])) if m else (stem, None)


def label_from_name(path: str | Path) -> tuple[int, tuple[str, ...]] | None:
    """(label, classes) read off a file name, or None if the name carries no label."""
    p = Path(path)
    name = p.name
    if "_label_" in name:
        tag = name.split("_label_", 1)[1]
        tag = tag.split("__", 1)[0].removesuffix(".npy")
        letters = tuple(t for t in tag.split("-") if t and t != "0")
        if letters == ("A",):
            return 0, ("A",)
        return 1, letters
    if "Normal" in name:
        return 0, ("Normal",)
    if p.parent.name and p.parent.name not in (".", ""):
        # UCF-Crime: dataset/<Class>/<Video>_x264__k.npy with Normal videos named so.
        if re.match(r"^[A-Za-z]+\d+_x264", name):
            return 1, (p.parent.name,)
    return None


# -- the one safe .npy reader ---------------------------------------------------------------
# Every .npy a user hands in (features, audio features, score files, bnwvad-serve's request
# bodies) is read here: the header first (nothing unpickled, no data read), then the data with
# exactly the bytes it announces.
_NPY_MAGIC = b"\x93NUMPY"
_SHAPES = {1: "(T,)", 2: "(T, D)", 3: "(T, C, D)"}


def _shapes(ndim: Sequence[int]) -> str:
    return " or ".join(_SHAPES[n] for n in ndim)


def binary_reason(head: bytes) -> str | None:
    """What the first bytes of a file that should be text show it is, or None if they look like
    text: a zip (.npz), a pickle, or other binary data."""
    if head[:2] == b"PK":
        return "it is a zip archive (an .npz?); give one .npy array per crop or video"
    if head[:1] == b"\x80":
        return "it is a Python pickle (never loaded)"
    if b"\x00" in head:
        return f"binary data (starts with {head[:12]!r})"
    return None


def _not_npy_reason(head: bytes) -> str:
    # np.load reports any non-.npy, non-zip file (garbage, a plain pickle) as "pickled data":
    # the first bytes tell them apart.
    if head[:1] == b"\x80":
        return "a Python pickle, not a .npy array (never loaded: unpickling can run code)"
    if head[:2] == b"PK":
        return "a zip archive (.npz?), not a single .npy array; save one array per file with np.save"
    return (f"not a .npy file (starts with {head!r}, not the .npy magic \\x93NUMPY; "
            f"corrupted or another format)")


_HEADER_LOCK = threading.Lock()


def _read_header(f, p: Path, size: int, ndim: Sequence[int], feature_dim: int | None, kind: str
                 ) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the open .npy file `f`, left at its first data byte."""
    want = _shapes(ndim)
    head = f.read(6)
    if head != _NPY_MAGIC:
        raise FeatureFileError(f"{p}: {_not_npy_reason(head)}; expected a .npy array of shape {want}")
    f.seek(0)
    try:
        # numpy parses the header dict with ast.literal_eval, which CPython 3.11 does not make
        # thread-safe ("AST constructor recursion depth mismatch" when two threads parse at
        # once: the header checks and the training loader read files in threads).
        with _HEADER_LOCK:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
    except Exception as e:     # noqa: BLE001 - untrusted bytes: ValueError, SyntaxError, TokenError...
        raise FeatureFileError(f"{p}: not a readable .npy array: corrupted header ({e}); expected "
                               f"a .npy array of shape {want}") from None
    if dtype.hasobject:
        raise FeatureFileError(f"{p}: holds a pickled object array, which is never loaded (it could "
                               f"run code); expected a plain float32 .npy array of shape {want}")
    need = math.prod(shape) * dtype.itemsize
    have = size - f.tell()
    if have < need:
        raise FeatureFileError(f"{p}: truncated: its header announces shape {shape} {dtype} "
                               f"({need} bytes of data) but the file holds {have}; "
                               f"expected a complete .npy file (an interrupted copy?)")
    if len(shape) not in ndim:
        want_n = "a float vector (T,)" if tuple(ndim) == (1,) else want
        raise FeatureFileError(f"{p}: array of shape {shape} ({len(shape)} dimensions); "
                               f"expected {want_n}")
    if not np.issubdtype(dtype, np.floating):
        raise FeatureFileError(f"{p}: dtype {dtype}; expected floating-point {kind}s (float32)")
    if shape[0] == 0:
        raise FeatureFileError(f"{p}: shape {shape} has T = 0 snippets; expected at least 1")
    if feature_dim is not None and shape[-1] != feature_dim:
        raise FeatureFileError(f"{p}: feature dimension D = {shape[-1]} (shape {shape}); "
                               f"expected D = {feature_dim}")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def not_a_regular_file(path: str | Path, kind: str = "feature") -> str | None:
    """Why `path` cannot be read as a file, or None for a regular file (symbolic links
    followed). Only stat()s: a FIFO is never opened (a read would block), nor a socket or device."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        if os.path.islink(p):
            return f"{p}: dangling symbolic link (to {os.readlink(p)!r}, which does not exist)"
        return f"{p}: no such {kind} file"
    except OSError as e:                      # a link loop (ELOOP), a path through a file, ...
        return f"{p}: cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    what = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe), never opened: reading it "
            "would block" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"{p}: is {what}; expected a regular {kind} file"


def _open(path: str | Path, ndim: Sequence[int], kind: str) -> tuple[Path, int]:
    p = Path(path)
    why = not_a_regular_file(p, kind)
    if why is not None:
        raise FeatureFileError(why)
    size = p.stat().st_size
    if size == 0:
        raise FeatureFileError(f"{p}: the file is empty (0 bytes); expected a .npy array of "
                               f"shape {_shapes(ndim)}")
    return p, size


def read_npy_header(path: str | Path, *, feature_dim: int | None = None,
                    ndim: Sequence[int] = (2, 3), kind: str = "feature"
                    ) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header; reads no data and unpickles nothing.

    Raises FeatureFileError, naming the file, for: missing, empty (0 bytes), not .npy (a
    pickle, a zip/.npz, anything else), a corrupted header, an object dtype, data shorter
    than the header announces, a number of dimensions not in `ndim`, a non-float dtype,
    T = 0 (the first axis) and, with feature_dim, a last axis other than D. `kind` names
    what the file holds in messages ("feature", "score").
    """
    p, size = _open(path, ndim, kind)
    try:
        with open(p, "rb") as f:
            shape, _, dtype = _read_header(f, p, size, ndim, feature_dim, kind)
    except OSError as e:
        raise FeatureFileError(f"{p}: cannot be read ({e}); expected a .npy array") from None
    return shape, dtype


def read_npy(path: str | Path, *, feature_dim: int | None = None, ndim: Sequence[int] = (2, 3),
             kind: str = "feature") -> np.ndarray:
    """The array of a .npy file as stored (dtype kept), after `read_npy_header`'s checks.

    Only the bytes the header announces are read (np.fromfile), never with pickle.
    """
    p, size = _open(path, ndim, kind)
    try:
        with open(p, "rb") as f:
            shape, fortran, dtype = _read_header(f, p, size, ndim, feature_dim, kind)
            count = math.prod(shape)
            arr = np.fromfile(f, dtype=dtype, count=count)
    except OSError as e:
        raise FeatureFileError(f"{p}: cannot be read ({e}); expected a .npy array") from None
    if arr.size != count:            # the file shrank while it was read
        raise FeatureFileError(f"{p}: truncated: {arr.size} of the {count} values its header "
                               f"announces could be read; expected a complete .npy file")
    return arr.reshape(shape, order="F" if fortran else "C")


def read_npy_bytes(data: bytes | bytearray | memoryview, *, label: str, feature_dim: int | None = None,
                   ndim: Sequence[int] = (2, 3), kind: str = "feature") -> np.ndarray:
    """The array of .npy bytes held in memory (an HTTP body), dtype kept, after
    `read_npy_header`'s checks with its messages, `label` in place of the path.

    Only the bytes the header announces are used (np.frombuffer: a read-only view of `data`,
    no copy); nothing is unpickled."""
    view = memoryview(data)
    if len(view) == 0:
        raise FeatureFileError(f"{label}: empty (0 bytes); expected a .npy array")
    f = io.BytesIO(view)
    shape, fortran, dtype = _read_header(f, label, len(view), ndim, feature_dim, kind)
    arr = np.frombuffer(view, dtype=dtype, count=math.prod(shape), offset=f.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def load_features(path: str | Path, *, feature_dim: int | None = None,
                  ndim: Sequence[int] = (2, 3)) -> np.ndarray:
    """Read one .npy feature file safely and validate it; returns float32, C-contiguous.

    (T, D) for one crop or (T, C, D) for stacked crops. The structure is checked by
    `read_npy_header` (FeatureFileError for a missing, empty, truncated or corrupted file,
    a pickled object array (never loaded), a wrong number of dimensions, a non-float dtype,
    T = 0, a wrong D); the values here: NaN or inf.
    """
    return checked_float32(read_npy(path, feature_dim=feature_dim, ndim=ndim), Path(path))


def checked_float32(raw: np.ndarray, label: str | Path,
                    error: type[Exception] = FeatureFileError) -> np.ndarray:
    """`raw` as float32, C-contiguous, after the checks of its values: finite, and within
    float32's range. Raises `error` (a message starting with `label`: the file, or what else
    the values came in) otherwise."""
    if not np.isfinite(raw).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(raw))[0])
        raise error(f"{label}: contains NaN or inf (first at index {bad}); expected finite features")
    if np.finfo(raw.dtype).max > _F32_MAX:           # float64, longdouble: may not fit float32
        big = np.abs(raw) > _F32_MAX
        if big.any():
            at = tuple(int(i) for i in np.argwhere(big)[0])
            raise error(
                f"{label}: value {float(raw[at]):g} at index {at} is outside float32's range "
                f"(±{_F32_MAX:.1e}), {int(big.sum())} such value(s); expected features that fit "
                f"float32 (the model computes in float32)")
    return np.ascontiguousarray(raw, dtype=np.float32)


@dataclass
class ListEntry:
    path: Path
    video: str
    crop: int | None
    label: int | None
    classes: tuple[str, ...] = ()


@dataclass
class Video:
    """One video: its crop files in crop order (or one stacked file), label and classes."""

    name: str
    paths: list[Path]
    label: int | None
    classes: tuple[str, ...] = ()
    stacked: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def crops(self) -> int | None:
        return None if self.stacked else len(self.paths)


def read_list_text(path: Path) -> tuple[str | None, str | None, bytes]:
    """(text, None, bytes) of a list file; (None, why it is not text, its first bytes) when it
    is binary (a binary file is never read whole, nor decoded). FeatureFileError, naming the
    file, when it is not a regular file or cannot be read."""
    why = not_a_regular_file(path, "list")
    if why is not None:
        raise FeatureFileError(why)
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
            binary = binary_reason(data)
            if binary is None:
                data += f.read()
    except OSError as e:
        raise FeatureFileError(f"{path}: cannot be read ({e.strerror or e}); expected a list file") from None
    if binary is not None:
        return None, binary, data
    try:
        return data.decode("utf-8"), None, data
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte {data[e.start:e.start + 1]!r} at offset {e.start})", data


def read_list(list_file: str | Path, root: str | Path | None = None) -> list[ListEntry]:
    """Parse a list file; paths are resolved against `root` (default: the list's folder)."""
    lf = Path(list_file)
    base = Path(root) if root is not None else lf.parent
    text, binary, data = read_list_text(lf)
    if data.startswith(_NPY_MAGIC):
        raise FeatureFileError(f"{lf}: a .npy array whose name does not end in .npy, so it is not read "
                               f"as features; expected <video>.npy or <video>__<k>.npy (the name gives "
                               f"the video and crop): rename it")
    if binary is not None:
        raise FeatureFileError(f"{lf}: neither a .npy feature file nor a text list file: {binary}; "
                               f"expected .npy features (<video>.npy, <video>__<k>.npy), a directory "
                               f"of them, or a list file with one feature path per line")
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        rel = parts[0]
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        video, crop = split_crop(rel)
        named = label_from_name(rel)
        if len(parts) > 1:
            try:
                label = int(parts[1])
            except ValueError:
                raise FeatureFileError(f"{lf}:{lineno}: second column {parts[1]!r}; expected a "
                                       f"label 0 (normal) or 1 (anomalous)") from None
            if label not in (0, 1):
                raise FeatureFileError(f"{lf}:{lineno}: label {label}; expected 0 or 1")
            classes = named[1] if named else ()
        elif named is not None:
            label, classes = named
        else:
            label, classes = None, ()
        entries.append(ListEntry(path, video, crop, label, classes))
    if not entries:
        raise FeatureFileError(f"{lf}: the list is empty; expected one feature path per line")
    return entries


def group_videos(entries: Iterable[ListEntry], *, source: str = "list") -> list[Video]:
    """Group per-crop entries into videos (first-appearance order), crops sorted by index.

    A video's crops must be 0..C-1 without gaps or duplicates, and every video of one
    list must have the same number of crops.
    """
    order: dict[str, list[ListEntry]] = {}
    for e in entries:
        order.setdefault(e.video, []).append(e)
    videos = []
    for name, es in order.items():
        crops = [e.crop for e in es]
        if crops == [None]:
            videos.append(Video(name, [es[0].path], es[0].label, es[0].classes, stacked=True))
            continue
        if None in crops:
            raise FeatureFileError(f"{source}: video {name!r} mixes a stacked file with per-crop files")
        if sorted(crops) != list(range(len(crops))):
            raise FeatureFileError(f"{source}: video {name!r} has crops {sorted(crops)}; expected "
                                   f"0..{len(crops) - 1} without gaps or duplicates")
        es = sorted(es, key=lambda e: e.crop)
        videos.append(Video(name, [e.path for e in es], es[0].label, es[0].classes))
    counts = {v.crops for v in videos if not v.stacked}
    if len(counts) > 1:
        raise FeatureFileError(f"{source}: videos have different numbers of crops {sorted(counts)}")
    return videos


def load_video(video: Video, *, feature_dim: int | None = None) -> np.ndarray:
    """All crops of a video as (C, T, D) float32; crops must agree on T and D."""
    if video.stacked:
        arr = load_features(video.paths[0], feature_dim=feature_dim, ndim=(2, 3))
        return arr[None] if arr.ndim == 2 else arr.transpose(1, 0, 2).copy()
    crops = [load_features(p, feature_dim=feature_dim, ndim=(2,)) for p in video.paths]
    shapes = {c.shape for c in crops}
    if len(shapes) > 1:
        raise FeatureFileError(f"video {video.name!r}: its crop files disagree in shape "
                               f"{[c.shape for c in crops]} ({video.paths[0].parent})")
    return np.stack(crops)
