"""The training loop: the published recipe as a library function, resumable and logged.

    result = train(model_cfg, train_cfg, data, run)

- Each step draws B normal and B abnormal samples (`bnwvad.data.BatchLoader`, prefetched in
  threads) and runs `bnwvad.optim.train_step`, the published optimisation step.
- Every `train_cfg.eval_every` steps and at the last one the model is evaluated on the
  test split (`bnwvad.evaluate.evaluate_model`). `best.pt` keeps the weights with the best
  `run.select_metric` (AP for XD-Violence and the demo, AUC for UCF-Crime and ShanghaiTech,
  as the papers report them). Selecting a checkpoint on the test split is what the
  published numbers do (the published code saves `xd_best_*.pkl` by test AP); it makes
  them optimistic, and `last.pt` is the honest end-of-training model. Both are said in
  the log.
- Before step 0 every file of the lists is checked from its .npy header
  (`bnwvad.data.check_files`): one missing or broken file among thousands fails the run
  before anything is written, with every bad file named (DataCheckError), instead of at
  the step that first samples it, hours in.
- Files in `run.out_dir`, the run folder, and nothing outside it: `run.json` (every
  setting, the run id, the folder's identity), `metrics.jsonl` (one JSON record per log
  step and evaluation, each with the run id), `last.pt` (weights + everything `resume`
  needs, written at step 0, at each evaluation, at the end and on Ctrl-C), `best.pt`.
  Checkpoints carry the run id, the preset and the crop count per video, are written
  atomically (temporary file + rename) and load with `torch.load(weights_only=True)`.
- Paths in run.json are relative to the run folder (data paths also absolute, as they
  were at the start, as a fallback), so a run folder can be moved and resumed from any
  working directory: `read_run(folder)` rebuilds the settings. A moved folder resumes
  as the same run; a copied folder (the original still holds a run.json with the same
  run id) resumes as a new run, forked from the original at its last step, and never
  writes to the original. A last.pt of another run in the folder is refused.
- `run.resume=True` continues from `last.pt` exactly: weights, BatchNorm statistics, Adam
  state, step, RNG states and sampler positions (the batch of a step is a pure function of
  the seed and the step, so the position is the step; the sample lists' digests must
  match). On the same device an interrupted-and-resumed run ends with the same weights as
  an uninterrupted one.
- Same seed, same data, same device: same result (CPU bitwise; on CUDA deterministic
  algorithms are requested).
- A NaN/inf loss or gradient norm stops the run with NonFiniteLossError; that step's
  weights are not saved, `last.pt` stays the last good checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ._version import __version__
from .atomic import atomic_write_bytes
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import (AudioSource, BatchLoader, DataCheckError, FileCheck, LoaderConfig, Sample, check_files,
                   fingerprint, legacy_fingerprint, load_test_features, load_test_videos,
                   load_train_samples)
from .features import Video
from .model import BNWVAD
from .optim import make_optimizer, train_step

SELECTION_NOTE = ("best.pt is selected by a metric on the TEST split, as the published code does "
                  "(it keeps the checkpoint with the best test AP/AUC); numbers from best.pt are "
                  "therefore optimistic. last.pt is the model at the end of training.")
# The metric each benchmark's papers report, used to pick best.pt.
DEFAULT_SELECT_METRIC = {"ucf": "auc", "shanghaitech": "auc", "xd": "ap", "demo": "ap"}
# Train-config fields that may change when a run is resumed (they do not change the
# batches or the updates of the steps already done).
RESUMABLE_CHANGES = ("iterations", "eval_every", "extra")
RUN_FILE = "run.json"
RUN_FORMAT = "bnwvad-run"
RUN_FORMAT_VERSION = 2          # 1: paths as given (relative to the working directory), no run id


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad resume, config mismatch, ...)."""


class RunFolderError(TrainingError):
    """The run folder holds no run, or one that cannot be resumed there."""


