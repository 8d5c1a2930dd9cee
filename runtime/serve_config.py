"""bnwvad-serve's configuration: what every replica needs (ServeConfig) and how it opens its runner.

Plain data and numpy only: it travels to the replicas as a dict (`to_dict` / `from_dict`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

MIB = 1 << 20
DEFAULT_MAX_BODY_MB = 64.0          # the longest XD-Violence test video, 5 crops, is 42 MB of float32
DEFAULT_MAX_SNIPPETS = 4096
DEFAULT_MAX_BATCH = 16
DEFAULT_BATCH_WAIT_MS = 5.0
DEFAULT_MAX_ONGOING = 256           # requests a replica takes in at once (Ray's default, 5, starves batching)
APP_NAME = "bnwvad"
STREAMS_APP_NAME = "bnwvad-streams"
GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt")


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


__all__ = ["APP_NAME", "GPU_BACKENDS", "STREAMS_APP_NAME", "ServeConfig", "open_runner"]
