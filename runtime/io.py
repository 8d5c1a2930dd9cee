"""Atomic output files, run folders (which model wrote what) and the machine-readable results file.

Every output is written to a temporary file beside its destination, flushed, fsynced and
renamed over it (os.replace), so a reader never sees a partial file and an interrupted run
leaves the previous file, not half a new one.

results.npz (read with `load_results`, np.load(allow_pickle=False) works too):
    videos       (V,) unicode   video names, in the order the inputs were given
    lengths      (V,) int64     T of each video
    crops        (V,) int64     crops averaged
    offsets      (V + 1,) int64 video v's snippets are [offsets[v], offsets[v + 1]) of:
    score, dfm, anomaly  (sum T,) float32, concatenated per-snippet outputs
    frames_per_snippet   ()     int64

Run folders: `summary.json` records which model wrote the folder (`ModelIdentity`: weights
digest and precision) and every file the run wrote; `read_run` reads it back, so the next run
into the folder can refuse another model's outputs or replace its own (`remove_listed`), and
`bnwvad-eval --scores` can refuse score files of several models or of no recorded run.
`prepare_output_dir` finds an output folder that cannot be created or written before any work;
`InterruptSignals` turns SIGINT / SIGTERM into `Interrupted` so a command can write what is
final and exit 130.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal as _signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_write
from .contract import OUTPUTS

RESULTS_FILE = "results.npz"


def save_npy(path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def save_json(path, obj: Any) -> Path:
    data = json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode("utf-8") + b"\n"
    return atomic_write(path, lambda f: f.write(data))


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def save_results(path, results: Sequence, frames_per_snippet: int = 16) -> Path:
    """Write VideoResults (in the given order) to one .npz, layout in the module docstring."""
    names = [r.name for r in results]
    lengths = np.array([r.length for r in results], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrays = {
        "videos": np.array(names, dtype=str) if names else np.zeros(0, dtype="<U1"),
        "lengths": lengths,
        "crops": np.array([r.crops for r in results], np.int64),
        "offsets": offsets,
        "frames_per_snippet": np.int64(frames_per_snippet),
    }
    for k in OUTPUTS:
        arrays[k] = (np.concatenate([getattr(r, k) for r in results]).astype(np.float32)
                     if results else np.zeros(0, np.float32))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_results(path) -> dict[str, dict[str, np.ndarray]]:
    """results.npz -> {video: {"score", "dfm", "anomaly": (T,) float32, "crops": int}}."""
    with np.load(path, allow_pickle=False) as z:
        off = z["offsets"]
        out = {}
        for v, name in enumerate(z["videos"].tolist()):
            a, b = int(off[v]), int(off[v + 1])
            out[name] = {k: z[k][a:b] for k in OUTPUTS}
            out[name]["crops"] = int(z["crops"][v])
        return out


# -- run folders: which model wrote what ------------------------------------------------------
# summary.json is a run's record (written by bnwvad-infer, read back by the next run into the
# same folder and by `bnwvad-eval --scores`). The keys this module reads:
#   format "bnwvad-infer-run", format_version 1
#   status            "running" (written first; a run killed by the kernel leaves it) |
#                     "complete" | "interrupted"; interrupted: bool
#   model.weights_digest, model.digest_of ("weights (model metadata)" | "model file"),
#   model.precision, model.path
#   files             every file the run wrote, relative to the folder (summary.json too)
SUMMARY_FILE = "summary.json"
RUN_FORMAT = "bnwvad-infer-run"
RUN_FORMAT_VERSION = 1


class RunFolderError(ValueError):
    """An output folder that cannot be used, or a run record that cannot be read; one line."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which model wrote a run: its weights digest and precision (an fp16 export of the same
    weights computes slightly different scores, so it is another model here)."""

    digest: str
    digest_of: str            # "weights (model metadata)" | "model file"
    precision: str | None

    def describe(self) -> str:
        return f"{self.digest} ({self.precision or 'precision ?'})"

    def short(self) -> str:
        kind, _, hexd = self.digest.partition(":")
        return f"{kind}:{hexd[:12]}" + (f" {self.precision}" if self.precision else "")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(meta, model_path: str | os.PathLike) -> ModelIdentity:
    """The weights digest of the model's metadata, else (an export without one) a sha256 of
    the model file, prefixed "file-sha256:" so the two kinds never compare equal by accident."""
    if getattr(meta, "weights_digest", None):
        return ModelIdentity(str(meta.weights_digest), "weights (model metadata)", meta.precision)
    return ModelIdentity("file-sha256:" + file_sha256(model_path), "model file",
                         getattr(meta, "precision", None))


@dataclass(frozen=True)
class RunRecord:
    """What a folder's summary.json says about the run that wrote it."""

    folder: Path
    model: ModelIdentity
    model_path: str | None
    files: tuple[str, ...]        # relative, checked to stay inside the folder
    status: str

    @property
    def summary(self) -> Path:
        return self.folder / SUMMARY_FILE


