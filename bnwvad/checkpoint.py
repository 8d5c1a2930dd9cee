"""Checkpoints: our format (config beside the weights) and the published state_dicts.

Our file is a `torch.save`d dict of plain containers and tensors:
    {"format": "bnwvad-checkpoint", "format_version": 1, "config": {...},
     "preset": "xd" | None, "crops": 5 | None, "state_dict": {...}, "meta": {...}}
so `load_model(path)` alone rebuilds the model. `preset` names the dataset preset the model was
trained for (ucf, xd, shanghaitech, demo); `crops` is the number of crops per video of the data it
was trained and evaluated on (what an export records as the crops a video must have). Files
without `crops` (older ones) still load: readers fall back to the preset's crop count. Everything is loaded with
`torch.load(weights_only=True)`: a file that needs arbitrary unpickling is refused.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .atomic import atomic_write
from .config import ModelConfig, get_preset
from .model import BNWVAD

FORMAT = "bnwvad-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason."""


# Published key -> ours. The published NormalHead always has two hidden layers
# (conv1/bn1, conv2/bn2) and the classifier conv3.
_OFFICIAL_RULES = [
    (r"embedding\.conv_1\.0\.(weight|bias)", r"embed.\1"),
    (r"selfatt\.layers\.(\d+)\.0\.norm\.(weight|bias)", r"blocks.\1.attn_norm.\2"),
    (r"selfatt\.layers\.(\d+)\.0\.fn\.to_qkv\.weight", r"blocks.\1.attn.qkvt.weight"),
    (r"selfatt\.layers\.(\d+)\.0\.fn\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"selfatt\.layers\.(\d+)\.1\.norm\.(weight|bias)", r"blocks.\1.ff_norm.\2"),
    (r"selfatt\.layers\.(\d+)\.1\.fn\.net\.0\.(weight|bias)", r"blocks.\1.ff.fc1.\2"),
    (r"selfatt\.layers\.(\d+)\.1\.fn\.net\.3\.(weight|bias)", r"blocks.\1.ff.fc2.\2"),
    (r"normal_head\.conv([12])\.(weight|bias)", None),
    (r"normal_head\.conv3\.(weight|bias)", r"head.out.\1"),
    (r"normal_head\.bn([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)", None),
]


def is_official(state: Mapping[str, Any]) -> bool:
    """True when the keys look like the published code's parameter names."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state]
    return any(k.startswith(("embedding.conv_1", "selfatt.layers", "normal_head.")) for k in keys)


def convert_official(state: Mapping[str, Any]) -> dict[str, Any]:
    """Rename the published parameter names to ours; values are passed through untouched.

    Works on any mapping keyed like the published model (weights, gradients, Adam
    moments, ...). A `module.` prefix (DataParallel) is dropped. Keys that match no
    published name raise CheckpointError, listing them.
    """
    out: dict[str, Any] = {}
    unknown = []
    for orig in state:
        k = orig[len("module."):] if orig.startswith("module.") else orig
        for pat, rep in _OFFICIAL_RULES:
            m = re.fullmatch(pat, k)
            if m is None:
                continue
            if rep is None:      # conv{i} / bn{i}, i in {1, 2}: hidden layer i - 1
                kind = "convs" if ".conv" in k else "bns"
                out[f"head.{kind}.{int(m.group(1)) - 1}.{m.group(2)}"] = state[orig]
            else:
                out[m.expand(rep)] = state[orig]
            break
        else:
            unknown.append(orig)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} key(s) are not parameters of the published BN-WVAD model: "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return out


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside `path`, then rename: never a partial file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def save_checkpoint(path: str | os.PathLike, model: BNWVAD, *, preset: str | None = None,
                    crops: int | None = None, meta: dict | None = None,
                    train_state: dict | None = None) -> None:
    """Write our checkpoint format atomically. train_state (optimizer, step, RNG) is
    what `--resume` needs; it must hold only tensors and plain containers. `crops`: crops per
    video of the model's data (default: the preset's crop count, if a preset is given)."""
    if crops is None and preset is not None:
        crops = get_preset(preset).crops
    if crops is not None and (isinstance(crops, bool) or int(crops) != crops or crops < 1):
        raise ValueError(f"crops={crops!r}: expected a positive number of crops per video")
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "preset": preset,
        "crops": None if crops is None else int(crops),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    if train_state is not None:
        obj["train_state"] = train_state
    atomic_save(obj, path)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True, turning every failure into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); expected a torch.save'd checkpoint")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..); very old files are bare pickles (0x80 ..).
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (starts with {head!r}; expected a zip archive "
            f"written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers, "
            f"and unpickling them could run arbitrary code (loaded with weights_only=True). "
            f"Detail: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch checkpoint ({path.stat().st_size} bytes): the file "
            f"looks truncated or corrupted. Detail: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def _check_state(path: Path, model: BNWVAD, state: Mapping[str, Any]) -> None:
    expected = model.state_dict()
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:3]
        raise CheckpointError(f"{path}: state_dict entries {bad} are not tensors")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the state_dict does not fit a BN-WVAD model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: shape mismatch for {k}: the checkpoint has {tuple(state[k].shape)}, "
                f"the model built from its config expects {tuple(v.shape)}")


def load_model(path: str | os.PathLike, preset: str | None = None, *,
               config: ModelConfig | None = None, device: str | torch.device = "cpu") -> BNWVAD:
    """Rebuild a model from a checkpoint, in eval mode on `device`.

    Our checkpoints carry their config. A bare state_dict (the published `*.pkl`
    files, or a state_dict of ours) needs `preset` (ucf, xd, shanghaitech) or `config`;
    with a preset the feature dimension is read off the embedding weight when it is the
    preset's visual or visual + audio size.
    """
    path = Path(path)
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if int(obj.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {obj['format_version']} is newer "
                                  f"than this bnwvad understands ({FORMAT_VERSION}); upgrade bnwvad")
        try:
            cfg = config or ModelConfig.from_dict(obj["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: its model config is invalid: {e}") from None
        state = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(k, str) for k in obj):
        state = obj
        if is_official(state):
            state = convert_official(state)
        elif not any(k.startswith(("embed.", "blocks.", "head.")) for k in state):
            raise CheckpointError(
                f"{path}: foreign state_dict: none of its {len(state)} keys is a BN-WVAD parameter "
                f"(first keys: {list(state)[:3]})")
        if config is not None:
            cfg = config
        elif preset is not None:
            cfg = _config_for_bare_state(path, state, preset)
        else:
            raise CheckpointError(
                f"{path}: a bare state_dict carries no model config; pass a dataset preset "
                f"(preset='ucf' | 'xd' | 'shanghaitech', or --preset on the command line)")
    else:
        raise CheckpointError(f"{path}: expected a bnwvad checkpoint or a state_dict, found a "
                              f"{type(obj).__name__}")
    model = BNWVAD(cfg)
    _check_state(path, model, state)
    model.load_state_dict(state)
    return model.to(device).eval()


def _config_for_bare_state(path: Path, state: Mapping[str, Any], preset: str) -> ModelConfig:
    p = get_preset(preset)
    w = state.get("embed.weight")
    audio = False
    if isinstance(w, torch.Tensor) and w.dim() == 3:
        audio = p.audio_dim > 0 and w.shape[1] == p.feature_dim + p.audio_dim
    return p.model_config(audio=audio)


def checkpoint_info(path: str | os.PathLike) -> dict:
    """Config, preset, crops and digest of a checkpoint, for export metadata and reports.

    `crops` is the checkpoint's own crop count, else its preset's, else None (published
    state_dicts carry neither)."""
    obj = read_checkpoint(path)
    info = {"path": str(path), "digest": file_digest(path), "preset": None, "crops": None}
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        preset = obj.get("preset")
        crops = obj.get("crops")
        if crops is None and preset is not None:
            try:
                crops = get_preset(preset).crops
            except ValueError:
                crops = None
        info.update(preset=preset, crops=crops, config=obj.get("config"), meta=obj.get("meta", {}))
    return info