class NonFiniteLossError(TrainingError):
    """The loss or gradient norm became NaN/inf; the run stopped."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run stopped between two steps after saving last.pt."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# -- configuration --------------------------------------------------------------------------
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


@dataclass
class TrainResult:
    out_dir: Path
    step: int                             # steps done in all (the step last.pt holds)
    steps_run: int                        # steps done by this call (fewer when resumed)
    last_checkpoint: Path
    best_checkpoint: Path | None
    select_metric: str
    best_value: float | None
    best_step: int | None
    final_metrics: dict[str, Any] | None  # the last evaluation (at the last step)
    data_wait_s: float                    # mean seconds per step waiting for data
    compute_s: float                      # mean seconds per step in train_step
    seconds: float
    device: str
    run_id: str | None = None
    crops: int | None = None              # crops per video recorded in the checkpoints


# -- small helpers ----------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto': CUDA when available, else CPU. A CUDA request without CUDA is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here; "
                         f"use --device cpu or auto")
    return dev


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _plain(obj: Any) -> Any:
    """Numbers and containers only (numpy scalars -> Python), for JSON and weights_only."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
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
        line = json.dumps(_plain(record), allow_nan=False)
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


@contextlib.contextmanager
def _stop_on_sigint() -> Iterator[threading.Event]:
    """First Ctrl-C sets the event (the loop stops after the current step and saves);
    a second one interrupts at once. Only installed in the main thread."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if stop.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CUDA (index_put's atomics, cuBLAS workspaces); CPU is already."""
    if device.type != "cuda":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _diff(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


def _scalar_metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None}


# -- test set -------------------------------------------------------------------------------
@dataclass
class _TestSet:
    videos: list[Video]
    annotations: dict
    snippets: dict[str, int] | None


def _load_test_set(data: DataSpec, videos: list[Video] | None = None) -> _TestSet | None:
    if data.test_list is None:
        return None
    from .metrics import EvaluationError, read_annotations, read_snippet_counts

    if videos is None:
        videos = load_test_videos(data.test_list, data.root, audio=data.audio)
    annotations = read_annotations(data.annotations)
    snippets = None
    if data.snippets is not None and data.audio is None:
        try:
            snippets = read_snippet_counts(data.snippets, videos, list_file=data.test_list)
        except EvaluationError as e:
            raise TrainingError(str(e)) from None
    return _TestSet(videos, annotations, snippets)


def _evaluate(model: BNWVAD, test: _TestSet, device: torch.device) -> dict[str, Any]:
    from .evaluate import evaluate_model

    if not any("audio" in v.extra for v in test.videos):
        return evaluate_model(model, test.videos, test.annotations, device=device,
                              snippets=test.snippets)
    # Audio appended: bnwvad.evaluate reads visual features only, so score here with the
    # loader that appends the audio, and compute the metrics with the same protocol code.
    from .metrics import evaluate_scores

    was_training = model.training
    model.eval()
    scores = {}
    try:
        with torch.no_grad():
            for v in test.videos:
                x = load_test_features(v, feature_dim=model.config.feature_dim)
                out = model(torch.from_numpy(x).unsqueeze(0).to(device))
                scores[v.name] = out.anomaly[0].float().cpu().numpy()
    finally:
        model.train(was_training)
    return evaluate_scores(scores, test.videos, test.annotations)


# -- run folders: run.json, identity, resume ------------------------------------------------
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
    from .config import ModelConfig as _MC

    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(f"{folder} holds no bnwvad-train run (no such folder)")
    path = folder / RUN_FILE
    if not path.is_file():
        raise RunFolderError(f"{folder} holds no bnwvad-train run (no {RUN_FILE})")
    try:
        saved = _read_json(path)
        model_cfg = _MC.from_dict(saved["model"])
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
class _Lineage:
    """How the folder being resumed relates to the folder its run.json was written in."""

    relation: str                 # same | moved | copied | legacy
    origin: str | None            # the folder recorded in run.json (moved / copied)
    old_run_id: str | None        # the run id in run.json
    run_id: str                   # the id this run continues as (new for a copy)


def _lineage(folder: Path, saved: dict[str, Any]) -> _Lineage:
    """same, moved or copied: a copied folder (the recorded folder still exists, is another
    folder, and holds a run.json with the same run id) continues as a new run."""
    old = saved.get("run_id")
    ident = saved.get("folder")
    if old is None or not isinstance(ident, dict):
        return _Lineage("legacy", None, None, old or new_run_id())
    now = _folder_identity(folder)
    if ident.get("path") == now["path"]:
        return _Lineage("same", None, old, old)
    if (ident.get("device"), ident.get("inode")) == (now["device"], now["inode"]):
        return _Lineage("moved", ident.get("path"), old, old)
    try:
        other = _read_json(Path(ident["path"]) / RUN_FILE)
        other_id = other.get("run_id")
        other_ident = other.get("folder") or {}
    except (OSError, ValueError, KeyError, TypeError):
        other_id, other_ident = None, {}
    if other_id == old and other_ident.get("path") == ident.get("path"):
        return _Lineage("copied", ident.get("path"), old, new_run_id())
    return _Lineage("moved", ident.get("path"), old, old)


