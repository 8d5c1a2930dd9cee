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
`import bnwvad.runtime`) needs numpy only; the request decoding is plain numpy.

The pieces, each importable from here: `serve_config` (ServeConfig, open_runner),
`serve_requests` (decoding bodies, their limits, HTTP plumbing), `serve_compute` (T buckets,
the compute thread), `serve_streams` (the streaming deployment); this module holds the
scoring deployment and deploying.
"""
from __future__ import annotations

import itertools
import logging
import time
import uuid
from typing import Any, Callable, Mapping

from .contract import OUTPUTS
from .errors import InputError
from .sources import ValidatedSource
# The service's pieces, importable from here as before: configuration, request decoding and
# HTTP plumbing, batching and the compute thread, the streaming deployment.
from .serve_compute import AGING_S, MIN_BUCKET, ComputeQueue, bucket_batch_size, bucket_of
from .serve_config import (APP_NAME, DEFAULT_BATCH_WAIT_MS, DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_MB,
                           DEFAULT_MAX_ONGOING, DEFAULT_MAX_SNIPPETS, GPU_BACKENDS, MIB, STREAMS_APP_NAME,
                           ServeConfig, open_runner)
from .serve_requests import (BODY_LABEL, DRAIN_FACTOR, LAYOUTS, RequestError, arrange, decode_features,
                             decode_snippets, error_response, error_status, json_response, query_float, read_body,
                             read_npy_bytes, route_parts)
from .serve_streams import StreamService

log = logging.getLogger("bnwvad.runtime.serve")


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
            return error_response(e.status, e.message)
        except Exception as e:            # noqa: BLE001 - every failure is an answer
            status = error_status(e)
            if status == 500:
                log.exception("request failed")
            return error_response(status, str(e) or type(e).__name__)

    async def _dispatch(self, request):
        parts, method = route_parts(request.url.path), request.method.upper()
        if parts == ["healthz"]:
            self._need(method, "GET")
            if not self._healthy:
                raise RequestError(503, "the model runner failed; this replica cannot score (Serve replaces it)")
            return json_response({"status": "ok", "replica": self.id})
        if parts == ["v1", "model"]:
            self._need(method, "GET")
            return json_response(self.model_info())
        if parts == ["v1", "stats"]:
            self._need(method, "GET")
            return json_response(self.stats())
        if parts == ["v1", "score"]:
            self._need(method, "POST")
            return json_response(await self.score_request(request))
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
        threshold = query_float(opts.get("threshold", q.get("threshold")), "threshold")
        fps = query_float(opts.get("fps", q.get("fps")), "fps", positive=True)
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
        from .sources import VideoFailure

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


__all__ = ["AGING_S", "APP_NAME", "BODY_LABEL", "ComputeQueue", "DEFAULT_BATCH_WAIT_MS", "DEFAULT_MAX_BATCH",
           "DEFAULT_MAX_BODY_MB", "DEFAULT_MAX_ONGOING", "DEFAULT_MAX_SNIPPETS", "DRAIN_FACTOR", "DeployError",
           "GPU_BACKENDS", "LAYOUTS", "MIB", "MIN_BUCKET", "RequestError", "STREAMS_APP_NAME", "ScoringService", "ServeConfig",
           "StreamService", "arrange", "bucket_batch_size", "bucket_of", "build_apps", "decode_features",
           "decode_snippets", "deploy", "deployment_messages", "error_status", "open_runner", "read_body",
           "read_npy_bytes"]
