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

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

XD_CLASSES = {"A": "Normal", "B1": "Fighting", "B2": "Shooting", "B4": "Riot", "B5": "Abuse",
              "B6": "Car accident", "G": "Explosion"}
_CROP = re.compile(r"^(?P<video>.+)__(?P<crop>\d+)$")


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


def load_features(path: str | Path, *, feature_dim: int | None = None,
                  ndim: Sequence[int] = (2, 3)) -> np.ndarray:
    """Read one .npy feature file safely and validate it; returns float32.

    (T, D) for one crop or (T, C, D) for stacked crops. Raises FeatureFileError for a
    missing, empty, truncated or corrupted file, a pickled object array (never loaded),
    a wrong number of dimensions, a non-float dtype, T = 0, a wrong D, or NaN/inf.
    """
    p = Path(path)
    if not p.is_file():
        raise FeatureFileError(f"{p}: no such feature file")
    size = p.stat().st_size
    if size == 0:
        raise FeatureFileError(f"{p}: the file is empty (0 bytes); expected a .npy array of shape (T, D)")
    # np.load reports any non-.npy, non-zip file (garbage, a truncated header, a plain pickle)
    # as "pickled data": tell those apart by the first bytes before asking it.
    with open(p, "rb") as f:
        head = f.read(6)
    if head != b"\x93NUMPY":
        if head[:1] == b"\x80":
            what = "a Python pickle, not a .npy array (never loaded: unpickling can run code)"
        elif head[:2] == b"PK":
            what = "a zip archive (.npz?), not a single .npy array; save one array per file with np.save"
        else:
            what = (f"not a .npy file (starts with {head!r}, not the .npy magic \\x93NUMPY; "
                    f"corrupted or another format)")
        raise FeatureFileError(f"{p}: {what}; expected a .npy array of shape (T, D)")
    try:
        arr = np.load(p, allow_pickle=False, mmap_mode=None)
    except ValueError as e:
        msg = str(e)
        if "allow_pickle" in msg or "Object arrays" in msg:
            raise FeatureFileError(
                f"{p}: holds a pickled object array, which is never loaded (it could run code); "
                f"expected a plain float32 .npy array of shape (T, D)") from None
        raise FeatureFileError(f"{p}: not a readable .npy array ({size} bytes; truncated or "
                               f"corrupted?): {msg}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise FeatureFileError(f"{p}: not a readable .npy array ({size} bytes; truncated or "
                               f"corrupted?): {e}") from None
    if not isinstance(arr, np.ndarray):
        raise FeatureFileError(f"{p}: holds a {type(arr).__name__}, expected one .npy array")
    if arr.ndim not in ndim:
        want = " or ".join({2: "(T, D)", 3: "(T, C, D)"}[n] for n in ndim)
        raise FeatureFileError(f"{p}: array of shape {arr.shape} ({arr.ndim} dimensions); expected {want}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise FeatureFileError(f"{p}: dtype {arr.dtype}; expected floating-point features (float32)")
    if arr.shape[0] == 0:
        raise FeatureFileError(f"{p}: shape {arr.shape} has T = 0 snippets; expected at least 1")
    if feature_dim is not None and arr.shape[-1] != feature_dim:
        raise FeatureFileError(f"{p}: feature dimension D = {arr.shape[-1]} (shape {arr.shape}); "
                               f"expected D = {feature_dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise FeatureFileError(f"{p}: contains NaN or inf (first at index {tuple(int(i) for i in bad)}); "
                               f"expected finite features")
    return arr


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


def read_list(list_file: str | Path, root: str | Path | None = None) -> list[ListEntry]:
    """Parse a list file; paths are resolved against `root` (default: the list's folder)."""
    lf = Path(list_file)
    if not lf.is_file():
        raise FeatureFileError(f"{lf}: no such list file")
    base = Path(root) if root is not None else lf.parent
    entries = []
    for lineno, line in enumerate(lf.read_text(encoding="utf-8").splitlines(), 1):
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
