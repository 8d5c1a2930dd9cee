"""export_onnx: checkpoint or model -> folded, verified ONNX file, written atomically."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import onnx
import torch

from bnwvad._version import __version__
from bnwvad.atomic import StagedFiles
from bnwvad.checkpoint import checkpoint_info, load_model
from bnwvad.config import get_preset
from bnwvad.model import BNWVAD
from bnwvad.runtime.contract import FRAMES_PER_SNIPPET, PRECISIONS, TOLERANCES, error, tolerance_for
from bnwvad.torch_runner import TorchRunner

from .fold import fold
from .graph import MAX_OPSET, MIN_OPSET, build_graph
from .metadata import build_metadata, set_metadata, weights_digest
from .quantize import quantize_int8
from .verify import (OnnxReferenceRunner, VerificationReport, default_cases, fp16_arithmetic_cases,
                     raise_unless_ok, verify_runner)

DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """An export that cannot be done as asked; nothing was written."""


@dataclass
class ExportReport:
    path: Path
    data_path: Path | None          # the external-data file, when asked for
    precision: str
    opset: int
    metadata: dict[str, Any]
    verification: VerificationReport | None
    fp16_arithmetic: VerificationReport | None      # fp16 only: true fp16 ops (onnx.reference)
    fold_error: float               # folded vs original PyTorch model (rel_to_max), dry run
    nodes: int
    size_bytes: int
    seconds: float

    def summary(self) -> str:
        size = self.size_bytes + (self.data_path.stat().st_size if self.data_path else 0)
        lines = [f"wrote {self.path} ({size / 2**20:.1f} MiB, {self.precision}, opset {self.opset}, "
                 f"{self.nodes} nodes) in {self.seconds:.1f} s"]
        if self.verification is not None:
            w = self.verification.worst()
            lines.append(f"verified against PyTorch on {len(self.verification.cases)} cases "
                         f"({self.verification.tolerance} <= {self.verification.limit:g}): "
                         + ", ".join(f"{k} max rel {v.max_rel:.2e}" for k, v in w.items()))
        else:
            lines.append("not verified (--no-verify)")
        if self.fp16_arithmetic is not None:
            w = self.fp16_arithmetic.worst()
            lines.append(f"true fp16 arithmetic on {len(self.fp16_arithmetic.cases)} cases: "
                         + ", ".join(f"{k} max rel {v.max_rel:.2e}" for k, v in w.items()))
        return "\n".join(lines)


def load_source(source, preset: str | None = None, device: str | torch.device = "cpu"):
    """(model, info) from a checkpoint path or a BNWVAD model; info holds the metadata
    fields that depend on where the model came from."""
    if isinstance(source, BNWVAD):
        if preset is not None:
            get_preset(preset)
        return source, {"source": None, "source_digest": None, "preset": preset, "crops": None}
    if not isinstance(source, (str, os.PathLike)):
        raise ExportError(f"source must be a checkpoint path or a bnwvad.model.BNWVAD, got {type(source).__name__}")
    path = Path(source)
    if preset is not None:
        get_preset(preset)              # unknown names fail here, with the list
    model = load_model(path, preset=preset, device=device)
    info = checkpoint_info(path)
    own = info.get("preset")
    if own is not None and preset is not None and own != preset:
        raise ExportError(f"{path}: the checkpoint was trained with preset {own!r}, but preset {preset!r} "
                          f"was given; drop --preset or pass --preset {own}")
    return model, {"source": path.name, "source_digest": info["digest"], "preset": preset or own,
                   "crops": info.get("crops")}


def _dry_run(model: BNWVAD, deploy, device) -> float:
    """Folded vs original on a small padded batch: catches a wrong fold before any graph."""
    g = torch.Generator().manual_seed(0)
    d = model.config.feature_dim
    x = (torch.rand(2, 2, 9, d, generator=g) * 2).to(device)
    lengths = torch.tensor([9, 4], device=device)
    with torch.no_grad():
        ref, ours = model(x, lengths), deploy(x, lengths)
    errs = [error(o[0].cpu().numpy(), r[0].cpu().numpy(), "rel_to_max") for o, r in zip(ours, ref)]
    errs += [error(o[1, :4].cpu().numpy(), r[1, :4].cpu().numpy(), "rel_to_max") for o, r in zip(ours, ref)]
    return max(errs)


def _verification_session(path: Path):
    """The written file on ONNX Runtime's CPU provider, as bnwvad-infer would open it, but
    with the pool's spinning off: verification alternates ONNX Runtime and torch calls, and
    spinning pool threads would take the cores torch's next op needs (10x slower on 2 cores)."""
    from bnwvad.runtime.runners import OrtRunner

    return OrtRunner(path, "ort-cpu", strict=True, session_config={"session.intra_op.allow_spinning": "0"})


