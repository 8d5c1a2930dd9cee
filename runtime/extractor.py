"""The I3D feature extractor without torch: an exported graph on ONNX Runtime, and the streaming
video -> (T, C, 1024) pipeline.

    from bnwvad.runtime.extractor import ExtractorRunner, extract_video
    with ExtractorRunner("i3d.onnx", backend="auto") as extractor:    # written by bnwvad-export i3d
        feats = extract_video("a.mp4", extractor, crops=10)            # (T, 10, 1024) float32

The graph (format "bnwvad-i3d-onnx") maps `clips` float32 (N, 3, 16, 224, 224) in [-1, 1] to
`features` float32 (N, 1024), N dynamic; its metadata_props (JSON values, keys
EXTRACTOR_METADATA_KEYS) say what the runner validates clips against. The runner opens its
session through `OrtRunner`'s provider choice and fallback reporting (same backends, same
`strict`), and runs clips in calls of `batch` clips.

`extract_video` streams: a decode thread (PyAV, resampling and the resize to 256 there) fills a
bounded queue of 16-frame snippets; this thread crops and scales each snippet and runs the
crops of as many snippets as fill one batch per call. Memory is bounded by the batch and the
queue, not by the video's length; a progress callback sees snippets done and the real-time
factor. Any object with `run(clips) -> (N, D)` and `batch` (bnwvad.i3d.TorchExtractor, the
PyTorch reference) drives the same pipeline.

numpy + onnxruntime (+ PyAV for files) only: never torch.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .contract import FRAMES_PER_SNIPPET, Closing, asked_for
from .errors import InputError, ModelLoadError
from .metadata import decode_value, onnx_metadata_props
from .runners import OrtRunner
from .frames import CROP_COUNTS, CROP_SIZE, SHORT_SIDE, iter_frame_snippets, snippet_clips
from .video import Snippet, VideoError, VideoReader

# -- the extractor graph's contract (export/i3d.py writes it, ExtractorRunner reads it) --------
EXTRACTOR_FORMAT = "bnwvad-i3d-onnx"
EXTRACTOR_FORMAT_VERSION = 1
EXTRACTOR_INPUT = "clips"
EXTRACTOR_OUTPUT = "features"
INPUT_RANGE = (-1.0, 1.0)
# Every key export_i3d writes (JSON values):
#   format, format_version      EXTRACTOR_FORMAT, EXTRACTOR_FORMAT_VERSION
#   bnwvad_version, precision   package version; "fp32" | "fp16"
#   opset, exporter             ONNX opset; "torch.onnx.export (dynamo)"
#   frames_per_snippet          16: clips are (N, channels, 16, input_size, input_size)
#   input_size, channels        224, 3
#   input_range                 [-1, 1]: pixels x / 255 * 2 - 1
#   feature_dim                 D of the output (N, D): 1024 for the real network
#   crops_batch                 clips per call the runtime uses by default
#   network                     {"name": "InceptionI3d", "config": {...}, "endpoint": "Mixed_5c", "pool": [2, 7, 7]}
#   protocol                    {"short_side": 256, "crop_size": 224, "crops": [1, 5, 10], ...}
#   source, source_digest       weights file name and "sha256:<hex>" of it, or null
#   weights_digest              "sha256:<hex>" of the float32 state_dict
#   inputs, outputs             extractor_input_specs(...), extractor_output_specs(D)
EXTRACTOR_METADATA_KEYS = ("format", "format_version", "bnwvad_version", "precision", "opset", "exporter",
                           "frames_per_snippet", "input_size", "channels", "input_range", "feature_dim",
                           "crops_batch", "network", "protocol", "source", "source_digest", "weights_digest",
                           "inputs", "outputs")


def extractor_input_specs(frames: int = FRAMES_PER_SNIPPET, size: int = CROP_SIZE, channels: int = 3) -> list[dict]:
    return [{"name": EXTRACTOR_INPUT, "dtype": "float32", "shape": ["N", int(channels), int(frames), int(size), int(size)]}]


def extractor_output_specs(feature_dim: int) -> list[dict]:
    return [{"name": EXTRACTOR_OUTPUT, "dtype": "float32", "shape": ["N", int(feature_dim)]}]


@dataclass(frozen=True)
class ExtractorMeta:
    """What an exported extractor declares: clips (N, channels, frames_per_snippet, input_size,
    input_size) in input_range -> (N, feature_dim). `raw`: every decoded property."""

    source: str
    feature_dim: int
    frames_per_snippet: int = FRAMES_PER_SNIPPET
    input_size: int = CROP_SIZE
    channels: int = 3
    input_range: tuple[float, float] = INPUT_RANGE
    precision: str | None = None
    crops_batch: int | None = None
    weights_digest: str | None = None
    raw: dict = field(default_factory=dict)

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        return (self.channels, self.frames_per_snippet, self.input_size, self.input_size)


def extractor_meta_from_props(props: Mapping[str, Any], source: str, *,
                              dim_hint: int | None = None) -> ExtractorMeta:
    """ExtractorMeta from metadata_props (JSON text or decoded); ModelLoadError when the file
    is not an extractor export or its fields are not of the documented form."""
    raw = {str(k): decode_value(v) for k, v in props.items()}
    fmt = raw.get("format")
    if fmt != EXTRACTOR_FORMAT:
        what = ("a BN-WVAD detector graph (score it with bnwvad-infer)" if fmt == "bnwvad-onnx"
                else f"metadata format = {fmt!r}" if fmt is not None else "no bnwvad metadata")
        raise ModelLoadError(f"{source}: {what}; expected an I3D extractor graph (metadata format "
                             f"{EXTRACTOR_FORMAT!r}) written by `bnwvad-export i3d`")
    version = raw.get("format_version")
    if isinstance(version, int) and version > EXTRACTOR_FORMAT_VERSION:
        raise ModelLoadError(f"{source}: extractor format_version {version} is newer than this runtime reads "
                             f"({EXTRACTOR_FORMAT_VERSION}). Fix: upgrade bnwvad")

    def pos_int(key, default=None):
        value = raw.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelLoadError(f"{source}: metadata {key} = {value!r}; expected a positive integer. "
                                 f"Fix: re-export it with `bnwvad-export i3d`")
        return value

    dim = pos_int("feature_dim")
    if dim is None:
        dim = dim_hint
    if dim is None:
        raise ModelLoadError(f"{source}: metadata lacks feature_dim and the graph's output has no fixed "
                             f"size; re-export it with `bnwvad-export i3d`")
    if dim_hint is not None and dim != dim_hint:
        raise ModelLoadError(f"{source}: metadata says feature_dim = {dim} but the graph's output has "
                             f"{dim_hint}; the file is inconsistent, re-export it")
    rng = raw.get("input_range", list(INPUT_RANGE))
    if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng)
            and rng[0] < rng[1]):
        raise ModelLoadError(f"{source}: metadata input_range = {rng!r}; expected [low, high]")
    return ExtractorMeta(source=source, feature_dim=int(dim),
                         frames_per_snippet=pos_int("frames_per_snippet", FRAMES_PER_SNIPPET),
                         input_size=pos_int("input_size", CROP_SIZE), channels=pos_int("channels", 3),
                         input_range=(float(rng[0]), float(rng[1])), precision=raw.get("precision"),
                         crops_batch=pos_int("crops_batch"), weights_digest=raw.get("weights_digest"), raw=raw)


# -- the runner ------------------------------------------------------------------------------
class _ExtractorSession(OrtRunner):
    """OrtRunner's session opening (providers, fallback detection, strict) for the extractor
    graph: only the I/O check and the TensorRT profile differ from the detector's."""

    def __init__(self, path, backend, *, max_batch: int, **kwargs):
        self._max_batch = int(max_batch)
        super().__init__(path, backend, trt_max_shape=(self._max_batch, 1, 1), **kwargs)

    def _peek_feature_dim(self):          # the detector's metadata reader does not apply
        return None

    def _trt_provider_options(self, device_id, extra, max_shape) -> dict:
        opts = super()._trt_provider_options(device_id, None, max_shape)
        meta = extractor_meta_from_props(onnx_metadata_props(self.path), str(self.path))
        clip = "x".join(str(v) for v in meta.clip_shape)
        n = self._max_batch
        opts["trt_profile_min_shapes"] = f"{EXTRACTOR_INPUT}:1x{clip}"
        opts["trt_profile_opt_shapes"] = f"{EXTRACTOR_INPUT}:{min(n, meta.crops_batch or 10)}x{clip}"
        opts["trt_profile_max_shapes"] = f"{EXTRACTOR_INPUT}:{n}x{clip}"
        opts.update({k: str(v) for k, v in (extra or {}).items()})
        return opts

    def _check_io(self) -> None:
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name: o for o in self.session.get_outputs()}
        props = self.session.get_modelmeta().custom_metadata_map
        if props.get("format") != json.dumps(EXTRACTOR_FORMAT):
            extractor_meta_from_props(props, str(self.path))          # says what the file is instead
        if list(ins) != [EXTRACTOR_INPUT] or EXTRACTOR_OUTPUT not in outs:
            raise ModelLoadError(f"{self.path}: graph inputs {sorted(ins)} and outputs {sorted(outs)}; expected "
                                 f"input {EXTRACTOR_INPUT!r} and output {EXTRACTOR_OUTPUT!r} (an I3D extractor "
                                 f"written by `bnwvad-export i3d`)")
        shape = outs[EXTRACTOR_OUTPUT].shape
        hint = shape[-1] if len(shape) == 2 and isinstance(shape[-1], int) else None
        self.meta = extractor_meta_from_props(props, str(self.path), dim_hint=hint)
        self._clip_type = np.float16 if ins[EXTRACTOR_INPUT].type == "tensor(float16)" else np.float32


