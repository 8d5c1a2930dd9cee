"""bnwvad-serve's online service: an exported BN-WVAD model behind HTTP, as a Ray Serve application.

    from bnwvad.runtime.serve import ServeConfig, deploy
    cfg = ServeConfig(model="model.onnx", threshold=7.1)
    deploy(cfg, host="127.0.0.1", port=8000)       # ray.init() first; bnwvad-serve does all of it

Routes (JSON answers; errors are {"error": message, "status": code}):

    POST /v1/score            a video's features -> score, dfm, anomaly per snippet, events
    GET  /v1/model            the model's metadata, backend, threshold, the server's limits
    GET  /v1/stats            this replica's counters: requests, batches per T bucket, runner calls
    GET  /healthz             {"status": "ok"} once the model is loaded
    POST /v1/streams          (with streams on) open a streaming session -> {"id": ...}
    POST /v1/streams/{id}     its next snippets -> the results that became final
    DELETE /v1/streams/{id}   end it: the remaining results; the session is closed

A video's features come as the bytes of a .npy file (`Content-Type: application/octet-stream`):
(T, D) one crop, (T, C, D) stacked crops or (C, T, D), read as bnwvad-infer reads files (a 3-D
array is (T, C, D) when its second axis is the model's crop count and its first is not; anything
else needs `?layout=TCD` or `?layout=CTD`). The header is parsed with numpy.lib.format and exactly
the bytes it announces are used: nothing is ever unpickled. Small inputs may come as JSON,
`{"features": [[...], ...], "layout": "TD"}`, which goes through the same checks. Query
parameters (or JSON keys): `layout`, `threshold` (events above it, instead of the server's),
`fps` (event times in seconds).

Answers to bad requests, with the messages bnwvad-infer gives for the same file (the label is
"request body" instead of a path): 413 for a body over --max-body-mb or a video over
--max-snippets snippets (or one the memory budget cannot score), 422 for a wrong D, a
non-float dtype, NaN / inf, a value outside float32's range, a bad or truncated .npy, a
pickled object array, a wrong crop count; 400 for a malformed request (bad query parameter,
invalid JSON); 404 / 405 for unknown routes.

Batching. Requests are grouped by their length T into buckets (powers of two from 16 up to
--max-snippets) with one `@serve.batch` queue each, so a long video never waits in a batch of
short ones and short ones never pad to a long one. A bucket's batch holds at most as many videos
as one runner call takes on this backend (the Scorer's `max_rows` on CPU: N * C * T <= 1024; on
GPUs --max-batch) and waits at most --batch-wait-ms for them. Batches run one at a time per
replica on one compute thread (ONNX Runtime's own threads do the parallel work), shortest
bucket first, except that a batch waiting longer than `AGING_S` runs next: a burst of short
videos cannot starve a long one. Each batch goes through the runtime's Scorer (zero padding
with `lengths`, memory budget, crop chunks), so each video gets exactly its own result.

ray is imported only where a deployment is built or runs: `import bnwvad.runtime.serve` (and
`import bnwvad.runtime`) needs numpy only; the request decoding here is plain numpy.
"""
from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

import numpy as np

from .contract import OUTPUTS
from .errors import InputError, MemoryBudgetError, human_bytes
from .scoring import ValidatedSource

log = logging.getLogger("bnwvad.runtime.serve")

MIB = 1 << 20
DEFAULT_MAX_BODY_MB = 64.0          # the longest XD-Violence test video, 5 crops, is 42 MB of float32
DEFAULT_MAX_SNIPPETS = 4096
DEFAULT_MAX_BATCH = 16
DEFAULT_BATCH_WAIT_MS = 5.0
DEFAULT_MAX_ONGOING = 256           # requests a replica takes in at once (Ray's default, 5, starves batching)
MIN_BUCKET = 16
AGING_S = 2.0                       # a batch waiting this long runs before shorter buckets' batches
# A body over the limit by at most this factor is read (and dropped) before the 413, so the client
# gets the answer instead of a reset connection; a larger one is refused without reading it.
DRAIN_FACTOR = 4
BODY_LABEL = "request body"
APP_NAME = "bnwvad"
STREAMS_APP_NAME = "bnwvad-streams"
LAYOUTS = ("auto", "TD", "TCD", "CTD")
_F32_MAX = float(np.finfo(np.float32).max)
GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt")


