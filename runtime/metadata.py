"""The exported model's metadata: what the runtime validates inputs against.

`bnwvad.export` writes `metadata_props` into the ONNX file (JSON values; the keys are
documented in export/metadata.py) and the same mapping into a TensorRT engine's JSON sidecar.
The runtime never imports the exporter (it needs torch and onnx): the key names it reads live
in ONE table, `KEYS`, below; the first name of each entry is the exporter's, the others are
tolerated spellings.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ModelLoadError

# field -> metadata keys that may hold it, the exporter's own name first.
KEYS: dict[str, tuple[str, ...]] = {
    "feature_dim": ("feature_dim", "bnwvad.feature_dim", "features_dim", "D"),
    "crops": ("crops", "crops_expected", "bnwvad.crops", "num_crops"),
    "frames_per_snippet": ("frames_per_snippet", "bnwvad.frames_per_snippet", "snippet_frames"),
    "precision": ("precision", "bnwvad.precision"),
    "opset": ("opset", "bnwvad.opset", "opset_version"),
    "version": ("bnwvad_version", "package_version", "bnwvad.version", "version"),
    "model_config": ("model_config", "bnwvad.model_config", "config"),
    "preset": ("preset", "dataset_preset", "bnwvad.preset", "dataset"),
    "source_digest": ("source_digest", "checkpoint_digest", "source_checkpoint_digest",
                      "bnwvad.source_digest", "source_sha256"),
    "source": ("source", "checkpoint"),
    "weights_digest": ("weights_digest",),
    "anomaly": ("anomaly", "score_kind"),
    "format": ("format",),
    "format_version": ("format_version",),
}
FORMAT = "bnwvad-onnx"          # the exporter's `format` value
FORMAT_VERSION = 1              # the newest metadata layout this runtime reads
# The contract's tensor names (DESIGN.md, "Inference graph").
INPUTS = ("features", "lengths")
OUTPUTS = ("score", "dfm", "anomaly")
DEFAULT_FRAMES_PER_SNIPPET = 16


def _decode(value: Any) -> Any:
    """metadata_props values are JSON text; anything that is not JSON stays a string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def _lookup(props: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in props:
            return props[name]
    # One level of nesting: an exporter may group everything under a single JSON key
    # (but a model config's own fields, e.g. its feature_dim, are read only through it).
    for key, value in props.items():
        if isinstance(value, dict) and key not in KEYS["model_config"]:
            for name in names:
                if name in value:
                    return value[name]
    return None


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
    frames_per_snippet: int = DEFAULT_FRAMES_PER_SNIPPET
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
    raw = {str(k): _decode(v) for k, v in props.items()}
    get = {name: _lookup(raw, keys) for name, keys in KEYS.items()}
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
        frames_per_snippet=fps or DEFAULT_FRAMES_PER_SNIPPET,
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
