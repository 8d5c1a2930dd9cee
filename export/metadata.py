"""Writing and reading the metadata an exported graph carries (ONNX `metadata_props`).

The keys, their JSON values, the format name and version are the contract's
(`bnwvad.runtime.contract.METADATA_KEYS`, documented there); this module fills them in from a
model and checks them when reading a file back with onnx.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from bnwvad.runtime.contract import FORMAT, FORMAT_VERSION, METADATA_KEYS, input_specs, output_specs


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
        "inputs": input_specs(d),
        "outputs": output_specs(),
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
    missing = [k for k in METADATA_KEYS if k not in meta]
    if meta.get("format") != FORMAT or missing:
        raise MetadataError(f"{where}: not a bnwvad export: format={meta.get('format')!r} (expected "
                            f"{FORMAT!r}), missing metadata keys {missing}")
    return meta


__all__ = ["MetadataError", "build_metadata",
           "read_metadata", "set_metadata", "weights_digest"]