class RequestError(Exception):
    """A request the service answers with an error: HTTP status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)
        self.message = message


# -- configuration ------------------------------------------------------------------------------
@dataclass
class ServeConfig:
    """Everything a replica needs (plain data: it travels to the replicas as a dict).

    model / backend / strict / threads / device_id / sidecar: as bnwvad-infer's options.
    crops: "model" (the metadata's count), an int, or None (any; crops are averaged).
    threshold: events above it in every answer (None: no events unless a request gives one);
    threshold_source "given" | "calibrated"; calibration: events.Calibration.to_dict().
    replicas, replica_cpus, replica_gpus: Ray resources (replica_gpus None: 1 on GPU backends).
    spin: ONNX Runtime's intra-op threads spin-wait between and after calls (its default, the
    fastest when they have the CPUs to themselves); off by default here, where the proxy and the
    request handling need those CPUs between calls.
    """

    model: str
    backend: str = "auto"
    strict: bool = False
    threads: int | None = None
    device_id: int = 0
    sidecar: str | None = None
    spin: bool = False                  # ONNX Runtime's idle threads spin-wait (CPU the HTTP path needs)
    crops: Any = "model"
    memory_budget: int | None = None
    max_body: int = int(DEFAULT_MAX_BODY_MB * MIB)
    max_snippets: int = DEFAULT_MAX_SNIPPETS
    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_s: float = DEFAULT_BATCH_WAIT_MS / 1e3
    max_ongoing: int = DEFAULT_MAX_ONGOING
    threshold: float | None = None
    threshold_source: str | None = None
    calibration: dict | None = None
    fps: float = 30.0
    min_event_snippets: int = 1
    weights_digest: str | None = None
    replicas: int = 1
    replica_cpus: float = 1.0
    replica_gpus: float | None = None
    streams: bool = False
    max_streams: int = 64
    stream_idle_s: float = 300.0

    def __post_init__(self):
        if self.max_body < 1 or self.max_snippets < 1 or self.max_batch < 1:
            raise ValueError("max_body, max_snippets and max_batch must be >= 1")
        if self.crops not in ("model", None) and (not isinstance(self.crops, int) or self.crops < 1):
            raise ValueError(f"crops = {self.crops!r}; expected 'model', None or a positive int")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ServeConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def batching(self) -> bool:
        return self.max_batch > 1

    def gpus(self, device: str) -> float:
        """GPUs per replica: replica_gpus, else on a GPU backend one GPU shared by every replica
        (the streams replica included)."""
        if self.replica_gpus is not None:
            return float(self.replica_gpus)
        return 1.0 / (max(1, self.replicas) + int(self.streams)) if device == "cuda" else 0.0


def open_runner(cfg: ServeConfig):
    """The replica's runner, as bnwvad-infer opens it, with ONNX Runtime's spinning per cfg.spin."""
    from .runners import load_runner

    kw = {}
    if not cfg.spin and not str(cfg.model).lower().endswith((".engine", ".plan", ".trt")):
        kw["session_config"] = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}
    return load_runner(cfg.model, cfg.backend, strict=cfg.strict, threads=cfg.threads, device_id=cfg.device_id,
                       sidecar=cfg.sidecar, **kw)


def bucket_of(t: int, max_snippets: int) -> int:
    """The batch bucket of a video of T snippets: the power of two >= T (at least MIN_BUCKET),
    capped at the bucket of max_snippets."""
    top = 1 << max(0, (int(max_snippets) - 1).bit_length())
    b = 1 << max(0, (int(t) - 1).bit_length())
    return int(min(max(b, MIN_BUCKET), max(top, MIN_BUCKET)))


def bucket_batch_size(bucket: int, crops: int, max_batch: int, max_rows: int | None) -> int:
    """Videos per batch of a bucket: what one runner call takes (N * C * T <= max_rows where the
    backend has a row limit: CPU), at least 1, at most max_batch."""
    if max_rows is None:
        return max(1, int(max_batch))
    return int(max(1, min(max_batch, max_rows // max(1, crops * bucket))))


# -- decoding requests (numpy only) -------------------------------------------------------------
def _check_values(label: str, raw: np.ndarray) -> np.ndarray:
    """What bnwvad.features.load_features checks of the values, with its messages: finite, and
    within float32's range -> float32, C-contiguous."""
    if not np.isfinite(raw).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(raw))[0])
        raise InputError(f"{label}: contains NaN or inf (first at index {bad}); expected finite features")
    if np.finfo(raw.dtype).max > _F32_MAX:
        big = np.abs(raw) > _F32_MAX
        if big.any():
            at = tuple(int(i) for i in np.argwhere(big)[0])
            raise InputError(
                f"{label}: value {float(raw[at]):g} at index {at} is outside float32's range "
                f"(±{_F32_MAX:.1e}), {int(big.sum())} such value(s); expected features that fit "
                f"float32 (the model computes in float32)")
    return np.ascontiguousarray(raw, dtype=np.float32)


