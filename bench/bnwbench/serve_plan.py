"""bench/serve.py's constants, its workload (stand-in videos with XD-Violence's test lengths)
and its model (the published XD-Violence model exported once); bench/ray_batch.py uses the
same workload and model."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bnwbench.plan import BENCH, XD_LENGTHS
from bnwbench.system import usable_cpus
from bnwbench.workload import builtin_lengths, feature_pool, read_lengths, spread_sample

SCHEMA = "bnwvad-bench-serve/1"
DEFAULT_OUT = BENCH / "results" / "serve"
GOAL_N, GOAL_SHARE = 16, 0.80
LIBRARIES = ("bnwvad", "ray", "onnxruntime", "numpy", "starlette", "uvicorn")
IN_PROCESS = {"all_at_once": "in-process Scorer, all videos in one call",
              "all_at_once_nospin": "the same, ONNX Runtime threads not spinning (as the replica)",
              "one_by_one": "in-process Scorer, one video per call"}


class Workload:
    """Videos (name, T) cut from one random pool (C, T_max, D): (C, T, D) float32 views."""

    def __init__(self, rows: list[tuple[str, int]], crops: int, dim: int, seed: int = 0):
        self.rows = rows
        self.crops, self.dim = crops, dim
        self.pool = feature_pool(crops, max(t for _, t in rows) + 64, dim, seed)
        rng = np.random.default_rng(seed)
        self.offsets = [int(rng.integers(0, 64)) for _ in rows]

    def features(self, i: int) -> np.ndarray:
        t, o = self.rows[i][1], self.offsets[i]
        return self.pool[:, o:o + t]

    def body(self, i: int) -> bytes:
        from bnwvad.client import npy_bytes

        return npy_bytes(self.features(i))

    @property
    def snippets(self) -> int:
        return sum(t for _, t in self.rows)


def lengths_for(count: int) -> tuple[list[tuple[str, int]], str]:
    if XD_LENGTHS.is_file():
        rows, src = read_lengths(XD_LENGTHS), str(XD_LENGTHS)
    else:
        rows, src = builtin_lengths(), "builtin log-normal spread (XD-Violence's quartiles)"
    return spread_sample(rows, count), src


def prepare_model(model: Path | None, cache: Path, clock) -> tuple[Path, dict]:
    if model is not None:
        return model, {"kind": "given", "path": str(model)}
    import torch

    from bnwbench.models import export_graphs, load_speed_model

    torch.set_num_threads(max(1, usable_cpus()))
    with tempfile.TemporaryDirectory() as work:
        m, src, _, preset = load_speed_model(None, None, Path(work), seed=0)
        path = export_graphs(m, ["fp32"], cache, "speed", preset, clock)["fp32"]
    torch.set_num_threads(1)
    return path, src
