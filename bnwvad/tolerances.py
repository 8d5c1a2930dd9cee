"""The one table of numeric tolerances: every comparison against PyTorch uses it.

`rel_to_max` errors are max|ours - ref| / max|ref| over an output (per the reference
README); `norm_rel` errors are ||ours - ref|| / ||ref||. Tests, `bnwvad-export`'s
verification and bench/run.py all read their limits from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    limit: float
    metric: str          # "rel_to_max" | "norm_rel" | "rel" | "abs" | "points"
    why: str


TOLERANCES: dict[str, Tolerance] = {
    # Our PyTorch model against the published code's outputs (../shared/reference).
    "reference_eval": Tolerance(1e-4, "rel_to_max", "float32 reordering of the same ops"),
    "reference_loss": Tolerance(1e-4, "rel", "losses and gradient norm, float32"),
    "reference_grad": Tolerance(1e-3, "norm_rel", "BN backward sums near-cancelling terms"),
    # One end-to-end Adam step, on the elements whose sign is stable (see bnwvad.reference).
    "reference_step_stable": Tolerance(1e-6, "abs", "1% of lr; sign-unstable elements excluded"),
    # A zero-padded batch against each video alone (masking is exact; only reordering).
    "padding": Tolerance(1e-5, "rel_to_max", "padded keys and G columns are masked exactly"),
    # The folded deploy model (bnwvad.export.fold) against the original, PyTorch both.
    "fold": Tolerance(1e-5, "rel_to_max", "folded weights are computed in float64, rounded once"),
    # Exported graphs against the unoptimised PyTorch model, same inputs.
    "onnx_fp32": Tolerance(1e-4, "rel_to_max", "BN folding and graph fusions reorder float32 ops"),
    "onnx_fp16": Tolerance(2e-2, "rel_to_max", "fp16 matmuls (11-bit mantissa), fp32 reductions"),
    "onnx_int8": Tolerance(1e-1, "rel_to_max", "dynamically quantised weights"),
    "torch_cuda": Tolerance(1e-4, "rel_to_max", "the same PyTorch model on CUDA, TF32 off"),
    "tensorrt_fp32": Tolerance(1e-3, "rel_to_max", "TF32 is disabled; kernel choice reorders sums"),
    "tensorrt_fp16": Tolerance(2e-2, "rel_to_max", "as onnx_fp16"),
    # Effect on detection quality of a reduced-precision deployment (percentage points).
    "metric_fp16": Tolerance(0.1, "points", "AUC / AP change against fp32 on the demo test set"),
    "metric_int8": Tolerance(0.1, "points", "AUC / AP change against fp32 on the demo test set"),
}


def error(ours, ref, metric: str) -> float:
    """The error of `ours` against `ref` under `metric` (float64 arithmetic)."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs reference {b.shape}")
    if metric == "rel_to_max":
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) if b.size else 0.0
    if metric == "norm_rel":
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    if metric == "rel":
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
    if metric in ("abs", "points"):
        return float(np.abs(a - b).max()) if b.size else 0.0
    raise ValueError(f"unknown metric {metric!r}")


def check(name: str, ours, ref) -> tuple[float, bool]:
    """(error, within limit) of ours against ref under TOLERANCES[name]."""
    tol = TOLERANCES[name]
    err = error(ours, ref, tol.metric)
    return err, bool(err <= tol.limit)