def read_npy_bytes(body: bytes | bytearray | memoryview, *, feature_dim: int | None,
                   ndim=(2, 3), label: str = BODY_LABEL) -> np.ndarray:
    """The array of .npy bytes, dtype kept, after the checks bnwvad.features makes of a file
    (its `_read_header`: magic, header, object dtype, truncation, dimensions, float dtype, T = 0,
    D) with its messages, `label` in place of the path. Raises FeatureFileError. Only the
    bytes the header announces are used (np.frombuffer); nothing is unpickled."""
    from bnwvad.features import FeatureFileError, _read_header

    view = memoryview(body)
    if len(view) == 0:
        raise FeatureFileError(f"{label}: empty (0 bytes); expected a .npy array")
    f = io.BytesIO(view)
    shape, fortran, dtype = _read_header(f, label, len(view), ndim, feature_dim, "feature")
    start = f.tell()
    count = math.prod(shape)
    arr = np.frombuffer(view, dtype=dtype, count=count, offset=start)
    return arr.reshape(shape, order="F" if fortran else "C")


def arrange(label: str, raw: np.ndarray, layout: str, crops_hint: int | None) -> np.ndarray:
    """(T, D) -> (1, T, D); 3-D -> (C, T, D) by bnwvad-infer's layout rule (runtime.inputs)."""
    from bnwvad.features import FeatureFileError

    from .inputs import _layout_3d

    if layout not in LAYOUTS:
        raise RequestError(400, f"layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if raw.ndim == 2:
        return raw[None]
    try:
        lay = _layout_3d(label, tuple(raw.shape), layout, crops_hint)
    except FeatureFileError as e:       # its fix names the CLI's option; here it is a parameter
        raise FeatureFileError(str(e).replace("--layout ", "layout=")) from None
    if lay == "TCD":
        return raw.transpose(1, 0, 2)
    return raw


def decode_features(body: bytes, content_type: str, *, feature_dim: int | None, crops_hint: int | None,
                    layout: str = "auto", max_snippets: int | None = None
                    ) -> tuple[np.ndarray, dict]:
    """A /v1/score body -> ((C, T, D) float32, options from a JSON body). RequestError (400 /
    413) or FeatureFileError / InputError (422) otherwise."""
    options: dict = {}
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"{BODY_LABEL}: not valid JSON ({e}); expected "
                                    f'{{"features": [[...], ...], "layout": "TD"}}') from None
        if not isinstance(doc, dict) or "features" not in doc:
            raise RequestError(400, f'{BODY_LABEL}: a JSON {type(doc).__name__} without "features"; expected '
                                    f'{{"features": [[...], ...], "layout": "TD"}}')
        options = {k: doc[k] for k in ("layout", "threshold", "fps") if k in doc}
        layout = options.get("layout", layout)
        try:
            arr = np.array(doc["features"], dtype=np.float64)
        except (ValueError, TypeError) as e:
            raise InputError(f"{BODY_LABEL}: features are not a rectangular array of numbers ({e}); "
                             f"expected nested lists of shape (T, D), (T, C, D) or (C, T, D)") from None
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        body = buf.getvalue()             # one path for both: the .npy checks and their messages
    elif ctype not in ("application/octet-stream", "application/x-npy", ""):
        raise RequestError(415, f"Content-Type {content_type!r}; expected application/octet-stream "
                                f"(the bytes of a .npy file) or application/json")
    raw = read_npy_bytes(body, feature_dim=feature_dim)
    x = arrange(BODY_LABEL, raw, str(layout), crops_hint)          # a view: nothing copied yet
    if max_snippets is not None and x.shape[1] > max_snippets:
        raise RequestError(413, f"{BODY_LABEL}: T = {x.shape[1]} snippets (shape {raw.shape}) is over this "
                                f"server's limit of {max_snippets} snippets per video (--max-snippets). "
                                f"Fix: split the video, or ask for a larger limit")
    checked = _check_values(BODY_LABEL, raw)          # indices in messages are the array's, as sent
    return np.ascontiguousarray(arrange(BODY_LABEL, checked, str(layout), crops_hint)), options


