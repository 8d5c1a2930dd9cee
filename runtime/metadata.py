"""The exported model's metadata: what the runtime validates inputs against.

`bnwvad.export` writes `metadata_props` into the ONNX file (JSON values) and the same mapping
into a TensorRT engine's JSON sidecar. The keys, the format name and version are the
contract's (`bnwvad.runtime.contract.METADATA_KEYS`): one name per field, nothing else read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .contract import FORMAT, FORMAT_VERSION, FRAMES_PER_SNIPPET
from .errors import ModelLoadError


# ModelMeta field -> the metadata key that holds it (contract.METADATA_KEYS).
_FIELDS = {"feature_dim": "feature_dim", "crops": "crops", "frames_per_snippet": "frames_per_snippet",
           "precision": "precision", "opset": "opset", "version": "bnwvad_version",
           "model_config": "model_config", "preset": "preset", "source_digest": "source_digest",
           "source": "source", "weights_digest": "weights_digest", "anomaly": "anomaly",
           "format": "format", "format_version": "format_version"}


def decode_value(value: Any) -> Any:
    """metadata_props values are JSON text; anything that is not JSON stays a string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def _as_int(value: Any, what: str, source: str) -> int | None:
    if value is None:
        return None
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ModelLoadError(f"{source}: metadata {what} = {value!r}; expected an integer "
                             f"(re-export the model with bnwvad-export)") from None
    if out <= 0:
        raise ModelLoadError(f"{source}: metadata {what} = {out}; expected a positive integer")
    return out


@dataclass(frozen=True)
class ModelMeta:
    """What an exported BN-WVAD model declares about itself.

    feature_dim (D) and crops (C) are what inputs are checked against; `frames_per_snippet`
    turns snippet outputs into frame outputs. `raw` keeps every decoded property.
    """

    source: str
    feature_dim: int | None
    crops: int | None
    frames_per_snippet: int = FRAMES_PER_SNIPPET
    precision: str | None = None
    opset: int | None = None
    version: str | None = None
    model_config: dict = field(default_factory=dict)
    preset: str | None = None
    source_digest: str | None = None
    weights_digest: str | None = None
    anomaly: str | None = None       # what `anomaly` is per crop: product | classifier | dfm
    checkpoint: str | None = None    # file name of the exported checkpoint
    raw: dict = field(default_factory=dict)

    # Sizes the memory estimate needs; the paper's values when the config is absent.
    @property
    def heads(self) -> int:
        return int(self.model_config.get("heads", 4))

    @property
    def embed_dim(self) -> int:
        return int(self.model_config.get("embed_dim", 512))

    @property
    def depth(self) -> int:
        return int(self.model_config.get("depth", 2))

    def describe(self) -> str:
        bits = [f"preset {self.preset}" if self.preset else "no preset",
                self.precision or "precision ?",
                f"D={self.feature_dim}" if self.feature_dim else "D=?",
                f"{self.crops} crops" if self.crops else "crops ?"]
        return ", ".join(bits)

    def to_dict(self) -> dict:
        return {"feature_dim": self.feature_dim, "crops": self.crops,
                "frames_per_snippet": self.frames_per_snippet, "precision": self.precision,
                "opset": self.opset, "version": self.version, "model_config": self.model_config,
                "preset": self.preset, "source_digest": self.source_digest,
                "weights_digest": self.weights_digest, "anomaly": self.anomaly,
                "checkpoint": self.checkpoint}


