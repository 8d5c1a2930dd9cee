"""bnwvad: BN-WVAD video anomaly detection, from exact training to deployment.

`import bnwvad` imports no torch, so `bnwvad.runtime` works where only numpy and
onnxruntime are installed. The torch-based API is imported on first use.
"""
from ._version import __version__
from .config import PRESETS, DatasetPreset, ModelConfig, TrainConfig, get_preset

_LAZY = {
    "BNWVAD": "bnwvad.model",
    "ModelOutput": "bnwvad.model",
    "build_model": "bnwvad.model",
    "load_model": "bnwvad.checkpoint",
    "save_checkpoint": "bnwvad.checkpoint",
    "convert_official": "bnwvad.checkpoint",
    "CheckpointError": "bnwvad.checkpoint",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bnwvad' has no attribute {name!r}")


__all__ = ["__version__", "PRESETS", "DatasetPreset", "ModelConfig", "TrainConfig",
           "get_preset", *_LAZY]