def decode_snippets(body: bytes, content_type: str, *, feature_dim: int | None) -> np.ndarray:
    """A stream push: .npy bytes or JSON {"snippets": [...]} of (k, C, D) or (k, D) -> the
    array (values are checked by the StreamGroup, per snippet)."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            doc = json.loads(body)
            arr = np.array(doc["snippets"], dtype=np.float64)
        except (ValueError, UnicodeDecodeError, TypeError, KeyError) as e:
            raise RequestError(400, f'{BODY_LABEL}: expected JSON {{"snippets": [[...], ...]}} of shape '
                                    f'(k, C, D) or (k, D) ({type(e).__name__}: {e})') from None
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        body = buf.getvalue()
    raw = read_npy_bytes(body, feature_dim=feature_dim)
    if np.finfo(raw.dtype).max > _F32_MAX:
        _check_values(BODY_LABEL, raw)
    return raw


def _query_float(value, name: str, *, positive: bool = False) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"{name} = {value!r}; expected a number") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise RequestError(400, f"{name} = {value!r}; expected a finite{' positive' if positive else ''} number")
    return v


def error_status(exc: BaseException) -> int:
    """The HTTP status of an exception raised while serving a request."""
    from bnwvad.features import FeatureFileError

    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, MemoryBudgetError):
        return 413
    if isinstance(exc, (FeatureFileError, InputError)):
        return 422
    return 500


# -- the compute thread -------------------------------------------------------------------------
class ComputeQueue:
    """One thread that runs a replica's runner calls, one at a time: the lowest `priority`
    first (the T bucket: short videos first), except that a job waiting longer than `aging_s`
    runs next (oldest first), so none starves. `submit` is awaited from the event loop."""

    def __init__(self, aging_s: float = AGING_S, name: str = "bnwvad-compute"):
        self.aging_s = float(aging_s)
        self._cv = threading.Condition()
        self._jobs: list[tuple] = []
        self._seq = itertools.count()
        self._closed = False
        self.busy_s = 0.0
        self.jobs = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def submit(self, priority: float, fn: Callable, *args):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the compute thread is closed")
            self._jobs.append((priority, next(self._seq), time.monotonic(), fn, args, fut, loop))
            self._cv.notify()
        return await fut

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def _pick(self):
        now = time.monotonic()
        oldest = min(self._jobs, key=lambda j: j[2])
        job = oldest if now - oldest[2] > self.aging_s else min(self._jobs, key=lambda j: (j[0], j[1]))
        self._jobs.remove(job)
        return job

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if self._closed and not self._jobs:
                    return
                _, _, _, fn, args, fut, loop = self._pick()
            t0 = time.perf_counter()
            try:
                result, error = fn(*args), None
            except BaseException as e:    # noqa: BLE001 - handed to the awaiting request
                result, error = None, e
            self.busy_s += time.perf_counter() - t0
            self.jobs += 1
            loop.call_soon_threadsafe(_settle, fut, result, error)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():                        # the request went away (client disconnected)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


# -- HTTP plumbing (starlette, which Ray Serve brings) -----------------------------------------
def _json(data: Any, status: int = 200):
    from starlette.responses import Response

    return Response(json.dumps(data, allow_nan=False, separators=(",", ":")), status_code=status,
                    media_type="application/json")


def _error(status: int, message: str):
    return _json({"error": message, "status": int(status)}, status)


async def read_body(request, limit: int) -> bytes:
    """The request's body, at most `limit` bytes, else RequestError 413 naming the limit. A body
    over the limit by at most DRAIN_FACTOR is read through (and dropped) first, so the client
    reads the 413 instead of a reset connection."""
    declared = request.headers.get("content-length")
    too_big = None
    if declared is not None:
        try:
            too_big = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r}; expected a number of bytes") from None
        if too_big <= limit:
            too_big = None
    chunks = request.stream().__aiter__()
    buf = bytearray()
    seen = 0
    if too_big is None:
        async for chunk in chunks:
            buf += chunk
            if len(buf) > limit:
                too_big = seen = len(buf)
                buf = bytearray()
                break
        else:
            return bytes(buf)
    if too_big <= DRAIN_FACTOR * limit:
        try:
            async for chunk in chunks:
                seen += len(chunk)
                if seen > DRAIN_FACTOR * limit:
                    break
        except Exception:                  # noqa: BLE001 - disconnected meanwhile
            pass
    raise RequestError(413, f"{BODY_LABEL} of {too_big} bytes{'' if declared else ' or more'} is over this "
                            f"server's limit of {limit} bytes ({human_bytes(limit)}, --max-body-mb). Fix: "
                            f"send a shorter video (split it), or ask for a larger limit")


def _route(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


# -- the scoring deployment ---------------------------------------------------------------------
class ScoringService:
    """The replica of the scoring deployment (an ASGI-style `__call__` Ray Serve routes HTTP to).

    It holds one runner (loaded in __init__: a model that fails to load fails the replica, and
    bnwvad-serve reports it and exits 2), one Scorer, a ComputeQueue and one `@serve.batch`
    queue per T bucket, created on first use.
    """

    def __init__(self, config: Mapping):
        from .scoring import Scorer

        self.cfg = ServeConfig.from_dict(config)
        self.runner = open_runner(self.cfg)
        self.meta = self.runner.meta
        if self.cfg.weights_digest is None:
            from .io import model_identity

            self.cfg.weights_digest = model_identity(self.meta, self.cfg.model).digest
        self.crops = self.meta.crops if self.cfg.crops == "model" else self.cfg.crops
        self.scorer = Scorer(self.runner, memory_budget=self.cfg.memory_budget, max_batch=self.cfg.max_batch,
                             crops=self.crops)
        self.max_rows = self.scorer.max_rows            # CPU_MAX_ROWS on CPU, None on GPUs
        self.compute = ComputeQueue()
        self.id = uuid.uuid4().hex[:8]
        self._queues: dict[int, Callable] = {}
        self._seq = itertools.count()
        self.counters = {"requests": 0, "scored": 0, "failed": 0, "batches": 0, "videos_in_batches": 0,
                         "max_batch_seen": 0, "batch_sizes": {}, "buckets": {}}
        self._healthy = True

    # -- Ray Serve hooks ------------------------------------------------------------------------
    def check_health(self) -> None:
        if not self._healthy:
            raise RuntimeError("the model runner failed; this replica cannot score")

    def __del__(self):
        try:
            self.compute.close()
            self.runner.close()
        except Exception:                  # noqa: BLE001 - interpreter shutdown
            pass

    async def __call__(self, request):
        try:
            return await self._dispatch(request)
        except RequestError as e:
            return _error(e.status, e.message)
        except Exception as e:            # noqa: BLE001 - every failure is an answer
            status = error_status(e)
            if status == 500:
                log.exception("request failed")
            return _error(status, str(e) or type(e).__name__)

    async def _dispatch(self, request):
        parts, method = _route(request.url.path), request.method.upper()
        if parts == ["healthz"]:
            self._need(method, "GET")
            if not self._healthy:
                raise RequestError(503, "the model runner failed; this replica cannot score (Serve replaces it)")
            return _json({"status": "ok", "replica": self.id})
        if parts == ["v1", "model"]:
            self._need(method, "GET")
            return _json(self.model_info())
        if parts == ["v1", "stats"]:
            self._need(method, "GET")
            return _json(self.stats())
        if parts == ["v1", "score"]:
            self._need(method, "POST")
            return _json(await self.score_request(request))
        raise RequestError(404, f"no route {method} {request.url.path}; routes: POST /v1/score, GET /v1/model, "
                                f"GET /v1/stats, GET /healthz" + (", /v1/streams" if self.cfg.streams else ""))

    @staticmethod
    def _need(method: str, want: str) -> None:
        if method != want:
            raise RequestError(405, f"method {method} not allowed here; expected {want}")

    # -- answers ------------------------------------------------------------------------------
    def model_info(self) -> dict:
        cfg = self.cfg
        return {"model": self.meta.to_dict(), "describe": self.meta.describe(),
                "weights_digest": cfg.weights_digest or self.meta.weights_digest,
                "backend": self.runner.backend, "providers": list(self.runner.providers),
                "device": self.runner.device, "runner": self.runner.describe(),
                "threshold": cfg.threshold, "threshold_source": cfg.threshold_source,
                "calibration": cfg.calibration, "fps": cfg.fps, "crops": self.crops,
                "limits": {"max_body_bytes": cfg.max_body, "max_snippets": cfg.max_snippets},
                "batching": {"max_batch": cfg.max_batch, "batch_wait_ms": cfg.batch_wait_s * 1e3,
                             "max_rows": self.max_rows, "buckets": "powers of two from "
                             f"{MIN_BUCKET} to {bucket_of(cfg.max_snippets, cfg.max_snippets)}"},
                "memory_budget": self.scorer.budget.describe(), "replicas": cfg.replicas,
                "streams": cfg.streams}

    def stats(self) -> dict:
        c = dict(self.counters)
        c["buckets"] = {str(k): dict(v) for k, v in sorted(self.counters["buckets"].items())}
        c["batch_sizes"] = {str(k): v for k, v in sorted(self.counters["batch_sizes"].items())}
        return {"replica": self.id, **c, "runner_calls": self.scorer.stats["calls"],
                "scorer": dict(self.scorer.stats), "compute_busy_s": round(self.compute.busy_s, 3),
                "compute_pending": self.compute.pending}

    async def score_request(self, request) -> dict:
        self.counters["requests"] += 1
        t0 = time.perf_counter()
        q = request.query_params
        body = await read_body(request, self.cfg.max_body)
        t1 = time.perf_counter()
        x, opts = decode_features(body, request.headers.get("content-type", ""),
                                  feature_dim=self.meta.feature_dim, crops_hint=self.crops or self.meta.crops,
                                  layout=q.get("layout", "auto"), max_snippets=self.cfg.max_snippets)
        del body
        threshold = _query_float(opts.get("threshold", q.get("threshold")), "threshold")
        fps = _query_float(opts.get("fps", q.get("fps")), "fps", positive=True)
        item = ValidatedSource(f"r{next(self._seq)}", x)
        t2 = time.perf_counter()
        try:
            result = await self._score(item)
        except Exception:
            self.counters["failed"] += 1
            raise
        self.counters["scored"] += 1
        out = self.answer(result, threshold=threshold, fps=fps)
        t3 = time.perf_counter()
        out["server_ms"] = {"read_body": round(1e3 * (t1 - t0), 2), "decode": round(1e3 * (t2 - t1), 2),
                            "queue_and_compute": round(1e3 * (t3 - t2), 2), "total": round(1e3 * (t3 - t0), 2)}
        return out

    def answer(self, r, *, threshold: float | None = None, fps: float | None = None) -> dict:
        from .events import find_events

        thr = self.cfg.threshold if threshold is None else threshold
        source = self.cfg.threshold_source if threshold is None else "request"
        fps = self.cfg.fps if fps is None else fps
        out = {k: getattr(r, k).tolist() for k in OUTPUTS}
        out.update(snippets=r.length, crops=r.crops, frames_per_snippet=r.frames_per_snippet,
                   threshold=thr, threshold_source=source if thr is not None else None, fps=fps,
                   events=None if thr is None else [
                       e.to_dict() for e in find_events(r.anomaly, thr, frames_per_snippet=r.frames_per_snippet,
                                                        fps=fps, min_snippets=self.cfg.min_event_snippets)],
                   weights_digest=self.cfg.weights_digest or self.meta.weights_digest,
                   precision=self.meta.precision, backend=self.runner.backend)
        return out

    # -- batching -----------------------------------------------------------------------------
    async def _score(self, item: ValidatedSource):
        bucket = bucket_of(item.length, self.cfg.max_snippets)
        size = bucket_batch_size(bucket, item.crops, self.cfg.max_batch, self.max_rows)
        if size <= 1:                     # batching off (or one video per call here): no queue
            out = (await self.compute.submit(bucket, self._score_batch, bucket, [item]))[0]
        else:
            out = await self._queue(bucket, size)(item)
        if isinstance(out, BaseException):
            raise out
        return out

    def _queue(self, bucket: int, size: int) -> Callable:
        q = self._queues.get(bucket)
        if q is None:
            from ray import serve

            async def score_bucket(items: list) -> list:
                return await self.compute.submit(bucket, self._score_batch, bucket, items)

            score_bucket.__name__ = score_bucket.__qualname__ = f"score_bucket_{bucket}"
            q = serve.batch(max_batch_size=size, batch_wait_timeout_s=self.cfg.batch_wait_s)(score_bucket)
            self._queues[bucket] = q
        return q

    def _score_batch(self, bucket: int, items: list) -> list:
        """On the compute thread: score the items together -> a result or an exception each."""
        from .scoring import VideoFailure

        b = self.counters["buckets"].setdefault(bucket, {"batches": 0, "videos": 0, "max_batch": 0})
        b["batches"] += 1
        b["videos"] += len(items)
        b["max_batch"] = max(b["max_batch"], len(items))
        self.counters["batches"] += 1
        self.counters["videos_in_batches"] += len(items)
        self.counters["max_batch_seen"] = max(self.counters["max_batch_seen"], len(items))
        sizes = self.counters["batch_sizes"]
        sizes[len(items)] = sizes.get(len(items), 0) + 1
        out: dict[str, Any] = {}
        try:
            for r in self.scorer.iter_results(items):
                out[r.name] = _renamed(r.error, r.name) if isinstance(r, VideoFailure) else r
        except Exception as e:            # noqa: BLE001 - the runner failed: every item gets it
            from .errors import BackendError

            if isinstance(e, BackendError):
                self._healthy = False
            return [e] * len(items)
        return [out.get(i.name, RuntimeError(f"video {i.name} got no result")) for i in items]


def _renamed(err: Exception, name: str) -> Exception:
    """The Scorer names a video by its (internal) name; the client knows it as the request body."""
    text = str(err)
    if isinstance(err, InputError) and f"video {name!r}" in text:
        return InputError(text.replace(f"video {name!r}", BODY_LABEL, 1))
    return err


# -- the streaming deployment -------------------------------------------------------------------
@dataclass
class _Session:
    id: str
    key: tuple
    last: float = field(default_factory=time.monotonic)


class StreamService:
    """Streaming sessions (runtime.stream.StreamGroup) behind HTTP: one replica holds every
    session (state lives in its memory), so this deployment always has exactly one replica.

    Sessions with the same (window, lookahead, step) share a StreamGroup; pushes that arrive
    together are scored in one `push_many` (one batch of runner calls) on the compute thread.
    At most `max_streams` sessions are open; one untouched for `stream_idle_s` is closed (its
    results dropped) when the next request comes.
    """

    def __init__(self, config: Mapping):
        self.cfg = ServeConfig.from_dict(config)
        self.runner = open_runner(self.cfg)
        self.meta = self.runner.meta
        self.crops = self.meta.crops if self.cfg.crops == "model" else self.cfg.crops
        self.compute = ComputeQueue(name="bnwvad-streams")
        self.groups: dict[tuple, Any] = {}
        self.sessions: dict[str, _Session] = {}
        self._pending: list[tuple] = []          # (session, snippets, future) waiting for a round
        self._round_scheduled = False
        self.counters = {"opened": 0, "closed": 0, "expired": 0, "pushes": 0, "rounds": 0}

    def check_health(self) -> None:
        return None

    async def __call__(self, request):
        try:
            return await self._dispatch(request)
        except RequestError as e:
            return _error(e.status, e.message)
        except Exception as e:            # noqa: BLE001
            status = error_status(e)
            if status == 500:
                log.exception("stream request failed")
            return _error(status, str(e) or type(e).__name__)

    async def _dispatch(self, request):
        await self._expire()
        parts, method = _route(request.url.path), request.method.upper()
        if parts[:2] != ["v1", "streams"] or len(parts) > 3:
            raise RequestError(404, f"no route {method} {request.url.path}")
        if len(parts) == 2:
            if method == "POST":
                return _json(await self.open(request))
            if method == "GET":
                return _json({"streams": len(self.sessions), "max_streams": self.cfg.max_streams,
                              **self.counters})
            raise RequestError(405, f"method {method} not allowed on /v1/streams; expected POST (open)")
        sid = parts[2]
        s = self.sessions.get(sid)
        if s is None:
            raise RequestError(404, f"stream {sid!r} is not open (closed, expired after "
                                    f"{self.cfg.stream_idle_s:g} s idle, or never opened); open one with "
                                    f"POST /v1/streams")
        s.last = time.monotonic()
        if method == "POST":
            body = await read_body(request, self.cfg.max_body)
            x = decode_snippets(body, request.headers.get("content-type", ""), feature_dim=self.meta.feature_dim)
            return _json(self._records(s, await self.push(s, x)))
        if method == "DELETE":
            out = await self.compute.submit(0, self._flush, s)
            return _json({**self._records(s, out), "closed": True})
        raise RequestError(405, f"method {method} not allowed on a stream; expected POST (push) or DELETE")

    async def open(self, request) -> dict:
        from .stream import StreamGroup

        body = await read_body(request, 1 << 16)
        try:
            doc = json.loads(body) if body.strip() else {}
        except ValueError as e:
            raise RequestError(400, f"{BODY_LABEL}: not valid JSON ({e}); expected "
                                    f'{{"window": 64, "lookahead": 4, "step": 1}}') from None
        q = request.query_params
        if not isinstance(doc, dict):
            raise RequestError(400, f"{BODY_LABEL}: a JSON {type(doc).__name__}; expected an object")

        def num(name, default, low):
            v = doc.get(name, q.get(name, default))
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise RequestError(400, f"{name} = {v!r}; expected an integer >= {low}") from None
            if v < low:
                raise RequestError(400, f"{name} = {v}; expected an integer >= {low}")
            return v

        key = (num("window", 64, 1), num("lookahead", 0, 0), num("step", 1, 1))
        if len(self.sessions) >= self.cfg.max_streams:
            raise RequestError(429, f"{len(self.sessions)} streams are open, this server's limit "
                                    f"(--max-streams {self.cfg.max_streams}); close one (DELETE) first")
        group = self.groups.get(key)
        if group is None:
            group = StreamGroup(self.runner, *key, crops=self.crops if self.crops is not None else None,
                                memory_budget=self.cfg.memory_budget)
            self.groups[key] = group
        sid = uuid.uuid4().hex[:16]
        group.open(sid)
        self.sessions[sid] = _Session(sid, key)
        self.counters["opened"] += 1
        return {"id": sid, "window": key[0], "lookahead": key[1], "step": key[2], "delay": group.delay,
                "crops": group.crops, "feature_dim": self.meta.feature_dim,
                "weights_digest": self.cfg.weights_digest or self.meta.weights_digest}

    async def push(self, s: _Session, x: np.ndarray):
        """Queue the push; pushes waiting together go in one round (`_round`)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((s, x, fut))
        self.counters["pushes"] += 1
        if not self._round_scheduled:
            self._round_scheduled = True
            loop.create_task(self._run_rounds())
        return await fut

    async def _run_rounds(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)              # let concurrent pushes join this round
                batch, self._pending = self._pending, []
                try:
                    results = await self.compute.submit(0, self._round, batch)
                except Exception as e:          # noqa: BLE001 - the runner failed
                    results = [e] * len(batch)
                for (_, _, fut), r in zip(batch, results):
                    if fut.done():
                        continue
                    if isinstance(r, BaseException):
                        fut.set_exception(r)
                    else:
                        fut.set_result(r)
        finally:
            self._round_scheduled = False

    def _round(self, batch: list) -> list:
        """On the compute thread: each group's pushes in push_many calls (one per stream each)."""
        self.counters["rounds"] += 1
        out: list = [None] * len(batch)
        todo = list(range(len(batch)))
        while todo:
            taken: dict[tuple, dict] = {}
            later = []
            for i in todo:
                s = batch[i][0]
                g = taken.setdefault(s.key, {})
                if s.id in g:
                    later.append(i)
                else:
                    g[s.id] = i
            for key, ids in taken.items():
                group = self.groups[key]
                pushes = {sid: batch[i][1] for sid, i in ids.items()}
                try:
                    res = group.push_many(pushes)
                except InputError as e:
                    # A bad push changes no stream: fail that one, run the others again.
                    bad = getattr(e, "stream", None)
                    for sid, i in ids.items():
                        if sid == bad:
                            out[i] = e
                            pushes.pop(sid)
                    try:
                        res = group.push_many(pushes) if pushes else {}
                    except Exception as e2:     # noqa: BLE001
                        res = {sid: e2 for sid in pushes}
                for sid, r in res.items():
                    out[ids[sid]] = r
            todo = later
        return out

    def _flush(self, s: _Session):
        group = self.groups[s.key]
        try:
            return group.flush([s.id])[s.id]
        finally:
            self.sessions.pop(s.id, None)
            self.counters["closed"] += 1

    async def _expire(self) -> None:
        """Close the sessions untouched for stream_idle_s (their last results are dropped)."""
        now = time.monotonic()
        for sid, s in list(self.sessions.items()):
            if now - s.last > self.cfg.stream_idle_s and self.sessions.pop(sid, None) is not None:
                self.counters["expired"] += 1
                try:
                    await self.compute.submit(0, self.groups[s.key].flush, [sid])
                except Exception:          # noqa: BLE001 - it is being dropped anyway
                    log.warning("closing expired stream %s failed", sid, exc_info=True)

    def _records(self, s: _Session, rec) -> dict:
        if isinstance(rec, BaseException):
            raise rec
        group = self.groups[s.key]
        handle_final = None
        if s.id in group.streams:
            handle_final = group.handle(s.id).final
        return {"id": s.id, "snippet": rec["snippet"].tolist(),
                **{k: rec[k].astype(np.float64).tolist() for k in OUTPUTS},
                "final": handle_final, "latency_ms": float(rec["latency_ms"][0]) if len(rec) else None}


