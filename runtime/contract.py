"""The export -> runtime contract, in one torch-free place (DESIGN.md, "Inference graph").

Everything that more than one part of bnwvad must agree on lives here and nowhere else:
export writes it, the runtime reads it, bench and tests check against it.

- Tensor names: inputs `features` float32 (N, C, T, D) and `lengths` int64 (N,); outputs
  `score`, `dfm`, `anomaly` float32 (N, T).
- Metadata: the keys an exported graph carries in `metadata_props` (every value JSON) and in
  a TensorRT engine's JSON sidecar, with the format name and version. One name per field.
- Tolerances: the project's one table of numeric tolerances, and which entry judges a
  precision on a backend.
- `Runner`: what every runner of a model offers (ONNX Runtime, TensorRT, the PyTorch
  reference), and `compare_outputs`, the one function that compares two runners' outputs.

numpy only: `import bnwvad.runtime.contract` works where neither torch nor onnx is installed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, runtime_checkable

import numpy as np

# -- tensors ------------------------------------------------------------------------------
INPUTS = ("features", "lengths")
OUTPUTS = ("score", "dfm", "anomaly")
FRAMES_PER_SNIPPET = 16


def input_specs(feature_dim: int) -> list[dict]:
    """The graph's inputs as the metadata records them (dims by name where dynamic)."""
    return [{"name": "features", "dtype": "float32", "shape": ["N", "C", "T", int(feature_dim)]},
            {"name": "lengths", "dtype": "int64", "shape": ["N"]}]


def output_specs() -> list[dict]:
    return [{"name": n, "dtype": "float32", "shape": ["N", "T"]} for n in OUTPUTS]


# -- metadata -----------------------------------------------------------------------------
FORMAT = "bnwvad-onnx"
FORMAT_VERSION = 1
# Every key the exporter writes, JSON values (see export/metadata.py:build_metadata):
#   format, format_version   FORMAT, FORMAT_VERSION
#   bnwvad_version           package version that exported it
#   precision                "fp32" | "fp16" | "int8"
#   opset                    ONNX opset of the graph
#   feature_dim              D; features must be (N, C, T, D)
#   crops                    crops per video the model expects, or null
#   frames_per_snippet       16
#   preset                   "ucf" | "xd" | "shanghaitech" | "demo" | null
#   model_config             bnwvad.config.ModelConfig.to_dict()
#   source, source_digest    checkpoint file name and "sha256:<hex>" of it, or null
#   weights_digest           "sha256:<hex>" of the float32 state_dict (names the weights)
#   inputs, outputs          input_specs(D), output_specs()
#   anomaly                  what `anomaly` is per crop: "product" | "classifier" | "dfm"
#   graph                    {"builder": ..., "options": {...}}
METADATA_KEYS = ("format", "format_version", "bnwvad_version", "precision", "opset", "feature_dim",
                 "crops", "frames_per_snippet", "preset", "model_config", "source", "source_digest",
                 "weights_digest", "inputs", "outputs", "anomaly", "graph")
# Keys a TensorRT engine's sidecar adds to the ONNX metadata.
SIDECAR_KEYS = ("tensorrt_version", "profile", "onnx_file", "onnx_digest", "engine_digest",
                "device_name", "compute_capability", "strongly_typed", "tf32", "timing_cache",
                "verified_against")
PRECISIONS = ("fp32", "fp16", "int8")


# -- tolerances ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    limit: float
    metric: str          # "rel_to_max" | "norm_rel" | "rel" | "abs" | "points"
    why: str


