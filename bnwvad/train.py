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
  (`bnwvad.run_checks.load_run_data`): one missing or broken file among thousands fails the
  run before anything is written, with every bad file named (DataCheckError), instead of
  at the step that first samples it, hours in.
- Files in `run.out_dir`, the run folder, and nothing outside it (`bnwvad.run_folder`):
  `run.json` (every setting, the run id, the folder's identity), `metrics.jsonl` (one JSON
  record per log step and evaluation, each with the run id), `last.pt` (weights +
  everything `resume` needs, written at step 0, at each evaluation, at the end and on
  Ctrl-C), `best.pt`. Checkpoints carry the run id, the preset and the crop count per
  video, are written atomically (temporary file + rename) and load with
  `torch.load(weights_only=True)`. A run folder can be moved and resumed from any working
  directory (`read_run(folder)`); a copied one resumes as a new run, forked from the
  original, and never writes to the original. A last.pt of another run is refused.
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
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ._version import __version__
from .checkpoint import save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import BatchLoader, fingerprint, legacy_fingerprint
from .evaluate import evaluate_model, resolve_device
from .model import BNWVAD
from .optim import make_optimizer, train_step
from .run_checks import RunTestSet, load_run_data, restore_checkpoint
# DataSpec, RunConfig, SavedRun, read_run, RUN_FILE and the errors are part of this module's API
# (train() takes and raises them); they live with the run folder they describe.
from .run_folder import (RUN_FILE, DataSpec, Lineage, MetricsLog, RunConfig, RunFolderError, SavedRun,
                         TrainingError, lineage, new_run_id, plain, read_run, write_run_json)
from .samples import load_test_features

SELECTION_NOTE = ("best.pt is selected by a metric on the TEST split, as the published code does "
                  "(it keeps the checkpoint with the best test AP/AUC); numbers from best.pt are "
                  "therefore optimistic. last.pt is the model at the end of training.")
# The metric each benchmark's papers report, used to pick best.pt.
DEFAULT_SELECT_METRIC = {"ucf": "auc", "shanghaitech": "auc", "xd": "ap", "demo": "ap"}


class NonFiniteLossError(TrainingError):
    """The loss or gradient norm became NaN/inf; the run stopped."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run stopped between two steps after saving last.pt."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


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


def _scalar_metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None}


def _evaluate(model: BNWVAD, test: RunTestSet, device: torch.device) -> dict[str, Any]:
    """The periodic evaluation: `bnwvad.evaluate.evaluate_model`, reading each test video with
    its audio appended when the run has audio features."""
    audio = any("audio" in v.extra for v in test.videos)
    return evaluate_model(model, test.videos, test.annotations, device=device, snippets=test.snippets,
                          load=load_test_features if audio else None)


# -- the loop -------------------------------------------------------------------------------
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
        self.lineage: Lineage | None = None
        self.saved: dict[str, Any] | None = None

        if run.resume:
            self.saved = read_run(out).saved           # RunFolderError: no run there
            if not self.last_path.is_file():
                raise RunFolderError(f"{self.last_path}: nothing to resume (no last.pt in {out})")
            self.lineage = lineage(out, self.saved)
        elif self.last_path.exists():
            raise TrainingError(f"{out} already holds a run ({self.last_path} exists): pass --resume to "
                                f"continue it, or choose another --out")

        # Data first: every bad file fails here, before anything is written.
        self.normal, self.abnormal, self.test, check = load_run_data(data, model_cfg, run.progress)
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
            self.step, self.best, rng = restore_checkpoint(
                self.last_path, self.model, self.optimizer, model_cfg, train_cfg, self.fingerprints,
                legacy_fingerprints=legacy, run_id=self.lineage.old_run_id if self.lineage else None)
            _set_rng_state(rng, self.device)
            if self.best.get("metric") != run.select_metric:
                raise TrainingError(f"{self.last_path}: the run selects best.pt by {self.best.get('metric')!r}, "
                                    f"not {run.select_metric!r}; resume with the same --select-metric")
        self.run_id = self.lineage.run_id if self.lineage else new_run_id()

    def _write_run_json(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return write_run_json(self.out, self.run_id, self.model_cfg, self.train_cfg, self.data, self.run_cfg,
                              self.crops, saved=self.saved, extra=extra)

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
            return plain({"step": at, "run_id": run_id, "dataset": data.dataset, "metrics": metrics,
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
    a folder without a run), bnwvad.data_checks.DataCheckError (every bad list or feature file,
    named, before anything is written), bnwvad.features.FeatureFileError (a bad list file),
    NonFiniteLossError (NaN/inf; last.pt is the last good checkpoint), TrainingInterrupted
    (Ctrl-C; last.pt saved at that step).
    """
    return prepare(model_cfg, train_cfg, data, run).run(log)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


__all__ = ["DEFAULT_SELECT_METRIC", "DataSpec", "NonFiniteLossError", "PreparedRun", "RUN_FILE",
           "RunConfig", "RunFolderError", "SELECTION_NOTE", "SavedRun", "TrainResult", "TrainingError",
           "TrainingInterrupted", "prepare", "read_run", "resolve_device", "train"]