def export_onnx(source, out_path, *, preset: str | None = None, precision: str = "fp32",
                opset: int = DEFAULT_OPSET, verify: bool = True, external_data: bool = False,
                device: str | torch.device = "cpu", cases=None, graph_options: dict | None = None,
                log: Callable[[str], None] | None = None) -> ExportReport:
    """Export a checkpoint (ours, or a published state_dict with `preset`) or a BNWVAD model
    to a folded-BN ONNX graph at `out_path`.

    precision: "fp32", "fp16" (mixed: fp32 inputs/outputs, residual stream, LayerNorm,
    softmax, head and DFM; fp16 matmuls) or "int8" (dynamic int8 weights). With `verify`
    (default) the written file is run in ONNX Runtime against the unoptimised PyTorch model
    on `cases` (default: `verify.default_cases`) and must meet the precision's tolerance in
    the contract's tolerance table; otherwise VerificationError is raised and nothing is left at
    `out_path`. `external_data` stores the weights in `<out_path name>.data` beside it.
    """
    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ExportError(f"opset {opset}: expected {MIN_OPSET}..{MAX_OPSET} (LayerNormalization needs 17)")
    out = Path(out_path)
    if out.is_dir():
        raise ExportError(f"{out}: is a directory; expected the path of the .onnx file to write")

    say(f"loading {source if not isinstance(source, BNWVAD) else 'model in memory'}")
    model, info = load_source(source, preset, device)
    model = model.eval()
    cfg = model.config
    # The checkpoint's own crop count (what its data had) wins over its preset's.
    crops = info.get("crops") or (get_preset(info["preset"]).crops if info["preset"] else None)
    fps = get_preset(info["preset"]).frames_per_snippet if info["preset"] else FRAMES_PER_SNIPPET

    say("folding BatchNorm statistics into the head (on a copy)")
    deploy = fold(model)
    fold_err = _dry_run(model, deploy, next(model.parameters()).device)
    limit = TOLERANCES["fold"].limit
    say(f"dry run: folded vs original max rel error {fold_err:.2e} (limit {limit:g})")
    if not fold_err <= limit:
        raise ExportError(f"folding changed the model's outputs: max rel error {fold_err:.3g} > {limit:g}")

    options = dict(graph_options or {})
    if precision == "int8":
        # Dynamic int8 quantises each matmul input with one scale per tensor: rows scaled to
        # max |x| = 1 first, so one outlier snippet cannot crush the others to zero.
        options.setdefault("row_scale", True)
    proto = build_graph(deploy.cpu(), opset=int(opset), precision="fp16" if precision == "fp16" else "fp32",
                        options=options)
    if precision == "int8":
        say("quantising weight matmuls to int8 (dynamic)")
        proto = quantize_int8(proto)
    meta = build_metadata(config=cfg.to_dict(), preset=info["preset"], crops=crops, frames_per_snippet=fps,
                          precision=precision, opset=int(opset), version=__version__,
                          source=info["source"], source_digest=info["source_digest"],
                          weights=weights_digest(model.state_dict()), graph_options=options)
    set_metadata(proto, meta)
    proto.producer_name, proto.producer_version = "bnwvad.export", __version__
    proto.doc_string = ("BN-WVAD, BatchNorm folded: features (N, C, T, D) float32 + lengths (N,) int64 -> "
                        "score, dfm, anomaly (N, T) float32, crop means; values past a length undefined.")
    bn = [n.name for n in proto.graph.node if n.op_type == "BatchNormalization"]
    if bn:   # the fold is the point of the export: never ship a graph that still has BN
        raise ExportError(f"internal error: BatchNormalization nodes left after folding: {bn}")
    onnx.checker.check_model(proto, full_check=True)
    say(f"graph: {len(proto.graph.node)} nodes, {precision}, opset {opset}; onnx.checker ok")

    data_name = out.name + ".data"
    with StagedFiles(out.parent, out.name) as stage:
        tmp_model = stage.path(out.name)
        if external_data:
            onnx.save_model(proto, tmp_model, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            onnx.checker.check_model(str(tmp_model), full_check=True)
        else:
            onnx.save_model(proto, tmp_model)
        report = fp16_report = None
        if verify:
            tol = tolerance_for(precision, "onnxruntime")
            say(f"verifying the written graph in ONNX Runtime (CPU) against the PyTorch model "
                f"({tol}: max |ours - ref| / max |ref| <= {TOLERANCES[tol].limit:g})")
            reference = TorchRunner(model, device=next(model.parameters()).device)
            with _verification_session(tmp_model) as ort_run:
                report = verify_runner(ort_run, reference, tolerance=tol, precision=precision, log=log,
                                       against="the PyTorch model",
                                       cases=cases if cases is not None else default_cases(cfg.feature_dim, crops))
            raise_unless_ok(report, out, f"the {precision} graph (ONNX Runtime)")
            if precision == "fp16":
                say("verifying true fp16 arithmetic (onnx.reference: fp16 tensors stay fp16; ONNX Runtime's "
                    "CPU provider computes many fp16 ops in fp32)")
                fp16_report = verify_runner(OnnxReferenceRunner(tmp_model), reference, tolerance=tol,
                                            precision=precision, against="the PyTorch model", log=log,
                                            cases=fp16_arithmetic_cases(cfg.feature_dim))
                raise_unless_ok(fp16_report, out, "the fp16 graph (fp16 arithmetic, onnx.reference)")
        # The data file first: a reader that finds the model finds its weights.
        data_path = out.parent / data_name if external_data else None
        stage.commit({data_name: data_path, out.name: out} if external_data else {out.name: out})
    rep = ExportReport(out, data_path, precision, int(opset), meta, report, fp16_report, fold_err,
                       len(proto.graph.node), out.stat().st_size, time.perf_counter() - t0)
    say(rep.summary())
    return rep


__all__ = ["DEFAULT_OPSET", "ExportError", "ExportReport", "PRECISIONS", "export_onnx", "load_source"]
