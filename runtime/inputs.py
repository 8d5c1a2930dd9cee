"""From command-line FEATURES arguments to videos to score, with no silent guessing.

Each argument is a `.npy` file, a directory (every `*.npy` below it, recursively), or a list
file in the datasets' format (any other file; its relative paths resolve against `root`).
Every argument is accounted for: a binary file that is not a .npy (an .npz, an .onnx) is a
failure naming it, never decoded as a list; in a directory, dangling links, FIFOs, sockets and
unreadable files or folders are failures by name (a FIFO is never opened). The same path given
twice is one video; differently named links to one file are distinct videos (paths are
compared as given, made absolute, never resolved).

Grouping (crops_from_names=True, the default): a file named `<video>__<k>.npy` is crop k of
`<video>`; the crop files of one video (same folder, same `<video>`) must be exactly
0..C-1, each (T, D) with one T. An incomplete set - e.g. `x__3.npy` given alone - is an
error naming the missing crops, never a silent one-crop video. With crops_from_names=False
every file is its own video, named by its full stem.

Layout of a file that is not a per-crop file:
- (T, D): one crop.
- 3-D, layout="auto": read as (T, C, D) - the stacked layout - only when its second axis
  equals the model's crop count and its first does not. Anything else is ambiguous (T == C,
  or an array that looks like (C, T, D), or neither axis matching) and is an error that asks
  for `layout` = "TCD" or "CTD". layout="TD" requires every file to be (T, D).

Each file is checked once, where it enters: its header when the videos are collected
(`bnwvad.features.read_npy_header`: shape, dtype, size, D; nothing is unpickled), so every
file's structural problem is known before any scoring; its values (NaN/inf) when it is loaded
(`bnwvad.features.load_features`). A FileVideo's `load` returns validated features, so the
Scorer and the runner do not check them again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Sequence

import numpy as np

from bnwvad.features import (FeatureFileError, load_features, read_list, read_list_text, read_npy_header,
                             split_crop)

LAYOUTS = ("auto", "TD", "TCD", "CTD")


@dataclass
class FileVideo:
    """A video made of files; a VideoSource for the Scorer (features load on demand).

    crops, length and feature_dim (D) are what the headers said at collection; `load`
    returns (C, T, D) float32 of exactly that shape with finite values, or raises
    FeatureFileError naming the file (also when a file changed since it was collected).
    """

    name: str
    paths: list[Path]
    layout: str                       # "crops" (per-crop (T, D) files) | "TD" | "TCD" | "CTD"
    crops: int
    length: int
    feature_dim: int | None = None
    extra: dict = field(default_factory=dict)
    validated: ClassVar[bool] = True  # load() checks its values: the Scorer trusts them

    def load(self) -> np.ndarray:
        """(C, T, D) float32, validated (load_features: structure, D, NaN/inf)."""
        d = self.feature_dim
        if self.layout == "crops":
            arrs = [self._checked(p, load_features(p, feature_dim=d, ndim=(2,)), self.length)
                    for p in self.paths]
            return np.stack(arrs)
        p = self.paths[0]
        a = load_features(p, feature_dim=d, ndim=(2,) if self.layout == "TD" else (2, 3))
        if a.ndim == 2:
            return self._checked(p, a, self.length)[None]
        out = np.ascontiguousarray(a.transpose(1, 0, 2) if self.layout == "TCD" else a)
        return self._checked(p, out, self.crops, self.length)

    def _checked(self, p: Path, a: np.ndarray, *lead: int) -> np.ndarray:
        if a.shape[:len(lead)] != lead:
            raise FeatureFileError(f"{p}: shape {a.shape} on load, but {tuple(lead)} when video "
                                   f"{self.name!r} was collected; expected an unchanged file "
                                   f"(was it rewritten during the run?)")
        return a


@dataclass
class Failure:
    """An input that cannot become a video; `name` is the video (or file) it concerns."""

    name: str
    error: Exception
    paths: list[Path] = field(default_factory=list)

    @property
    def message(self) -> str:
        return str(self.error)


def _layout_3d(p: Path, shape: tuple[int, ...], layout: str, crops_hint: int | None) -> str:
    a, b = shape[0], shape[1]
    if layout in ("TCD", "CTD"):
        return layout
    if layout == "TD":
        raise FeatureFileError(f"{p}: array of shape {shape} (3 dimensions) but --layout TD says every "
                               f"file is one crop (T, D). Fix: --layout TCD or CTD for stacked crops")
    hint = f"the model's {crops_hint} crops" if crops_hint else "no crop count in the model's metadata"
    if crops_hint is not None and b == crops_hint and a != crops_hint:
        return "TCD"
    if a == b:
        why = f"its first two axes are equal ({a}), so (T, C, D) and (C, T, D) read differently"
    elif crops_hint is not None and a == crops_hint:
        why = f"it looks like (C, T, D) = {shape} ({hint}), not the stacked layout (T, C, D)"
    else:
        why = f"neither axis of {shape[:2]} matches {hint}"
    raise FeatureFileError(f"{p}: 3-D array of shape {shape} is ambiguous: {why}. Fix: --layout TCD "
                           f"(snippets, crops, D) or --layout CTD (crops, snippets, D)")


def _scan_dir(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every non-hidden `*.npy` entry below `folder`, sorted, whatever it is (a dangling link, a
    FIFO, a socket: its header read reports it by name, and never opens a FIFO), and the
    sub-folders that could not be listed. Links to folders are not followed."""
    # os.walk lists a link to a folder among `dirs` without entering it: one named *.npy is
    # reported like any other non-file.
    return _walk(folder, lambda n: n.endswith(".npy"), linked_dirs=True)