# -- deploying ----------------------------------------------------------------------------------
def build_apps(cfg: ServeConfig, *, device: str = "cpu") -> dict:
    """{application name: (bound application, route prefix)} for `cfg`. Imports ray."""
    from ray import serve

    logging_config = {"log_level": "WARNING", "enable_access_log": False}
    common = dict(health_check_period_s=10.0, health_check_timeout_s=60.0, graceful_shutdown_timeout_s=5.0,
                  graceful_shutdown_wait_loop_s=0.5, max_constructor_retry_count=1,
                  logging_config=logging_config)
    scoring = serve.deployment(ScoringService, name="score", num_replicas=int(cfg.replicas),
                               max_ongoing_requests=int(cfg.max_ongoing),
                               ray_actor_options={"num_cpus": float(cfg.replica_cpus),
                                                  "num_gpus": cfg.gpus(device)}, **common)
    apps = {APP_NAME: (scoring.bind(cfg.to_dict()), "/")}
    if cfg.streams:
        streams = serve.deployment(StreamService, name="streams", num_replicas=1,
                                   max_ongoing_requests=int(cfg.max_ongoing),
                                   ray_actor_options={"num_cpus": 0.0, "num_gpus": cfg.gpus(device)},
                                   **common)
        apps[STREAMS_APP_NAME] = (streams.bind(cfg.to_dict()), "/v1/streams")
    return apps


