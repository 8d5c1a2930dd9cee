"""A training run's folder: the settings run.json records, its identity, its metrics log.

Files in the run folder (`RunConfig.out_dir`), and nothing outside it: `run.json` (every
setting, the run id, the folder's identity; `write_run_json`), `metrics.jsonl` (one JSON
record per log step and evaluation, each with the run id; `MetricsLog`), and the
checkpoints `last.pt` / `best.pt` the training loop writes (`bnwvad.train`).

Paths in run.json are relative to the run folder (data paths also absolute, as they were
at the start, as a fallback), so a run folder can be moved and resumed from any working
directory: `read_run(folder)` rebuilds the settings. A moved folder resumes as the same
run; a copied folder (the original still holds a run.json with the same run id) resumes
as a new run, forked from the original at its last step, and never writes to the
original (`lineage`). No torch here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .atomic import atomic_write_bytes
from .config import ModelConfig, TrainConfig
from .data import LoaderConfig
from .samples import AudioSource

RUN_FILE = "run.json"
RUN_FORMAT = "bnwvad-run"
RUN_FORMAT_VERSION = 2          # 1: paths as given (relative to the working directory), no run id


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad resume, config mismatch, ...)."""


class RunFolderError(TrainingError):
    """The run folder holds no run, or one that cannot be resumed there."""


# -- settings -------------------------------------------------------------------------------
def _relpath(p: Path, folder: Path) -> str:
    """`p` relative to `folder` (both as seen from the working directory)."""
    try:
        return os.path.relpath(os.path.abspath(p), os.path.abspath(folder))
    except ValueError:            # another drive (Windows): no relative path exists
        return os.path.abspath(p)


