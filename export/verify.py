"""Verification of an exported graph against the unoptimised PyTorch model.

Each case feeds the same float32 inputs to the written ONNX file (ONNX Runtime, CPU) and
to `bnwvad.model.BNWVAD` (not the folded model), and measures per output the max abs
error and the max abs error relative to max |reference| (the `rel_to_max` metric of
bnwvad/tolerances.py). Only real snippets (t < length) are compared: values past a
video's length are not defined. A padded batch is compared with each video run alone,
which is the contract (DESIGN.md, "Inference graph").
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from bnwvad.model import BNWVAD
from bnwvad.tolerances import TOLERANCES, error

from .graph import OUTPUT_NAMES

# Which tolerance of the one table applies to a precision.
TOLERANCE_FOR = {"fp32": "onnx_fp32", "fp16": "onnx_fp16", "int8": "onnx_int8"}


class VerificationError(RuntimeError):
    """An exported graph that does not reproduce the PyTorch model within tolerance."""

    def __init__(self, message: str, report: "VerificationReport"):
        super().__init__(message)
        self.report = report


@dataclass
class Case:
    """One verification input: features (N, C, T, D) float32, lengths (N,) int64."""

    name: str
    features: np.ndarray
    lengths: np.ndarray
    alone: bool = False          # compare each video with the model run on it alone


@dataclass
class OutputError:
    output: str
    max_abs: float
    max_rel: float               # max |ours - ref| / max |ref| (rel_to_max)
    finite: bool

    def ok(self, limit: float) -> bool:
        return self.finite and self.max_rel <= limit


@dataclass
class CaseResult:
    case: str
    shape: tuple[int, int, int]  # (N, C, T)
    lengths: list[int]
    errors: list[OutputError]
    limit: float

    @property
    def ok(self) -> bool:
        return all(e.ok(self.limit) for e in self.errors)


@dataclass
class VerificationReport:
    precision: str
    tolerance: str               # key of bnwvad.tolerances.TOLERANCES
    limit: float
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)

    def worst(self) -> dict[str, OutputError]:
        """The largest relative error per output over all cases."""
        out: dict[str, OutputError] = {}
        for c in self.cases:
            for e in c.errors:
                if e.output not in out or not e.finite or e.max_rel > out[e.output].max_rel:
                    out[e.output] = e
        return out

    def format(self) -> str:
        lines = [f"{'case':34s} {'N,C,T':>12s}  " + "  ".join(f"{o + ' abs/rel':>22s}" for o in OUTPUT_NAMES)]
        for c in self.cases:
            cells = "  ".join(f"{e.max_abs:10.2e}/{e.max_rel:9.2e}{'' if e.ok(c.limit) else '!'}"
                              for e in c.errors)
            lines.append(f"{c.case:34s} {','.join(map(str, c.shape)):>12s}  {cells}  {'ok' if c.ok else 'FAIL'}")
        w = self.worst()
        lines.append(f"worst rel error ({self.tolerance}, limit {self.limit:g}): "
                     + ", ".join(f"{k} {v.max_rel:.2e}" for k, v in w.items()))
        return "\n".join(lines)


def default_cases(feature_dim: int, crops: int | None = None, seed: int = 0) -> list[Case]:
    """Random and outlier inputs over several N, C, T, padded batches included.

    I3D features are non-negative, mostly in [0, 2]; the outliers go far outside that.
    """
    rng = np.random.default_rng(seed)
    d = feature_dim
    c = crops or 2

    def rand(n, cc, t, scale=2.0):
        return (rng.random((n, cc, t, d), dtype=np.float32) * scale).astype(np.float32)

    def full(x):
        return np.full(x.shape[0], x.shape[2], dtype=np.int64)

    cases = []
    x = rand(1, c, 37)
    cases.append(Case(f"one video, {c} crops", x, full(x)))
    x = rand(2, 3, 64)
    cases.append(Case("two videos, full length", x, full(x)))
    lengths = np.array([48, 20, 1], dtype=np.int64)
    x = rand(3, 2, 48)
    for i, n in enumerate(lengths):
        x[i, :, n:] = 1e3           # garbage past the length must not leak in
    cases.append(Case("padded batch vs each video alone", x, lengths, alone=True))
    x = rand(1, 2, 1)
    cases.append(Case("single snippet (T=1)", x, full(x)))
    x = np.zeros((1, 2, 16, d), dtype=np.float32)
    cases.append(Case("all-zero features", x, full(x)))
    x = rand(1, 2, 32, scale=20.0)
    cases.append(Case("anomalous: sum z^2 > 65504", x, full(x)))
    x = rand(1, 2, 24)
    x[:, :, 8:12] *= 1e5            # a burst far beyond fp16's range
    cases.append(Case("outlier burst (features ~1e5)", x, full(x)))
    return cases


def fp16_arithmetic_cases(feature_dim: int, seed: int = 0) -> list[Case]:
    """Small cases for `reference_runner` (numpy evaluates fp16 ops slowly): random,
    padded, sum z^2 > 65504 with every value inside fp16's range, and a 1e5 burst."""
    rng = np.random.default_rng(seed)
    d = feature_dim

    def rand(n, c, t, scale=2.0):
        return (rng.random((n, c, t, d), dtype=np.float32) * scale).astype(np.float32)
    x = rand(2, 2, 10)
    x[1, :, 3:] = 0.0
    burst = rand(1, 1, 12)
    burst[:, :, 4:7] *= 1e5
    return [
        Case("fp16 arithmetic: padded batch", x, np.array([10, 3], np.int64)),
        Case("fp16 arithmetic: sum z^2 > 65504", rand(1, 1, 12, scale=40.0), np.array([12], np.int64)),
        Case("fp16 arithmetic: features ~1e5", burst, np.array([12], np.int64)),
    ]


