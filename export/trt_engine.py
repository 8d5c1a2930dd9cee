"""TensorRT engines from the exported ONNX graph (TensorRT 10 and 11).

The network is strongly typed: tensor types come from the ONNX graph, so an fp16
engine is built from the fp16 graph (its fp32 islands stay fp32) and an fp32 engine
from the fp32 graph, with TF32 disabled. TensorRT 11 removed BuilderFlag.FP16 and weak
typing altogether; on 10.x STRONGLY_TYPED is the same choice made explicitly, so one
code path serves both. `tensorrt` is imported only when an engine is built or run.

Files written (each atomically): the engine, `<engine>.json` (the ONNX metadata plus the
profile, TensorRT version and device), and a timing cache reused by later builds.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bnwvad.runtime.contract import tolerance_for
from bnwvad.runtime.errors import BackendError

from ..atomic import StagedFiles, atomic_write_bytes
from .metadata import read_metadata

INSTALL_HINT = ("install TensorRT 10 or 11 for your CUDA version on a machine with an NVIDIA GPU: "
                "`pip install 'bnwvad[tensorrt]'` (or `pip install tensorrt`), see "
                "https://docs.nvidia.com/deeplearning/tensorrt/latest/installing-tensorrt/installing.html")
TRT_PRECISIONS = ("fp32", "fp16")


class TensorRTError(RuntimeError):
    """An engine that cannot be built as asked (or TensorRT not usable: TensorRTUnavailable)."""


class TensorRTUnavailable(TensorRTError):
    """TensorRT, the CUDA runtime or a GPU is missing here: nothing could run (exit 2)."""


@dataclass(frozen=True)
class Profile:
    """The optimisation profile over (N, C, T); D is fixed by the graph."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    @classmethod
    def default(cls, crops: int | None) -> "Profile":
        c = crops or 10
        return cls((1, 1, 1), (1, c, 200), (4, c, 2048))

    def validate(self) -> "Profile":
        for name in ("min", "opt", "max"):
            v = getattr(self, name)
            if len(v) != 3 or any(int(x) < 1 for x in v):
                raise TensorRTError(f"profile {name} {v}: expected three positive sizes N,C,T")
        for i, dim in enumerate("NCT"):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise TensorRTError(f"profile for {dim}: expected min <= opt <= max, got "
                                    f"{self.min[i]} / {self.opt[i]} / {self.max[i]}")
        return self

    def contains(self, n: int, c: int, t: int) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, (n, c, t), self.max))

    def to_dict(self) -> dict[str, Any]:
        return {"N": [self.min[0], self.opt[0], self.max[0]], "C": [self.min[1], self.opt[1], self.max[1]],
                "T": [self.min[2], self.opt[2], self.max[2]]}


@dataclass
class EngineReport:
    path: Path
    sidecar: Path
    timing_cache: Path
    metadata: dict[str, Any]
    verification: Any
    seconds: float

    def summary(self) -> str:
        m = self.metadata
        s = (f"wrote {self.path} ({self.path.stat().st_size / 2**20:.1f} MiB, TensorRT {m['tensorrt_version']}, "
             f"{m['precision']}, profile {m['profile']}) in {self.seconds:.1f} s; metadata {self.sidecar.name}, "
             f"timing cache {self.timing_cache}")
        if self.verification is not None:
            w = self.verification.worst()
            s += ("\nverified on the GPU against "
                  f"{m.get('verified_against', 'the reference')}: "
                  + ", ".join(f"{k} max rel {v.max_rel:.2e}" for k, v in w.items()))
        return s


def require_tensorrt():
    """The tensorrt module and a visible GPU, or a TensorRTError that says what is missing
    and how to get it (the import itself is the runtime's one `import_tensorrt`)."""
    from bnwvad.runtime import _cuda
    from bnwvad.runtime.runners import import_tensorrt

    try:
        trt = import_tensorrt()
    except BackendError as e:
        raise TensorRTUnavailable(f"TensorRT is not installed or not usable: {e}; {INSTALL_HINT}") from None
    try:
        gpus = _cuda.device_count()
    except BackendError as e:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is installed but the CUDA runtime is not: {e}") from None
    if gpus < 1:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible: an engine "
                            f"must be built on the kind of GPU it will run on")
    return trt


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _engine_cases(feature_dim: int, crops: int | None, profile: Profile):
    from .verify import Case, default_cases

    cases = [c for c in default_cases(feature_dim, crops) if profile.contains(*c.features.shape[:3])]
    n, c, t = profile.opt
    rng = np.random.default_rng(1)
    x = (rng.random((n, c, t, feature_dim), dtype=np.float32) * 2).astype(np.float32)
    cases.append(Case(f"profile opt shape {n},{c},{t}", x, np.full(n, t, dtype=np.int64)))
    return cases


