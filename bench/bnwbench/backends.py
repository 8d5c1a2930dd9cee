"""The backends a run can measure (the Spec table) and opening them as runtime Runners."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnwvad.runtime.contract import metric_tolerance_for, tolerance_for

from .measure import say
from .models import Models, engine_for
from .plan import HEADLINE_T, PEAK, PEAK_CUDA, REFERENCE


@dataclass(frozen=True)
class Spec:
    """One backend: how it runs; its tolerance-table entries follow from precision and family."""

    name: str
    kind: str                      # torch | ort | trt
    precision: str                 # fp32 | fp16 | int8 (the graph's, for ORT / TensorRT)
    device: str                    # cpu | cuda
    runtime_backend: str | None    # bnwvad.runtime backend name (ort-cpu, ort-cuda, ort-trt, tensorrt)
    builds_engine: bool = False    # minutes of TensorRT building: not in --quick by default

    @property
    def family(self) -> str:
        """The engine family of bnwvad.runtime.contract.tolerance_for."""
        if self.kind == "torch":
            return "torch"
        return "tensorrt" if self.runtime_backend in ("ort-trt", "tensorrt") else "onnxruntime"

    @property
    def tolerance(self) -> str | None:
        """The entry that judges this backend's outputs against the reference; None: the reference."""
        return None if self.name == REFERENCE else tolerance_for(self.precision, self.family)

    @property
    def metric_tolerance(self) -> str | None:
        """The entry bounding its AUC/AP change; None for fp32."""
        return metric_tolerance_for(self.precision)

    @property
    def peak(self) -> str:
        """The GEMM probe its fraction of peak is taken against."""
        return PEAK_CUDA if self.device == "cuda" else PEAK


SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("torch_eager", "torch", "fp32", "cpu", None),
    Spec("ort_fp32", "ort", "fp32", "cpu", "ort-cpu"),
    Spec("ort_fp16", "ort", "fp16", "cpu", "ort-cpu"),
    Spec("ort_int8", "ort", "int8", "cpu", "ort-cpu"),
    # TF32 is off for torch_cuda (bnwvad.torch_runner): fp32 means fp32, as for TensorRT's fp32 engines.
    Spec("torch_cuda", "torch", "fp32", "cuda", None),
    Spec("ort_cuda_fp32", "ort", "fp32", "cuda", "ort-cuda"),
    Spec("ort_cuda_fp16", "ort", "fp16", "cuda", "ort-cuda"),
    Spec("ort_trt_fp32", "ort", "fp32", "cuda", "ort-trt", builds_engine=True),
    Spec("ort_trt_fp16", "ort", "fp16", "cuda", "ort-trt", builds_engine=True),
    Spec("trt_fp32", "trt", "fp32", "cuda", "tensorrt", builds_engine=True),
    Spec("trt_fp16", "trt", "fp16", "cuda", "tensorrt", builds_engine=True),
)}


@dataclass
class Backend:
    spec: Spec
    runner: Any = None
    status: str = "measured"         # measured | skipped | failed
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def measured(self) -> bool:
        return self.status == "measured"

    def fail(self, reason: str) -> None:
        """It ran, then broke: reported, and left out of what follows."""
        self.status, self.reason = "failed", reason

    def info(self) -> dict:
        r = self.runner
        return {"status": self.status, "reason": self.reason, "kind": self.spec.kind,
                "precision": self.spec.precision, "device": self.spec.device,
                "requested": self.spec.runtime_backend or self.spec.name,
                "ran_as": getattr(r, "backend", None), "providers": list(getattr(r, "providers", []) or []),
                "tolerance": self.spec.tolerance, "metric_tolerance": self.spec.metric_tolerance,
                "notes": list(self.notes)}


def unavailable_reason(spec: Spec) -> str | None:
    """Why `spec` cannot run on this machine, known before trying; None: try it."""
    if spec.device == "cuda" and spec.kind == "torch":
        import torch

        if not torch.cuda.is_available():
            build = " (a CPU-only build)" if "+cpu" in torch.__version__ or torch.version.cuda is None else ""
            return f"torch {torch.__version__}{build} sees no CUDA device"
    if spec.kind == "ort" and spec.device == "cuda":
        import onnxruntime as ort

        want = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}[spec.runtime_backend]
        have = ort.get_available_providers()
        if want not in have:
            return (f"onnxruntime {ort.__version__} offers {have}: no {want} "
                    f"(needs onnxruntime-gpu and an NVIDIA GPU)")
    if spec.kind == "trt":
        from bnwvad.export import TensorRTError
        from bnwvad.export.trt_engine import require_tensorrt

        try:
            require_tensorrt()
        except TensorRTError as e:
            return str(e).split("; install")[0]
    return None


def ort_trt_kwargs(spec: Spec, where: Path, max_shape: tuple[int, int, int]) -> dict:
    """load_runner options of ONNX Runtime's TensorRT provider: its engine cache in `where`
    (no rebuild in helper processes or later runs) and its profile's maximum (N, C, T)."""
    if spec.runtime_backend != "ort-trt":
        return {}
    return {"trt_options": {"trt_engine_cache_path": str(where / ".trt_cache")}, "trt_max_shape": max_shape}


def open_backends(selected: list[str], models: Models, threads: int, clock) -> list[Backend]:
    """Every selected backend opened on the timed model; one that cannot run is 'skipped'
    with the reason (strict runners: ONNX Runtime's silent CPU fallback is refused)."""
    from bnwvad.runtime import load_runner
    from bnwvad.torch_runner import TorchRunner

    backends = []
    for name in selected:
        spec = SPECS[name]
        b = Backend(spec)
        backends.append(b)
        reason = unavailable_reason(spec)
        if reason:
            b.status, b.reason = "skipped", reason
            say(f"{name}: skipped: {reason}", clock)
            continue
        try:
            if spec.kind == "torch":
                b.runner = TorchRunner(models.speed, device=spec.device, meta=models.meta, name=name)
                if spec.device == "cuda":
                    b.notes.append("TF32 off for every call (bnwvad.torch_runner.exact_fp32)")
            elif spec.kind == "ort":
                b.runner = load_runner(models.speed_files[spec.precision], spec.runtime_backend, strict=True,
                                       threads=threads, **ort_trt_kwargs(spec, models.cache, models.trt_max))
                if spec.runtime_backend == "ort-trt":
                    say(f"{name}: building the TensorRT provider's engine (first call; minutes)", clock)
                    warm(b.runner, models.meta.feature_dim)
            else:
                engine = engine_for(models.speed_files[spec.precision],
                                    ((1, 1, 1), (1, 10, HEADLINE_T), models.trt_max), models.cache, clock)
                models.speed_files[f"engine_{spec.precision}"] = engine
                b.runner = load_runner(engine, "tensorrt", strict=True)
        except Exception as e:          # noqa: BLE001 - reported as the backend's result
            b.status, b.reason = "skipped", f"{type(e).__name__}: {e}"
            say(f"{name}: skipped: {b.reason}", clock)
            continue
        say(f"{name}: {b.runner.describe()}", clock)
    return backends


def warm(runner, d: int) -> None:
    """One small call: builds what a first call builds (the TensorRT provider's engine)."""
    runner.run(np.zeros((1, 1, 8, d), np.float32), np.array([8]), check=False)


def close_all(backends: list[Backend]) -> None:
    for b in backends:
        if b.runner is not None and hasattr(b.runner, "close"):
            b.runner.close()


__all__ = ["SPECS", "Backend", "Spec", "close_all", "open_backends", "ort_trt_kwargs", "unavailable_reason", "warm"]
