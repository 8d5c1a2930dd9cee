"""Runners: one small interface over ONNX Runtime (CPU, CUDA, TensorRT EP) and native TensorRT.

    runner = load_runner("model.onnx", backend="auto")
    out = runner.run(features, lengths)     # (N, C, T, D) float32, (N,) int64 -> {name: (N, T)}
    runner.backend, runner.providers        # what actually runs

ONNX Runtime quietly falls back to its CPU provider when the CUDA or TensorRT libraries
cannot be loaded; each runner compares what runs with what was asked and, per `strict`,
raises BackendError or warns loudly. onnxruntime and tensorrt are imported on first use,
so `import bnwvad.runtime` needs numpy only.
"""
from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from bnwvad._extras import import_or_raise

from .errors import BackendError, ModelLoadError
from .contract import INPUTS, OUTPUTS, Closing, asked_for
from .metadata import ModelMeta, meta_from_props, meta_from_sidecar, onnx_metadata_props
from .validate import ShapeLimits, validate_inputs


BACKENDS = ("auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# Provider lists asked of ONNX Runtime per backend, highest priority first.
ORT_PROVIDERS = {
    "ort-cpu": ("CPUExecutionProvider",),
    "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
_PROVIDER_BACKEND = {"TensorrtExecutionProvider": "ort-trt", "CUDAExecutionProvider": "ort-cuda",
                     "CPUExecutionProvider": "ort-cpu"}
_GPU_FIX = ("Fix: install onnxruntime-gpu instead of onnxruntime (pip install 'bnwvad[gpu]'; the two "
            "packages must not share an environment) with the CUDA 12 and cuDNN 9 libraries on the "
            "library path (and TensorRT 10 for the TensorRT provider), or choose --backend ort-cpu")


class BaseRunner(Closing):
    """The base of the runtime's runners; the interface is `bnwvad.runtime.contract.Runner`.

    Attributes: path, meta (ModelMeta), requested (the backend asked for), backend (the one
    that actually runs), providers (ONNX Runtime providers in use, or ["TensorRT"]),
    device ("cpu" | "cuda"), limits (ShapeLimits), fallback (a message, or None).
    Subclasses implement `_run` on validated inputs.
    """

    path: Path
    meta: ModelMeta
    requested: str
    backend: str
    providers: list[str]
    device: str = "cpu"
    limits: ShapeLimits = ShapeLimits()
    fallback: str | None = None

    def run(self, features: np.ndarray, lengths, *, check: bool = True) -> dict[str, np.ndarray]:
        """features (N, C, T, D) float32 zero-padded, lengths (N,) -> score/dfm/anomaly (N, T) float32.

        check=True validates the inputs against the metadata first (InputError). The
        Scorer validates each video where it enters and passes check=False. Values past a
        video's length are not defined.
        """
        if check:
            features, lengths = validate_inputs(features, lengths, self.meta, limits=self.limits)
        out = self._run(features, lengths)
        n, _, t, _ = features.shape
        for name in OUTPUTS:
            if name not in out or out[name].shape != (n, t):
                got = None if name not in out else out[name].shape
                raise BackendError(f"{self.path}: output {name!r} has shape {got}; expected ({n}, {t}). "
                                   f"The file does not follow the bnwvad export contract: re-export it")
        return {k: np.asarray(out[k], dtype=np.float32) for k in OUTPUTS}

    def _run(self, features: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.backend} [{', '.join(self.providers)}]{asked_for(self)}"


def _report_fallback(message: str, strict: bool) -> str:
    """A backend other than the one asked for: BackendError with strict, else said once, as a
    RuntimeWarning (services see it in their logs through Python's warnings; the runner keeps
    it in `.fallback`)."""
    if strict:
        raise BackendError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    return message


def _import_ort():
    return import_or_raise("onnxruntime", lambda e: BackendError(
        f"onnxruntime is not installed ({e}); the ONNX backends need it. Fix: pip install 'bnwvad[cpu]' "
        f"(or 'bnwvad[gpu]' on an NVIDIA machine)"))


def import_tensorrt():
    """The tensorrt module (10 or newer), or BackendError saying what is missing and the fix.
    The one place bnwvad imports TensorRT (the runtime's runner and the engine builder)."""
    trt = import_or_raise("tensorrt", lambda e: BackendError(
        f"the native TensorRT backend needs the `tensorrt` Python package (10 or newer), which is not "
        f"importable here ({e}). Fix: pip install 'bnwvad[tensorrt]' on a machine with an NVIDIA GPU, or "
        f"run the .onnx file with --backend ort-cuda / ort-cpu"))
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major < 10:
        raise BackendError(f"tensorrt {trt.__version__} is installed; the runtime needs 10 or newer "
                           f"(name-based tensor API, execute_async_v3). Fix: pip install 'tensorrt>=10'")
    return trt


def resolve_backend(path: Path, backend: str, available: list[str] | None = None) -> str:
    """'auto' -> a concrete backend: an engine file -> tensorrt; an .onnx -> ort-cuda where
    ONNX Runtime offers CUDA, else ort-cpu. (The TensorRT provider builds engines on first
    use, minutes, so auto never picks it.)"""
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    is_engine = path.suffix.lower() in ENGINE_SUFFIXES
    if backend == "auto":
        if is_engine:
            return "tensorrt"
        if available is None:
            available = list(_import_ort().get_available_providers())
        return "ort-cuda" if "CUDAExecutionProvider" in available else "ort-cpu"
    if is_engine and backend != "tensorrt":
        raise BackendError(f"{path}: a TensorRT engine runs only on backend 'tensorrt' (got "
                           f"{backend!r}). Fix: --backend tensorrt, or pass the .onnx file instead")
    if not is_engine and backend == "tensorrt":
        raise BackendError(f"{path}: backend 'tensorrt' needs a serialized engine ({', '.join(ENGINE_SUFFIXES)}) "
                           f"with its JSON sidecar. Fix: build one with bnwvad-export, or use "
                           f"--backend ort-trt to let ONNX Runtime's TensorRT provider run the .onnx")
    return backend


# -- ONNX Runtime's CPU arena and the memory budget ---------------------------------------------
# Measured on the exported published model (D = 1024, E = 512), ONNX Runtime 1.32 CPU, 2 threads,
# one call in a fresh process: peak RSS (VmHWM) over the RSS after loading the model (98 MiB),
# MiB, and its ratio to estimate_bytes (bnwvad.runtime.planning):
#
#     C x T       estimate   arena on       arena off
#     1 x 3000       432      473 (1.09)     409 (0.95)
#     1 x 4000       713      972 (1.36)     680 (0.95)
#     1 x 4096       744     1015 (1.36)
#     1 x 5790      1388     1978 (1.42)
#     1 x 6000      1482     1735 (1.17)    1412 (0.95)
#     1 x 7000      1969     2302 (1.17)    1929 (0.98)
#     1 x 9000      3150     3811 (1.21)    2992 (0.95)
#     5 x 1000       377      286 (0.76)
#     5 x 2000      1097      910 (0.83)
#
# The arena grows in regions that double in size, so its overshoot peaks where the attention
# tensors (16 T^2 bytes) just fit a power of two (T = 4096, 5793): up to 1.42x. Without the
# arena the estimate holds (<= 0.98x) but calls are slower. Seconds per call, median of 5,
# the three modes interleaved in one process (a busy 2-core machine):
#
#     N x C x T      arena     arena + shrink after     arena off
#     1 x 5 x 64     0.311          0.325                 0.380
#     1 x 1 x 2000   2.46           2.49                  2.78
#     1 x 5 x 1000   3.34           3.54                  3.67
#     1 x 1 x 4000   8.25           8.68                  9.70
#
# Decision:
#   - the arena stays on, and a call whose estimate exceeds SHRINK_ABOVE shrinks it when it
#     ends (run option memory.enable_memory_arena_shrinkage = "cpu:0"): RSS is back at
#     105-120 MiB after a T = 6000 or 9000 call instead of holding 1.8 / 3.8 GiB, for 1-6%;
#   - such a call is planned at ARENA_PEAK x its estimate, and the process keeps ARENA_HELD
#     in reserve for what the arena holds from the smaller calls it does not shrink after
#     (measured: 56 MiB after 60 calls of up to 62 MiB estimated);
#   - a crop that fits the budget only without the arena's overshoot runs through a second,
#     arena-free session (made on first use; PLAIN_SESSION_BYTES reserved, 30 MiB measured),
#     planned at PLAIN_PEAK x its estimate: 4-17% slower, but scored instead of refused.
ARENA_PEAK = 1.5
PLAIN_PEAK = 1.05
SHRINK_ABOVE = 64 << 20
ARENA_HELD = int(ARENA_PEAK * SHRINK_ABOVE)
PLAIN_SESSION_BYTES = 48 << 20
_SHRINK_KEY = "memory.enable_memory_arena_shrinkage"


class OrtRunner(BaseRunner):
    """An .onnx model through an ONNX Runtime InferenceSession.

    threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
    arena: ONNX Runtime's CPU memory arena. It keeps a call's buffers for reuse (faster); on
    CPU a call whose estimated working set exceeds SHRINK_ABOVE returns them when it ends,
    and `run(..., arena=False)` runs a call through an arena-free session (see ARENA_PEAK
    above for the measurements). Off: every call returns its memory; slower.
    trt_options: extra TensorRT-provider options (strings), e.g. {"trt_engine_cache_path": dir}.
    trt_max_shape: (N, C, T) the TensorRT provider's profile must cover.
    session_config: extra ONNX Runtime session config entries (add_session_config_entry).
    """

    def __init__(self, path: str | Path, backend: str = "auto", *, strict: bool = False,
                 threads: int | None = None, device_id: int = 0, arena: bool = True,
                 trt_options: Mapping[str, Any] | None = None,
                 trt_max_shape: tuple[int, int, int] = (32, 10, 4096),
                 session_config: Mapping[str, str] | None = None):
        self.path = Path(path)
        ort = _import_ort()
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such model file; expected an .onnx file written "
                                 f"by bnwvad-export")
        available = list(ort.get_available_providers())
        auto = backend == "auto"
        self.requested = resolve_backend(self.path, backend, available)
        if self.requested == "tensorrt":
            raise BackendError(f"{self.path}: OrtRunner runs .onnx files; use TensorRTRunner for engines")
        wanted = ORT_PROVIDERS[self.requested]
        if wanted[0] not in available:
            # Known before the session exists: this onnxruntime build lacks the provider.
            self.fallback = _report_fallback(
                f"backend {self.requested!r} needs {wanted[0]}, but the installed onnxruntime "
                f"{ort.__version__} offers only {available}: it would run on CPU. {_GPU_FIX}",
                strict and not auto)
        so = ort.SessionOptions()
        if threads is not None:
            if threads < 0:
                raise BackendError(f"threads = {threads}; expected 0 (ONNX Runtime's default) or more")
            so.intra_op_num_threads = int(threads)
        so.enable_cpu_mem_arena = bool(arena)
        self.arena = bool(arena)
        self._so_args = (threads, dict(session_config or {}))
        self._plain = None          # the arena-free session, made on first use
        self._local = threading.local()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3   # errors only: a fallback is reported by us, with the fix
        for key, value in (session_config or {}).items():
            so.add_session_config_entry(str(key), str(value))
        providers = []
        for name in wanted:
            if name == "CPUExecutionProvider":
                providers.append(name)
            elif name == "CUDAExecutionProvider":
                # TF32 off: fp32 graphs must stay within the onnx_fp32 tolerance.
                providers.append((name, {"device_id": str(device_id), "use_tf32": "0"}))
            else:
                providers.append((name, self._trt_provider_options(device_id, trt_options, trt_max_shape)))
        try:
            self.session = self._make_session(ort, so, providers)
        except Exception as e:   # onnxruntime raises its own Fail / InvalidProtobuf / ... types
            raise ModelLoadError(f"{self.path}: ONNX Runtime could not load the model "
                                 f"({type(e).__name__}: {e}); expected an ONNX file written by "
                                 f"bnwvad-export. Fix: re-export it") from None
        self.providers = list(self.session.get_providers())
        self.backend = _PROVIDER_BACKEND.get(self.providers[0], self.providers[0]) if self.providers else "none"
        self.device = "cpu" if self.backend == "ort-cpu" else "cuda"
        if self.backend != self.requested and self.fallback is None:
            # The provider exists in this build but could not start (CUDA / cuDNN / TensorRT
            # libraries missing or mismatched): ONNX Runtime dropped it without an error.
            self.fallback = _report_fallback(
                f"asked ONNX Runtime for {list(wanted)} ({self.requested}) but the session runs on "
                f"{self.providers} ({self.backend}): the {wanted[0]} could not be initialised "
                f"(its CUDA, cuDNN or TensorRT libraries are missing or of the wrong version). {_GPU_FIX}",
                strict and not auto)
        self._check_io()
        if self.requested == "ort-trt" and self.backend == "ort-trt":
            n, c, t = trt_max_shape
            self.limits = ShapeLimits(max_n=n, max_c=c, max_t=t)
        self._shrink = None         # RunOptions that shrink the CPU arena, made on first use

    # -- memory: what a call costs the process (see ARENA_PEAK) -------------------------------
    @property
    def can_drop_arena(self) -> bool:
        """A call may run without the arena (`run(..., arena=False)`): CPU with the arena on."""
        return self.arena and self.device == "cpu"

    @property
    def reserve_bytes(self) -> int:
        """Memory the process may hold besides its model and the current call: what the arena
        keeps from calls it does not shrink after, and the arena-free session once made."""
        if self.device != "cpu" or not self.arena:
            return 0
        return ARENA_HELD + PLAIN_SESSION_BYTES

    def peak_bytes(self, estimate: int, arena: bool = True) -> int:
        """Peak RSS a call with working-set `estimate` (estimate_bytes) adds to the process.
        GPU providers: the estimate (device memory; the default budget's fraction covers
        their allocator)."""
        if self.device != "cpu":
            return int(estimate)
        factor = ARENA_PEAK if (self.arena and arena) else PLAIN_PEAK
        return int(math.ceil(estimate * factor))

    def run(self, features, lengths, *, check: bool = True, arena: bool = True) -> dict[str, np.ndarray]:
        """As BaseRunner.run; arena=False runs this call without ONNX Runtime's arena (CPU)."""
        self._local.arena = arena
        try:
            return super().run(features, lengths, check=check)
        finally:
            self._local.arena = True

    def _shrink_options(self):
        if self._shrink is None:
            self._shrink = _import_ort().RunOptions()
            self._shrink.add_run_config_entry(_SHRINK_KEY, "cpu:0")
        return self._shrink

    def _plain_session(self):
        if self._plain is None:
            ort = _import_ort()
            threads, config = self._so_args
            so = ort.SessionOptions()
            if threads is not None:
                so.intra_op_num_threads = int(threads)
            so.enable_cpu_mem_arena = False
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            for key, value in config.items():
                so.add_session_config_entry(str(key), str(value))
            self._plain = self._make_session(ort, so, ["CPUExecutionProvider"])
        return self._plain

    def _make_session(self, ort, so, providers):
        return ort.InferenceSession(str(self.path), sess_options=so, providers=providers)

    def _trt_provider_options(self, device_id, extra, max_shape) -> dict:
        d = self._peek_feature_dim()
        n, c, t = max_shape
        opts = {
            "device_id": str(device_id),
            # Engines take minutes to build: cache them beside the model by default.
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(self.path.parent / ".trt_cache"),
            "trt_timing_cache_enable": "True",
        }
        if d is not None:
            # One explicit profile covering every shape the scorer sends (dynamic N, C, T).
            opts["trt_profile_min_shapes"] = f"features:1x1x1x{d},lengths:1"
            opts["trt_profile_opt_shapes"] = f"features:{min(8, n)}x{min(5, c)}x{min(256, t)}x{d},lengths:{min(8, n)}"
            opts["trt_profile_max_shapes"] = f"features:{n}x{c}x{t}x{d},lengths:{n}"
        opts.update({k: str(v) for k, v in (extra or {}).items()})
        return opts

    def _peek_feature_dim(self) -> int | None:
        """D from the file's metadata, read before any session exists (the TensorRT
        provider needs its profile shapes up front)."""
        props = onnx_metadata_props(self.path)
        return meta_from_props(props, str(self.path)).feature_dim

    def _check_io(self) -> None:
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = [o.name for o in self.session.get_outputs()]
        if set(ins) != set(INPUTS) or not set(OUTPUTS) <= set(outs):
            raise ModelLoadError(f"{self.path}: graph inputs {sorted(ins)} and outputs {outs}; "
                                 f"expected inputs {list(INPUTS)} and outputs {list(OUTPUTS)} (the "
                                 f"bnwvad export contract). Fix: export it with bnwvad-export")
        shape = ins["features"].shape
        hint = shape[-1] if len(shape) == 4 and isinstance(shape[-1], int) else None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = meta_from_props(props, str(self.path), feature_dim_hint=hint)
        # fp16 graphs may take float16 features; the contract's float32 is cast at the boundary.
        self._feature_type = np.float16 if ins["features"].type == "tensor(float16)" else np.float32
        self._lengths_type = np.int32 if ins["lengths"].type == "tensor(int32)" else np.int64

    def _run(self, features, lengths):
        feed = {"features": features.astype(self._feature_type, copy=False),
                "lengths": lengths.astype(self._lengths_type, copy=False)}
        session, options = self.session, None
        if self.can_drop_arena and not getattr(self._local, "arena", True):
            session = self._plain_session()
        elif self.can_drop_arena:
            from .planning import estimate_bytes

            n, c, t, _ = features.shape
            if estimate_bytes(n * c, t, self.meta) > SHRINK_ABOVE:
                options = self._shrink_options()     # give the arena's memory back when this call ends
        values = session.run(list(OUTPUTS), feed, options)
        return dict(zip(OUTPUTS, values))

    def close(self) -> None:
        self.session = None
        self._plain = None


class TensorRTRunner(BaseRunner):
    """A serialized TensorRT engine (+ JSON sidecar with the ONNX metadata), run natively.

    Device buffers are allocated through libcudart (ctypes) and grown as batches need;
    shapes are bounded by the engine's optimisation profile 0 (exposed as `limits`).
    """

    def __init__(self, path: str | Path, *, sidecar: str | Path | None = None, device_id: int = 0,
                 strict: bool = False):
        from . import _cuda

        self.path = Path(path)
        self.requested = "tensorrt"
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such engine file; expected a TensorRT engine "
                                 f"built by bnwvad-export")
        self.meta = meta_from_sidecar(self.path, sidecar)
        trt = import_tensorrt()
        self._trt, self._cuda = trt, _cuda
        if _cuda.device_count() < 1:
            raise BackendError("the native TensorRT backend needs an NVIDIA GPU; CUDA sees none. "
                               "Fix: run on a GPU machine, or use --backend ort-cpu with the .onnx file")
        _cuda.set_device(device_id)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            # The sidecar says what the engine was built with: name the mismatch if there is one.
            built = self.meta.raw.get("tensorrt_version")
            where = self.meta.raw.get("device_name")
            hint = (f"; it was built with TensorRT {built}" if built else "") + (f" on {where}" if where else "")
            raise ModelLoadError(f"{self.path}: TensorRT {trt.__version__} could not deserialize the "
                                 f"engine{hint} (engines are tied to one TensorRT version and GPU "
                                 f"model). Fix: rebuild it on this machine with `bnwvad-export engine`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        if set(self._inputs) != set(INPUTS) or not set(OUTPUTS) <= set(self._outputs):
            raise ModelLoadError(f"{self.path}: engine inputs {self._inputs} and outputs {self._outputs}; "
                                 f"expected {list(INPUTS)} and {list(OUTPUTS)}. Fix: rebuild it with bnwvad-export")
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        lo, _, hi = self.engine.get_tensor_profile_shape("features", 0)
        d = int(hi[3])
        if self.meta.feature_dim is not None and d != self.meta.feature_dim:
            raise ModelLoadError(f"{self.path}: engine takes D = {d} but its sidecar says "
                                 f"{self.meta.feature_dim}: the sidecar belongs to another model")
        self.limits = ShapeLimits(max_n=int(hi[0]), max_c=int(hi[1]), max_t=int(hi[2]),
                                  min_n=int(lo[0]), min_c=int(lo[1]), min_t=int(lo[2]))
        self.backend = "tensorrt"
        self.providers = [f"TensorRT {trt.__version__}"]
        self.device = "cuda"
        self._buffers = {n: _cuda.DeviceBuffer() for n in names}
        self._stream = _cuda.Stream()

    def _run(self, features, lengths):
        ctx = self.context
        host = {"features": np.ascontiguousarray(features, dtype=self._dtypes["features"]),
                "lengths": np.ascontiguousarray(lengths, dtype=self._dtypes["lengths"])}
        for name, arr in host.items():
            if not ctx.set_input_shape(name, arr.shape):
                raise BackendError(f"{self.path}: TensorRT rejected input {name!r} of shape {arr.shape} "
                                   f"(profile range N, C, T: {self.limits})")
            ptr = self._buffers[name].ensure(arr.nbytes)
            self._stream.htod(ptr, arr)
            ctx.set_tensor_address(name, ptr)
        results = {}
        for name in self._outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            results[name] = np.empty(shape, dtype=self._dtypes[name])
            ctx.set_tensor_address(name, self._buffers[name].ensure(results[name].nbytes))
        if not ctx.execute_async_v3(self._stream.handle):
            raise BackendError(f"{self.path}: TensorRT execute_async_v3 failed for features "
                               f"{features.shape} (see the TensorRT log above)")
        for name in self._outputs:
            self._stream.dtoh(results[name], self._buffers[name].ptr)
        self._stream.synchronize()
        # host arrays stay referenced until here, so the async copies read live memory.
        del host
        return {k: results[k].astype(np.float32, copy=False) for k in OUTPUTS}

    def close(self) -> None:
        for b in getattr(self, "_buffers", {}).values():
            b.close()
        if getattr(self, "_stream", None) is not None:
            self._stream.close()
            self._stream = None
        self.context = None
        self.engine = None


def load_runner(model: str | Path, backend: str = "auto", *, strict: bool = False,
                threads: int | None = None, device_id: int = 0, arena: bool = True,
                sidecar: str | Path | None = None, **ort_kwargs) -> BaseRunner:
    """Open an exported model on a backend; see the module docstring.

    backend: auto | ort-cpu | ort-cuda | ort-trt | tensorrt. `auto` picks tensorrt for an
    engine file, else ort-cuda where ONNX Runtime offers CUDA, else ort-cpu, and accepts a
    fallback (warning). strict: raise BackendError when what runs is not what was asked.
    """
    path = Path(model)
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if path.suffix.lower() in ENGINE_SUFFIXES:
        resolve_backend(path, backend, available=[])     # an engine runs only on tensorrt
        return TensorRTRunner(path, sidecar=sidecar, device_id=device_id, strict=strict)
    return OrtRunner(path, backend, strict=strict, threads=threads, device_id=device_id,
                     arena=arena, **ort_kwargs)