def _walk(folder: str | Path, wanted: Callable[[str], bool], *, linked_dirs: bool = False
          ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(every non-hidden entry below `folder` whose name is `wanted`, recursively, sorted, with
    links to folders too if `linked_dirs`; the sub-folders that could not be listed)."""
    found: list[Path] = []
    unreadable: list[tuple[Path, str]] = []

    def onerror(e: OSError) -> None:
        unreadable.append((Path(e.filename or folder), e.strerror or str(e)))

    for top, dirs, names in os.walk(folder, onerror=onerror):
        dirs.sort()
        found.extend(Path(top) / n for n in names if wanted(n) and not n.startswith("."))
        if linked_dirs:
            found.extend(Path(top) / n for n in dirs if wanted(n) and os.path.islink(Path(top) / n))
    return sorted(found), unreadable


def _expand(inputs: Sequence[str | Path], scan: Callable, stands_for_itself: Callable[[Path], bool],
            read_listed: Callable[[Path], Iterable[Path]], skipped: str, nothing_below: str
            ) -> tuple[list[Path], list[Failure]]:
    """The files that FILE | DIR | LIST arguments name, in argument order, and the failures (a
    folder that cannot be listed: `skipped` says what is lost; a directory with nothing below
    it: `nothing_below`; a list file that cannot be read). An argument that is not a directory
    either `stands_for_itself` or is a list, read by `read_listed`."""
    failures: list[Failure] = []
    files: list[Path] = []
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            found, unreadable = scan(p)
            for d, err in unreadable:
                failures.append(Failure(str(d), FeatureFileError(f"{d}: folder cannot be read ({err}); {skipped}"),
                                        [d]))
            if not found and not unreadable:
                failures.append(Failure(str(p), FeatureFileError(f"{p}: {nothing_below}"), [p]))
            files.extend(found)
        elif stands_for_itself(p):
            files.append(p)
        else:
            try:
                files.extend(read_listed(p))
            except FeatureFileError as e:
                failures.append(Failure(str(p), e, [p]))
    return files, failures


def collect_videos(inputs: Sequence[str | Path], *, root: str | Path | None = None,
                   layout: str = "auto", crops_from_names: bool = True,
                   feature_dim: int | None = None, crops_hint: int | None = None
                   ) -> tuple[list[FileVideo], list[Failure]]:
    """Turn FEATURES arguments into videos (argument order) and failures (each names its file).

    crops_hint: the model's crop count, used only to read 3-D arrays in layout "auto".
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}; expected one of {LAYOUTS}")
    # A missing, dangling, FIFO... .npy stands for itself: its header read reports it. Any other
    # file is a list; a binary one is named, never decoded.
    files, failures = _expand(
        inputs, _scan_dir, lambda p: p.suffix.lower() == ".npy" or not p.is_file(),
        lambda p: (e.path for e in read_list(p, root)), "its .npy files, if any, are not scored",
        "directory holds no .npy feature files; expected <video>__<k>.npy or <video>.npy files")
    # One video per path as given (absolute, not resolved): the same path twice is one video,
    # but differently named links to one file are distinct videos.
    seen: set[str] = set()
    groups: dict[tuple[Path, str], list[tuple[int | None, Path]]] = {}
    for f in files:
        key = os.path.abspath(f)
        if key in seen:
            continue
        seen.add(key)
        video, crop = split_crop(f) if crops_from_names else (f.name[:-4] if f.name.endswith(".npy") else f.name, None)
        groups.setdefault((Path(os.path.dirname(key)), video), []).append((crop, f))

    videos: list[FileVideo] = []
    by_name: dict[str, list[int]] = {}
    for (parent, name), members in groups.items():
        try:
            v = _make_video(name, members, layout, feature_dim, crops_hint)
        except FeatureFileError as e:
            failures.append(Failure(name, e, [m[1] for m in members]))
            continue
        by_name.setdefault(name, []).append(len(videos))
        videos.append(v)
    clash = {n for n, idx in by_name.items() if len(idx) > 1}
    if clash:
        keep = []
        for v in videos:
            if v.name in clash:
                others = [str(p) for w in videos if w.name == v.name for p in w.paths[:1]]
                failures.append(Failure(v.name, FeatureFileError(
                    f"video name {v.name!r} comes from several inputs ({', '.join(others)}); outputs are "
                    f"named <video>.npy, so names must be unique. Fix: score them in separate runs "
                    f"(different --out) or rename the files"), v.paths))
            else:
                keep.append(v)
        videos = keep
    return videos, failures


