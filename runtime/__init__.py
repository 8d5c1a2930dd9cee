"""bnwvad.runtime: batched multi-crop BN-WVAD inference on ONNX Runtime or TensorRT, never torch.

    from bnwvad.runtime import load_runner, Scorer
    runner = load_runner("model.onnx", backend="auto")       # or "ort-cpu", "ort-cuda", "ort-trt", "tensorrt"
    print(runner.backend, runner.providers)                  # what actually runs
    results = Scorer(runner).score({"video": feats})         # feats (C, T, D) float32
    results[0].anomaly, results[0].frame_anomaly             # (T,), (16 T,)

Imports numpy only; onnxruntime, tensorrt and matplotlib are imported when first needed.
The command lines are `bnwvad-infer` (bnwvad.runtime.cli: feature files, or video files with
--extractor) and `bnwvad-extract` (bnwvad.runtime.extract_cli: video files -> I3D features in the
datasets' layout, resumable).
"""
from .errors import BackendError, InputError, MemoryBudgetError, ModelLoadError, RuntimeFailure
from .events import Calibration, Event, calibrate_threshold, find_events
from .io import load_results, save_results
from .contract import Runner
from .metadata import ModelMeta, meta_from_props, meta_from_sidecar
from .runners import BACKENDS, OrtRunner, TensorRTRunner, load_runner
from .planning import CallPlan, estimate_bytes, plan_calls
from .scoring import Scorer, default_memory_budget
from .sources import ArraySource, VideoFailure, VideoResult
from .validate import ShapeLimits, validate_inputs

__all__ = [
    "BACKENDS", "ArraySource", "BackendError", "CallPlan", "Calibration", "Event", "InputError",
    "MemoryBudgetError", "ModelLoadError", "ModelMeta", "OrtRunner", "Runner", "RuntimeFailure",
    "Scorer", "ShapeLimits", "TensorRTRunner", "VideoFailure", "VideoResult", "calibrate_threshold",
    "default_memory_budget", "estimate_bytes", "find_events", "load_results", "load_runner",
    "meta_from_props", "meta_from_sidecar", "plan_calls", "save_results", "validate_inputs",
]