def build_engine(onnx_path, engine_path, *, profile: Profile | None = None, timing_cache=None,
                 workspace_gib: float | None = None, verify: bool = True, reference=None,
                 preset: str | None = None, device: str = "cuda",
                 log: Callable[[str], None] | None = None) -> EngineReport:
    """Build a TensorRT engine from a bnwvad ONNX export (fp32 or fp16 graph).

    profile: min/opt/max over (N, C, T) (default: `Profile.default(crops)`).
    timing_cache: file read before and written after the build (default `<engine>.timing.cache`).
    verify: run the engine on the GPU on the verification cases that fit the profile and
    compare with `reference` (a BNWVAD model or checkpoint path: the unoptimised PyTorch
    model) or, without one, with the ONNX graph itself in ONNX Runtime; the tolerance is
    tensorrt_fp32 / tensorrt_fp16 of the contract's tolerance table. Nothing is written on failure.
    """
    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise TensorRTError(f"{onnx_path}: no such ONNX file")
    meta = read_metadata(onnx_path)
    precision = meta["precision"]
    if precision not in TRT_PRECISIONS:
        raise TensorRTError(f"{onnx_path}: a {precision} graph cannot become a TensorRT engine (its dynamic "
                            f"int8 ops are ONNX Runtime's); export with --fp16 or fp32 for TensorRT")
    profile = (profile or Profile.default(meta.get("crops"))).validate()
    cache_path = Path(timing_cache) if timing_cache else engine_path.with_name(engine_path.name + ".timing.cache")
    trt = require_tensorrt()
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly is None:
        raise TensorRTError(f"TensorRT {trt.__version__} has no STRONGLY_TYPED networks; {INSTALL_HINT}")
    network = builder.create_network(1 << int(strongly))
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_path} (TensorRT {trt.__version__}, strongly typed, {precision})")
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"{onnx_path}: TensorRT's ONNX parser failed: {errs}")
    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)     # fp32 means fp32 (tolerance tensorrt_fp32)
    d = int(meta["feature_dim"])
    prof = builder.create_optimization_profile()
    prof.set_shape("features", (*profile.min, d), (*profile.opt, d), (*profile.max, d))
    prof.set_shape("lengths", (profile.min[0],), (profile.opt[0],), (profile.max[0],))
    config.add_optimization_profile(prof)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    say(f"building (profile N,C,T min {profile.min} opt {profile.opt} max {profile.max}"
        f"{', reusing timing cache ' + str(cache_path) if cache_bytes else ''})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"{onnx_path}: TensorRT could not build an engine for profile "
                            f"{profile.to_dict()} (see the TensorRT log above)")
    engine = bytes(serialized)

    dev = torch.device(device)
    major, minor = torch.cuda.get_device_capability(dev)
    verified_against = None
    if verify:
        verified_against = "the PyTorch model" if reference is not None else "the ONNX graph in ONNX Runtime"
    side = dict(meta)
    side.update({
        "tensorrt_version": str(trt.__version__),
        "profile": profile.to_dict(),
        "onnx_file": onnx_path.name,
        "onnx_digest": "sha256:" + _file_sha256(onnx_path),
        "engine_digest": _sha256(engine),
        "device_name": torch.cuda.get_device_name(dev),
        "compute_capability": f"{major}.{minor}",
        "strongly_typed": True,
        "tf32": False,
        "timing_cache": cache_path.name,
        "verified_against": verified_against,
    })
    side_bytes = json.dumps(side, indent=2, sort_keys=True).encode()
    report = None
    sidecar = engine_path.with_name(engine_path.name + ".json")
    with StagedFiles(engine_path.parent, engine_path.name) as stage:
        stage.path(engine_path.name).write_bytes(engine)
        stage.path(sidecar.name).write_bytes(side_bytes)
        if verify:
            report = _verify_engine(stage.path(engine_path.name), engine_path, onnx_path, precision, profile,
                                    reference, preset, device, verified_against, say, log)
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
        stage.commit({sidecar.name: sidecar, engine_path.name: engine_path})   # the engine last
    rep = EngineReport(engine_path, sidecar, cache_path, side, report, time.perf_counter() - t0)
    say(rep.summary())
    return rep


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_engine(staged: Path, engine_path: Path, onnx_path: Path, precision: str, profile: Profile,
                   reference, preset, device, against: str, say, log):
    """The staged engine (beside its staged sidecar) on the runtime's TensorRTRunner, what
    bnwvad-infer will run, against the PyTorch model or the ONNX graph on ONNX Runtime's CPU
    provider. Raises VerificationError on a miss."""
    from bnwvad.runtime.runners import OrtRunner, TensorRTRunner

    from .verify import raise_unless_ok, verify_runner

    if reference is not None:
        from bnwvad.torch_runner import TorchRunner

        from .exporter import load_source
        model, _ = load_source(reference, preset, device)
        ref = TorchRunner(model, device=device)
    else:
        ref = OrtRunner(onnx_path, "ort-cpu", strict=True)
    with TensorRTRunner(staged) as trt_run, ref:
        say(f"verifying the engine ({trt_run.describe()}) against {against}")
        d = int(trt_run.meta.feature_dim)
        report = verify_runner(trt_run, ref, tolerance=tolerance_for(precision, "tensorrt"),
                               cases=_engine_cases(d, trt_run.meta.crops, profile), precision=precision,
                               against=against, log=log)
    raise_unless_ok(report, engine_path, f"the {precision} engine")
    return report


__all__ = ["EngineReport", "Profile", "TensorRTError", "TensorRTUnavailable", "build_engine", "require_tensorrt"]
