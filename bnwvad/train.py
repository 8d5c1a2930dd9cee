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
- Files in `run.out_dir`: `run.json` (every setting), `metrics.jsonl` (one JSON record per
  log step and evaluation), `last.pt` (weights + everything `resume` needs, written at
  step 0, at each evaluation, at the end and on Ctrl-C), `best.pt`. Checkpoints are
  written atomically (temporary file + rename) and load with `torch.load(weights_only=True)`.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ._version import __version__
from .atomic import atomic_write_bytes
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import (AudioSource, BatchLoader, LoaderConfig, Sample, fingerprint, load_test_features,
                   load_test_videos, load_train_samples)
from .features import Video, load_features
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


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad resume, config mismatch, ...)."""


class NonFiniteLossError(TrainingError):
    """The loss or gradient norm became NaN/inf; the run stopped."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run stopped between two steps after saving last.pt."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# -- configuration --------------------------------------------------------------------------
@dataclass
class DataSpec:
    """Where a run's data is. Paths resolve as given (relative to the working directory)."""

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
    """metrics.jsonl: one JSON object per line, appended and flushed as records come."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
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


def _load_test_set(data: DataSpec) -> _TestSet | None:
    if data.test_list is None:
        return None
    from .metrics import EvaluationError, read_annotations, read_snippet_counts

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


# -- the loop -------------------------------------------------------------------------------
def _first_dim(samples: list[Sample]) -> int:
    s = samples[0]
    x = load_features(s.path, ndim=(2,) if s.crop is None else (3,))
    d = x.shape[-1]
    if s.audio is not None:
        d += load_features(s.audio, ndim=(2,)).shape[-1]
    return int(d)


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: DataSpec, run: RunConfig) -> TrainResult:
    """Train BN-WVAD with the published recipe; see the module docstring.

    Raises TrainingError (bad resume or settings), NonFiniteLossError (NaN/inf; last.pt is
    the last good checkpoint), TrainingInterrupted (Ctrl-C; last.pt saved at that step),
    bnwvad.features.FeatureFileError (a bad list or feature file, named).
    """
    t_start = time.perf_counter()
    device = resolve_device(run.device)
    if device.type == "cuda":
        # Deterministic cuBLAS needs this before its first use (see _deterministic).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    out = run.out_dir
    last_path, best_path = out / "last.pt", out / "best.pt"
    log = MetricsLog(out / "metrics.jsonl")

    if run.resume and not last_path.is_file():
        raise TrainingError(f"{last_path}: nothing to resume (no last.pt in {out})")
    if not run.resume and last_path.exists():
        raise TrainingError(f"{out} already holds a run ({last_path} exists): pass --resume to "
                            f"continue it, or choose another --out")

    # Data first: a bad file should fail before anything is written.
    normal, abnormal = load_train_samples(data.train_list, data.root, audio=data.audio)
    dim = _first_dim(normal)
    if dim != model_cfg.feature_dim:
        raise TrainingError(
            f"{normal[0].path}: the training features have D = {dim}"
            + (" (visual + audio)" if data.audio else "")
            + f" but the model expects feature_dim = {model_cfg.feature_dim}"
            + ("; pass --audio-root/--audio-list for the 1152-d audio-visual model"
               if model_cfg.feature_dim == dim + 128 else ""))
    test = _load_test_set(data)
    loader = BatchLoader(normal, abnormal, batch_size=train_cfg.batch_size, segments=train_cfg.segments,
                         seed=train_cfg.seed, feature_dim=dim, config=run.loader)
    fingerprints = {"normal": fingerprint(normal), "abnormal": fingerprint(abnormal)}

    torch.manual_seed(train_cfg.seed)
    model = BNWVAD(model_cfg).to(device)
    optimizer = make_optimizer(model, train_cfg)
    step = 0
    best: dict[str, Any] = {"metric": run.select_metric, "value": None, "step": None}

    if run.resume:
        step, best = _restore(last_path, model, optimizer, model_cfg, train_cfg, fingerprints, device)
        if best.get("metric") != run.select_metric:
            raise TrainingError(f"{last_path}: the run selects best.pt by {best.get('metric')!r}, not "
                                f"{run.select_metric!r}; resume with the same --select-metric")
        log.truncate_after(step)
        log.append({"event": "resume", "step": step, "time": time.time()})
    else:
        out.mkdir(parents=True, exist_ok=True)
        log.path.unlink(missing_ok=True)
        settings = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "data": data.to_dict(),
                    "run": run.to_dict(), "bnwvad_version": __version__}
        _atomic_write_text(out / "run.json", json.dumps(_plain(settings), indent=2) + "\n")
        log.append({"event": "start", "step": 0, "time": time.time(), "device": str(device),
                    "normal_samples": len(normal), "abnormal_samples": len(abnormal),
                    "test_videos": len(test.videos) if test else 0,
                    "batch_bytes": loader.batch_bytes, "memory_bound_bytes": loader.memory_bound_bytes(),
                    "select_metric": run.select_metric, "note": SELECTION_NOTE, **settings})

    saved_step = step                     # the step last.pt holds

    def state(at: int) -> dict[str, Any]:
        return {"step": at, "optimizer": optimizer.state_dict(), "rng": _rng_state(device),
                "sampler": loader.positions(at), "fingerprints": dict(fingerprints), "best": dict(best),
                "train_config": train_cfg.to_dict()}

    def meta(at: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
        return _plain({"step": at, "dataset": data.dataset, "metrics": metrics, "best": best,
                       "select_metric": run.select_metric, "selection_note": SELECTION_NOTE,
                       "train_config": train_cfg.to_dict(), "data": data.to_dict(),
                       "bnwvad_version": __version__})

    def save_last(at: int, metrics: dict[str, Any] | None) -> None:
        nonlocal saved_step
        save_checkpoint(last_path, model, preset=run.preset, meta=meta(at, metrics), train_state=state(at))
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
        log.append({"event": "eval", "step": at, **scal, "per_class": metrics.get("per_class"),
                    "is_best": improved, "best": dict(best), "eval_s": time.perf_counter() - t0})
        if improved:
            save_checkpoint(best_path, model, preset=run.preset, meta=meta(at, scal))
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
                    log.append({"event": "stopped", "step": at, "reason": "non-finite loss", **losses})
                    raise NonFiniteLossError(msg)
                bar.update(1)
                bar.set_postfix(loss=f"{losses['total']:.3f}", nor=f"{losses['normal']:.3f}",
                                mpp=f"{losses['mpp']:.3f}", sel=losses["n_selected"], refresh=False)
                if at % run.log_every == 0 or at == train_cfg.iterations:
                    log.append({"event": "train", "step": at, "loss": losses["total"],
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
                    log.append({"event": "interrupted", "step": at})
                    raise TrainingInterrupted(
                        f"interrupted at step {at}; {last_path} saved: continue with --resume --out {out}", at)
    finally:
        batches.close()
        bar.close()

    log.append({"event": "done", "step": train_cfg.iterations, "best": dict(best),
                "seconds": time.perf_counter() - t_start,
                "data_wait_s": float(np.mean(waits)) if waits else 0.0,
                "compute_s": float(np.mean(computes)) if computes else 0.0})
    return TrainResult(
        out_dir=out, step=max(step, train_cfg.iterations), steps_run=len(computes), last_checkpoint=last_path,
        best_checkpoint=best_path if best_path.is_file() else None, select_metric=run.select_metric,
        best_value=best["value"], best_step=best["step"], final_metrics=final_metrics,
        data_wait_s=float(np.mean(waits)) if waits else 0.0,
        compute_s=float(np.mean(computes)) if computes else 0.0,
        seconds=time.perf_counter() - t_start, device=str(device))


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _restore(path: Path, model: BNWVAD, optimizer: torch.optim.Optimizer, model_cfg: ModelConfig,
             train_cfg: TrainConfig, fingerprints: dict[str, str], device: torch.device
             ) -> tuple[int, dict[str, Any]]:
    """Load last.pt into model/optimizer/RNG after checking it belongs to this run."""
    obj = read_checkpoint(path)
    ts = obj.get("train_state") if isinstance(obj, dict) else None
    if not isinstance(ts, dict):
        raise TrainingError(f"{path}: holds no training state (a best.pt or a published "
                            f"state_dict?); resume needs the last.pt of a run")
    saved_model = obj.get("config", {})
    diff = _diff(saved_model, model_cfg.to_dict())
    if diff:
        raise TrainingError(f"{path}: the model settings differ from the run being resumed: "
                            f"{'; '.join(diff)}")
    diff = _diff(ts.get("train_config", {}), train_cfg.to_dict(), ignore=RESUMABLE_CHANGES)
    if diff:
        raise TrainingError(f"{path}: the training recipe differs from the run being resumed "
                            f"(only {', '.join(RESUMABLE_CHANGES)} may change): {'; '.join(diff)}")
    if ts.get("fingerprints") != fingerprints:
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


__all__ = ["DEFAULT_SELECT_METRIC", "DataSpec", "NonFiniteLossError", "RunConfig", "SELECTION_NOTE",
           "TrainResult", "TrainingError", "TrainingInterrupted", "resolve_device", "train"]