# -- the loop -------------------------------------------------------------------------------
def _load_data(data: DataSpec, model_cfg: ModelConfig, progress: bool
               ) -> tuple[list[Sample], list[Sample], "_TestSet | None", FileCheck]:
    """Read the lists and check every file they name (headers only) before anything runs.

    Raises DataCheckError naming every bad file, or TrainingError when all features merely
    have another D than the model (with the hint for audio features)."""
    problems: list[str] = []
    normal, abnormal = load_train_samples(data.train_list, data.root, audio=data.audio, problems=problems)
    test_videos = None
    if data.test_list is not None:
        test_videos = load_test_videos(data.test_list, data.root, audio=data.audio, problems=problems)
    check = check_files(normal, abnormal, test_videos or (), feature_dim=model_cfg.feature_dim,
                        audio=data.audio, progress=progress, problems=problems)
    if check.problems:
        audio_dim = data.audio.dim if data.audio is not None else 0
        visual = [p for paths in check.dims.values() for p in paths]
        dims = list(check.dims)
        if (not problems and len(dims) == 1 and dims[0] + audio_dim != model_cfg.feature_dim
                and len(check.problems) == len(visual)):
            # Every visual file has one D, and it is not the model's: one line says it all.
            (dim, paths), = check.dims.items()
            total = dim + audio_dim
            raise TrainingError(
                f"{paths[0]}: the training features have D = {total}"
                + (" (visual + audio)" if data.audio else "")
                + f" but the model expects feature_dim = {model_cfg.feature_dim}"
                + ("; pass --audio-root/--audio-list for the 1152-d audio-visual model"
                   if not data.audio and model_cfg.feature_dim == dim + 128 else "")
                + f" (all {len(paths)} feature files have D = {dim})")
        raise DataCheckError(check.problems, check.checked + len(problems))
    test = None
    if test_videos is not None:
        test = _load_test_set(data, test_videos)
    return normal, abnormal, test, check