# `rel_to_max`: max|ours - ref| / max|ref| over an output (the reference README's metric);
# `norm_rel`: ||ours - ref|| / ||ref||. Tests, export verification, the TensorRT builder,
# bnwvad.reference and the benchmark read their limits from here and nowhere else.
# The table is data, one row per entry: name, limit, metric, why (the rest of the line).
_TOLERANCE_TABLE = """
# Our PyTorch model against the published code's outputs (../shared/reference).
reference_eval         1e-4  rel_to_max  float32 reordering of the same ops
reference_loss         1e-4  rel         losses and gradient norm, float32
reference_grad         1e-3  norm_rel    BN backward sums near-cancelling terms
# One end-to-end Adam step, on the elements whose sign is stable (see bnwvad.reference).
reference_step_stable  1e-6  abs         1% of lr; sign-unstable elements excluded
# A zero-padded batch against each video alone (masking is exact; only reordering).
padding                1e-5  rel_to_max  padded keys and G columns are masked exactly
# The folded deploy model (bnwvad.export.fold) against the original, PyTorch both.
fold                   1e-5  rel_to_max  folded weights are computed in float64, rounded once
# Exported graphs against the unoptimised PyTorch model, same inputs.
onnx_fp32              1e-4  rel_to_max  BN folding and graph fusions reorder float32 ops
onnx_fp16              2e-2  rel_to_max  fp16 matmuls (11-bit mantissa), fp32 reductions
onnx_int8              1e-1  rel_to_max  dynamically quantised weights
torch_cuda             1e-4  rel_to_max  the same PyTorch model on CUDA, TF32 off
tensorrt_fp32          1e-3  rel_to_max  TF32 is disabled; kernel choice reorders sums
tensorrt_fp16          2e-2  rel_to_max  as onnx_fp16
# The I3D extractor (bnwvad.i3d) against the public pytorch-i3d outputs (../shared/reference/i3d).
i3d_reference          1e-4  rel_to_max  InceptionI3d vs pytorch-i3d, float32 reordering
i3d_protocol           1e-3  rel_to_max  frames -> features: resampling may move a pixel by one grey level in a few places
# Effect on detection quality of a reduced-precision deployment (percentage points).
metric_fp16            0.1   points      AUC / AP change against fp32 on the demo test set
metric_int8            0.1   points      AUC / AP change against fp32 on the demo test set
"""


def _read_tolerances(table: str) -> dict[str, Tolerance]:
    rows = (line.split(None, 3) for line in table.splitlines() if line.strip() and not line.startswith("#"))
    return {name: Tolerance(float(limit), metric, why) for name, limit, metric, why in rows}


TOLERANCES: dict[str, Tolerance] = _read_tolerances(_TOLERANCE_TABLE)

# (precision, engine family) -> the entry that judges it against the PyTorch reference.
# Families: "onnxruntime" (any execution provider but TensorRT's), "tensorrt" (native
# engines and ONNX Runtime's TensorRT provider), "torch" (PyTorch on another device).
_JUDGED_BY: dict[tuple[str, str], str] = {
    ("fp32", "onnxruntime"): "onnx_fp32",
    ("fp16", "onnxruntime"): "onnx_fp16",
    ("int8", "onnxruntime"): "onnx_int8",
    ("fp32", "tensorrt"): "tensorrt_fp32",
    ("fp16", "tensorrt"): "tensorrt_fp16",
    ("fp32", "torch"): "torch_cuda",
}
# What a reduced precision may cost in AUC / AP points.
_METRIC_JUDGED_BY = {"fp16": "metric_fp16", "int8": "metric_int8"}


def tolerance_for(precision: str, family: str = "onnxruntime") -> str:
    """The TOLERANCES key that judges `precision` run by `family` against PyTorch."""
    try:
        return _JUDGED_BY[(precision, family)]
    except KeyError:
        known = ", ".join(f"{p}/{f}" for p, f in _JUDGED_BY)
        raise ValueError(f"no tolerance for precision {precision!r} on {family!r}; the table has "
                         f"{known}") from None


def metric_tolerance_for(precision: str) -> str | None:
    """The TOLERANCES key bounding the AUC/AP change of `precision`, None for fp32."""
    return _METRIC_JUDGED_BY.get(precision)


