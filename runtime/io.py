"""Atomic output files and the machine-readable results file.

Every output is written to a temporary file beside its destination, flushed, fsynced and
renamed over it (os.replace), so a reader never sees a partial file and an interrupted run
leaves the previous file, not half a new one.

results.npz (read with `load_results`, np.load(allow_pickle=False) works too):
    videos       (V,) unicode   video names, in the order the inputs were given
    lengths      (V,) int64     T of each video
    crops        (V,) int64     crops averaged
    offsets      (V + 1,) int64 video v's snippets are [offsets[v], offsets[v + 1]) of:
    score, dfm, anomaly  (sum T,) float32, concatenated per-snippet outputs
    frames_per_snippet   ()     int64
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_write
from .contract import OUTPUTS

RESULTS_FILE = "results.npz"


def save_npy(path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def save_json(path, obj: Any) -> Path:
    data = json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode("utf-8") + b"\n"
    return atomic_write(path, lambda f: f.write(data))


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def save_results(path, results: Sequence, frames_per_snippet: int = 16) -> Path:
    """Write VideoResults (in the given order) to one .npz, layout in the module docstring."""
    names = [r.name for r in results]
    lengths = np.array([r.length for r in results], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrays = {
        "videos": np.array(names, dtype=str) if names else np.zeros(0, dtype="<U1"),
        "lengths": lengths,
        "crops": np.array([r.crops for r in results], np.int64),
        "offsets": offsets,
        "frames_per_snippet": np.int64(frames_per_snippet),
    }
    for k in OUTPUTS:
        arrays[k] = (np.concatenate([getattr(r, k) for r in results]).astype(np.float32)
                     if results else np.zeros(0, np.float32))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_results(path) -> dict[str, dict[str, np.ndarray]]:
    """results.npz -> {video: {"score", "dfm", "anomaly": (T,) float32, "crops": int}}."""
    with np.load(path, allow_pickle=False) as z:
        off = z["offsets"]
        out = {}
        for v, name in enumerate(z["videos"].tolist()):
            a, b = int(off[v]), int(off[v + 1])
            out[name] = {k: z[k][a:b] for k in OUTPUTS}
            out[name]["crops"] = int(z["crops"][v])
        return out