def _make_video(name: str, members: list[tuple[int | None, Path]], layout: str,
                feature_dim: int | None, crops_hint: int | None) -> FileVideo:
    crops = [c for c, _ in members]
    if None in crops:
        if len(members) > 1:
            raise FeatureFileError(
                f"video {name!r}: both a stacked file and per-crop files "
                f"({', '.join(str(p) for _, p in members)}); expected one or the other")
        p = members[0][1]
        shape, _ = read_npy_header(p, feature_dim=feature_dim, ndim=(2, 3))
        if len(shape) == 2:
            return FileVideo(name, [p], "TD", 1, shape[0], shape[-1])
        lay = _layout_3d(p, shape, layout, crops_hint)
        c, t = (shape[1], shape[0]) if lay == "TCD" else (shape[0], shape[1])
        if t == 0 or c == 0:
            raise FeatureFileError(f"{p}: shape {shape} read as {lay} has T = {t}, C = {c}; "
                                   f"expected at least 1 of each")
        return FileVideo(name, [p], lay, c, t, shape[-1])
    members = sorted(members, key=lambda m: m[0])
    idx = [c for c, _ in members]
    if idx != list(range(len(idx))):
        have = set(idx)
        missing = [k for k in range(max(idx) + 1) if k not in have]
        first = members[0][1]
        raise FeatureFileError(
            f"{first.parent / (name + '__<k>.npy')}: video {name!r} has crop files {idx}, missing "
            f"{missing}; a video's crop files must be numbered 0..C-1. Fix: give all its crop "
            f"files, or --no-crops-from-names to score each file as a video of its own")
    shapes = [read_npy_header(p, feature_dim=feature_dim, ndim=(2,))[0] for _, p in members]
    if len(set(shapes)) > 1:
        raise FeatureFileError(
            f"video {name!r}: its crop files disagree in shape: "
            f"{', '.join(f'{p.name} {s}' for (_, p), s in zip(members, shapes))}; expected one (T, D)")
    t, d = shapes[0]
    return FileVideo(name, [p for _, p in members], "crops", len(members), t, d)


# -- video files (bnwvad-extract, bnwvad-infer VIDEO --extractor) ----------------------------------
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")


def is_video_path(path: str | Path) -> bool:
    """Whether `path` names a video file by its extension (VIDEO_EXTENSIONS, any case)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def scan_video_dir(folder: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every non-hidden file with a video extension below `folder` (recursively, sorted; links
    to folders not followed), and the sub-folders that could not be listed."""
    return _walk(folder, is_video_path)


def _read_video_list(lf: Path, root: str | Path | None) -> list[Path]:
    """A list file: one video path per line (blank lines and lines starting with '#' skipped);
    relative paths resolve against `root` (default: the list's folder)."""
    text, binary, _ = read_list_text(lf)
    if binary is not None:
        raise FeatureFileError(f"{lf}: neither a video file (extensions {' '.join(VIDEO_EXTENSIONS)}) nor a "
                               f"text list file: {binary}; expected a video, a directory of videos, or a "
                               f"list file with one video path per line")
    base = Path(root) if root is not None else lf.parent
    out = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry)
        out.append(p if p.is_absolute() else base / p)
    return out


def collect_video_files(inputs: Sequence[str | Path], *, root: str | Path | None = None
                        ) -> tuple[list[tuple[str, Path]], list[Failure]]:
    """VIDEO | DIR | LIST arguments -> ([(video name, path)] in argument order, failures).

    A file with a video extension is a video; a directory gives every video file below it;
    any other file is a list (one path per line; a binary one is named, never decoded). The
    name of a video is its file name without the extension (outputs are <name>__<k>.npy or
    <name>.npy), so two inputs with one name (a.mp4 and a.mkv, or a.mp4 in two folders) are
    failures naming both; the same path given twice is one video. Missing files are failures
    when they are opened (VideoReader names them), not here."""
    files, failures = _expand(
        inputs, scan_video_dir, lambda p: is_video_path(p) or not p.exists(), lambda p: _read_video_list(p, root),
        "its videos, if any, are not processed",
        f"directory holds no video files; expected files ending in {' '.join(VIDEO_EXTENSIONS)}")
    seen: set[str] = set()
    named: dict[str, list[Path]] = {}
    for f in files:
        key = os.path.abspath(f)
        if key in seen:
            continue
        seen.add(key)
        named.setdefault(video_name(f), []).append(f)
    videos = []
    for name, paths in named.items():
        if len(paths) > 1:
            failures.append(Failure(name, FeatureFileError(
                f"video name {name!r} comes from several inputs ({', '.join(map(str, paths))}); outputs are "
                f"named after the video, so names must be unique. Fix: process them in separate runs "
                f"(different --out) or rename the files"), paths))
        else:
            videos.append((name, paths[0]))
    return videos, failures


def video_name(path: str | Path) -> str:
    """A video's name: its file name without the extension ('a.mp4' -> 'a')."""
    p = Path(path)
    return p.name[: -len(p.suffix)] if p.suffix else p.name