def _safe_relative(folder: Path, rel: Any) -> str | None:
    """`rel` if it names a path strictly inside `folder` (no absolute path, no '..', no
    symbolic link on the way out of it), else None."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return None
    p = Path(rel)
    if not p.parts or p.is_absolute() or ".." in p.parts:
        return None
    base = os.path.realpath(folder)
    parent = os.path.realpath(folder / p.parent)
    if parent != base and not parent.startswith(base + os.sep):
        return None
    return p.as_posix()


def read_run(folder: str | os.PathLike) -> RunRecord | None:
    """The run record of `folder`, None when it holds no summary.json; RunFolderError when the
    summary.json is not a readable record of a bnwvad-infer run (naming what is wrong)."""
    folder = Path(folder)
    found = read_summary_doc(folder)
    if found is None:
        return None
    path, doc = found
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT:
        raise RunFolderError(f"{path}: not a bnwvad-infer run record (no \"format\": \"{RUN_FORMAT}\"; "
                             f"written by another program or an older bnwvad-infer)")
    return record_from_summary(folder, path, doc, "model", "bnwvad-infer")


def read_summary_doc(folder: Path) -> tuple[Path, object] | None:
    """(path, parsed JSON) of `folder`'s summary.json, None when it has none; RunFolderError when
    it is not a regular file of a run summary's size holding JSON. The caller checks its format."""
    path = folder / SUMMARY_FILE
    if not path.exists() and not path.is_symlink():
        return None
    try:
        if not path.is_file():
            raise RunFolderError(f"{path}: not a regular file")
        if path.stat().st_size > (64 << 20):
            raise RunFolderError(f"{path}: {path.stat().st_size} bytes, too large for a run summary")
        return path, json.loads(path.read_text(encoding="utf-8"))
    except RunFolderError:
        raise
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: not a readable JSON run summary ({e})") from None


def record_from_summary(folder: Path, path: Path, doc: dict, owner: str, program: str) -> RunRecord:
    """The RunRecord of a summary document whose `owner` entry ("model": bnwvad-infer,
    "extractor": bnwvad-extract) says what wrote the folder; RunFolderError, naming `path`, when
    it records no weights digest or file list (expected of `program`) or lists paths outside
    the folder."""
    model = doc.get(owner) if isinstance(doc.get(owner), dict) else {}
    digest, files = model.get("weights_digest"), doc.get("files")
    if not isinstance(digest, str) or not digest or not isinstance(files, list):
        raise RunFolderError(f"{path}: records no " + ("weights digest" if not isinstance(digest, str)
                                                      or not digest else "file list")
                             + f"; expected a summary written by {program}")
    safe = [s for s in (_safe_relative(folder, f) for f in files) if s is not None]
    if len(safe) != len(files):
        bad = [f for f in files if _safe_relative(folder, f) is None][:3]
        raise RunFolderError(f"{path}: lists paths outside its folder ({', '.join(map(repr, bad))}); "
                             f"a run's files are relative paths inside it")
    ident = ModelIdentity(digest, str(model.get("digest_of") or "?"),
                          None if model.get("precision") is None else str(model.get("precision")))
    return RunRecord(folder, ident, None if model.get("path") is None else str(model["path"]),
                     tuple(safe), str(doc.get("status") or "?"))


def remove_listed(record: RunRecord) -> list[str]:
    """Remove exactly the files `record` lists (a symbolic link itself, never its target; no
    folder), then the folders inside the run folder that this left empty. Returns what went."""
    gone = []
    for rel in record.files:
        p = record.folder / rel
        if p.is_symlink() or p.is_file():
            p.unlink()
            gone.append(rel)
    for rel in sorted({str(Path(r).parent) for r in gone if Path(r).parent != Path(".")},
                      key=lambda s: -len(Path(s).parts)):
        try:
            (record.folder / rel).rmdir()
        except OSError:
            pass                      # not empty: something else lives there
    return gone