def deploy(cfg: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> str:
    """Start Serve's HTTP proxy on host:port (a Ray cluster must be initialised) and deploy the
    applications; returns the service's URL. Raises RuntimeError (Ray's message) when a
    deployment fails, e.g. its replica cannot load the model."""
    from ray import serve

    serve.start(http_options={"host": host, "port": int(port)},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    for name, (app, prefix) in build_apps(cfg, device=device).items():
        try:
            serve.run(app, name=name, route_prefix=prefix)
        except Exception as e:             # noqa: BLE001 - Ray says "failed"; its status says why
            raise DeployError(f"{e} {deployment_messages(name)}".strip()) from e
    return f"http://{host}:{port}"


class DeployError(RuntimeError):
    """An application could not be deployed; the message has its deployments' status messages."""


def deployment_messages(app: str) -> str:
    """The status messages of an application's deployments (a replica's constructor error)."""
    from ray import serve

    try:
        status = serve.status().applications.get(app)
    except Exception:                      # noqa: BLE001 - Serve itself is gone
        return ""
    if status is None:
        return ""
    parts = [status.message or ""]
    parts += [f"{name}: {d.message}" for name, d in status.deployments.items() if d.message]
    return "\n".join(p for p in parts if p)


__all__ = ["APP_NAME", "ComputeQueue", "RequestError", "STREAMS_APP_NAME", "ScoringService", "ServeConfig",
           "StreamService", "bucket_batch_size", "bucket_of", "build_apps", "decode_features",
           "decode_snippets", "deploy", "error_status", "read_body", "read_npy_bytes"]