class PreparedRun:
    """A run whose settings, data and (when resuming) checkpoint were all checked, and which
    has written nothing yet: `run()` creates the run folder and trains. `prepare()` makes it."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, data: DataSpec, run: RunConfig):
        self.model_cfg, self.train_cfg, self.data, self.run_cfg = model_cfg, train_cfg, data, run
        self.t_start = time.perf_counter()
        self.device = resolve_device(run.device)
        if self.device.type == "cuda":
            # Deterministic cuBLAS needs this before its first use (see _deterministic).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        out = self.out = run.out_dir
        self.last_path, self.best_path = out / "last.pt", out / "best.pt"
        self.lineage: _Lineage | None = None
        self.saved: dict[str, Any] | None = None

        if run.resume:
            self.saved = read_run(out).saved           # RunFolderError: no run there
            if not self.last_path.is_file():
                raise RunFolderError(f"{self.last_path}: nothing to resume (no last.pt in {out})")
            self.lineage = _lineage(out, self.saved)
        elif self.last_path.exists():
            raise TrainingError(f"{out} already holds a run ({self.last_path} exists): pass --resume to "
                                f"continue it, or choose another --out")

        # Data first: every bad file fails here, before anything is written.
        self.normal, self.abnormal, self.test, check = _load_data(data, model_cfg, run.progress)
        self.crops = check.crops
        self.dim = model_cfg.feature_dim
        self.loader = BatchLoader(self.normal, self.abnormal, batch_size=train_cfg.batch_size,
                                  segments=train_cfg.segments, seed=train_cfg.seed, feature_dim=self.dim,
                                  config=run.loader)
        self.fingerprints = {"normal": fingerprint(self.normal), "abnormal": fingerprint(self.abnormal)}

        torch.manual_seed(train_cfg.seed)
        self.model = BNWVAD(model_cfg).to(self.device)
        self.optimizer = make_optimizer(self.model, train_cfg)
        self.step = 0
        self.best: dict[str, Any] = {"metric": run.select_metric, "value": None, "step": None}
        if run.resume:
            legacy = {"normal": legacy_fingerprint(self.normal), "abnormal": legacy_fingerprint(self.abnormal)}
            self.step, self.best = _restore(self.last_path, self.model, self.optimizer, model_cfg, train_cfg,
                                            self.fingerprints, self.device, legacy_fingerprints=legacy,
                                            run_id=self.lineage.old_run_id if self.lineage else None)
            if self.best.get("metric") != run.select_metric:
                raise TrainingError(f"{self.last_path}: the run selects best.pt by {self.best.get('metric')!r}, "
                                    f"not {run.select_metric!r}; resume with the same --select-metric")
        self.run_id = self.lineage.run_id if self.lineage else new_run_id()

    # -- what the run folder records ----------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        out = self.out
        return {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "run_id": self.run_id,
                "folder": _folder_identity(out),
                "paths": "relative to this folder (the run folder); data_absolute: where the data "
                         "was when the run started, used when a relative path does not resolve",
                "model": self.model_cfg.to_dict(), "train": self.train_cfg.to_dict(),
                "data": self.data.relative_to(out), "data_absolute": self.data.absolute(),
                "run": self.run_cfg.settings(), "preset": self.run_cfg.preset, "crops": self.crops,
                "bnwvad_version": __version__}

    def _write_run_json(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        settings = self._settings()
        if self.saved is not None:
            for key in ("forked_from", "moved_from"):
                if key in self.saved:
                    settings[key] = self.saved[key]
        settings.update(extra or {})
        _atomic_write_text(self.out / RUN_FILE, json.dumps(_plain(settings), indent=2) + "\n")
        return settings

    def run(self, log: Callable[[str], None] | None = None) -> TrainResult:
        """Create (or reopen) the run folder and train; `log` gets the lines a person wants to
        see (the run folder once it exists, what a resume found)."""
        say = log or (lambda _msg: None)
        out, run, train_cfg, data = self.out, self.run_cfg, self.train_cfg, self.data
        model, optimizer, loader, device = self.model, self.optimizer, self.loader, self.device
        last_path, best_path = self.last_path, self.best_path
        step, best, test = self.step, self.best, self.test
        log_ = MetricsLog(out / "metrics.jsonl", self.run_id)
        if run.resume:
            lin = self.lineage
            assert lin is not None
            extra: dict[str, Any] = {}
            if lin.relation == "copied":
                extra["forked_from"] = {"run_id": lin.old_run_id, "folder": lin.origin, "step": step}
            elif lin.relation == "moved":
                extra["moved_from"] = lin.origin
            # run.json is rewritten (in this folder only): its identity, the id this folder
            # continues as, and the settings allowed to change on a resume.
            self._write_run_json(extra)
            log_.truncate_after(step)
            log_.append({"event": "resume", "step": step, "time": time.time(), "relation": lin.relation,
                         "origin": lin.origin, "previous_run_id": lin.old_run_id})
            say(f"resuming run {self.run_id} at step {step} in {out}  (metrics log {out / 'metrics.jsonl'})")
            if lin.relation == "moved":
                say(f"the run folder was moved from {lin.origin}: it resumes here, as the same run")
            elif lin.relation == "copied":
                say(f"{out} is a copy of run {lin.old_run_id} in {lin.origin}: it continues as run "
                    f"{self.run_id} (forked at step {step}) and writes only here; the original is not touched")
        else:
            out.mkdir(parents=True, exist_ok=True)
            log_.path.unlink(missing_ok=True)
            settings = self._write_run_json()
            say(f"run folder: {out}  (run {self.run_id}; metrics log {out / 'metrics.jsonl'})")
            log_.append({"event": "start", "step": 0, "time": time.time(), "device": str(device),
                         "normal_samples": len(self.normal), "abnormal_samples": len(self.abnormal),
                         "test_videos": len(test.videos) if test else 0,
                         "batch_bytes": loader.batch_bytes, "memory_bound_bytes": loader.memory_bound_bytes(),
                         "select_metric": run.select_metric, "note": SELECTION_NOTE, **settings})

        saved_step = step                     # the step last.pt holds
        fingerprints, run_id, crops = self.fingerprints, self.run_id, self.crops
        data_rel = data.relative_to(out)

        def state(at: int) -> dict[str, Any]:
            return {"step": at, "run_id": run_id, "optimizer": optimizer.state_dict(), "rng": _rng_state(device),
                    "sampler": loader.positions(at), "fingerprints": dict(fingerprints), "best": dict(best),
                    "train_config": train_cfg.to_dict()}

        def meta(at: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
            return _plain({"step": at, "run_id": run_id, "dataset": data.dataset, "metrics": metrics,
                           "best": best, "select_metric": run.select_metric, "selection_note": SELECTION_NOTE,
                           "train_config": train_cfg.to_dict(), "data": data_rel,
                           "bnwvad_version": __version__})

        def save_last(at: int, metrics: dict[str, Any] | None) -> None:
            nonlocal saved_step
            save_checkpoint(last_path, model, preset=run.preset, crops=crops, meta=meta(at, metrics),
                            train_state=state(at))
            saved_step = at

        final_metrics: dict[str, Any] | None = None
        # A live bar on a terminal; into a file or pipe, a line every 30 s is plenty.
        bar = tqdm(total=train_cfg.iterations, initial=step, desc="train", unit="it", dynamic_ncols=True,
                   disable=not run.progress, file=sys.stderr,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)

        def evaluate(at: int) -> dict[str, Any] | None:
            nonlocal final_metrics
            if test is None:
                return None
            t0 = time.perf_counter()
            metrics = _evaluate(model, test, device)
            value = metrics.get(run.select_metric)
            improved = value is not None and (best["value"] is None or value > best["value"])
            if improved:
                best.update(value=float(value), step=at)
            scal = _scalar_metrics(metrics)
            log_.append({"event": "eval", "step": at, **scal, "per_class": metrics.get("per_class"),
                         "is_best": improved, "best": dict(best), "eval_s": time.perf_counter() - t0})
            if improved:
                save_checkpoint(best_path, model, preset=run.preset, crops=crops, meta=meta(at, scal))
            if run.progress:
                bar.write(f"step {at}/{train_cfg.iterations}: AUC {_pct(metrics.get('auc'))}  "
                          f"AP {_pct(metrics.get('ap'))}  (best {run.select_metric.upper()} "
                          f"{_pct(best['value'])} at step {best['step']})", file=sys.stderr)
            final_metrics = scal
            return scal

        if not run.resume:
            metrics0 = evaluate(0) if run.eval_at_start else None
            save_last(0, metrics0)

        waits: list[float] = []
        computes: list[float] = []
        batches = loader.batches(step, train_cfg.iterations)
        try:
            with _stop_on_sigint() as stop, _deterministic(device):
                for at in range(step + 1, train_cfg.iterations + 1):
                    batch = next(batches)
                    normal_x = torch.from_numpy(batch.normal).to(device)       # (B, T, D)
                    abnormal_x = torch.from_numpy(batch.abnormal).to(device)   # (B, T, D)
                    waits.append(batch.wait_s)
                    del batch
                    t0 = time.perf_counter()
                    losses = train_step(model, optimizer, normal_x, abnormal_x, train_cfg.grad_clip)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    computes.append(time.perf_counter() - t0)
                    del normal_x, abnormal_x
                    if not (math.isfinite(losses["total"]) and math.isfinite(losses["grad_norm"])):
                        msg = (f"step {at}: non-finite training loss (total={losses['total']}, "
                               f"normal={losses['normal']}, mpp={losses['mpp']}, grad_norm={losses['grad_norm']}); "
                               f"stopped. The weights of this step were not saved: {last_path} holds the last "
                               f"good state (step {saved_step}). Try a lower --lr or check the features.")
                        log_.append({"event": "stopped", "step": at, "reason": "non-finite loss", **losses})
                        raise NonFiniteLossError(msg)
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['total']:.3f}", nor=f"{losses['normal']:.3f}",
                                    mpp=f"{losses['mpp']:.3f}", sel=losses["n_selected"], refresh=False)
                    if at % run.log_every == 0 or at == train_cfg.iterations:
                        log_.append({"event": "train", "step": at, "loss": losses["total"],
                                     "normal": losses["normal"], "mpp": losses["mpp"],
                                     "mpp_per_layer": losses["mpp_per_layer"], "n_selected": losses["n_selected"],
                                     "grad_norm": losses["grad_norm"], "lr": optimizer.param_groups[0]["lr"],
                                     "data_wait_s": float(np.mean(waits[-run.log_every:])),
                                     "compute_s": float(np.mean(computes[-run.log_every:]))})
                    if at % train_cfg.eval_every == 0 or at == train_cfg.iterations:
                        metrics = evaluate(at)
                        save_last(at, metrics)
                    if stop.is_set() and at < train_cfg.iterations:
                        if at % train_cfg.eval_every:
                            save_last(at, None)
                        log_.append({"event": "interrupted", "step": at})
                        raise TrainingInterrupted(
                            f"interrupted at step {at}; {last_path} saved: continue with --resume --out {out}", at)
        finally:
            batches.close()
            bar.close()

        log_.append({"event": "done", "step": train_cfg.iterations, "best": dict(best),
                     "seconds": time.perf_counter() - self.t_start,
                     "data_wait_s": float(np.mean(waits)) if waits else 0.0,
                     "compute_s": float(np.mean(computes)) if computes else 0.0})
        return TrainResult(
            out_dir=out, step=max(step, train_cfg.iterations), steps_run=len(computes), last_checkpoint=last_path,
            best_checkpoint=best_path if best_path.is_file() else None, select_metric=run.select_metric,
            best_value=best["value"], best_step=best["step"], final_metrics=final_metrics,
            data_wait_s=float(np.mean(waits)) if waits else 0.0,
            compute_s=float(np.mean(computes)) if computes else 0.0,
            seconds=time.perf_counter() - self.t_start, device=str(device), run_id=run_id, crops=crops)


def prepare(model_cfg: ModelConfig, train_cfg: TrainConfig, data: DataSpec, run: RunConfig) -> PreparedRun:
    """Check everything a run needs, write nothing: the settings, the run folder (a new run
    must not overwrite one; a resumed one must hold this run's last.pt), every data file's
    header, the checkpoint to resume. Every error here means nothing ran (exit status 2)."""
    return PreparedRun(model_cfg, train_cfg, data, run)


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: DataSpec, run: RunConfig, *,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train BN-WVAD with the published recipe; see the module docstring.

    `prepare(...).run(log)`. Raises TrainingError (bad resume or settings; RunFolderError for
    a folder without a run), bnwvad.data.DataCheckError (every bad list or feature file,
    named, before anything is written), bnwvad.features.FeatureFileError (a bad list file),
    NonFiniteLossError (NaN/inf; last.pt is the last good checkpoint), TrainingInterrupted
    (Ctrl-C; last.pt saved at that step).
    """
    return prepare(model_cfg, train_cfg, data, run).run(log)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _restore(path: Path, model: BNWVAD, optimizer: torch.optim.Optimizer, model_cfg: ModelConfig,
             train_cfg: TrainConfig, fingerprints: dict[str, str], device: torch.device, *,
             legacy_fingerprints: dict[str, str] | None = None, run_id: str | None = None
             ) -> tuple[int, dict[str, Any]]:
    """Load last.pt into model/optimizer/RNG after checking it belongs to this run (its run
    id, when both it and run.json have one; the model, the recipe and the samples)."""
    obj = read_checkpoint(path)
    ts = obj.get("train_state") if isinstance(obj, dict) else None
    if not isinstance(ts, dict):
        raise TrainingError(f"{path}: holds no training state (a best.pt or a published "
                            f"state_dict?); resume needs the last.pt of a run")
    own = ts.get("run_id")
    if own is not None and run_id is not None and own != run_id:
        raise RunFolderError(f"{path} belongs to run {own}, but {path.parent / RUN_FILE} to run {run_id}: "
                             f"the folder mixes two runs; refusing to resume (put the run's own last.pt "
                             f"back, or start a new run in another folder)")
    saved_model = obj.get("config", {})
    diff = _diff(saved_model, model_cfg.to_dict())
    if diff:
        raise TrainingError(f"{path}: the model settings differ from the run being resumed: "
                            f"{'; '.join(diff)}")
    diff = _diff(ts.get("train_config", {}), train_cfg.to_dict(), ignore=RESUMABLE_CHANGES)
    if diff:
        raise TrainingError(f"{path}: the training recipe differs from the run being resumed "
                            f"(only {', '.join(RESUMABLE_CHANGES)} may change): {'; '.join(diff)}")
    if ts.get("fingerprints") not in (fingerprints, legacy_fingerprints):
        raise TrainingError(f"{path}: the training list's samples changed since the run started "
                            f"(saved {ts.get('fingerprints')}, now {fingerprints}); resume needs the same data")
    try:
        model.load_state_dict(obj["state_dict"])
        optimizer.load_state_dict(ts["optimizer"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot restore the training state: {e}") from None
    _set_rng_state(ts["rng"], device)
    best = dict(ts.get("best") or {})
    return int(ts["step"]), best


__all__ = ["DEFAULT_SELECT_METRIC", "DataSpec", "NonFiniteLossError", "PreparedRun", "RUN_FILE",
           "RunConfig", "RunFolderError", "SELECTION_NOTE", "SavedRun", "TrainResult", "TrainingError",
           "TrainingInterrupted", "prepare", "read_run", "resolve_device", "train"]
