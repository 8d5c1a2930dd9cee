"""The metadata an exported graph carries: ONNX `metadata_props`, every value JSON.

This is the export -> runtime contract's metadata half (DESIGN.md, "Inference graph"):
the runtime reads these keys to validate its inputs, and the TensorRT sidecar JSON
holds the same keys plus the engine's own. Keys and JSON value formats:

    format              "bnwvad-onnx"
    format_version      1
    bnwvad_version      "0.1.0"
    precision           "fp32" | "fp16" | "int8"
    opset               17                       (default ONNX opset of the graph)
    feature_dim         1024                     (D; features must be (N, C, T, D))
    crops               5 | 10 | null            (crops per video the preset expects)
    frames_per_snippet  16
    preset              "ucf" | "xd" | "shanghaitech" | null
    model_config        {...}                    (bnwvad.config.ModelConfig.to_dict())
    source              "official_state_dict.pkl" | null   (file name of the checkpoint)
    source_digest       "sha256:<hex>" | null    (of the checkpoint file)
    weights_digest      "sha256:<hex>"           (of the float32 state_dict, sorted keys)
    inputs              [{"name": "features", "dtype": "float32", "shape": ["N", "C", "T", 1024]},
                         {"name": "lengths", "dtype": "int64", "shape": ["N"]}]
    outputs             [{"name": "score" | "dfm" | "anomaly", "dtype": "float32", "shape": ["N", "T"]}]
    anomaly             "product" | "classifier" | "dfm"   (what `anomaly` is per crop)
    graph               {"builder": "bnwvad.export.graph", "options": {...}}
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

FORMAT = "bnwvad-onnx"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "bnwvad_version", "precision", "opset", "feature_dim",
                 "crops", "frames_per_snippet", "preset", "model_config", "source", "source_digest",
                 "weights_digest", "inputs", "outputs", "anomaly", "graph")


class MetadataError(ValueError):
    """Metadata that is missing or not of the documented form."""


def weights_digest(state_dict) -> str:
    """sha256 over the float32 bytes of a state_dict, keys sorted: names the weights
    whether they came from a file or from a model in memory."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update((t.float() if t.dtype.is_floating_point else t).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def build_metadata(*, config: dict, preset: str | None, crops: int | None, frames_per_snippet: int,
                   precision: str, opset: int, version: str, source: str | None,
                   source_digest: str | None, weights: str, graph_options: dict) -> dict[str, Any]:
    d = int(config["feature_dim"])
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bnwvad_version": version,
        "precision": precision,
        "opset": int(opset),
        "feature_dim": d,
        "crops": crops,
        "frames_per_snippet": int(frames_per_snippet),
        "preset": preset,
        "model_config": config,
        "source": source,
        "source_digest": source_digest,
        "weights_digest": weights,
        "inputs": [{"name": "features", "dtype": "float32", "shape": ["N", "C", "T", d]},
                   {"name": "lengths", "dtype": "int64", "shape": ["N"]}],
        "outputs": [{"name": n, "dtype": "float32", "shape": ["N", "T"]} for n in ("score", "dfm", "anomaly")],
        "anomaly": config.get("score", "product"),
        "graph": {"builder": "bnwvad.export.graph", "options": dict(graph_options)},
    }


def set_metadata(proto, meta: dict[str, Any]) -> None:
    """Write `meta` into an onnx.ModelProto's metadata_props, one JSON value per key."""
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v, sort_keys=True)


def read_metadata(source) -> dict[str, Any]:
    """The metadata of an ONNX file (path) or ModelProto, JSON-decoded and checked."""
    import onnx

    if isinstance(source, onnx.ModelProto):
        where, proto = "the model", source
    else:
        where = str(source)
        if not os.path.isfile(where):
            raise MetadataError(f"{where}: no such ONNX file")
        try:
            proto = onnx.load(where, load_external_data=False)
        except Exception as e:      # protobuf DecodeError and friends: not an ONNX file
            raise MetadataError(f"{where}: cannot be read as an ONNX model ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
    meta = {}
    for p in proto.metadata_props:
        try:
            meta[p.key] = json.loads(p.value)
        except json.JSONDecodeError as e:
            raise MetadataError(f"{where}: metadata {p.key!r} is not JSON ({e}): {p.value[:80]!r}") from None
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if meta.get("format") != FORMAT or missing:
        raise MetadataError(f"{where}: not a bnwvad export: format={meta.get('format')!r} (expected "
                            f"{FORMAT!r}), missing metadata keys {missing}")
    return meta


__all__ = ["FORMAT", "FORMAT_VERSION", "MetadataError", "REQUIRED_KEYS", "build_metadata",
           "read_metadata", "set_metadata", "weights_digest"]
