"""Verification of an exported graph: runners compared on the same inputs, Polygraphy-style.

Each case feeds the same float32 inputs to the runner under test (ONNX Runtime on the written
file, a TensorRT engine, onnx.reference for true fp16 arithmetic) and to a reference runner
(the unoptimised PyTorch model through `bnwvad.torch_runner.TorchRunner`, or the ONNX graph
itself), and compares every output with `contract.compare_outputs` under the contract's one
tolerance table. Only real snippets (t < length) count: values past a video's length are not
defined. In an `alone` case the reference runs each video alone, which is the contract a padded
batch must meet (DESIGN.md, "Inference graph").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bnwvad.runtime.contract import OUTPUTS, TOLERANCES, OutputDiff, Runner, compare_outputs
from bnwvad.runtime.metadata import ModelMeta
from bnwvad.runtime.validate import ShapeLimits


class VerificationError(RuntimeError):
    """An exported graph that does not reproduce the reference within tolerance."""

    def __init__(self, message: str, report: "VerificationReport"):
        super().__init__(message)
        self.report = report


@dataclass
class Case:
    """One verification input: features (N, C, T, D) float32, lengths (N,) int64."""

    name: str
    features: np.ndarray
    lengths: np.ndarray
    alone: bool = False          # the reference runs each video alone


@dataclass
class CaseResult:
    case: str
    shape: tuple[int, int, int]  # (N, C, T)
    lengths: list[int]
    diffs: list[OutputDiff]
    limit: float

    @property
    def ok(self) -> bool:
        return all(d.within(self.limit) for d in self.diffs)


@dataclass
class VerificationReport:
    precision: str
    tolerance: str               # key of contract.TOLERANCES
    limit: float
    against: str = "the reference"
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)

    def worst(self) -> dict[str, OutputDiff]:
        """The largest relative error per output over all cases."""
        out: dict[str, OutputDiff] = {}
        for c in self.cases:
            for d in c.diffs:
                if d.output not in out or not d.finite or d.max_rel > out[d.output].max_rel:
                    out[d.output] = d
        return out

    def format(self) -> str:
        lines = [f"{'case':34s} {'N,C,T':>12s}  " + "  ".join(f"{o + ' abs/rel':>22s}" for o in OUTPUTS)]
        for c in self.cases:
            cells = "  ".join(f"{d.max_abs:10.2e}/{d.max_rel:9.2e}{'' if d.within(c.limit) else '!'}"
                              for d in c.diffs)
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
    """Small cases for `OnnxReferenceRunner` (numpy evaluates fp16 ops slowly): random,
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


class OnnxReferenceRunner:
    """An ONNX file on onnx.reference: every op computed in its tensors' own dtype, so fp16
    tensors really are fp16 (ONNX Runtime's CPU provider runs many fp16 ops in fp32 and drops
    lossy cast pairs, which hides fp16 overflow). Slow: for small cases. A Runner."""

    fallback = None
    limits = ShapeLimits()
    device = "cpu"

    def __init__(self, path):
        import onnx
        from onnx.reference import ReferenceEvaluator

        from .metadata import read_metadata

        self.path = str(path)
        proto = onnx.load(self.path)
        self._eval = ReferenceEvaluator(proto)
        self.meta = ModelMeta(source=self.path, feature_dim=read_metadata(proto)["feature_dim"], crops=None)
        self.requested = self.backend = "onnx-reference"
        self.providers = [f"onnx {onnx.__version__} reference evaluator"]

    def run(self, features: np.ndarray, lengths, *, check: bool = True) -> dict[str, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            outs = self._eval.run(list(OUTPUTS), {"features": features, "lengths": np.asarray(lengths, np.int64)})
        return dict(zip(OUTPUTS, outs))

    def describe(self) -> str:
        return f"{self.backend} [{self.providers[0]}]"

    def close(self) -> None:
        self._eval = None


def reference_outputs(reference: Runner, case: Case) -> dict[str, np.ndarray]:
    """The reference's outputs (N, T) for a case; NaN past each length. In an `alone` case
    each video is run on its own, unpadded."""
    n, _, t, _ = case.features.shape
    if not case.alone:
        return reference.run(case.features, case.lengths, check=False)
    out = {k: np.full((n, t), np.nan, dtype=np.float32) for k in OUTPUTS}
    for i, length in enumerate(case.lengths.tolist()):
        one = reference.run(np.ascontiguousarray(case.features[i:i + 1, :, :length]),
                            np.array([length], np.int64), check=False)
        for k in OUTPUTS:
            out[k][i, :length] = one[k][0]
    return out


def verify_runner(runner: Runner, reference: Runner, *, tolerance: str, cases: list[Case],
                  precision: str = "fp32", against: str | None = None,
                  log: Callable[[str], None] | None = None) -> VerificationReport:
    """Run `runner` and `reference` on every case and compare them under TOLERANCES[tolerance].

    against: how reports name the reference ("the PyTorch model"; default its describe())."""
    tol = TOLERANCES[tolerance]
    if tol.metric != "rel_to_max":
        raise ValueError(f"tolerance {tolerance} uses {tol.metric}; verification compares rel_to_max")
    report = VerificationReport(precision, tolerance, tol.limit, against=against or reference.describe())
    for i, case in enumerate(cases, 1):
        ours = runner.run(case.features, case.lengths, check=False)
        ref = reference_outputs(reference, case)
        n, c, t, _ = case.features.shape
        res = CaseResult(case.name, (n, c, t), case.lengths.tolist(),
                         compare_outputs(ours, ref, case.lengths), tol.limit)
        report.cases.append(res)
        if log:
            errs = ", ".join(f"{d.output} abs {d.max_abs:.2e} rel {d.max_rel:.2e}" for d in res.diffs)
            log(f"  [{i}/{len(cases)}] {case.name:34s} N,C,T={n},{c},{t}: {errs}"
                f"  {'ok' if res.ok else 'FAIL (limit %g)' % tol.limit}")
    return report


def raise_unless_ok(report: VerificationReport, out, what: str) -> None:
    """VerificationError naming the failing cases and the worst errors; `what` says what was
    checked (e.g. "the fp16 graph (ONNX Runtime)")."""
    if report.ok:
        return
    bad = [c for c in report.cases if not c.ok]
    worst = {k: v.max_rel for k, v in report.worst().items()}
    raise VerificationError(
        f"{out}: {what} does not reproduce {report.against} within {report.tolerance} ({report.limit:g}) "
        f"on {len(bad)} case(s) ({', '.join(c.case for c in bad)}); worst rel errors "
        f"{', '.join(f'{k} {v:.3g}' for k, v in worst.items())}; nothing was written", report)


__all__ = ["Case", "CaseResult", "OnnxReferenceRunner", "VerificationError", "VerificationReport",
           "default_cases", "fp16_arithmetic_cases", "raise_unless_ok", "reference_outputs", "verify_runner"]