def error(ours, ref, metric: str) -> float:
    """The error of `ours` against `ref` under `metric` (float64 arithmetic)."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs reference {b.shape}")
    if metric in ("rel_to_max", "rel"):
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) if b.size else 0.0
    if metric == "norm_rel":
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    if metric in ("abs", "points"):
        return float(np.abs(a - b).max()) if b.size else 0.0
    raise ValueError(f"unknown metric {metric!r}")


def check(name: str, ours, ref) -> tuple[float, bool]:
    """(error, within limit) of ours against ref under TOLERANCES[name]."""
    tol = TOLERANCES[name]
    err = error(ours, ref, tol.metric)
    return err, bool(err <= tol.limit)


# -- comparing runners --------------------------------------------------------------------
@dataclass(frozen=True)
class OutputDiff:
    """How far one output of a runner is from the reference's, over real snippets."""

    output: str
    max_abs: float
    max_rel: float               # max |ours - ref| / max |ref| (rel_to_max)
    finite: bool

    def within(self, limit: float) -> bool:
        return self.finite and self.max_rel <= limit


def compare_outputs(ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray],
                    lengths) -> list[OutputDiff]:
    """Per output (OUTPUTS order), the difference of `ours` from `ref`, both (N, T), over
    the real snippets t < lengths[n] only (values past a video's length are not defined).
    A non-finite value in ours is an infinite error."""
    diffs = []
    lengths = np.asarray(lengths)
    for name in OUTPUTS:
        a, b = np.asarray(ours[name]), np.asarray(ref[name])
        if a.shape != b.shape:
            raise ValueError(f"output {name!r}: shape {a.shape} against the reference's {b.shape}")
        real = np.arange(a.shape[1])[None, :] < lengths[:, None]          # (N, T)
        a, b = a[real], b[real]
        if not np.isfinite(a).all():
            diffs.append(OutputDiff(name, float("inf"), float("inf"), False))
            continue
        max_abs = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
        diffs.append(OutputDiff(name, max_abs, error(a, b, "rel_to_max"), True))
    return diffs


# -- runners ------------------------------------------------------------------------------
class Closing:
    """close() and the with-statement of every runner (models and extractors; ONNX Runtime,
    TensorRT, PyTorch): `with load_runner(...) as r:` closes r. A runner that holds a session
    or an engine overrides close()."""

    def close(self) -> None:
        """Release the session / engine; nothing to release by default."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def asked_for(runner) -> str:
    """The end of a runner's describe(): " (asked for X)" when the backend that runs is not the
    one asked for, else nothing."""
    return f" (asked for {runner.requested})" if runner.backend != runner.requested else ""


@runtime_checkable
class Runner(Protocol):
    """What runs a BN-WVAD model: bnwvad.runtime's OrtRunner and TensorRTRunner,
    bnwvad.torch_runner.TorchRunner (the PyTorch reference), export verification's
    onnx.reference runner.

    meta: ModelMeta (what inputs are validated against); requested / backend: the backend
    asked for and the one that runs; providers: what runs it, in words; device: "cpu" |
    "cuda"; limits: ShapeLimits; fallback: a message when what runs is not what was asked.
    """

    meta: object
    requested: str
    backend: str
    providers: list[str]
    device: str
    limits: object
    fallback: str | None

    def run(self, features: np.ndarray, lengths: np.ndarray, *,
            check: bool = True) -> dict[str, np.ndarray]:
        """features (N, C, T, D) float32 zero-padded, lengths (N,) int64 -> {name: (N, T)}.

        check=True validates the inputs against `meta` first (InputError); a caller that
        validated each video where it entered (the Scorer) passes check=False."""

    def describe(self) -> str:
        """What runs, in one line."""

    def close(self) -> None:
        """Release the session / engine."""


__all__ = ["Closing", "FORMAT", "FORMAT_VERSION", "FRAMES_PER_SNIPPET", "INPUTS", "METADATA_KEYS", "OUTPUTS",
           "OutputDiff", "PRECISIONS", "Runner", "SIDECAR_KEYS", "TOLERANCES", "Tolerance", "asked_for", "check",
           "compare_outputs", "error", "input_specs", "metric_tolerance_for", "output_specs",
           "tolerance_for"]