@dataclass
class DataSpec:
    """Where a run's data is. Paths resolve as given (relative to the working directory);
    run.json stores them relative to the run folder (`relative_to`), and as absolute paths
    for a fallback (`absolute`); `from_run` turns them back into paths."""

    PATHS = ("train_list", "root", "test_list", "annotations", "snippets", "audio_root")

    dataset: str                          # ucf | xd | shanghaitech | demo | custom
    train_list: Path
    root: Path | None = None              # the lists' paths resolve against it (None: list's folder)
    test_list: Path | None = None         # None: no evaluation
    annotations: Path | None = None
    snippets: Path | None = None          # optional test_snippets.csv (checks the test lengths)
    audio_root: Path | None = None
    audio_lists: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        for name in ("train_list", "root", "test_list", "annotations", "snippets", "audio_root"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, Path(v))
        self.audio_lists = tuple(Path(p) for p in self.audio_lists)
        if self.test_list is not None and self.annotations is None:
            raise ValueError(f"test list {self.test_list} given without an annotation file")

    @property
    def audio(self) -> AudioSource | None:
        if self.audio_root is None and not self.audio_lists:
            return None
        return AudioSource(self.audio_root, self.audio_lists)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: (None if v is None else [str(p) for p in v] if isinstance(v, tuple) else
                    str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        return cls(**{**d, "audio_lists": tuple(d.get("audio_lists") or ())})

    def relative_to(self, folder: Path) -> dict[str, Any]:
        """to_dict() with every path relative to `folder` (the run folder)."""
        d = self.to_dict()
        for name in self.PATHS:
            if d[name] is not None:
                d[name] = _relpath(Path(d[name]), folder)
        d["audio_lists"] = [_relpath(Path(p), folder) for p in d["audio_lists"]]
        return d

    def absolute(self) -> dict[str, Any]:
        d = self.to_dict()
        for name in self.PATHS:
            if d[name] is not None:
                d[name] = os.path.abspath(d[name])
        d["audio_lists"] = [os.path.abspath(p) for p in d["audio_lists"]]
        return d

    @classmethod
    def from_run(cls, relative: dict[str, Any], absolute: dict[str, Any] | None, folder: Path,
                 where: str = RUN_FILE) -> "DataSpec":
        """The DataSpec of a run.json: each path relative to the run `folder` when it exists
        there, else where it was when the run started (`absolute`); RunFolderError when
        neither exists."""
        folder = Path(folder)
        absolute = absolute or {}

        def pick(name: str, rel: str, abs_: str | None) -> str:
            first = os.path.normpath(folder / rel)
            if Path(first).exists() or Path(rel).is_absolute():
                return first
            if abs_ and Path(abs_).exists():
                return abs_
            where_now = f"at {first} (its path relative to the run folder)"
            if abs_ and abs_ != first:
                where_now = f"neither {where_now} nor at {abs_} (where it was when the run started)"
            raise RunFolderError(f"{where}: the run's {name.replace('_', ' ')} is not there: "
                                 f"{where_now}; put the data back, or start a new run")

        d = dict(relative)
        for name in cls.PATHS:
            if d.get(name) is not None:
                d[name] = pick(name, d[name], absolute.get(name))
        abs_lists = list(absolute.get("audio_lists") or [])
        d["audio_lists"] = tuple(pick("audio list", p, abs_lists[i] if i < len(abs_lists) else None)
                                 for i, p in enumerate(d.get("audio_lists") or ()))
        return cls(**d)


@dataclass
class RunConfig:
    """How a run is executed and recorded (not the recipe)."""

    out_dir: Path
    device: str = "auto"                  # auto (CUDA when present) | cpu | cuda | cuda:N
    resume: bool = False
    select_metric: str = "ap"             # metric of the periodic evaluation that picks best.pt
    log_every: int = 10                   # a training record in metrics.jsonl every N steps
    eval_at_start: bool = False           # also evaluate the untrained model (step 0)
    progress: bool = True                 # tqdm bar and one line per evaluation on stderr
    preset: str | None = None             # stored in checkpoints (ucf / xd / shanghaitech)
    loader: LoaderConfig = field(default_factory=LoaderConfig)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.select_metric not in ("ap", "auc", "average_precision", "auc_sub", "ap_sub"):
            raise ValueError(f"select_metric={self.select_metric!r}: expected ap, auc, "
                             f"average_precision, auc_sub or ap_sub")
        if self.log_every < 1:
            raise ValueError(f"log_every={self.log_every}: expected at least 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d

    def settings(self) -> dict[str, Any]:
        """What run.json records: to_dict() without the folder itself and the resume flag
        (the folder is where run.json is; paths in a run are relative to it)."""
        d = dataclasses.asdict(self)
        del d["out_dir"], d["resume"]
        return d


@dataclass
class SavedRun:
    """The settings of a run folder's run.json (`read_run`), ready to resume."""

    folder: Path
    model: ModelConfig
    train: TrainConfig
    data: DataSpec
    run: RunConfig                # out_dir = folder, resume = True
    run_id: str | None            # None: a run.json written before run ids
    saved: dict[str, Any]         # run.json as read


# -- writing: plain JSON values, metrics.jsonl ---------------------------------------------
def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def plain(obj: Any) -> Any:
    """Numbers and containers only (numpy scalars -> Python), for JSON and weights_only."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed as records come; each
    record carries the run id."""

    def __init__(self, path: Path, run_id: str | None = None):
        self.path = path
        self.run_id = run_id

    def append(self, record: dict[str, Any]) -> None:
        if self.run_id is not None:
            record = {**record, "run_id": self.run_id}
        line = json.dumps(plain(record), allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step` (written after the checkpoint we resume from)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue                      # a line cut by a crash
            if int(rec.get("step", 0)) <= step:
                keep.append(line)
        _atomic_write_text(self.path, "".join(k + "\n" for k in keep))


# -- run.json, the folder's identity --------------------------------------------------------
def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def _folder_identity(folder: Path) -> dict[str, Any]:
    """What tells this folder from a copy of it: its real path and its inode."""
    st = folder.stat()
    return {"path": os.path.realpath(folder), "device": int(st.st_dev), "inode": int(st.st_ino)}


def _read_json(path: Path) -> dict[str, Any]:
    obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, found {type(obj).__name__}")
    return obj


def read_run(folder: str | os.PathLike) -> SavedRun:
    """The settings of the run in `folder` (its run.json), to resume it there.

    Works from any working directory and after the folder was moved: paths are read
    relative to the folder (`DataSpec.from_run`). RunFolderError when the folder holds no
    run ("DIR holds no bnwvad-train run (no run.json)") or an unreadable run.json.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"{folder} holds no bnwvad-train run (no such folder)")
    path = folder / RUN_FILE
    if not path.is_file():
        raise RunFolderError(f"{folder} holds no bnwvad-train run (no {RUN_FILE})")
    try:
        saved = _read_json(path)
        model_cfg = ModelConfig.from_dict(saved["model"])
        tk = dict(saved["train"])
        tk["betas"] = tuple(tk["betas"])
        train_cfg = TrainConfig(**tk)
        if saved.get("format") == RUN_FORMAT:
            data = DataSpec.from_run(saved["data"], saved.get("data_absolute"), folder, where=str(path))
        else:                     # version 1: paths as given, relative to the working directory
            data = DataSpec.from_dict(saved["data"])
        rk = dict(saved["run"])
        known = {f.name for f in dataclasses.fields(RunConfig)} - {"out_dir", "resume", "loader"}
        loader = LoaderConfig(**rk.get("loader", {}))
        run = RunConfig(folder, resume=True, loader=loader, **{k: v for k, v in rk.items() if k in known})
    except RunFolderError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise RunFolderError(f"{path}: not a readable bnwvad-train run.json ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise RunFolderError(f"{path}: cannot be read ({e})") from None
    return SavedRun(folder, model_cfg, train_cfg, data, run, saved.get("run_id"), saved)


@dataclass
class Lineage:
    """How the folder being resumed relates to the folder its run.json was written in."""

    relation: str                 # same | moved | copied | legacy
    origin: str | None            # the folder recorded in run.json (moved / copied)
    old_run_id: str | None        # the run id in run.json
    run_id: str                   # the id this run continues as (new for a copy)


def lineage(folder: Path, saved: dict[str, Any]) -> Lineage:
    """same, moved or copied: a copied folder (the recorded folder still exists, is another
    folder, and holds a run.json with the same run id) continues as a new run."""
    old = saved.get("run_id")
    ident = saved.get("folder")
    if old is None or not isinstance(ident, dict):
        return Lineage("legacy", None, None, old or new_run_id())
    now = _folder_identity(folder)
    if ident.get("path") == now["path"]:
        return Lineage("same", None, old, old)
    if (ident.get("device"), ident.get("inode")) == (now["device"], now["inode"]):
        return Lineage("moved", ident.get("path"), old, old)
    try:
        other = _read_json(Path(ident["path"]) / RUN_FILE)
        other_id = other.get("run_id")
        other_ident = other.get("folder") or {}
    except (OSError, ValueError, KeyError, TypeError):
        other_id, other_ident = None, {}
    if other_id == old and other_ident.get("path") == ident.get("path"):
        return Lineage("copied", ident.get("path"), old, new_run_id())
    return Lineage("moved", ident.get("path"), old, old)


def write_run_json(folder: Path, run_id: str, model: ModelConfig, train: TrainConfig, data: DataSpec,
                   run: RunConfig, crops: int | None, *, saved: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `folder`/run.json (atomically): every setting, the run id, the folder's identity,
    paths relative to the folder. A resumed run keeps the `forked_from` / `moved_from` of its
    `saved` run.json; `extra` adds keys. Returns the settings written."""
    settings = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "run_id": run_id,
                "folder": _folder_identity(folder),
                "paths": "relative to this folder (the run folder); data_absolute: where the data "
                         "was when the run started, used when a relative path does not resolve",
                "model": model.to_dict(), "train": train.to_dict(),
                "data": data.relative_to(folder), "data_absolute": data.absolute(),
                "run": run.settings(), "preset": run.preset, "crops": crops,
                "bnwvad_version": __version__}
    if saved is not None:
        for key in ("forked_from", "moved_from"):
            if key in saved:
                settings[key] = saved[key]
    settings.update(extra or {})
    _atomic_write_text(folder / RUN_FILE, json.dumps(plain(settings), indent=2) + "\n")
    return settings


__all__ = ["DataSpec", "Lineage", "MetricsLog", "RUN_FILE", "RunConfig", "RunFolderError", "SavedRun",
           "TrainingError", "lineage", "new_run_id", "plain", "read_run", "write_run_json"]