def meta_from_props(props: Mapping[str, Any], source: str, *,
                    feature_dim_hint: int | None = None) -> ModelMeta:
    """Build ModelMeta from metadata properties (values JSON text or already decoded).

    feature_dim_hint: the D read off the graph's input shape, used when the metadata lacks
    it and checked against it when both are present.
    """
    raw = {str(k): decode_value(v) for k, v in props.items()}
    get = {name: raw.get(key) for name, key in _FIELDS.items()}
    if get["format"] is not None and get["format"] != FORMAT:
        raise ModelLoadError(f"{source}: metadata format = {get['format']!r}; expected {FORMAT!r} "
                             f"(a model exported by bnwvad-export)")
    if isinstance(get["format_version"], int) and get["format_version"] > FORMAT_VERSION:
        raise ModelLoadError(f"{source}: metadata format_version {get['format_version']} is newer than "
                             f"this runtime reads ({FORMAT_VERSION}). Fix: upgrade bnwvad")
    config = get["model_config"] if isinstance(get["model_config"], dict) else {}
    d = _as_int(get["feature_dim"], "feature_dim", source)
    if d is None and config.get("feature_dim") is not None:
        d = _as_int(config.get("feature_dim"), "model_config.feature_dim", source)
    if d is not None and feature_dim_hint is not None and d != feature_dim_hint:
        raise ModelLoadError(f"{source}: metadata says feature_dim = {d} but the graph's "
                             f"`features` input has D = {feature_dim_hint}; the file is inconsistent, "
                             f"re-export it with bnwvad-export")
    if d is None:
        d = feature_dim_hint
    fps = _as_int(get["frames_per_snippet"], "frames_per_snippet", source)
    return ModelMeta(
        source=source,
        feature_dim=d,
        crops=_as_int(get["crops"], "crops", source),
        frames_per_snippet=fps or FRAMES_PER_SNIPPET,
        precision=None if get["precision"] is None else str(get["precision"]),
        opset=_as_int(get["opset"], "opset", source),
        version=None if get["version"] is None else str(get["version"]),
        model_config=dict(config),
        preset=None if get["preset"] is None else str(get["preset"]),
        source_digest=None if get["source_digest"] is None else str(get["source_digest"]),
        weights_digest=None if get["weights_digest"] is None else str(get["weights_digest"]),
        anomaly=None if get["anomaly"] is None else str(get["anomaly"]),
        checkpoint=None if get["source"] is None else str(get["source"]),
        raw=raw,
    )


def sidecar_candidates(engine: Path) -> list[Path]:
    """Where a TensorRT engine's JSON sidecar may be: `<engine>.json`, then `<stem>.json`."""
    engine = Path(engine)
    return [engine.with_name(engine.name + ".json"), engine.with_suffix(".json")]


def meta_from_sidecar(engine: str | Path, sidecar: str | Path | None = None) -> ModelMeta:
    """Metadata of a TensorRT engine from its JSON sidecar (the ONNX metadata, same keys).

    The sidecar may hold the mapping at its top level or under "metadata".
    """
    engine = Path(engine)
    paths = [Path(sidecar)] if sidecar is not None else sidecar_candidates(engine)
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise ModelLoadError(
            f"{engine}: no metadata sidecar found (looked for {', '.join(str(p) for p in paths)}); "
            f"expected the JSON file bnwvad-export writes beside an engine. Fix: keep the sidecar "
            f"next to the engine, or pass its path (sidecar=... / --sidecar)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable JSON sidecar ({e}); expected the metadata "
                             f"JSON that bnwvad-export writes beside the engine") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: holds a JSON {type(data).__name__}; expected an object")
    if isinstance(data.get("metadata"), dict):
        data = {**data, **data["metadata"]}
    return meta_from_props(data, str(engine))


def _varint(buf: bytes | memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def onnx_metadata_props(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file, read straight off its protobuf encoding.

    The runtime needs the metadata (D, for one) before it opens a session, for example to give
    ONNX Runtime's TensorRT provider its profile shapes; onnx is not a runtime dependency and a
    second InferenceSession just to read them costs a model load. ModelProto's top-level
    fields are walked (field 14 = metadata_props, entries key = 1, value = 2), the graph is
    skipped by its length. Raises ModelLoadError for a file that is not such a protobuf.
    """
    path = Path(path)
    try:
        data = memoryview(path.read_bytes())
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot be read ({e})") from None
    props: dict[str, str] = {}
    i = 0
    try:
        while i < len(data):
            tag, i = _varint(data, i)
            field_no, wire = tag >> 3, tag & 7
            if wire == 0:
                _, i = _varint(data, i)
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            elif wire == 2:
                size, i = _varint(data, i)
                if i + size > len(data):
                    raise ValueError("field runs past the end of the file")
                if field_no == 14:
                    entry, j, key, value = data[i:i + size], 0, "", ""
                    while j < len(entry):
                        etag, j = _varint(entry, j)
                        n, j = _varint(entry, j)
                        text = bytes(entry[j:j + n]).decode("utf-8")
                        key, value = (text, value) if etag >> 3 == 1 else (key, text)
                        j += n
                    props[key] = value
                i += size
            else:
                raise ValueError(f"wire type {wire}")
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not an ONNX model ({e}); expected an .onnx file written by "
                             f"bnwvad-export") from None
    return props