def reference_runner(path):
    """A `run(features, lengths)` on onnx.reference: every op computed in its tensors' own
    dtype, so fp16 tensors really are fp16 (ONNX Runtime's CPU provider runs many fp16
    ops in fp32 and drops lossy cast pairs, which hides fp16 overflow)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(onnx.load(str(path)))

    def run(features: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return ev.run(list(OUTPUT_NAMES), {"features": features, "lengths": lengths})
    return run


@contextlib.contextmanager
def _exact_fp32():
    """On CUDA, cuDNN convolutions default to TF32 (10-bit mantissa): the reference would
    carry ~1e-3 errors of its own. Off for the duration, restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _reference(model: BNWVAD, case: Case, device) -> list[np.ndarray]:
    """Per-output arrays (N, T) of the unoptimised model; NaN past each length."""
    n, _, t, _ = case.features.shape
    out = [np.full((n, t), np.nan, dtype=np.float32) for _ in OUTPUT_NAMES]
    with torch.no_grad(), _exact_fp32():
        if case.alone:
            for i, L in enumerate(case.lengths.tolist()):
                x = torch.from_numpy(case.features[i:i + 1, :, :L]).to(device)
                for arr, o in zip(out, model(x)):
                    arr[i, :L] = o[0].float().cpu().numpy()
        else:
            x = torch.from_numpy(case.features).to(device)
            lengths = torch.from_numpy(case.lengths).to(device)
            for arr, o in zip(out, model(x, lengths)):
                arr[:] = o.float().cpu().numpy()
    return out


def compare(ours: list[np.ndarray], ref: list[np.ndarray], lengths: np.ndarray) -> list[OutputError]:
    errors = []
    for name, a, b in zip(OUTPUT_NAMES, ours, ref):
        real = np.arange(a.shape[1])[None, :] < np.asarray(lengths)[:, None]     # (N, T)
        a, b = np.asarray(a)[real], np.asarray(b)[real]
        finite = bool(np.isfinite(a).all())
        if finite:
            max_abs = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
            rel = error(a, b, "rel_to_max")
        else:
            max_abs = rel = float("inf")
        errors.append(OutputError(name, max_abs, rel, finite))
    return errors


def verify_session(run: Callable[[np.ndarray, np.ndarray], list[np.ndarray]], model: BNWVAD,
                   precision: str, *, cases: list[Case] | None = None, device="cpu",
                   tolerance: str | None = None, log: Callable[[str], None] | None = None,
                   ) -> VerificationReport:
    """Run `run(features, lengths) -> [score, dfm, anomaly]` on every case and compare.

    `run` is any backend (ONNX Runtime, TensorRT); the reference is `model` on `device`.
    """
    tol_name = tolerance or TOLERANCE_FOR[precision]
    tol = TOLERANCES[tol_name]
    if tol.metric != "rel_to_max":
        raise ValueError(f"tolerance {tol_name} uses {tol.metric}; verification compares rel_to_max")
    model = model.eval()
    cases = cases if cases is not None else default_cases(model.config.feature_dim)
    report = VerificationReport(precision, tol_name, tol.limit)
    for i, case in enumerate(cases, 1):
        ours = run(case.features, case.lengths)
        ref = _reference(model, case, device)
        n, c, t, _ = case.features.shape
        res = CaseResult(case.name, (n, c, t), case.lengths.tolist(), compare(ours, ref, case.lengths), tol.limit)
        report.cases.append(res)
        if log:
            errs = ", ".join(f"{e.output} abs {e.max_abs:.2e} rel {e.max_rel:.2e}" for e in res.errors)
            log(f"  [{i}/{len(cases)}] {case.name:34s} N,C,T={n},{c},{t}: {errs}"
                f"  {'ok' if res.ok else 'FAIL (limit %g)' % tol.limit}")
    return report


def ort_runner(path_or_bytes, threads: int | None = None):
    """A `run(features, lengths)` for an ONNX file or serialised model on ONNX Runtime's CPU EP."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    # Verification alternates ONNX Runtime and torch calls: ORT's pool threads spinning
    # after each run would take the cores torch's next op needs (10x slower on 2 cores).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = str(path_or_bytes) if not isinstance(path_or_bytes, (bytes, bytearray)) else bytes(path_or_bytes)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])

    def run(features: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        return sess.run(list(OUTPUT_NAMES), {"features": features, "lengths": lengths})
    run.session = sess
    return run


__all__ = ["Case", "CaseResult", "OutputError", "TOLERANCE_FOR", "VerificationError",
           "VerificationReport", "compare", "default_cases", "fp16_arithmetic_cases", "ort_runner",
           "reference_runner", "verify_session"]