def prepare_output_dir(path: str | os.PathLike, label: str) -> list[Path]:
    """Create the folder `path` (and missing parents) and check that a file can be written in
    it, before any work: RunFolderError (one line naming `label` and the path) otherwise.
    Returns the folders it created, outermost first, for `remove_created` to take back."""
    path = Path(path)
    missing = []
    p = path
    while not (p.exists() or p.is_symlink()):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir():
        what = "a dangling symbolic link" if p.is_symlink() and not p.exists() else "a file, not a folder"
        where = "is" if p == path else f"cannot be created: {p} is"
        raise RunFolderError(f"{label} {path}: {where} {what}")
    created = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        fd, probe = tempfile.mkstemp(prefix=".bnwvad-probe.", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        remove_created(created)
        verb = "cannot create the folder" if len(created) < len(missing) else "cannot write in the folder"
        raise RunFolderError(f"{label} {path}: {verb} ({e.strerror or e})") from None
    return created


def remove_created(created: Sequence[Path]) -> None:
    """Remove folders `prepare_output_dir` created, innermost first, where still empty."""
    for d in reversed(list(created)):
        try:
            d.rmdir()
        except OSError:
            return


# -- SIGINT / SIGTERM ------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `signal` names it."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal = signal_name


class InterruptSignals:
    """Turn SIGINT and SIGTERM into `Interrupted` in the main thread, for a command that then
    writes what is final and exits 130. Inside `held()` a signal waits until the block ends
    (a video's outputs and their record are written together). Restores the previous
    handlers on exit. Outside the main thread it does nothing."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.received: str | None = None
        self._hold = 0
        self._pending = False
        self._previous: dict = {}

    def _handler(self, signum, frame):
        self.received = _signal.Signals(signum).name
        if self._hold:
            self._pending = True
            return
        raise Interrupted(self.received)

    def __enter__(self) -> "InterruptSignals":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(_signal, name, None)
                if sig is not None:
                    self._previous[sig] = _signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, prev in self._previous.items():
            _signal.signal(sig, prev)
        self._previous.clear()

    def reinstall(self) -> None:
        """Put the handlers back after a library replaced them (ray.init installs its own for
        SIGTERM); the handlers saved at __enter__ are still the ones restored on exit."""
        if threading.current_thread() is threading.main_thread():
            for sig in self._previous:
                _signal.signal(sig, self._handler)

    @contextmanager
    def held(self):
        self._hold += 1
        try:
            yield
        finally:
            self._hold -= 1
        if not self._hold and self._pending:
            self._pending = False
            raise Interrupted(self.received or "SIGINT")


def claim_output_dir(folder: str | os.PathLike, model: ModelIdentity, *, overwrite: bool = False,
                     label: str = "--out") -> RunRecord | None:
    """May a run of `model` write into the existing `folder`? Returns the earlier run whose
    files are to be removed first (`remove_listed`), or None; RunFolderError when refused.

    - empty: yes. - written by the same model (digest and precision): yes, and its outputs are
      replaced (so nothing stale stays, e.g. of a video that fails this time).
    - written by another model: only with overwrite, which removes exactly the files that run
      listed. - not empty and no usable summary.json (not a bnwvad-infer run): only with
      overwrite, which then removes nothing (no run lists those files).
    """
    folder = Path(folder)
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return None
    try:
        rec, why = read_run(folder), None
    except RunFolderError as e:
        rec, why = None, f"its {SUMMARY_FILE} cannot be used ({e})"
    if rec is None:
        if overwrite:
            return None
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunFolderError(
            f"{label} {folder}: not empty ({len(entries)} entries: {shown}) and "
            f"{why or f'holds no {SUMMARY_FILE}'}, so it is not a bnwvad-infer run folder and this run's "
            f"outputs would mix with files of unknown origin. Fix: a new or empty {label}, or "
            f"--overwrite to write into it anyway (it removes nothing there: no run lists those files)")
    same = (rec.model.digest, rec.model.precision) == (model.digest, model.precision)
    if same or overwrite:
        return rec
    by = f", model {rec.model_path}" if rec.model_path else ""
    raise RunFolderError(
        f"{label} {folder}: holds the outputs of another model (weights {rec.model.describe()}{by}, "
        f"per its {SUMMARY_FILE}); this model is {model.describe()}. Fix: a new {label}, or "
        f"--overwrite to remove the {len(rec.files)} file(s) that run wrote (listed in its "
        f"{SUMMARY_FILE}) and nothing else")