@runtime_checkable
class ClipExtractor(Protocol):
    """What drives the pipeline: ExtractorRunner here, bnwvad.i3d.TorchExtractor in PyTorch."""

    batch: int
    feature_dim: int

    def run(self, clips: np.ndarray, *, check: bool = True) -> np.ndarray:
        """(N, 3, 16, 224, 224) float32 in [-1, 1] -> (N, D) float32."""

    def describe(self) -> str: ...

    def close(self) -> None: ...


class ExtractorRunner(Closing):
    """An exported I3D extractor (.onnx) on ONNX Runtime.

    backend / strict / threads / device_id / arena / session_config: as for OrtRunner (auto
    picks CUDA where ONNX Runtime offers it; a fallback to CPU warns, or raises with strict).
    batch: clips per session call (default: the export's crops_batch, else 10); `run` splits
    larger inputs. max_batch: the largest call the TensorRT provider's profile covers.
    shrink_arena: on CPU with the arena on, return the arena's memory after every call.

    Attributes: path, meta (ExtractorMeta), requested, backend, providers, device, fallback,
    batch, feature_dim.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto", *, strict: bool = False,
                 threads: int | None = None, device_id: int = 0, arena: bool = True, batch: int | None = None,
                 max_batch: int = 32, session_config: Mapping[str, str] | None = None,
                 trt_options: Mapping[str, Any] | None = None, shrink_arena: bool = True):
        if batch is not None and int(batch) < 1:
            raise InputError(f"batch = {batch}; expected a positive number of clips per call")
        self._ort = _ExtractorSession(path, backend, strict=strict, threads=threads, device_id=device_id,
                                      arena=arena, session_config=session_config, trt_options=trt_options,
                                      max_batch=max(int(max_batch), int(batch or 1)))
        o = self._ort
        self.path, self.meta = o.path, o.meta
        self.requested, self.backend, self.providers = o.requested, o.backend, o.providers
        self.device, self.fallback = o.device, o.fallback
        self.feature_dim = self.meta.feature_dim
        self.batch = int(batch or self.meta.crops_batch or 10)
        if self.backend == "ort-trt":
            self.batch = min(self.batch, int(max_batch))
        # A batch of clips holds hundreds of MiB of activations (a 16x224x224 clip's first
        # layers alone ~25 MiB each): on CPU the arena gives them back after every call
        # instead of holding the peak for the process's life (it costs a few percent).
        self._run_options = None
        if self.device == "cpu" and arena and shrink_arena:
            import onnxruntime as ort

            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def validate(self, clips) -> np.ndarray:
        """clips -> float32 C-contiguous (N, 3, 16, 224, 224), or InputError saying what is wrong."""
        if not isinstance(clips, np.ndarray):
            raise InputError(f"clips: got a {type(clips).__name__}; expected a numpy array of shape "
                             f"(N, {', '.join(map(str, self.meta.clip_shape))})")
        want = self.meta.clip_shape
        if clips.ndim != 5 or tuple(clips.shape[1:]) != want or clips.shape[0] < 1:
            raise InputError(f"clips: shape {clips.shape}; expected (N >= 1, {', '.join(map(str, want))}): N "
                             f"clips of {want[1]} frames, {want[2]}x{want[3]} crops, channels first "
                             f"(bnwvad.runtime.video.snippet_clips makes them)")
        if clips.dtype.kind != "f":
            raise InputError(f"clips: dtype {clips.dtype}; expected float32 pixels scaled to "
                             f"[{self.meta.input_range[0]:g}, {self.meta.input_range[1]:g}] (x / 255 * 2 - 1), "
                             f"not raw uint8")
        clips = np.ascontiguousarray(clips, dtype=np.float32)
        lo, hi = float(clips.min()), float(clips.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"clips: non-finite values (min {lo}, max {hi}); expected pixels in "
                             f"[{self.meta.input_range[0]:g}, {self.meta.input_range[1]:g}]")
        a, b = self.meta.input_range
        slack = 1e-3 * (b - a)
        if lo < a - slack or hi > b + slack:
            raise InputError(f"clips: values in [{lo:.4g}, {hi:.4g}]; expected [{a:g}, {b:g}] "
                             f"(pixels x / 255 * 2 - 1). Were they scaled another way?")
        return clips

    def run(self, clips: np.ndarray, *, check: bool = True) -> np.ndarray:
        """(N, 3, 16, 224, 224) float32 -> (N, D) float32, in calls of at most `batch` clips."""
        if check:
            clips = self.validate(clips)
        session = self._ort.session
        if session is None:
            raise ModelLoadError(f"{self.path}: the extractor was closed")
        out = []
        for i in range(0, clips.shape[0], self.batch):
            feed = {EXTRACTOR_INPUT: clips[i:i + self.batch].astype(self._ort._clip_type, copy=False)}
            (feats,) = session.run([EXTRACTOR_OUTPUT], feed, self._run_options)
            out.append(np.asarray(feats, dtype=np.float32))
        result = np.concatenate(out) if out else np.zeros((0, self.feature_dim), np.float32)
        if result.shape != (clips.shape[0], self.feature_dim):
            raise ModelLoadError(f"{self.path}: output {EXTRACTOR_OUTPUT!r} has shape {result.shape}; expected "
                                 f"({clips.shape[0]}, {self.feature_dim}). Re-export it with `bnwvad-export i3d`")
        return result

    def describe(self) -> str:
        return (f"I3D extractor {self.backend} [{', '.join(self.providers)}], {self.batch} clips per call"
                f"{asked_for(self)}")

    def close(self) -> None:
        self._ort.close()


# -- the pipeline ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractProgress:
    """Where an extraction stands: snippets (and their frames) done, the video time they cover
    (None without a known frame rate), wall seconds so far, and the real-time factor (video
    seconds per wall second; > 1 is faster than real time)."""

    path: str | None
    snippets: int
    frames: int
    video_seconds: float | None
    elapsed: float
    realtime_factor: float | None


def _check_crops(crops) -> int:
    if crops not in CROP_COUNTS:
        raise InputError(f"crops = {crops!r}; expected one of {CROP_COUNTS} (1: centre, 5: corners + centre, "
                         f"10: those and their horizontal flips)")
    return int(crops)


def iter_clip_features(snippets: Iterable, extractor: ClipExtractor, crops: int = 10, *,
                       resized: bool = False) -> Iterator[np.ndarray]:
    """Snippets (arrays (16, H, W[, 3]) uint8, or Snippet) -> one (C, D) array per snippet, in
    order. The crops of consecutive snippets are gathered until they fill `extractor.batch`
    clips (at least one snippet per call). `resized`: frames are already at shorter side 256."""
    crops = _check_crops(crops)
    per_call = max(1, int(getattr(extractor, "batch", crops)) // crops)
    pending: list[np.ndarray] = []

    def flush():
        feats = extractor.run(np.concatenate(pending) if len(pending) > 1 else pending[0])
        pending.clear()
        return feats.reshape(-1, crops, feats.shape[-1])

    try:
        for snip in snippets:
            frames = snip.frames if isinstance(snip, Snippet) else snip
            pending.append(snippet_clips(frames, crops, resized=resized))
            if len(pending) >= per_call:
                yield from flush()
    except VideoError:
        # A source that breaks mid-way: the snippets gathered before the break are still
        # computed and yielded, then the error (naming the file and frame) goes on.
        if pending:
            yield from flush()
        raise
    if pending:
        yield from flush()


def extract_frames(frames, extractor: ClipExtractor, crops: int = 10, *, fps: float | None = None,
                   timestamps: Sequence[float] | None = None, native_fps: float | None = None) -> np.ndarray:
    """In-memory frames (F, H, W[, 1|3]) uint8 -> (T, C, D) float32, T = F // 16 (after resampling
    to `fps` by `timestamps` or `native_fps` when given)."""
    snippets = iter_frame_snippets(frames, fps=fps, timestamps=timestamps, native_fps=native_fps)
    return np.stack(list(iter_clip_features(snippets, extractor, crops)))


def iter_video_features(path: str | os.PathLike, extractor: ClipExtractor, crops: int = 10,
                        fps: float | None = None, *, progress: Callable[[ExtractProgress], None] | None = None,
                        max_queued: int = 2, decoder_threads: int = 0) -> Iterator[np.ndarray]:
    """Stream a video file's features: one (C, D) array per snippet, as soon as it is computed.
    Errors (bnwvad.runtime.video.VideoError) come after the snippets decoded before them."""
    crops = _check_crops(crops)
    t0 = time.perf_counter()
    done = 0
    with VideoReader(path, fps=fps, short_side=SHORT_SIDE, max_queued=max_queued,
                     decoder_threads=decoder_threads) as reader:
        rate = reader.effective_fps
        per = reader.frames_per_snippet
        for feats in iter_clip_features(reader, extractor, crops, resized=True):
            done += 1
            if progress is not None:
                elapsed = time.perf_counter() - t0
                seconds = done * per / rate if rate else None
                rtf = seconds / elapsed if seconds is not None and elapsed > 0 else None
                progress(ExtractProgress(str(path), done, done * per, seconds, elapsed, rtf))
            yield feats


def extract_video(path: str | os.PathLike, extractor: ClipExtractor, crops: int = 10, fps: float | None = None,
                  *, progress: Callable[[ExtractProgress], None] | None = None, max_queued: int = 2,
                  decoder_threads: int = 0) -> np.ndarray:
    """A video file -> its I3D features (T, C, D) float32: decode (thread) -> snippets -> crops ->
    batched extractor calls. fps: resample to this frame rate first (nearest frame by timestamp).
    progress(ExtractProgress) is called after every snippet."""
    feats = list(iter_video_features(path, extractor, crops, fps, progress=progress, max_queued=max_queued,
                                     decoder_threads=decoder_threads))
    return np.stack(feats)


__all__ = ["ClipExtractor", "EXTRACTOR_FORMAT", "EXTRACTOR_FORMAT_VERSION", "EXTRACTOR_INPUT",
           "EXTRACTOR_METADATA_KEYS", "EXTRACTOR_OUTPUT", "ExtractProgress", "ExtractorMeta", "ExtractorRunner",
           "INPUT_RANGE", "extract_frames", "extract_video", "extractor_input_specs", "extractor_meta_from_props",
           "extractor_output_specs", "iter_clip_features", "iter_video_features"]
